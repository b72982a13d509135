"""The search driver: ask the controller, record each trial in the database, dispatch it,
record what happens, tell the controller. One loop for new and resumed searches.

Order of writes (so a crash loses at most the trials that were running): a controller
checkpoint is saved right after each ask and each tell; asked trials are stored as
`pending` before they are dispatched; every state change is committed as it happens.
A resumed search re-runs the trials left pending or running and asks for the rest;
the controller is told about trials that finished after its last checkpoint.

Stopping: Ctrl-C (KeyboardInterrupt) or the time budget cancels the running trials and
puts them back to `pending` (with the reason in `error`), so `nas search resume` runs them
again; completed trials are never rerun. With a multi-fidelity scheduler (`asha`,
`hyperband`) every intermediate evaluation goes through Ray Tune's scheduler
(`nas.workers.schedulers`), whose STOP prunes the trial.
"""

from __future__ import annotations

import hashlib
import json
import math
import signal
import threading
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
from .workers.schedulers import SCHEDULERS, Pruner, make_pruner

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
    done_at_start: int = 0  # trials already finished when this run began (resume)
    stopped: str | None = None  # why the run ended before all trials finished (e.g. "time budget")
    where: str = ""  # where trials run (dispatcher description)
    phase: str | None = None  # "supernet" while a darts supernet job runs (before the trials)
    phase_step: int = 0
    phase_total: int | None = None
    phase_stats: str = ""
    artifacts: dict[str, str] = field(default_factory=dict)  # files a phase wrote (derived cell, plots)

    @property
    def elapsed(self) -> float:
        return time.time() - self.started

    @property
    def per_hour(self) -> float | None:
        """Trials finished per hour in this run."""
        n, dt = self.done - self.done_at_start, self.elapsed
        return n / dt * 3600.0 if n > 0 and dt > 0 else None

    @property
    def eta_s(self) -> float | None:
        """Seconds until every trial is done, at this run's pace."""
        rate = self.per_hour
        if rate is None:
            return None
        return max(0, self.total - self.done) / rate * 3600.0

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
    scheduler: str = "none"  # none | asha | hyperband (Ray Tune's schedulers prune trials)
    scheduler_options: dict[str, Any] = field(default_factory=dict)  # grace_period, reduction_factor
    # how trials were dispatched (gpus_per_trial, max_retries, ...): `nas search resume` defaults
    dispatch: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "trials": self.trials, "controller": self.controller, "controller_options": self.controller_options,
            "seed": self.seed, "task": self.task.model_dump() if self.task else None,
            "train_overrides": self.train_overrides, "reuse_results": self.reuse_results,
            "scheduler": self.scheduler, "scheduler_options": self.scheduler_options, "dispatch": self.dispatch,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "SearchOptions":
        return cls(trials=d["trials"], controller=d["controller"], controller_options=d.get("controller_options", {}),
                   seed=d.get("seed", 0), task=TaskSpec(**d["task"]) if d.get("task") else None,
                   train_overrides=d.get("train_overrides", {}), reuse_results=d.get("reuse_results", False),
                   scheduler=d.get("scheduler") or "none", scheduler_options=d.get("scheduler_options") or {},
                   dispatch=d.get("dispatch") or {})


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
        self._started: set[int] = set()
        self._told: set[int] = set()  # trial indices the controller has been told about
        self._checkpoint_told: set[int] | None = None  # None: an old checkpoint that did not list them
        self.progress = Progress(record.name, options.trials)
        self.n_asked = 0
        self.n_recorded = 0  # trials of this search in the database
        self.pruner: Pruner | None = None

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
        search._checkpoint_told = set()
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
            if "told" in state:
                search._checkpoint_told = set(int(i) for i in state["told"])
        else:
            search._checkpoint_told = set()
        return search

    # ---- bookkeeping ------------------------------------------------------------------------
    def _checkpoint(self) -> None:
        state = {"controller": self.controller.state_dict(), "asked": self.n_asked, "told": sorted(self._told)}
        self.store.save_checkpoint(self.record.id, self.n_asked, json.dumps(state).encode(), keep=3)

    def _trial_spec(self, trial_id: int, trial_index: int, assignment: Assignment, attempt: int = 1) -> TrialSpec:
        graph = self.space.instantiate(assignment)
        hp = self.space.hyperparameters(assignment)
        train = hp.train.model_dump()
        train.update(self.options.train_overrides)
        task = self.options.task or hp.task
        return TrialSpec(trial_id=trial_id, ir=graph.to_json(), model=hp.model.model_dump(), train=train,
                         task=task.model_dump(), seed=trial_seed(self.options.seed, trial_index), attempt=attempt,
                         extra={"assignment": dict(assignment)})  # lookup tables keyed by assignment

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
        self.n_recorded += 1
        self._assignments[trial.id] = assignment
        self._trial_index[trial.id] = trial.trial_index
        if reused:
            return trial.id, trial.trial_index, None
        return trial.id, trial.trial_index, self._trial_spec(trial.id, trial.trial_index, assignment)

    def _count_existing(self, trials) -> None:
        p = self.progress
        for t in trials:
            if t.status in TERMINAL:
                p.done += 1
                setattr(p, t.status, getattr(p, t.status) + 1)
                if t.status == "completed" and t.objective is not None and p.better(t.objective):
                    p.best, p.best_trial = t.objective, t.trial_index
        p.done_at_start = p.done

    def _catch_up(self, trials) -> None:
        """Resume: tell the controller about trials that finished after its last checkpoint,
        and rebuild the scheduler's rungs from the finished trials' learning curves."""
        told = self._checkpoint_told
        self._told = set(told) if told is not None else {t.trial_index for t in trials if t.status in TERMINAL}
        late = [t for t in trials if t.status in TERMINAL and t.trial_index not in self._told]
        for t in late:
            mode = self.progress.mode
            self.controller.tell(t.assignment, Outcome(t.status, t.objective, mode, dict(t.metrics or {})))
            self._told.add(t.trial_index)
        if late:
            self._checkpoint()
        if self.pruner is not None:
            for t in trials:
                if t.status in ("completed", "pruned"):
                    self.pruner.replay(t.id, self.store.curve(t.id), t.status, t.metrics)

    # ---- the loop ------------------------------------------------------------------------------
    def run(self, dispatcher: Dispatcher | None = None, on_update: Callable[[Progress], None] | None = None,
            on_trial: Callable[[int, Any], None] | None = None, *, time_budget: float | None = None) -> Progress:
        """Run (or continue) the search until `options.trials` trials are finished.

        `time_budget` (seconds): after it, ask no more trials, cancel the running ones
        (back to pending, for `nas search resume`) and return with `progress.stopped` set.
        Ctrl-C does the same and raises `SearchInterrupted`. The dispatcher is shut down.
        """
        dispatcher = dispatcher or LocalDispatcher()
        update = on_update or (lambda p: None)
        p = self.progress
        p.started = time.time()
        p.where = dispatcher.describe()
        try:
            self.pruner = make_scheduler(self.space, self.options)
            p.mode = self._task_mode()
            self.store.set_search_status(self.record.id, "running")
            deadline = None if time_budget is None else p.started + float(time_budget)
            if getattr(self.controller, "needs_supernet", False) and not self.controller.supernet_done:
                from .supernet_phase import run_supernet_phase  # darts: the supernet job comes first

                if not run_supernet_phase(self, dispatcher, update, deadline):
                    p.stopped = "time budget"
            # the trials the controller asked (a darts search's supernet job is no such trial)
            trials = [t for t in self.store.trials(self.record.id) if t.assignment is not None]
            self._count_existing(trials)
            self._catch_up(trials)
            self.n_recorded = len(trials)
            self.n_asked = max(self.n_asked, self.n_recorded)
            # trials a dead or stopped driver left pending or running: run them again
            for t in trials:
                if t.status in ("pending", "running"):
                    self._assignments[t.id] = t.assignment
                    self._trial_index[t.id] = t.trial_index
                    dispatcher.submit(self._trial_spec(t.id, t.trial_index, t.assignment, attempt=t.attempt + 1))
            update(p)

            def handle(ev: Event):
                return self._on_event(ev, update, on_trial)

            tick = None if isinstance(dispatcher, LocalDispatcher) else 1.0  # Ray: refresh the display
            while p.done < self.options.trials and not p.stopped:
                if deadline is not None and time.time() >= deadline:
                    p.stopped = "time budget"
                    break
                free = dispatcher.capacity - dispatcher.in_flight
                want = min(free, self.options.trials - self.n_recorded)
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
                if dispatcher.in_flight == 0 and self.n_recorded >= self.options.trials:
                    break  # nothing runs and nothing is left to ask (should not happen)
                dispatcher.poll(handle, timeout=tick)
                update(p)
        except KeyboardInterrupt:
            with _sigint_ignored():
                n = self._stop(dispatcher, "interrupted: the driver was stopped (Ctrl-C or SIGTERM)")
            raise SearchInterrupted(self.record.name, n) from None
        except Exception as exc:
            with _sigint_ignored():
                try:
                    self._stop(dispatcher, f"stopped: the driver failed ({type(exc).__name__})")
                except Exception:  # noqa: BLE001 - keep the original error
                    pass
            raise
        if p.stopped:
            with _sigint_ignored():
                self._stop(dispatcher, f"stopped: the {p.stopped} ran out")
            update(p)
            return p
        dispatcher.shutdown()
        self.store.set_search_status(self.record.id, "completed")
        update(p)
        return p

    def _task_mode(self) -> str:
        from .tasks import make_task

        try:
            hp = self.space.hyperparameters(self.space.normalize({}))
            return make_task(self.options.task or hp.task).mode
        except Exception:  # noqa: BLE001 - a task that cannot be built fails its trials instead
            return "min"

    def _stop(self, dispatcher: Dispatcher, why: str) -> int:
        """Cancel what runs; running trials go back to pending for `nas search resume`.

        The database is marked first: should the cancel take the process down (a Ray
        bug, a second kill), the search still reads as stopped and resumable. The cancel
        happens even when the database cannot be written (the error the driver stops for).
        """
        try:
            n = self.store.mark_running_as(self.record.id, status="pending",
                                           error=f"{why}; `nas search resume` runs it again")
            self.store.set_search_status(self.record.id, "stopped")
        finally:
            lost = dispatcher.cancel_all()
            dispatcher.shutdown()
        self.progress.running = 0
        return max(n, len(lost))

    def _tell(self, trial_id: int, outcome: Outcome) -> None:
        assignment = self._assignments.pop(trial_id)
        self.controller.tell(assignment, outcome)
        index = self._trial_index.get(trial_id)
        if index is not None:
            self._told.add(index)
        self._checkpoint()

    def _finish_reused(self, t, update, on_trial) -> None:
        p = self.progress
        p.done += 1
        p.completed += 1
        if t.objective is not None and p.better(t.objective):
            p.best, p.best_trial = t.objective, t.trial_index
        self._tell(t.id, Outcome("completed", t.objective, p.mode, dict(t.metrics or {})))
        update(p)

    def _on_event(self, ev: Event, update, on_trial):
        p = self.progress
        if ev.kind == "started":
            self.store.start_trial(ev.trial_id, host=ev.host, gpu=ev.gpu, attempt=ev.attempt)
            if ev.trial_id not in self._started:
                self._started.add(ev.trial_id)
                p.running += 1
            if self.pruner is not None:
                self.pruner.add(ev.trial_id)
            update(p)
            return None
        if ev.kind == "report":
            self.store.record_steps(ev.trial_id, [(ev.step, ev.metrics)])
            if self.pruner is not None and ev.step is not None:
                return self.pruner.on_report(ev.trial_id, ev.step, ev.metrics)
            return None
        result = ev.result
        if ev.trial_id in self._started:
            self._started.discard(ev.trial_id)
            p.running = max(0, p.running - 1)
        objective = result.objective
        steps = [(s, m) for s, m in result.curve]
        if steps:
            self.store.record_steps(ev.trial_id, steps)
        self.store.finish_trial(ev.trial_id, status=result.status, metrics=result.metrics, objective=objective,
                                error=result.error, diverged_step=result.diverged_step,
                                wall_time_s=result.metrics.get("wall_time_s"))
        if self.pruner is not None:
            final = result.curve[-1] if result.curve else (None, {})
            self.pruner.on_finish(ev.trial_id, result.status, final[0], final[1])
        p.done += 1
        setattr(p, result.status, getattr(p, result.status) + 1)
        if result.status != "failed":
            p.mode = result.mode
        if result.status == "failed":
            p.last_error = (result.error or "").strip().splitlines()[-1:] or None
        if result.status == "completed" and objective is not None and math.isfinite(objective) and p.better(objective):
            p.best, p.best_trial = objective, self._trial_index.get(ev.trial_id)
        self._tell(ev.trial_id, Outcome(result.status, objective, result.mode, dict(result.metrics)))
        if on_trial:
            on_trial(ev.trial_id, result)
        update(p)
        return None


