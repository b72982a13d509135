"""Alembic environment of the cellsearch results database.

Driven programmatically by ``nas.storage`` (``Store.open`` passes an open
connection, already inside a transaction, in ``config.attributes["connection"]``).
To write a new revision::

    from alembic import command
    from nas.storage import alembic_config
    command.revision(alembic_config("sqlite:///scratch.db"), "add foo", autogenerate=True)

Revisions must only use plain ``sqlalchemy`` types (not ``nas.storage`` ones).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

config = context.config


def _target_metadata():
    md = config.attributes.get("target_metadata")
    if md is not None:
        return md
    for name in ("nas.storage.models", "storage.models"):
        try:
            module = __import__(name, fromlist=["Base"])
        except ImportError:
            continue
        return module.Base.metadata
    return None


target_metadata = _target_metadata()


def _configure(**kw) -> None:
    context.configure(
        target_metadata=target_metadata,
        compare_type=True,
        render_as_batch=True,  # SQLite cannot ALTER most things; batch mode copes
        **kw,
    )


def run_migrations_offline() -> None:
    _configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True,
               dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url"), poolclass=pool.NullPool)
    with engine.connect() as connection:
        _configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
