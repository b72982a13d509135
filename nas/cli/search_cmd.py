"""`nas search run|resume|status|list`."""

from __future__ import annotations

import datetime as _dt
import math
import os
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..controllers import CONTROLLERS, controller_help
from ..errors import UserError
from .common import DB_HELP, parse_key_values
from .main import app

search_app = typer.Typer(help="Launch, resume and watch searches.", no_args_is_help=True)
app.add_typer(search_app, name="search")
console = Console(highlight=False, width=None if Console().is_terminal else 150)

DISPATCHERS = ("ray", "local")
SCHEDULER_NAMES = ("none", "asha", "hyperband")


# --------------------------------------------------------------------------- parsing


_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(h|m|s|ms)?", re.I)
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, None: 1.0}


def parse_duration(text: str, flag: str = "--time-budget") -> float:
    """'90s', '15m', '2h', '1h30m' or a number of seconds -> seconds (> 0)."""
    s = (text or "").strip().lower().replace(" ", "")
    pos, total = 0, 0.0
    while pos < len(s):
        m = _DURATION.match(s, pos)
        if not m or m.end() == pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
        if m.group(2) is None:
            break
    if not s or pos != len(s) or not math.isfinite(total) or total <= 0:
        raise UserError(f"{flag} {text!r}: expected a duration such as 90s, 15m, 2h or 1h30m")
    return total


_SIZE = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]i?b?|b)?$", re.I)


