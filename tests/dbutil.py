"""A throwaway database per test: a SQLite file, or a fresh PostgreSQL database created on
the server named by NAS_TEST_PG_URL and dropped afterwards."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Iterator

import sqlalchemy as sa

PG_URL = os.environ.get("NAS_TEST_PG_URL")
PG_SKIP = "NAS_TEST_PG_URL is not set (export NAS_TEST_PG_URL=$(bash tests/pg_server.sh start))"


def throwaway_db_url(backend: str, tmp_path: Path, prefix: str = "nas_test_") -> Iterator[str]:
    """Yield the URL of an empty database of `backend` ("sqlite" or "postgresql")."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'nas.db'}"
        return
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    name = prefix + uuid.uuid4().hex[:12]
    with admin.connect() as c:
        c.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield sa.engine.make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as c:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()
