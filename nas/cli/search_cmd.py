"""`nas search run|resume|status|list`."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ..controllers import CONTROLLERS
from ..errors import UserError
from .common import DB_HELP, parse_key_values
from .main import app

search_app = typer.Typer(help="Launch, resume and watch searches.", no_args_is_help=True)
app.add_typer(search_app, name="search")
console = Console(highlight=False, width=None if Console().is_terminal else 150)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def _run_with_progress(search, dispatcher=None) -> None:
    from ..search import SearchInterrupted

    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(search.record.name, total=search.options.trials, stats="")

        def update(p) -> None:
            bad = p.failed + p.diverged
            stats = (f"ok {p.completed}  failed {p.failed}  diverged {p.diverged}  pruned {p.pruned}  "
                     f"running {p.running}  best {_fmt(p.best)}")
            del bad
            bar.update(task, completed=p.done, stats=stats)

        try:
            progress = search.run(dispatcher=dispatcher, on_update=update)
        except SearchInterrupted as exc:
            bar.stop()
            console.print(f"[yellow]{exc}[/yellow]")
            console.print(f"resume with: nas search resume {exc.name}" + (f" --db {search.store.url}" if search.store.url else ""))
            raise typer.Exit(130)
    elapsed = time.time() - progress.started
    console.print(f"search [bold]{search.record.name}[/bold]: {progress.completed} completed, {progress.failed} failed, "
                  f"{progress.diverged} diverged, {progress.pruned} pruned in {elapsed:.1f} s; "
                  f"best {_fmt(progress.best)} (trial {progress.best_trial})")


@search_app.command("run", context_settings={"help_option_names": ["-h", "--help"]})
def run(
    space_file: Path = typer.Argument(..., help="The search-space file."),
    controller: str = typer.Option("random", "--controller", "-c", help=f"Search controller: {', '.join(CONTROLLERS)}."),
    trials: int = typer.Option(20, "--trials", "-n", min=1, help="Trials to evaluate."),
    seed: int = typer.Option(0, "--seed", help="Seed of the controller and of every trial."),
    name: str = typer.Option(None, "--name", help="Search name (default: <space>-<controller>-<time>)."),
    task: str = typer.Option(None, "--task", help='Override the space\'s task, e.g. \'parity(length=20)\'.'),
    steps: int = typer.Option(None, "--steps", min=1, help="Override train.steps of every trial."),
    device: str = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N (default: the space's)."),
    controller_opt: list[str] = typer.Option([], "--controller-opt", help="Controller setting key=value (repeat)."),
    reuse_results: bool = typer.Option(False, "--reuse-results", help="Reuse results of identical earlier trials."),
    db: str = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    """Run a search and record every trial in the results database."""
    from ..elaborate import parse_task
    from ..search import Search, SearchOptions, open_store

    overrides: dict[str, object] = {}
    if steps is not None:
        overrides["steps"] = steps
    if device is not None:
        overrides["device"] = device
    options = SearchOptions(trials=trials, controller=controller, seed=seed,
                            controller_options=parse_key_values(controller_opt, "--controller-opt"),
                            task=parse_task(task) if task else None, train_overrides=overrides,
                            reuse_results=reuse_results)
    store = open_store(db)
    search = Search.create(store, space_file, options, name=name)
    console.print(f"search [bold]{search.record.name}[/bold] on {search.space.name} "
                  f"({len(search.space.decisions)} decisions), controller {controller}, db {store.url}")
    _run_with_progress(search)


@search_app.command("resume")
def resume(
    name: str = typer.Argument(..., help="Name of the search to continue."),
    db: str = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    """Continue a stopped or crashed search; completed trials are never rerun."""
    from ..search import Search, open_store

    store = open_store(db)
    search = Search.open(store, name)
    _run_with_progress(search)


@search_app.command("list")
def list_searches(db: str = typer.Option(None, "--db", help=DB_HELP)) -> None:
    """Searches in the database."""
    from ..search import open_store

    store = open_store(db)
    table = Table()
    for col in ("name", "space", "controller", "status", "trials", "completed", "failed", "created"):
        table.add_column(col)
    for s in store.list_searches():
        c = store.counts(s.id)
        total = s.config.get("options", {}).get("trials", "?") if s.config else "?"
        table.add_row(s.name, s.space_name or "", s.controller or "", s.status, str(total), str(c.get("completed", 0)),
                      str(c.get("failed", 0) + c.get("diverged", 0)), s.created_at.strftime("%Y-%m-%d %H:%M"))
    console.print(table)


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
    total = rec.config.get("options", {}).get("trials") if rec.config else None
    best = store.top(rec.id, k=1)
    console.print(f"search [bold]{rec.name}[/bold] ({rec.status}); space {rec.space_name}; controller {rec.controller}")
    console.print("  " + "  ".join(f"{k} {v}" for k, v in c.items() if v) + (f"  of {total}" if total else ""))
    if best:
        console.print(f"  best objective {best[0].objective:.4g} (trial {best[0].trial_index}, "
                      f"arch {best[0].architecture_hash[:12] if best[0].architecture_hash else '?'})")
