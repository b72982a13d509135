"""Options and helpers shared by the `nas` subcommands."""

from __future__ import annotations

import os

import typer

from ..errors import UserError

DB_HELP = "Results database: a SQLite path or an SQLAlchemy URL (default: $NAS_DB or ./nas.db)."


def db_option() -> str | None:
    return typer.Option(None, "--db", help=DB_HELP, envvar="NAS_DB", show_envvar=False)


def parse_key_values(items: list[str], flag: str) -> dict[str, object]:
    """`key=value` pairs from repeated flags; values parsed as JSON scalars when they can be."""
    import json

    out: dict[str, object] = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"{flag} {item!r}: expected key=value", f"for example {flag} population=50")
        key, _, raw = item.partition("=")
        key = key.strip()
        if not key:
            raise UserError(f"{flag} {item!r}: empty key")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def default_db(db: str | None) -> str | None:
    return db or os.environ.get("NAS_DB")
