"""`nas results top`: query the results database."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from ..errors import UserError
from .common import DB_HELP
from .main import app

results_app = typer.Typer(help="Query the results database.", no_args_is_help=True)
app.add_typer(results_app, name="results")
console = Console(highlight=False, width=None if Console().is_terminal else 150)


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


@results_app.command("top")
def top(
    search: str = typer.Option(None, "--search", "-s", help="Only this search (default: all)."),
    k: int = typer.Option(10, "--k", "-k", min=1, help="How many."),
    metric: str = typer.Option("objective", "--metric", "-m", help="objective (the task's primary metric) or a metric name."),
    mode: str = typer.Option(None, "--mode", help="min or max (default: min, or max for acc-like metrics)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    db: str = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    """The best trials by a metric."""
    from ..search import open_store

    store = open_store(db)
    if search and store.get_search(search) is None:
        names = [s.name for s in store.list_searches()]
        raise UserError(f"no search named '{search}' in {store.url}",
                        f"searches: {', '.join(names[-10:])}" if names else "the database has no searches")
    if mode is None:
        mode = "max" if "acc" in metric else "min"
    if mode not in ("min", "max"):
        raise UserError(f"--mode must be min or max, got {mode!r}")
    rows = store.top(search, metric=metric, k=k, mode=mode)
    if metric != "objective" and rows and all((r.metrics or {}).get(metric) is None for r in rows):
        known = sorted({m for r in store.trials(search, status="completed") for m in (r.metrics or {})})
        raise UserError(f"unknown metric '{metric}'", f"metrics: objective, {', '.join(known)}")
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in rows], default=str, indent=2))
        return
    table = Table(title=f"top {k} by {metric} ({mode})" + (f" in {search}" if search else ""))
    for col in ("rank", "search", "trial", "arch", metric, "val_loss", "params", "steps", "wall s"):
        table.add_column(col, justify="right" if col not in ("search", "arch") else "left")
    for i, r in enumerate(rows, 1):
        m = r.metrics or {}
        value = r.objective if metric == "objective" else m.get(metric)
        table.add_row(str(i), r.search_name, str(r.trial_index), (r.architecture_hash or "")[:12], _fmt(value),
                      _fmt(m.get("val_loss")), _fmt(int(m["params"]) if m.get("params") is not None else None),
                      _fmt(int(m["steps"]) if m.get("steps") is not None else None), _fmt(r.wall_time_s))
    console.print(table)
