"""`nas results list|top|show|pareto|compare|export|plot`: query the results database.

Read-only: these commands open the database with ``nas.results.open`` (never
creating or migrating it; an older schema is refused with the `nas db upgrade`
command to run). Every table has `--json`; every mistake is a UserError (exit 2).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..errors import UserError
from .common import DB_HELP
from .main import app

results_app = typer.Typer(help="Query the results database (read-only).", no_args_is_help=True)
app.add_typer(results_app, name="results")
console = Console(highlight=False, width=None if Console().is_terminal else 150)

_DEFAULT_METRICS = ("val_loss", "val_acc", "params")
_TABLE_LIMIT = 100

SEARCH_HELP = "Only this search (repeat for several; default: all)."
STATUS_HELP = "Only trials with this status (repeat, or comma-separated): pending, running, completed, failed, diverged, pruned."
SPACE_HELP = "Only searches over this space (its name)."
WHERE_HELP = "Filter NAME OP VALUE, e.g. 'val_loss<1.5' or 'params<=2e4' (repeat: all must hold). OP: < <= > >= = !=."
JSON_HELP = "Machine-readable output (JSON on stdout)."


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        if v.is_integer() and abs(v) >= 1000:
            return f"{int(v)}"
        return f"{v:.4g}"
    return str(v)


def _dur(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def _open(db: str | None):
    from .. import results

    return results.open(db)


def _echo_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, default=str, indent=2))


def _mode(mode: str | None, metric: str, flag: str = "--mode") -> str:
    from ..results import default_mode

    mode = mode or default_mode(metric)
    if mode not in ("min", "max"):
        raise UserError(f"{flag} must be min or max, got {mode!r}")
    return mode


def _table(title: str | None, columns: Sequence[str], rows: list[list[str]], left: Sequence[str] = ()) -> Table:
    table = Table(title=title)
    for c in columns:
        table.add_column(c, justify="left" if c in left else "right", overflow="fold")
    for r in rows:
        table.add_row(*[escape(x) for x in r])
    return table


def _note(t) -> str:
    if t.reused_from_trial_id is not None:
        return f"reused trial:{t.reused_from_trial_id}"
    if t.error:
        line = t.error.strip().splitlines()[-1] if t.error.strip() else ""
        return line[:60] + ("..." if len(line) > 60 else "")
    return ""


def _metric_columns(items, asked: Sequence[str]) -> list[str]:
    cols = [c for c in asked if c and c != "objective"]
    for c in _DEFAULT_METRICS:
        if c not in cols and any(it.row.get(c) is not None for it in items):
            cols.append(c)
    return list(dict.fromkeys(cols))


def _trial_table(title: str | None, items, metric_cols: Sequence[str], rank: bool = False) -> Table:
    cols = (["rank"] if rank else []) + ["id", "search", "trial", "status", "arch", "objective", *metric_cols,
                                         "wall s", "note"]
    rows = []
    for i, it in enumerate(items, 1):
        t = it.record
        rows.append(([str(i)] if rank else []) + [
            str(t.id), t.search_name, str(t.trial_index), t.status, (t.architecture_hash or "")[:12],
            _fmt(t.objective), *[_fmt(it.row.get(c)) for c in metric_cols], _fmt(t.wall_time_s), _note(t)])
    return _table(title, cols, rows, left=("search", "status", "arch", "note"))


def _split(values: list[str] | None) -> list[str]:
    return [x.strip() for v in (values or []) for x in v.split(",") if x.strip()]


# ---------------------------------------------------------------------------------- list


@results_app.command("list")
def list_trials(
    search: list[str] = typer.Option(None, "--search", "-s", help=SEARCH_HELP),
    status: list[str] = typer.Option(None, "--status", help=STATUS_HELP),
    space: str = typer.Option(None, "--space", help=SPACE_HELP),
    where: list[str] = typer.Option(None, "--where", "-w", help=WHERE_HELP),
    sort: str = typer.Option(None, "--sort", help="Sort by this column or metric (missing values last; default: search, trial)."),
    desc: bool = typer.Option(False, "--desc", help="Sort descending."),
    limit: int = typer.Option(None, "--limit", "-n", min=0, help=f"At most N rows (0: all; default: all with --json, {_TABLE_LIMIT} in the table)."),
    columns: str = typer.Option(None, "--columns", "-c", help="Metric columns to show, comma-separated (default: val_loss, val_acc, params and the --where/--sort ones)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    db: str = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    """Trials, with filters."""
    with _open(db) as r:
        wanted = _split([columns]) if columns else []
        from ..results import parse_where

        conds = parse_where(where or [])
        items = r.select(search or None, status or None, space, where or None, sort=sort, descending=desc)
        if wanted:
            r._check_names(wanted, items, None, None)
        total = len(items)
        eff = limit if limit is not None else (None if as_json else _TABLE_LIMIT)
        if eff:
            items = items[:eff]
        if as_json:
            _echo_json([it.record.to_dict() for it in items])
            return
        cols = wanted or _metric_columns(items, [c[0] for c in conds] + ([sort] if sort else []))
        console.print(_trial_table(f"{total} trial{'s' if total != 1 else ''}" + (f" in {', '.join(search)}" if search else ""),
                                   items, cols))
        if len(items) < total:
            console.print(f"showing {len(items)} of {total}; --limit 0 shows all")


# ----------------------------------------------------------------------------------- top


@results_app.command("top")
def top(
    search: list[str] = typer.Option(None, "--search", "-s", help="Only this search (repeat for several; default: all)."),
    k: int = typer.Option(10, "--k", "-k", min=1, help="How many."),
    metric: str = typer.Option("objective", "--metric", "-m", help="objective (the task's primary metric) or a metric name."),
    mode: str = typer.Option(None, "--mode", help="min or max (default: min, or max for acc-like metrics)."),
    status: list[str] = typer.Option(["completed"], "--status", help="Trial status(es) to rank (default: completed)."),
    space: str = typer.Option(None, "--space", help=SPACE_HELP),
    where: list[str] = typer.Option(None, "--where", "-w", help=WHERE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    db: str = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    """The best trials by a metric."""
    mode = _mode(mode, metric)
    with _open(db) as r:
        items = r.best(metric, k, mode=mode, search=search or None, status=status or None, space=space,
                       where=where or None)
        if as_json:
            _echo_json([it.record.to_dict() for it in items])
            return
        extra = [metric] if metric != "objective" else []
        cols = list(dict.fromkeys(extra + [c for c in ("val_loss", "params", "steps")
                                           if any(it.row.get(c) is not None for it in items)]))
        title = f"top {k} by {metric} ({mode})" + (f" in {', '.join(search)}" if search else "")
        console.print(_trial_table(title, items, cols, rank=True))


# ---------------------------------------------------------------------------------- show


@results_app.command("show")
def show(
    ref: str = typer.Argument(..., metavar="ARCH_OR_TRIAL",
                              help="An architecture hash prefix (4+ hex digits), trial:ID or SEARCH#INDEX."),
    out: Path = typer.Option(None, "--out", "-o", help="Draw the cell to this file (.png, .svg or .pdf)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    db: str = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    """An architecture: its cell as DSL text, its trials' metrics, and a drawing (--out)."""
    from ..results import PLOT_FORMATS, _check_out

    if out is not None:
        _check_out(out, PLOT_FORMATS, "a drawing")
    with _open(db) as r:
        info = r.architecture(ref)
        arch, trial, trials = info["architecture"], info["trial"], info["trials"]
        drawing = r.draw(ref, out) if out is not None else None
        if as_json:
            _echo_json({
                "architecture": arch.to_dict(), "dsl": info["dsl"],
                "trial": trial.to_dict() if trial else None,
                "trials": [t.to_dict() for t in trials],
                "drawing": None if drawing is None else
                {"path": str(drawing.path), "nodes": drawing.nodes, "edges": drawing.edges},
            })
            return
        reused = sum(1 for t in trials if t.reused_from_trial_id is not None)
        console.print(f"[bold]architecture {escape(arch.canonical_hash)}[/bold]")
        console.print(f"space {escape(arch.space_name or '-')}; first seen {arch.created_at:%Y-%m-%d %H:%M:%S} UTC; "
                      f"{len(trials)} trial{'s' if len(trials) != 1 else ''}"
                      + (f" ({reused} reused results)" if reused else ""))
        console.print()
        console.print(info["dsl"] or "(no DSL text stored)", markup=False)
        if trial is not None:
            console.print(f"[bold]trial {trial.search_name}#{trial.trial_index}[/bold] (trial:{trial.id}): "
                          f"{trial.status}, objective {_fmt(trial.objective)}"
                          + (f", host {escape(trial.host)}" if trial.host else "")
                          + (f", gpu {escape(trial.gpu)}" if trial.gpu else "")
                          + (f", attempt {trial.attempt}" if trial.attempt else ""))
            if trial.assignment:
                console.print("  choices: " + ", ".join(f"{k}={v}" for k, v in trial.assignment.items()), markup=False)
            if trial.metrics:
                console.print("  metrics: " + ", ".join(f"{k} {_fmt(v)}" for k, v in trial.metrics.items()),
                              markup=False)
            if trial.error:
                console.print("  error: " + trial.error.strip().splitlines()[-1], markup=False)
        if trials:
            items = r.rows(trials)
            console.print(_trial_table("its trials", items, _metric_columns(items, [])))
        if drawing is not None:
            console.print(f"wrote {drawing.path} ({drawing.nodes} nodes, {drawing.edges} edges)")
        elif arch.ir_json:
            console.print("draw it with --out cell.png (or .svg)", style="dim")


