"""The search driver: ask the controller, record each trial in the database, dispatch it,
record what happens, tell the controller. One loop for new and resumed searches.

Order of writes (so a crash loses at most the trials that were running): a controller
checkpoint is saved right after each ask and each tell; asked trials are stored as
`pending` before they are dispatched; every state change is committed as it happens.
A resumed search re-runs the trials left pending or running and asks for the rest.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .config import TaskSpec
from .controllers import Controller, Outcome, make_controller
from .errors import UserError
from .space import Assignment, SearchSpace, load_space
from .storage import SearchRecord, Store, StorageError
from .workers import Dispatcher, Event, LocalDispatcher, TrialSpec

TERMINAL = ("completed", "failed", "diverged", "pruned")


@dataclass
class Progress:
    """What the progress display shows; updated on every event."""

    search: str
    total: int
    done: int = 0  # finished, whatever the status
    completed: int = 0
    failed: int = 0
    diverged: int = 0
    pruned: int = 0
    running: int = 0
    best: float | None = None
    best_trial: int | None = None
    mode: str = "min"
    started: float = field(default_factory=time.time)
    last_error: str | None = None

    def better(self, value: float) -> bool:
        if self.best is None:
            return True
        return value < self.best if self.mode == "min" else value > self.best


@dataclass
class SearchOptions:
    trials: int = 10
    controller: str = "random"
    controller_options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    task: TaskSpec | None = None  # overrides the space's task
    train_overrides: dict[str, Any] = field(default_factory=dict)  # e.g. steps, device
    reuse_results: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "trials": self.trials, "controller": self.controller, "controller_options": self.controller_options,
            "seed": self.seed, "task": self.task.model_dump() if self.task else None,
            "train_overrides": self.train_overrides, "reuse_results": self.reuse_results,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "SearchOptions":
        return cls(trials=d["trials"], controller=d["controller"], controller_options=d.get("controller_options", {}),
                   seed=d.get("seed", 0), task=TaskSpec(**d["task"]) if d.get("task") else None,
                   train_overrides=d.get("train_overrides", {}), reuse_results=d.get("reuse_results", False))


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def trial_seed(search_seed: int, trial_index: int) -> int:
    return (search_seed * 1_000_003 + trial_index * 7919 + 17) % (2**31 - 1)


class Search:
    """A search bound to its database record, space, controller and options."""

    def __init__(self, store: Store, record: SearchRecord, space: SearchSpace, options: SearchOptions,
                 controller: Controller):
        self.store = store
        self.record = record
        self.space = space
        self.options = options
        self.controller = controller
        self._assignments: dict[int, Assignment] = {}
        self._trial_index: dict[int, int] = {}
        self.progress = Progress(record.name, options.trials)
        self.n_asked = 0

    # ---- creation -----------------------------------------------------------------------
    @classmethod
    def create(cls, store: Store, space_path: str | Path, options: SearchOptions, name: str | None = None) -> "Search":
        space = load_space(space_path)
        check_search_inputs(space, options)
        controller = make_controller(options.controller, space, seed=options.seed, **options.controller_options)
        name = name or f"{space.name}-{options.controller}-{time.strftime('%Y%m%d-%H%M%S')}"
        if store.get_search(name) is not None:
            raise UserError(f"a search named '{name}' already exists in {store.url}",
                            f"resume it with `nas search resume {name}` or choose another --name")
        task = options.task or space.hyperparameters(space.normalize({})).task
        record = store.create_search(
            name, space_name=space.name, space_text=space.text, space_hash=space.text_hash,
            controller=options.controller, controller_config=options.controller_options,
            task=str(task), seed=options.seed,
            config={"options": options.to_json(), "space_file": str(space_path)},
        )
        search = cls(store, record, space, options, controller)
        search._checkpoint()
        return search

    @classmethod
    def open(cls, store: Store, name: str) -> "Search":
        record = store.get_search(name)
        if record is None:
            names = [s.name for s in store.list_searches()]
            raise UserError(f"no search named '{name}' in {store.url}",
                            f"searches: {', '.join(names[-10:])}" if names else "this database has no searches yet")
        options = SearchOptions.from_json(record.config["options"])
        space = SearchSpace.from_text(record.space_text, record.config.get("space_file", record.space_name))
        controller = make_controller(options.controller, space, seed=options.seed, **options.controller_options)
        search = cls(store, record, space, options, controller)
        ckpt = store.latest_checkpoint(record.id)
        if ckpt is not None:
            state = json.loads(ckpt.state.decode())
            controller.load_state_dict(state["controller"])
            search.n_asked = int(state.get("asked", 0))
        return search

    # ---- bookkeeping ------------------------------------------------------------------------
    def _checkpoint(self) -> None:
        state = {"controller": self.controller.state_dict(), "asked": self.n_asked}
        self.store.save_checkpoint(self.record.id, self.n_asked, json.dumps(state).encode(), keep=3)

    def _trial_spec(self, trial_id: int, trial_index: int, assignment: Assignment, attempt: int = 1) -> TrialSpec:
        graph = self.space.instantiate(assignment)
        hp = self.space.hyperparameters(assignment)
        train = hp.train.model_dump()
        train.update(self.options.train_overrides)
        task = self.options.task or hp.task
        return TrialSpec(trial_id=trial_id, ir=graph.to_json(), model=hp.model.model_dump(), train=train,
                         task=task.model_dump(), seed=trial_seed(self.options.seed, trial_index), attempt=attempt)

    def _record_ask(self, assignment: Assignment) -> tuple[int, int, TrialSpec | None]:
        graph = self.space.instantiate(assignment)
        arch_hash = graph.canonical_hash()
        arch_id = self.store.get_or_create_architecture(arch_hash, space_name=self.space.name,
                                                        ir_json=graph.to_json(), dsl_text=graph.to_dsl(self.space.name))
        hp = self.space.hyperparameters(assignment)
        train = {**hp.train.model_dump(), **self.options.train_overrides}
        train.pop("device", None)
        task = self.options.task or hp.task
        config_hash = _sha({"arch": arch_hash, "model": hp.model.model_dump(), "train": train, "task": task.model_dump()})
        reused = self.store.find_result(config_hash) if self.options.reuse_results else None
        trial = self.store.add_trial(self.record.id, architecture_id=arch_id, assignment=assignment,
                                     hyperparameters=hp.flat(), config_hash=config_hash,
                                     reused_from_trial_id=reused.id if reused else None)
        self._assignments[trial.id] = assignment
        self._trial_index[trial.id] = trial.trial_index
        if reused:
            return trial.id, trial.trial_index, None
        return trial.id, trial.trial_index, self._trial_spec(trial.id, trial.trial_index, assignment)

    def _count_existing(self) -> None:
        p = self.progress
        for t in self.store.trials(self.record.id):
            if t.status in TERMINAL:
                p.done += 1
                setattr(p, t.status, getattr(p, t.status) + 1)
                if t.status == "completed" and t.objective is not None and p.better(t.objective):
                    p.best, p.best_trial = t.objective, t.trial_index

    # ---- the loop ------------------------------------------------------------------------------
    def run(self, dispatcher: Dispatcher | None = None, on_update: Callable[[Progress], None] | None = None,
            on_trial: Callable[[int, Any], None] | None = None) -> Progress:
        dispatcher = dispatcher or LocalDispatcher()
        update = on_update or (lambda p: None)
        self.store.set_search_status(self.record.id, "running")
        self._count_existing()
        # trials a dead driver left pending or running: run them again
        for t in self.store.trials(self.record.id, status=("pending", "running")):
            self._assignments[t.id] = t.assignment
            self._trial_index[t.id] = t.trial_index
            dispatcher.submit(self._trial_spec(t.id, t.trial_index, t.assignment, attempt=t.attempt + 1))
            self.n_asked = max(self.n_asked, t.trial_index + 1)
        stored = len(self.store.trials(self.record.id))
        self.n_asked = max(self.n_asked, stored)
        update(self.progress)

        def handle(ev: Event):
            return self._on_event(ev, update, on_trial)

        try:
            while self.progress.done < self.options.trials:
                free = dispatcher.capacity - dispatcher.in_flight
                want = min(free, self.options.trials - self.n_asked)
                if want > 0:
                    asks = self.controller.ask(want)
                    self.n_asked += len(asks)
                    self._checkpoint()
                    for a in asks:
                        trial_id, _, spec = self._record_ask(self.space.normalize(a))
                        if spec is None:  # result reused from an earlier identical trial
                            t = self.store.get_trial(trial_id)
                            self._finish_reused(t, update, on_trial)
                        else:
                            dispatcher.submit(spec)
                    continue
                if dispatcher.in_flight == 0:
                    break
                dispatcher.poll(handle)
        except KeyboardInterrupt:
            lost = dispatcher.cancel_all()
            n = self.store.mark_running_as(self.record.id, status="failed",
                                           error="interrupted: the driver was stopped (Ctrl-C)")
            self.store.set_search_status(self.record.id, "stopped")
            dispatcher.shutdown()
            raise SearchInterrupted(self.record.name, n or len(lost)) from None
        dispatcher.shutdown()
        self.store.set_search_status(self.record.id, "completed")
        update(self.progress)
        return self.progress

    def _finish_reused(self, t, update, on_trial) -> None:
        p = self.progress
        p.done += 1
        p.completed += 1
        if t.objective is not None and p.better(t.objective):
            p.best, p.best_trial = t.objective, t.trial_index
        mode = p.mode
        self.controller.tell(self._assignments[t.id], Outcome("completed", t.objective, mode, dict(t.metrics or {})))
        self._checkpoint()
        update(p)

    def _on_event(self, ev: Event, update, on_trial):
        p = self.progress
        if ev.kind == "started":
            self.store.start_trial(ev.trial_id, host=ev.host, gpu=ev.gpu, attempt=ev.attempt)
            p.running += 1
            update(p)
            return None
        if ev.kind == "report":
            self.store.record_steps(ev.trial_id, [(ev.step, ev.metrics)])
            return None
        result = ev.result
        p.running = max(0, p.running - 1)
        objective = result.objective
        steps = [(s, m) for s, m in result.curve]
        if steps:
            self.store.record_steps(ev.trial_id, steps)
        self.store.finish_trial(ev.trial_id, status=result.status, metrics=result.metrics, objective=objective,
                                error=result.error, diverged_step=result.diverged_step,
                                wall_time_s=result.metrics.get("wall_time_s"))
        p.done += 1
        setattr(p, result.status, getattr(p, result.status) + 1)
        p.mode = result.mode
        if result.status == "failed":
            p.last_error = (result.error or "").strip().splitlines()[-1:] or None
        if result.status == "completed" and objective is not None and math.isfinite(objective) and p.better(objective):
            p.best, p.best_trial = objective, self._trial_index.get(ev.trial_id)
        assignment = self._assignments.pop(ev.trial_id)
        self.controller.tell(assignment, Outcome(result.status, objective, result.mode, dict(result.metrics)))
        self._checkpoint()
        if on_trial:
            on_trial(ev.trial_id, result)
        update(p)
        return None


class SearchInterrupted(Exception):
    def __init__(self, name: str, cancelled: int):
        super().__init__(f"search '{name}' interrupted; {cancelled} running trial(s) marked failed")
        self.name = name
        self.cancelled = cancelled


def check_search_inputs(space: SearchSpace, options: SearchOptions) -> None:
    """Everything that can be checked before the first trial (exit 2 on a mistake)."""
    from .tasks import make_task

    if options.trials < 1:
        raise UserError(f"--trials must be >= 1, got {options.trials}")
    hp = space.hyperparameters(space.normalize({}))
    task = options.task or hp.task
    if task is None:
        raise UserError(f"the space '{space.name}' sets no task",
                        "add `task = parity(length=10)` (or another task) to its train block, or pass --task")
    make_task(task)  # TaskError (a UserError) for an unknown task or a missing file
    try:
        from .config import TrainConfig

        TrainConfig(**{**hp.train.model_dump(), **options.train_overrides})
    except Exception as exc:  # pydantic ValidationError
        raise UserError(f"invalid training override: {exc}") from None


def open_store(db: str | None) -> Store:
    try:
        return Store.open(db)
    except StorageError as exc:
        raise UserError(exc.message, exc.hint) from None