class _sigint_ignored:
    """A second Ctrl-C (or a SIGTERM) must not interrupt the cleanup of the first."""

    def __enter__(self):
        self.old: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.old[sig] = signal.signal(sig, signal.SIG_IGN)
        return self

    def __exit__(self, *exc):
        for sig, handler in self.old.items():
            signal.signal(sig, handler)
        return False


def step_budget(space: SearchSpace, options: SearchOptions) -> int | None:
    """The trials' training-step budget (what a multi-fidelity scheduler's time is)."""
    hp = space.hyperparameters(space.normalize({}))
    train = {**hp.train.model_dump(), **options.train_overrides}
    if train.get("steps"):
        return int(train["steps"])
    if train.get("epochs"):
        from .config import TrainConfig
        from .tasks import make_task

        task = make_task(options.task or hp.task)
        task.load()
        cfg = TrainConfig(**train)
        spe = task.steps_per_epoch(cfg)
        if spe:
            return max(1, math.ceil(cfg.epochs * spe))
    if train.get("seconds"):
        return None
    from .tasks.train import DEFAULT_STEPS

    return DEFAULT_STEPS


def make_scheduler(space: SearchSpace, options: SearchOptions) -> Pruner | None:
    """The multi-fidelity scheduler of a search (None for `none`); UserError if it cannot apply."""
    kind = options.scheduler or "none"
    if kind not in SCHEDULERS:
        raise UserError(f"unknown scheduler '{kind}'", f"schedulers: {', '.join(SCHEDULERS)}")
    if kind == "none":
        return None
    from .tasks import make_task

    hp = space.hyperparameters(space.normalize({}))
    train = {**hp.train.model_dump(), **options.train_overrides}
    max_t = step_budget(space, options)
    if max_t is None:
        raise UserError(f"--scheduler {kind} needs a step budget, and the trials train for a number of seconds",
                        "set train.steps in the space or pass --steps")
    task = make_task(options.task or hp.task)
    so = dict(options.scheduler_options)
    grace = int(so.get("grace_period") or min(int(train.get("eval_every") or 1), max_t))
    rf = float(so.get("reduction_factor") or 3.0)
    try:
        return make_pruner(kind, metric=task.primary_metric, mode=task.mode, max_t=max_t, grace_period=grace,
                           reduction_factor=rf, seed=options.seed)
    except ValueError as exc:
        raise UserError(f"--scheduler {kind}: {exc}",
                        "the grace period counts training steps; intermediate evaluations come every "
                        f"{train.get('eval_every')} steps (train.eval_every)") from None


class SearchInterrupted(Exception):
    def __init__(self, name: str, cancelled: int):
        super().__init__(f"search '{name}' interrupted; {cancelled} running trial(s) cancelled "
                         "(back to pending: resuming runs them again)")
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
    make_scheduler(space, options)  # a scheduler that cannot apply is a user error, now


def open_store(db: str | None) -> Store:
    try:
        return Store.open(db)
    except StorageError as exc:
        raise UserError(exc.message, exc.hint) from None
