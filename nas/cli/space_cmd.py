"""`nas space validate|show`: check a space file, list its decisions, print sampled cells."""

from __future__ import annotations

import json
import random
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from ..errors import UserError
from ..space import SearchSpace, load_space
from .main import app, debug_enabled, report_user_error

space_app = typer.Typer(help="Check and inspect search-space files.", no_args_is_help=True)
app.add_typer(space_app, name="space")
console = Console(highlight=False)


def size_text(space: SearchSpace) -> str:
    s = space.size
    return f"{s:,}" if s < 10**15 else f"10^{space.size_log10:.2f}"


@space_app.command("validate")
def validate(files: list[Path] = typer.Argument(..., help="Space files to check.")) -> None:
    """Parse and check space files; exit code 2 if any is invalid."""
    failed = 0
    for f in files:
        try:
            space = load_space(f)
        except UserError as exc:
            if debug_enabled():
                raise
            report_user_error(exc)
            failed += 1
            continue
        for w in space.warnings:
            console.print(w, style="yellow", markup=False)
        console.print(f"ok  {f}  ({len(space.decisions)} decisions, size {size_text(space)})", markup=False)
    if failed:
        raise typer.Exit(2)


@space_app.command("show")
def show(
    file: Path = typer.Argument(..., help="A space file."),
    sample: int = typer.Option(0, "--sample", "-n", min=0, max=10_000, help="Print N sampled cells as DSL."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sampler."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Show a space's decisions and size, and optionally sampled cells as fixed-cell DSL."""
    space = load_space(file)
    rng = random.Random(seed)
    samples = [space.sample(rng) for _ in range(sample)]
    if as_json:
        out = {
            "name": space.name, "file": str(file), "states": list(space.states), "size": str(space.size),
            "size_log10": space.size_log10, "cell_size": str(space.cell_size),
            "decisions": [{"name": d.name, "kind": d.kind, "choices": list(d.choices),
                           "parent": ([space.decisions[d.parent[0]].name, d.parent[1]] if d.parent else None),
                           "line": d.line, "col": d.col} for d in space.decisions],
            "warnings": space.warnings,
            "samples": [],
        }
        for a in samples:
            g = space.instantiate(a)
            out["samples"].append({"assignment": a, "values": space.describe(a), "hash": g.canonical_hash(),
                                   "dsl": space.to_dsl(a), "ir": g.to_json()})
        typer.echo(json.dumps(out, indent=2, default=str))
        return
    console.print(f"[bold]space[/bold] {space.name}  ({file})")
    console.print(f"states: {', '.join(space.states)}")
    console.print(f"size: {size_text(space)} assignments (cell alone: {space.cell_size:,})"
                  if space.cell_size < 10**15 else f"size: {size_text(space)} assignments")
    for w in space.warnings:
        console.print(w, style="yellow", markup=False)
    if space.decisions:
        table = Table(title=f"{len(space.decisions)} decisions", show_lines=False)
        table.add_column("decision")
        table.add_column("kind")
        table.add_column("n", justify="right")
        table.add_column("choices")
        table.add_column("active when")
        for d in space.decisions:
            choices = ", ".join(map(str, d.choices[:6])) + (", ..." if d.size > 6 else "")
            parent = f"{space.decisions[d.parent[0]].name} = {d.parent[1]}" if d.parent else ""
            table.add_row(d.name, d.kind, str(d.size), choices, parent)
        console.print(table)
    else:
        console.print("no decisions: a fixed cell")
    for i, a in enumerate(samples):
        g = space.instantiate(a)
        console.rule(f"sample {i}  hash {g.short_hash}")
        console.print(space.to_dsl(a), markup=False, highlight=False)