def parse_size(text: str, flag: str = "--memory-per-trial") -> int:
    """'512M', '2G', '1.5GiB' or a number of bytes -> bytes (> 0); K/M/G/T are powers of 1024."""
    m = _SIZE.match((text or "").strip())
    if not m:
        raise UserError(f"{flag} {text!r}: expected a size such as 512M or 2G")
    unit = (m.group(2) or "b")[0].lower()
    n = float(m.group(1)) * {"b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[unit]
    if n < 1:
        raise UserError(f"{flag} {text!r}: must be more than 0 bytes")
    return int(n)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def _fmt_s(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "-"
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


# --------------------------------------------------------------------------- dispatch


def make_dispatcher(dispatcher: str, *, ray_address: str | None, gpus_per_trial: float | None,
                    cpus_per_trial: float | None, memory_per_trial: int | None, max_concurrent: int | None,
                    max_retries: int | None):
    """The dispatcher the flags describe (UserError for flags that do not fit together)."""
    if dispatcher not in DISPATCHERS:
        raise UserError(f"--dispatcher {dispatcher!r}: expected one of {', '.join(DISPATCHERS)}")
    if dispatcher == "local":
        ray_only = {"--ray-address": ray_address, "--gpus-per-trial": gpus_per_trial,
                    "--memory-per-trial": memory_per_trial, "--max-concurrent": max_concurrent}
        given = [k for k, v in ray_only.items() if v is not None]
        if given:
            raise UserError(f"{', '.join(given)} need(s) Ray; --dispatcher local runs one trial at a time "
                            "in this process", "leave out --dispatcher local")
        from ..workers import LocalDispatcher

        return LocalDispatcher()
    from ..workers import RayDispatcher

    return RayDispatcher(ray_address, cpus_per_trial=1.0 if cpus_per_trial is None else cpus_per_trial,
                         gpus_per_trial=gpus_per_trial, memory_per_trial=memory_per_trial,
                         max_concurrent=max_concurrent, max_retries=2 if max_retries is None else max_retries)


def _fmt_rate(rate: float | None) -> str:
    if rate is None:
        return "-"
    return f"{rate:,.0f}" if rate >= 10 else f"{rate:.2g}"


def _stats(p) -> str:
    rate = p.per_hour
    best = "-" if p.best is None else f"{p.best:.4g} (#{p.best_trial})"
    return (f"ok {p.completed}  failed {p.failed}  diverged {p.diverged}  pruned {p.pruned}  "
            f"running {p.running} | best {best} | "
            f"{_fmt_rate(rate)} trials/h | eta {_fmt_s(p.eta_s)}")


class _sigterm_as_interrupt:
    """`kill PID` (SIGTERM, as batch schedulers send) stops the search as cleanly as Ctrl-C."""

    def __enter__(self):
        self.old = None
        if threading.current_thread() is threading.main_thread():
            def raise_interrupt(signum, frame):
                raise KeyboardInterrupt

            self.old = signal.signal(signal.SIGTERM, raise_interrupt)
        return self

    def __exit__(self, *exc):
        if self.old is not None:
            signal.signal(signal.SIGTERM, self.old)
        return False


def _run_with_progress(search, dispatcher=None, time_budget: float | None = None) -> None:
    from ..search import SearchInterrupted

    where = f" --db {search.store.url}" if search.store.url else ""
    columns = [TextColumn("[bold]{task.description}"), BarColumn(bar_width=24), MofNCompleteColumn(),
               TextColumn("{task.fields[stats]}"), TimeElapsedColumn()]
    if dispatcher is not None:
        console.print(f"trials run on {dispatcher.describe()}")
    if search.options.scheduler != "none":
        from ..search import make_scheduler

        sched = make_scheduler(search.space, search.options)
        console.print(f"scheduler {sched.describe() if sched else 'none'}")
    with Progress(*columns, console=console, transient=False, refresh_per_second=2) as bar:
        task = bar.add_task(search.record.name, total=search.options.trials, stats="")

        phase: dict[str, Any] = {}

        def update(p) -> None:
            if p.phase:  # a darts supernet job: its own bar, in steps
                if "task" not in phase:
                    phase["task"] = bar.add_task(f"{p.phase} job", total=p.phase_total, stats="")
                bar.update(phase["task"], completed=p.phase_step, total=p.phase_total, stats=p.phase_stats)
            elif "task" in phase and not phase.get("closed"):
                bar.update(phase["task"], completed=p.phase_total or p.phase_step)
                phase["closed"] = True
            bar.update(task, completed=p.done, stats=_stats(p))

        try:
            with _sigterm_as_interrupt():
                progress = search.run(dispatcher=dispatcher, on_update=update, time_budget=time_budget)
        except SearchInterrupted as exc:
            bar.stop()
            console.print(f"[yellow]{exc}[/yellow]")
            console.print(f"resume with: nas search resume {exc.name}{where}")
            raise typer.Exit(130)
    elapsed = time.time() - progress.started
    if progress.stopped:
        console.print(f"[yellow]search {search.record.name}: stopped, the {progress.stopped} ran out after "
                      f"{_fmt_s(elapsed)}; {progress.done} of {progress.total} trials done, the running ones "
                      f"were cancelled (back to pending)[/yellow]")
        console.print(f"resume with: nas search resume {search.record.name}{where}")
        return
    for what, path in progress.artifacts.items():
        console.print(f"{what}: {path}")
    console.print(f"search [bold]{search.record.name}[/bold]: {progress.completed} completed, {progress.failed} failed, "
                  f"{progress.diverged} diverged, {progress.pruned} pruned in {elapsed:.1f} s; "
                  f"best {_fmt(progress.best)} (trial {progress.best_trial})")


# --------------------------------------------------------------------------- options shared by run/resume

_DISPATCH_HELP = "Where trials run: 'ray' (a local Ray, or the cluster of --ray-address) or 'local' (this process)."


def _dispatch_from_flags(recorded: dict[str, Any], *, dispatcher: str | None, ray_address: str | None,
                         gpus_per_trial: float | None, cpus_per_trial: float | None, memory_per_trial: str | None,
                         max_concurrent: int | None, max_retries: int | None) -> dict[str, Any]:
    """Flags given now, over what the search recorded (resume), over the defaults."""
    out = dict(recorded)
    given = {"dispatcher": dispatcher, "gpus_per_trial": gpus_per_trial, "cpus_per_trial": cpus_per_trial,
             "memory_per_trial": parse_size(memory_per_trial) if memory_per_trial is not None else None,
             "max_concurrent": max_concurrent, "max_retries": max_retries}
    out.update({k: v for k, v in given.items() if v is not None})
    out.setdefault("dispatcher", os.environ.get("NAS_DISPATCHER") or "ray")
    if out["dispatcher"] == "local":  # resume of a local search, or --dispatcher local now
        for k in ("gpus_per_trial", "memory_per_trial", "max_concurrent"):
            if given.get(k) is None:
                out.pop(k, None)
    out["ray_address"] = ray_address
    return out


def _build(d: dict[str, Any]):
    if d.get("dispatcher") == "lookup":  # --evaluator lookup: metrics from a table, no training
        from ..workers.lookup import LookupDispatcher

        return LookupDispatcher(d["table"], metric=d.get("metric"), mode=d.get("mode") or "min",
                                capacity=d.get("max_concurrent") or 1)
    return make_dispatcher(d["dispatcher"], ray_address=d.get("ray_address"), gpus_per_trial=d.get("gpus_per_trial"),
                           cpus_per_trial=d.get("cpus_per_trial"), memory_per_trial=d.get("memory_per_trial"),
                           max_concurrent=d.get("max_concurrent"), max_retries=d.get("max_retries"))


# --------------------------------------------------------------------------- commands


@search_app.command("run", context_settings={"help_option_names": ["-h", "--help"]})
def run(
    space_file: Path = typer.Argument(..., help="The search-space file."),
    controller: str = typer.Option("random", "--controller", "-c", help=f"Search controller: {', '.join(CONTROLLERS)} "
                                   "(their settings: `nas search controllers`)."),
    trials: int = typer.Option(None, "--trials", "-n", min=1, help="Trials to evaluate (default 20; darts: 1, "
                               "the derived cell)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the controller and of every trial."),
    name: str = typer.Option(None, "--name", help="Search name (default: <space>-<controller>-<time>)."),
    task: str = typer.Option(None, "--task", help='Override the space\'s task, e.g. \'parity(length=20)\'.'),
    steps: int = typer.Option(None, "--steps", min=1, help="Override train.steps of every trial."),
    device: str = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N (default: the space's; "
                               "under Ray, trials with GPUs use theirs)."),
    controller_opt: list[str] = typer.Option([], "--controller-opt", help="Controller setting key=value (repeat), "
                                             "e.g. population=64, objectives=val_loss:min,params:min, "
                                             "max_params=2000000, dedup=true."),
    evaluator: str = typer.Option("train", "--evaluator", help="train: train every trial; lookup: read its "
                                  "metrics from --table (a NAS-benchmark table; nothing is trained)."),
    table: Path = typer.Option(None, "--table", help="Lookup table (CSV/JSON/Parquet) keyed by arch_hash or "
                               "assignment, for --evaluator lookup."),
    lookup_metric: str = typer.Option(None, "--lookup-metric", help="Table column to optimise (default val_loss)."),
    lookup_mode: str = typer.Option("min", "--lookup-mode", help="min | max, for --lookup-metric."),
    reuse_results: bool = typer.Option(False, "--reuse-results", help="Reuse results of identical earlier trials."),
    dispatcher: str = typer.Option(None, "--dispatcher", help=_DISPATCH_HELP + " Default: $NAS_DISPATCHER or ray."),
    ray_address: str = typer.Option(None, "--ray-address", help="Join this Ray cluster (`ray start --head` prints "
                                    "it; 'auto' finds a local one). Default: start a local Ray."),
    gpus_per_trial: float = typer.Option(None, "--gpus-per-trial", help="GPUs per trial; a fraction packs several "
                                         "trials on one GPU (0.25: four). Default: 1 if the cluster has GPUs, else 0."),
    cpus_per_trial: float = typer.Option(None, "--cpus-per-trial", help="CPUs per trial (default 1)."),
    memory_per_trial: str = typer.Option(None, "--memory-per-trial", help="Memory per trial, e.g. 4G: Ray "
                                         "reserves it, and a CPU trial that allocates more fails."),
    max_concurrent: int = typer.Option(None, "--max-concurrent", help="At most this many trials at once "
                                       "(default: as many as the cluster's resources fit)."),
    max_retries: int = typer.Option(None, "--max-retries", help="Retries of a trial whose worker or node died "
                                    "(default 2); errors inside a trial are not retried."),
    scheduler: str = typer.Option("none", "--scheduler", help="Multi-fidelity pruning with Ray Tune's schedulers: "
                                  "none, asha or hyperband (async)."),
    grace_period: int = typer.Option(None, "--grace-period", help="Steps before a trial can be pruned "
                                     "(default: train.eval_every)."),
    reduction_factor: float = typer.Option(None, "--reduction-factor", help="ASHA/Hyperband eta (default 3)."),
    time_budget: str = typer.Option(None, "--time-budget", help="Stop after this long (90s, 15m, 2h): no new "
                                    "trials, running ones cancelled; resume continues."),
    order: int = typer.Option(None, "--order", help="darts: 1 (first order) or 2 (second order, unrolled)."),
    epochs: float = typer.Option(None, "--epochs", help="darts: supernet passes over the training split."),
    db: str = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    """Run a search and record every trial in the results database."""
    from ..elaborate import parse_task
    from ..search import Search, SearchOptions, check_search_inputs, open_store
    from ..space import load_space

    budget = parse_duration(time_budget) if time_budget is not None else None
    if scheduler not in SCHEDULER_NAMES:
        raise UserError(f"--scheduler {scheduler!r}: expected one of {', '.join(SCHEDULER_NAMES)}")
    overrides: dict[str, object] = {}
    if steps is not None:
        overrides["steps"] = steps
    if device is not None:
        overrides["device"] = device
    sched_opts: dict[str, Any] = {}
    if grace_period is not None:
        sched_opts["grace_period"] = grace_period
    if reduction_factor is not None:
        sched_opts["reduction_factor"] = reduction_factor
    dispatch = _dispatch_from_flags({}, dispatcher=dispatcher, ray_address=ray_address, gpus_per_trial=gpus_per_trial,
                                    cpus_per_trial=cpus_per_trial, memory_per_trial=memory_per_trial,
                                    max_concurrent=max_concurrent, max_retries=max_retries)
    if evaluator not in ("train", "lookup"):
        raise UserError(f"--evaluator {evaluator!r}: expected train or lookup")
    if evaluator == "lookup":
        if table is None:
            raise UserError("--evaluator lookup needs --table FILE", "a CSV/JSON/Parquet table with an arch_hash "
                            "column and metric columns (see docs/controllers.md)")
        from ..workers.lookup import LookupDispatcher

        dispatch = {"dispatcher": "lookup", "table": str(table.resolve()), "metric": lookup_metric,
                    "mode": lookup_mode, "max_concurrent": max_concurrent}
        LookupDispatcher(dispatch["table"], metric=lookup_metric, mode=lookup_mode)  # a bad table: exit 2 now
    elif table is not None:
        raise UserError("--table is for --evaluator lookup")
    recorded = {k: v for k, v in dispatch.items() if k != "ray_address"}
    copts = parse_key_values(controller_opt, "--controller-opt")
    copts.update(_darts_flags(controller, order, epochs))
    if trials is None:
        trials = 1 if controller == "darts" else 20
    options = SearchOptions(trials=trials, controller=controller, seed=seed,
                            controller_options=copts,
                            task=parse_task(task) if task else None, train_overrides=overrides,
                            reuse_results=reuse_results, scheduler=scheduler, scheduler_options=sched_opts,
                            dispatch=recorded)
    store = open_store(db)
    # everything that can be wrong is checked before Ray starts, and Ray before the search is recorded
    space = load_space(space_file)
    check_search_inputs(space, options)
    from ..controllers import make_controller

    make_controller(controller, space, seed=seed, **copts)  # a bad --controller-opt: exit 2 before Ray starts
    if name is not None and store.get_search(name) is not None:
        raise UserError(f"a search named '{name}' already exists in {store.url}",
                        f"resume it with `nas search resume {name}` or choose another --name")
    disp = _build(dispatch)
    if str(device or "").startswith("cuda") and getattr(disp, "gpus_per_trial", None) == 0:
        disp.shutdown()
        raise UserError(f"--device {device}: the trials get no GPU from Ray",
                        "pass --gpus-per-trial (e.g. 1, or 0.25 to pack four trials per GPU)")
    try:
        search = Search.create(store, space_file, options, name=name)
    except BaseException:
        disp.shutdown()
        raise
    console.print(f"search [bold]{search.record.name}[/bold] on {search.space.name} "
                  f"({len(search.space.decisions)} decisions), controller {controller}, db {store.url}")
    _run_with_progress(search, disp, budget)


def _darts_flags(controller: str, order: int | None, epochs: float | None) -> dict[str, Any]:
    """--order / --epochs: darts options, checked here so the message names the flag."""
    given = {k: v for k, v in (("--order", order), ("--epochs", epochs)) if v is not None}
    if given and controller != "darts":
        raise UserError(f"{', '.join(given)} is for --controller darts (got --controller {controller})")
    out: dict[str, Any] = {}
    if order is not None:
        if order not in (1, 2):
            raise UserError(f"--order {order}: expected 1 (first order) or 2 (second order)")
        out["order"] = order
    if epochs is not None:
        if not math.isfinite(epochs) or epochs <= 0:
            raise UserError(f"--epochs {epochs:g}: expected a number of supernet epochs > 0")
        out["epochs"] = epochs
    return out


@search_app.command("controllers")
def controllers(name: str = typer.Argument(None, help="One controller (default: all).")) -> None:
    """The search controllers and their settings (--controller-opt key=value, or the space's search { } block)."""
    if name is not None and name not in CONTROLLERS:
        raise UserError(f"unknown controller '{name}'", f"controllers: {', '.join(CONTROLLERS)}")
    console.print(controller_help(name), markup=False)


@search_app.command("resume")
def resume(
    name: str = typer.Argument(..., help="Name of the search to continue."),
    dispatcher: str = typer.Option(None, "--dispatcher", help=_DISPATCH_HELP + " Default: what the search used."),
    ray_address: str = typer.Option(None, "--ray-address", help="Join this Ray cluster (default: a local Ray)."),
    gpus_per_trial: float = typer.Option(None, "--gpus-per-trial", help="GPUs per trial (default: as recorded)."),
    cpus_per_trial: float = typer.Option(None, "--cpus-per-trial", help="CPUs per trial (default: as recorded)."),
    memory_per_trial: str = typer.Option(None, "--memory-per-trial", help="Memory per trial (default: as recorded)."),
    max_concurrent: int = typer.Option(None, "--max-concurrent", help="At most this many trials at once."),
    max_retries: int = typer.Option(None, "--max-retries", help="Retries after a worker or node died."),
    time_budget: str = typer.Option(None, "--time-budget", help="Stop after this long (90s, 15m, 2h)."),
    db: str = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    """Continue a stopped or crashed search; completed trials are never rerun."""
    from ..search import Search, open_store

    budget = parse_duration(time_budget) if time_budget is not None else None
    store = open_store(db)
    search = Search.open(store, name)
    if search.record.status == "completed" and not store.trials(search.record.id, status=("pending", "running")):
        c = store.counts(search.record.id)
        if sum(c[s] for s in ("completed", "failed", "diverged", "pruned")) >= search.options.trials:
            console.print(f"search {name} is already complete ({search.options.trials} trials); nothing to do")
            return
    dispatch = _dispatch_from_flags(search.options.dispatch, dispatcher=dispatcher, ray_address=ray_address,
                                    gpus_per_trial=gpus_per_trial, cpus_per_trial=cpus_per_trial,
                                    memory_per_trial=memory_per_trial, max_concurrent=max_concurrent,
                                    max_retries=max_retries)
    c = store.counts(search.record.id)
    console.print(f"resuming [bold]{name}[/bold]: " + "  ".join(f"{k} {v}" for k, v in c.items() if v)
                  + f"  of {search.options.trials}")
    _run_with_progress(search, _build(dispatch), budget)


@search_app.command("list")
def list_searches(db: str = typer.Option(None, "--db", help=DB_HELP)) -> None:
    """Searches in the database."""
    from ..search import open_store

    store = open_store(db)
    table = Table()
    for col in ("name", "space", "controller", "status", "trials", "completed", "failed", "pruned", "running",
                "created"):
        table.add_column(col)
    for s in store.list_searches():
        c = store.counts(s.id)
        total = s.config.get("options", {}).get("trials", "?") if s.config else "?"
        table.add_row(s.name, s.space_name or "", s.controller or "", s.status, str(total), str(c.get("completed", 0)),
                      str(c.get("failed", 0) + c.get("diverged", 0)), str(c.get("pruned", 0)),
                      str(c.get("running", 0)), s.created_at.strftime("%Y-%m-%d %H:%M"))
    console.print(table)


def _pace(trials, total: int) -> tuple[float | None, float | None]:
    """(trials per hour, seconds to go) from the finish times of the latest trials."""
    ends = sorted(t.finished_at for t in trials if t.finished_at is not None and t.status != "pending")
    ends = ends[-20:]
    if len(ends) < 2:
        return None, None
    span = (ends[-1] - ends[0]).total_seconds()
    if span <= 0:
        return None, None
    rate = (len(ends) - 1) / span * 3600.0
    done = sum(1 for t in trials if t.status in ("completed", "failed", "diverged", "pruned"))
    return rate, max(0, total - done) / rate * 3600.0


@search_app.command("status")
def status(
    name: str = typer.Argument(None, help="A search (default: the newest)."),
    db: str = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    """Progress of a search (works while it runs, from another terminal)."""
    from ..search import open_store

    store = open_store(db)
    searches = store.list_searches()
    if not searches:
        raise UserError(f"no searches in {store.url}")
    rec = store.get_search(name) if name else max(searches, key=lambda s: s.created_at)
    if rec is None:
        raise UserError(f"no search named '{name}' in {store.url}")
    c = store.counts(rec.id)
    opts = (rec.config or {}).get("options", {})
    total = opts.get("trials")
    best = store.top(rec.id, k=1)
    console.print(f"search [bold]{rec.name}[/bold] ({rec.status}); space {rec.space_name}; controller {rec.controller}"
                  + (f"; scheduler {opts['scheduler']}" if opts.get("scheduler", "none") != "none" else ""))
    done = sum(c[s] for s in ("completed", "failed", "diverged", "pruned"))
    if rec.controller == "darts":  # its supernet job is recorded as a trial the controller did not ask
        from ..supernet_phase import is_supernet_trial

        done -= sum(1 for t in store.trials(rec.id) if is_supernet_trial(t) and t.status != "pending"
                    and t.status != "running")
    console.print(f"  done {done}" + (f" of {total}" if total else "") + "  "
                  + "  ".join(f"{k} {v}" for k, v in c.items() if v))
    trials = store.trials(rec.id)
    if rec.status == "running" and total:
        rate, eta = _pace(trials, int(total))
        if rate is not None:
            console.print(f"  {_fmt_rate(rate)} trials/h over the last {min(20, done)} finished; eta {_fmt_s(eta)}")
    if best:
        console.print(f"  best objective {best[0].objective:.4g} (trial {best[0].trial_index}, "
                      f"arch {best[0].architecture_hash[:12] if best[0].architecture_hash else '?'})")
    running = [t for t in trials if t.status == "running"]
    if running:
        now = _dt.datetime.now(_dt.timezone.utc)
        table = Table(title="running")
        for col in ("trial", "host", "gpu", "attempt", "for", "last step"):
            table.add_column(col)
        for t in running:
            curve = store.curve(t.id)
            last = f"{curve[-1][0]}" if curve else "-"
            since = (now - t.started_at).total_seconds() if t.started_at else None
            table.add_row(str(t.trial_index), t.host or "-", t.gpu or "-", str(t.attempt), _fmt_s(since), last)
        console.print(table)
    failed = [t for t in trials if t.status == "failed" and t.error][-3:]
    for t in failed:
        lines = [ln for ln in t.error.strip().splitlines() if ln.strip()]
        console.print(f"  failed trial {t.trial_index}: {lines[0] if lines else ''}"[:200], markup=False)
    if rec.status in ("stopped", "running") and (c.get("pending") or rec.status == "stopped"):
        console.print(f"  continue with: nas search resume {rec.name}" + (f" --db {store.url}" if db else ""))
