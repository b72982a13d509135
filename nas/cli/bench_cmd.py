"""`nas bench controllers`: every controller over one space and one lookup evaluator, for
several seeds; best-so-far versus evaluations (median and interquartile band) to a PNG,
and a table (median and IQR of the best found after 50 / 100 / ... evaluations).

The evaluator is a lookup table file (`--table`) or, for spaces too large to tabulate,
a synthetic objective computed on demand (a hidden target cell drawn with
`--target-seed` and a smooth, noisy WL-kernel similarity to it; see
`nas.workers.lookup`). Both go through `LookupDispatcher`.

Drivers: `search` (default) runs the real search loop, `nas.search.Search`, with an
in-memory SQLite database, so controllers are asked, told and checkpointed exactly as in
`nas search run`; `direct` is a bare ask/tell loop over the same lookup (no database,
several times faster) with the same asynchrony: `--workers` trials in flight, finishing
in a seeded random order.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from ..errors import UserError

console = Console(highlight=False)

DEFAULT_CONTROLLERS = ("random", "evolution", "rl", "tpe", "cmaes", "nsga2")


@dataclass
class BenchConfig:
    space: str
    controllers: tuple[str, ...] = DEFAULT_CONTROLLERS
    seeds: int = 10
    evaluations: int = 300
    workers: int = 4  # trials in flight (asynchronous asks)
    order: str = "random"  # finishing order of the trials in flight
    driver: str = "search"  # search | direct
    table: str | None = None  # a lookup table file; None: the synthetic objective
    target_seed: int = 0
    noise: float = 0.01
    metric: str | None = None
    mode: str = "min"
    controller_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    checkpoints: tuple[int, ...] = (50, 100, 300)


def make_dispatcher(cfg: BenchConfig, space, seed: int):
    from ..workers.lookup import LookupDispatcher, LookupTable, SyntheticObjective, SyntheticTable

    if cfg.table:
        source = LookupTable.from_file(cfg.table)
    else:
        objective = SyntheticObjective.for_space(space, seed=cfg.target_seed, noise=cfg.noise)
        source = SyntheticTable(objective, name=f"synthetic(target_seed={cfg.target_seed})")
    return LookupDispatcher(source, metric=cfg.metric, mode=cfg.mode, capacity=cfg.workers, order=cfg.order,
                            seed=seed)


def _best_curve(values: list[float | None], n: int, mode: str) -> list[float]:
    """Best-so-far after each evaluation (NaN until the first usable value)."""
    out, best = [], math.nan
    for v in values[:n]:
        if v is not None and math.isfinite(v):
            if math.isnan(best) or (v < best if mode == "min" else v > best):
                best = v
        out.append(best)
    out.extend([best] * (n - len(out)))
    return out


def run_one(job: tuple[BenchConfig, str, int]) -> dict[str, Any]:
    """One controller, one seed: the objective of each evaluation in finishing order."""
    cfg, controller, seed = job
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one process per core; the policy and lookups are tiny
    try:
        return _run_one(cfg, controller, seed)
    finally:
        torch.set_num_threads(threads)


def _run_one(cfg: BenchConfig, controller: str, seed: int) -> dict[str, Any]:
    from ..space import load_space

    space = load_space(cfg.space)
    dispatcher = make_dispatcher(cfg, space, seed)
    opts = dict(cfg.controller_options.get(controller, {}))
    t0 = time.perf_counter()
    values: list[float | None] = []
    if cfg.driver == "search":
        from ..search import Search, SearchOptions
        from ..storage import Store

        store = Store.open("sqlite://")
        options = SearchOptions(trials=cfg.evaluations, controller=controller, seed=seed, controller_options=opts)
        options.task = _task_or_stand_in(space)
        search = Search.create(store, cfg.space, options, name=f"bench-{controller}-{seed}")
        search.run(dispatcher=dispatcher, on_trial=lambda tid, r: values.append(
            r.objective if r.status == "completed" else None))
    elif cfg.driver == "direct":
        values = _direct(cfg, space, controller, seed, opts, dispatcher)
    else:
        raise UserError(f"unknown driver {cfg.driver!r}; use search or direct")
    return {"controller": controller, "seed": seed, "values": values, "seconds": time.perf_counter() - t0}


def _task_or_stand_in(space):
    """None (the space's own task) when it can be made; else a stand-in: the lookup trains
    nothing, so a space whose task data is absent still benchmarks."""
    from ..config import TaskSpec
    from ..tasks import make_task

    task = space.hyperparameters(space.normalize({})).task
    try:
        if task is not None:
            make_task(task)
            return None
    except UserError:
        pass
    return TaskSpec(name="parity", kwargs={"length": 8})


def _direct(cfg: BenchConfig, space, controller: str, seed: int, opts: dict, dispatcher) -> list[float | None]:
    from ..controllers import Outcome, make_controller
    from ..workers import TrialSpec

    ctl = make_controller(controller, space, seed=seed, **opts)
    running: dict[int, dict] = {}
    values: list[float | None] = []
    asked = 0
    while len(values) < cfg.evaluations:
        want = min(cfg.workers - dispatcher.in_flight, cfg.evaluations - asked)
        if want > 0:
            for a in ctl.ask(want):
                a = space.normalize(a)
                hp = space.hyperparameters(a)
                asked += 1
                running[asked] = a
                dispatcher.submit(TrialSpec(trial_id=asked, ir=space.instantiate(a).to_json(),
                                            model=hp.model.model_dump(), train=hp.train.model_dump(),
                                            task={}, seed=seed, extra={"assignment": a}))
            continue

        def handle(ev):
            if ev.kind == "finished":
                r = ev.result
                values.append(r.objective if r.status == "completed" else None)
                ctl.tell(running.pop(ev.trial_id), Outcome(r.status, r.objective, r.mode, dict(r.metrics)))

        dispatcher.poll(handle)
    return values


def run_benchmark(cfg: BenchConfig, jobs: int = 2, progress=None) -> dict[str, Any]:
    names = list(cfg.controllers)
    work = [(cfg, c, s) for s in range(cfg.seeds) for c in names]
    runs: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    if jobs <= 1:
        for w in work:
            runs.append(run_one(w))
            if progress:
                progress(runs[-1])
    else:
        import multiprocessing

        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            for r in pool.map(run_one, work):
                runs.append(r)
                if progress:
                    progress(r)
    return {"config": {**asdict(cfg), "controllers": names}, "runs": runs, "seconds": time.perf_counter() - t0}


def _quartiles(xs: list[float]) -> tuple[float, float, float]:
    xs = sorted(x for x in xs if not math.isnan(x))
    if not xs:
        return (math.nan,) * 3
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], statistics.median(xs), q[2]


def curves(result: dict[str, Any]) -> dict[str, list[list[float]]]:
    cfg = result["config"]
    out: dict[str, list[list[float]]] = {c: [] for c in cfg["controllers"]}
    for r in result["runs"]:
        out[r["controller"]].append(_best_curve(r["values"], cfg["evaluations"], cfg["mode"]))
    return out


def summary_rows(result: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    cfg = result["config"]
    cv = curves(result)
    points = [p for p in cfg["checkpoints"] if p <= cfg["evaluations"]] or [cfg["evaluations"]]
    secs: dict[str, list[float]] = {}
    for r in result["runs"]:
        secs.setdefault(r["controller"], []).append(r["seconds"])
    ref = None
    if "random" in cv:
        ref = _quartiles([c[points[-1] - 1] for c in cv["random"]])[1]
    headers = ["controller"] + [f"best@{p} median [IQR]" for p in points]
    if ref is not None:
        headers.append(f"seeds better than random's median@{points[-1]}")
    headers.append("s / run")
    rows = []
    better = (lambda a, b: a < b) if cfg["mode"] == "min" else (lambda a, b: a > b)
    for c, cs in cv.items():
        row: list[Any] = [c]
        for p in points:
            q1, med, q3 = _quartiles([x[p - 1] for x in cs])
            row.append(f"{med:.4f} [{q1:.4f}, {q3:.4f}]")
        if ref is not None:
            row.append(f"{sum(1 for x in cs if better(x[points[-1] - 1], ref))}/{len(cs)}")
        row.append(f"{statistics.mean(secs[c]):.1f}")
        rows.append(row)
    return headers, rows


def markdown(result: dict[str, Any], title: str | None = None) -> str:
    cfg = result["config"]
    headers, rows = summary_rows(result)
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(str(v) for v in r) + " |" for r in rows]
    evaluator = f"table {cfg['table']}" if cfg["table"] else (
        f"synthetic objective (hidden target drawn with seed {cfg['target_seed']}, "
        f"val_loss = 1 - WL similarity + N(0, {cfg['noise']}))")
    head = [f"### {title}" if title else f"### Controllers on {Path(cfg['space']).name}", "",
            f"Space `{cfg['space']}`; evaluator: {evaluator}; {cfg['evaluations']} evaluations x {cfg['seeds']} seeds; "
            f"{cfg['workers']} trials in flight (finishing in {cfg['order']} order); driver `{cfg['driver']}`; "
            f"metric {cfg['metric'] or 'val_loss'} ({cfg['mode']}); total {result['seconds']:.0f} s.", ""]
    return "\n".join(head + lines) + "\n"


def plot(result: dict[str, Any], path: str | Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        console.print("[yellow]matplotlib is not installed: no plot (pip install matplotlib)[/yellow]")
        return None
    cfg = result["config"]
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    xs = list(range(1, cfg["evaluations"] + 1))
    for c, cs in curves(result).items():
        q = [_quartiles([cv[i] for cv in cs]) for i in range(cfg["evaluations"])]
        ax.plot(xs, [m for _, m, _ in q], label=c, lw=1.6)
        ax.fill_between(xs, [a for a, _, _ in q], [b for _, _, b in q], alpha=0.18)
    ax.set_xlabel("evaluations")
    ax.set_ylabel(f"best {cfg['metric'] or 'val_loss'} so far ({cfg['mode']})")
    ax.set_title(f"{Path(cfg['space']).stem}: median and IQR over {cfg['seeds']} seeds")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_outputs(result: dict[str, Any], out: str | Path, stem: str = "controllers") -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md = out / f"{stem}.md"
    md.write_text(markdown(result))
    js = out / f"{stem}.json"
    js.write_text(json.dumps(result, default=str))
    files = {"table": md, "raw": js}
    png = plot(result, out / f"{stem}.png")
    if png:
        files["plot"] = png
    return files


def parse_controller_opts(items: list[str]) -> dict[str, dict[str, Any]]:
    """`name.key=value` items (the controller name first)."""
    from .common import parse_key_values

    out: dict[str, dict[str, Any]] = {}
    for k, v in parse_key_values(items, "--controller-opt").items():
        name, dot, key = k.partition(".")
        if not dot or not key:
            raise UserError(f"--controller-opt {k}={v}: expected controller.key=value", "e.g. evolution.population=20")
        out.setdefault(name, {})[key] = v
    return out


def _register() -> None:
    from .main import app

    bench_app = typer.Typer(help="Benchmarks: compare search controllers on a lookup evaluator.", no_args_is_help=True)
    app.add_typer(bench_app, name="bench")

    @bench_app.command("controllers", context_settings={"help_option_names": ["-h", "--help"]})
    def controllers_cmd(
        space_file: Path = typer.Argument(..., help="The search-space file."),
        table: Path = typer.Option(None, "--table", help="Lookup table (CSV/JSON/Parquet); default: the synthetic "
                                   "objective."),
        controllers: str = typer.Option(",".join(DEFAULT_CONTROLLERS), "--controllers", help="Comma-separated names."),
        seeds: int = typer.Option(10, "--seeds", min=1, help="Seeds per controller."),
        evaluations: int = typer.Option(300, "--evaluations", "-n", min=1, help="Evaluations per run."),
        workers: int = typer.Option(4, "--workers", min=1, help="Trials in flight (asynchronous asks)."),
        driver: str = typer.Option("search", "--driver", help="search (the real search loop, in-memory DB) | direct."),
        target_seed: int = typer.Option(0, "--target-seed", help="Seed of the synthetic objective's hidden target."),
        noise: float = typer.Option(0.01, "--noise", min=0.0, help="Noise of the synthetic objective."),
        metric: str = typer.Option(None, "--metric", help="Metric column to optimise (default val_loss)."),
        mode: str = typer.Option("min", "--mode", help="min | max."),
        controller_opt: list[str] = typer.Option([], "--controller-opt", help="controller.key=value (repeat)."),
        jobs: int = typer.Option(2, "--jobs", "-j", min=1, help="Processes."),
        out: Path = typer.Option(Path("out"), "--out", help="Folder for controllers.md / .png / .json."),
    ) -> None:
        """Run every controller over a space and evaluator for several seeds; plot and tabulate."""
        from ..controllers import CONTROLLERS
        from ..space import load_space

        names = tuple(n.strip() for n in controllers.split(",") if n.strip())
        for n in names:
            if n not in CONTROLLERS:
                raise UserError(f"unknown controller '{n}'", f"controllers: {', '.join(CONTROLLERS)}")
            if getattr(CONTROLLERS[n], "needs_supernet", False):
                raise UserError(f"controller '{n}' trains a supernet, which a lookup table cannot stand in for",
                                f"run it with `nas search run SPACE -c {n}`")
        if driver not in ("search", "direct"):
            raise UserError(f"--driver {driver!r}: use search or direct")
        if mode not in ("min", "max"):
            raise UserError(f"--mode {mode!r}: use min or max")
        load_space(space_file)  # a SpaceError (exit 2) before any work
        cfg = BenchConfig(space=str(space_file), controllers=names, seeds=seeds, evaluations=evaluations,
                          workers=workers, driver=driver, table=str(table) if table else None,
                          target_seed=target_seed, noise=noise, metric=metric, mode=mode,
                          controller_options=parse_controller_opts(controller_opt),
                          checkpoints=tuple(sorted({p for p in (50, 100, evaluations) if p <= evaluations})))
        if table:
            make_dispatcher(cfg, None, 0)  # a bad table is exit 2 before any work
        done = [0]

        def progress(r: dict[str, Any]) -> None:
            done[0] += 1
            console.print(f"[{done[0]}/{len(names) * seeds}] {r['controller']} seed {r['seed']}: "
                          f"{r['seconds']:.1f} s")

        result = run_benchmark(cfg, jobs=jobs, progress=progress)
        files = write_outputs(result, out)
        console.print(markdown(result))
        console.print("wrote " + ", ".join(str(p) for p in files.values()))


_register()
