"""`nas db upgrade|current`: the results database's schema (Alembic migrations).

`nas results ...` never migrates a database; `nas db upgrade` does, once, and says
from which revision to which. (`nas search run` creates or upgrades the database
it writes to by itself.)
"""

from __future__ import annotations

import json

import typer
from rich.console import Console

from .common import DB_HELP
from .main import app

db_app = typer.Typer(help="The results database's schema: migrate it, show its revision.", no_args_is_help=True)
app.add_typer(db_app, name="db")
console = Console(highlight=False, width=None if Console().is_terminal else 150)

_STATE_TEXT = {
    "missing": "no database file",
    "empty": "no cellsearch schema yet",
    "old": "older than this cellsearch: run `nas db upgrade`",
    "current": "up to date",
}


def _status_dict(st) -> dict:
    return {"url": st.url, "state": st.state, "revision": st.revision, "head": st.head,
            "up_to_date": st.up_to_date}


@db_app.command("upgrade")
def upgrade(
    db: str = typer.Option(None, "--db", help=DB_HELP),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Create the schema or migrate it to this cellsearch's revision (back up the file first)."""
    from ..storage import upgrade_schema

    before, after = upgrade_schema(db, create=True)
    if as_json:
        typer.echo(json.dumps({"url": after.url, "from": before.revision, "to": after.revision,
                               "created": before.state in ("missing", "empty"),
                               "changed": before.revisions != after.revisions}, indent=2))
        return
    if before.revisions == after.revisions:
        console.print(f"{after.url}: already at revision {after.revision} (up to date)")
    elif before.state in ("missing", "empty"):
        console.print(f"{after.url}: created the schema at revision {after.revision}")
    else:
        console.print(f"{after.url}: upgraded {before.revision} \u2192 {after.revision}")


@db_app.command("current")
def current(
    db: str = typer.Option(None, "--db", help=DB_HELP),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """The database's schema revision and whether it needs `nas db upgrade` (read-only)."""
    from ..errors import UserError
    from ..storage import schema_status

    st = schema_status(db)
    if st.state == "missing":
        raise UserError(f"no database at {st.url}", "check the path (NAS_DB / --db); `nas db upgrade` creates one")
    if as_json:
        typer.echo(json.dumps(_status_dict(st), indent=2))
        return
    console.print(f"{st.url}: revision {st.revision or '(none)'}; this cellsearch: {st.head} "
                  f"({_STATE_TEXT[st.state]})")