# -------------------------------------------------------------------------------- pareto


@results_app.command("pareto")
def pareto(
    x: str = typer.Option("params", "--x", help="First metric (default: params)."),
    y: str = typer.Option("objective", "--y", help="Second metric (default: objective)."),
    x_mode: str = typer.Option(None, "--x-mode", help="min or max (default: by name, min unless acc-like)."),
    y_mode: str = typer.Option(None, "--y-mode", help="min or max (default: by name)."),
    search: list[str] = typer.Option(None, "--search", "-s", help=SEARCH_HELP),
    status: list[str] = typer.Option(["completed"], "--status", help="Trial status(es) (default: completed)."),
    space: str = typer.Option(None, "--space", help=SPACE_HELP),
    where: list[str] = typer.Option(None, "--where", "-w", help=WHERE_HELP),
    plot: Path = typer.Option(None, "--plot", help="Also plot all trials and the front to this file (.png/.svg/.pdf)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    db: str = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    """The Pareto front over two metrics (e.g. val_loss vs params): trials no other trial beats in both."""
    from ..results import PLOT_FORMATS, _check_out

    modes = (_mode(x_mode, x, "--x-mode"), _mode(y_mode, y, "--y-mode"))
    if plot is not None:
        _check_out(plot, PLOT_FORMATS, "a plot")
    with _open(db) as r:
        kw = dict(search=search or None, status=status or None, space=space, where=where or None)
        front = r.front(x, y, modes, **kw)
        written = r.plot_pareto(plot, x, y, modes, **kw) if plot is not None else None
        if as_json:
            _echo_json([it.record.to_dict() for it in front])
            return
        cols = ["rank", "id", "search", "trial", "arch", f"{x} ({modes[0]})", f"{y} ({modes[1]})", "objective"]
        rows = [[str(i), str(it.record.id), it.record.search_name, str(it.record.trial_index),
                 (it.record.architecture_hash or "")[:12], _fmt(it.row.get(x)), _fmt(it.row.get(y)),
                 _fmt(it.record.objective)] for i, it in enumerate(front, 1)]
        console.print(_table(f"Pareto front: {x} vs {y} ({len(front)} trial{'s' if len(front) != 1 else ''})",
                             cols, rows, left=("search", "arch")))
        if written:
            console.print(f"wrote {written}")


# ------------------------------------------------------------------------------- compare


@results_app.command("compare")
def compare(
    searches: list[str] = typer.Argument(None, metavar="[SEARCH]...", help="Searches to compare (default: all)."),
    metric: str = typer.Option("objective", "--metric", "-m", help="objective or a metric name."),
    mode: str = typer.Option(None, "--mode", help="min or max (default: by name)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    db: str = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    """Searches (and so controllers) side by side: trials, best, median, time to best."""
    mode = _mode(mode, metric)
    with _open(db) as r:
        rows = r.compare(searches or None, metric, mode, as_records=True)
        if as_json:
            _echo_json(rows)
            return
        cols = ["search", "controller", "space", "trials", "done", "failed", "reused", "archs",
                "best", "median", "best #", "to best", "t to best", "total t"]
        out = [[c["search"], c["controller"] or "-", c["space"] or "-", str(c["trials"]), str(c["completed"]),
                str(c["failed"] + c["diverged"]), str(c["reused"]), str(c["architectures"]), _fmt(c["best"]),
                _fmt(c["median"]), _fmt(c["best_trial"]), _fmt(c["trials_to_best"]), _dur(c["time_to_best_s"]),
                _dur(c["total_time_s"])] for c in rows]
        console.print(_table(f"searches by {metric} ({mode}): done = completed, failed includes diverged, "
                             "to best = trials until the best", cols, out, left=("search", "controller", "space")))


# -------------------------------------------------------------------------------- export


@results_app.command("export")
def export(
    out: str = typer.Option(..., "--out", "-o", help="Output file (.csv, .json or .parquet; '-' for stdout with csv/json)."),
    fmt: str = typer.Option(None, "--format", "-f", help="csv, json or parquet (default: from the file's suffix)."),
    table: str = typer.Option("trials", "--table", help="trials (one row per trial: metrics and hp.* columns), curves (one row per recorded step) or searches."),
    search: list[str] = typer.Option(None, "--search", "-s", help=SEARCH_HELP),
    status: list[str] = typer.Option(None, "--status", help=STATUS_HELP),
    space: str = typer.Option(None, "--space", help=SPACE_HELP),
    where: list[str] = typer.Option(None, "--where", "-w", help=WHERE_HELP),
    sort: str = typer.Option(None, "--sort", help="Sort trials by this column or metric."),
    desc: bool = typer.Option(False, "--desc", help="Sort descending."),
    limit: int = typer.Option(None, "--limit", "-n", min=1, help="At most N trials."),
    db: str = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    """Write trials, learning curves or searches to CSV, JSON or Parquet."""
    import sys
    import tempfile

    from ..results import EXPORT_FORMATS, TABLES, _check_out, write_rows

    if table not in TABLES:
        raise UserError(f"--table must be one of {', '.join(TABLES)}, got {table!r}")
    if fmt is not None and fmt.lower() not in EXPORT_FORMATS:
        raise UserError(f"--format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    to_stdout = out == "-"
    if to_stdout:
        fmt = (fmt or "csv").lower()
        if fmt == "parquet":
            raise UserError("Parquet cannot go to stdout", "give a file with --out FILE.parquet")
    else:
        _check_out(out, EXPORT_FORMATS, "an export", fmt)
    with _open(db) as r:
        kw = dict(table=table, search=search or None, status=status or None, space=space, where=where or None,
                  sort=sort, descending=desc, limit=limit)
        if to_stdout:
            with tempfile.TemporaryDirectory() as d:
                p = r.export(Path(d) / f"export.{fmt}", fmt, **kw)
                sys.stdout.write(p.read_text(encoding="utf-8"))
            return
        rows = r.table(**kw)
        path, f = _check_out(out, EXPORT_FORMATS, "an export", fmt)
        write_rows(rows, path, f)
        console.print(f"wrote {path}: {len(rows)} row{'s' if len(rows) != 1 else ''} ({table}, {f})")


# ---------------------------------------------------------------------------------- plot


@results_app.command("plot")
def plot(
    kind: str = typer.Option("best", "--kind", help="best (best-so-far vs trials and vs time, per search), curves (learning curves of the top k) or pareto."),
    out: Path = typer.Option(..., "--out", "-o", help="Output file (.png, .svg or .pdf)."),
    search: list[str] = typer.Option(None, "--search", "-s", help=SEARCH_HELP),
    metric: str = typer.Option("objective", "--metric", "-m", help="Metric to track (best) or rank by (curves)."),
    mode: str = typer.Option(None, "--mode", help="min or max (default: by name)."),
    k: int = typer.Option(5, "--k", "-k", min=1, help="curves: how many of the best trials."),
    curve_metric: str = typer.Option(None, "--curve-metric", help="curves: per-step metric to draw (default: val_loss)."),
    x: str = typer.Option("params", "--x", help="pareto: first metric."),
    y: str = typer.Option("objective", "--y", help="pareto: second metric."),
    space: str = typer.Option(None, "--space", help=SPACE_HELP),
    where: list[str] = typer.Option(None, "--where", "-w", help=WHERE_HELP),
    db: str = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    """Plot the search progress, learning curves or a Pareto front to a PNG/SVG/PDF file."""
    from ..results import PLOT_FORMATS, _check_out

    kinds = ("best", "curves", "pareto")
    if kind not in kinds:
        raise UserError(f"--kind must be one of {', '.join(kinds)}, got {kind!r}")
    _check_out(out, PLOT_FORMATS, "a plot")
    with _open(db) as r:
        if kind == "best":
            if space or where:
                raise UserError("--space and --where do not apply to --kind best", "select searches with --search")
            path = r.plot_best(out, search or None, metric, _mode(mode, metric))
        elif kind == "curves":
            path = r.plot_curves(out, search or None, k, metric, _mode(mode, metric), curve_metric,
                                 space=space, where=where or None)
        else:
            path = r.plot_pareto(out, x, y, (_mode(None, x), _mode(None, y)), search=search or None, space=space,
                                 where=where or None)
        console.print(f"wrote {path}")
