"""Database URLs, engines and schema migration for :meth:`Store.open`.

SQLite: WAL journal, ``synchronous=NORMAL``, a 30 s busy timeout and foreign keys
on. Transactions are begun explicitly (``BEGIN`` for reads, ``BEGIN IMMEDIATE``
for writes, chosen by the ``nas_write`` execution option): a deferred
transaction that reads and then writes can fail at once with "database is
locked" in WAL mode (the busy handler is not used for a stale snapshot), an
immediate one waits for the write lock instead. It also makes DDL transactional,
so a migration is all or nothing.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from .errors import SchemaVersionError, StorageError
from .models import Base

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
DEFAULT_URL = "sqlite:///nas.db"
BUSY_TIMEOUT_S = 30.0
# pg_advisory_xact_lock key serializing concurrent schema creation/upgrade.
_PG_MIGRATION_LOCK = 0x6E61735F6462  # "nas_db"

URL_HINT = (
    "use a file path (runs/nas.db), sqlite:///relative.db, sqlite:////absolute/path.db "
    "or postgresql+psycopg://user:password@host:5432/dbname"
)
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_DIALECT_LIKE_RE = re.compile(
    r"^(sqlite|postgres|postgresql|mysql|mariadb|oracle|mssql)([+.][A-Za-z0-9_]*)?:", re.I
)
_PASSWORD_RE = re.compile(r"(://[^:/@]*:)[^@/]*@")

OUR_TABLES = frozenset(Base.metadata.tables)


def mask(url: str) -> str:
    """A URL string with any password replaced by ***."""
    return _PASSWORD_RE.sub(r"\1***@", url)


@dataclass(frozen=True)
class Target:
    url: URL
    display: str  # for messages: password masked
    sqlite_path: Path | None  # a SQLite file (None: server database or in-memory SQLite)

    @property
    def is_sqlite(self) -> bool:
        return self.url.get_backend_name() == "sqlite"

    @property
    def is_postgres(self) -> bool:
        return self.url.get_backend_name() == "postgresql"


def resolve(url_or_path: str | os.PathLike[str] | None) -> Target:
    """``None`` -> ``$NAS_DB`` or ``sqlite:///nas.db``; a bare path -> SQLite; a URL as is.

    ``postgres://`` and ``postgresql://`` (no driver) become ``postgresql+psycopg://``.
    """
    spec = url_or_path
    if spec is None:
        spec = os.environ.get("NAS_DB") or DEFAULT_URL
    spec = os.fspath(spec)
    if not isinstance(spec, str) or not spec.strip():
        raise StorageError("empty database URL or path", URL_HINT)
    if _SCHEME_RE.match(spec):
        try:
            url = make_url(spec)
        except (ArgumentError, ValueError) as e:
            raise StorageError(f"malformed database URL {mask(spec)!r}: {e}", URL_HINT) from None
        if url.drivername in ("postgres", "postgresql"):
            url = url.set(drivername="postgresql+psycopg")
        if url.get_backend_name() not in ("sqlite", "postgresql"):
            raise StorageError(
                f"unsupported database {mask(spec)!r}: cellsearch stores results in SQLite "
                "or PostgreSQL",
                URL_HINT,
            )
    elif _DIALECT_LIKE_RE.match(spec):
        raise StorageError(f"malformed database URL {mask(spec)!r} (expected scheme://...)", URL_HINT)
    else:
        path = Path(spec).expanduser().absolute()
        url = URL.create("sqlite", database=str(path))
    display = url.render_as_string(hide_password=True)
    sqlite_path = None
    if url.get_backend_name() == "sqlite":
        db = url.database
        is_uri = str(url.query.get("uri", "")).lower() in ("true", "1")
        if db and db != ":memory:" and not is_uri and "mode=memory" not in db:
            sqlite_path = Path(db).expanduser().absolute()
    return Target(url, display, sqlite_path)


def check_sqlite_path(target: Target, create: bool) -> bool:
    """Fail early (with a clear message) on paths SQLite cannot use. Returns whether the file exists."""
    path = target.sqlite_path
    assert path is not None
    if path.exists():
        if path.is_dir():
            raise StorageError(
                f"cannot open database {path}: it is a directory",
                "point NAS_DB / --db at a file, e.g. " + str(path / "nas.db"),
            )
        if not os.access(path, os.R_OK | os.W_OK):
            raise StorageError(
                f"cannot open database {path}: the file is not readable and writable by this user",
                "fix its permissions or copy it somewhere writable",
            )
        if not os.access(path.parent, os.W_OK | os.X_OK):
            raise StorageError(
                f"cannot open database {path}: its directory {path.parent} is not writable "
                "(SQLite needs to create the -wal and -shm files next to the database)",
                "fix the directory's permissions or copy the database somewhere writable",
            )
        return True
    if not create:
        raise StorageError(
            f"no database at {path}",
            "check the path (NAS_DB / --db), or run a search first to create it",
        )
    parent = path.parent
    if not parent.exists():
        raise StorageError(
            f"cannot create database {path}: directory {parent} does not exist",
            "create the directory first or choose another path",
        )
    if not parent.is_dir():
        raise StorageError(
            f"cannot create database {path}: {parent} is not a directory", "choose another path"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StorageError(
            f"cannot create database {path}: directory {parent} is not writable",
            "choose a writable location (NAS_DB / --db)",
        )
    return False


def make_engine(target: Target) -> Engine:
    kwargs: dict[str, Any] = {}
    if target.is_sqlite:
        kwargs["connect_args"] = {"timeout": BUSY_TIMEOUT_S, "check_same_thread": False}
        if target.sqlite_path is None:  # in-memory: one shared connection
            kwargs["poolclass"] = StaticPool
    else:
        kwargs["pool_pre_ping"] = True
    try:
        engine = create_engine(target.url, **kwargs)
    except (ArgumentError, NoSuchModuleError) as e:
        raise StorageError(
            f"unsupported database URL {target.display!r}: {e}", URL_HINT
        ) from None
    except ImportError as e:  # the DB driver is not installed
        hint = "pip install 'cellsearch[postgres]'" if target.is_postgres else URL_HINT
        raise StorageError(f"no driver for {target.display!r}: {e}", hint) from None
    if target.is_sqlite:
        _install_sqlite_listeners(engine)
    return engine


def _install_sqlite_listeners(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control from the sqlite3 module: we emit BEGIN ourselves.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        try:
            cur.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            cur.execute("PRAGMA foreign_keys = ON")
            cur.execute("PRAGMA synchronous = NORMAL")  # safe with WAL, much faster commits
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("nas_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def enable_wal(engine: Engine) -> None:
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("PRAGMA journal_mode = WAL")
        cur.close()
    finally:
        raw.close()


# ---------------------------------------------------------------------------- Alembic


def alembic_config(url: str | URL | None = None) -> Config:
    """An Alembic ``Config`` for our migrations (no alembic.ini needed)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("path_separator", "os")
    if url is not None:
        s = url.render_as_string(hide_password=False) if isinstance(url, URL) else str(url)
        cfg.set_main_option("sqlalchemy.url", s.replace("%", "%%"))
    cfg.attributes["target_metadata"] = Base.metadata
    return cfg


def head_revisions() -> tuple[str, ...]:
    return tuple(ScriptDirectory.from_config(alembic_config()).get_heads())


@dataclass(frozen=True)
class SchemaState:
    kind: str  # "new" | "current" | "old"
    revisions: tuple[str, ...]


def schema_state(conn: Connection, target: Target) -> SchemaState:
    """Read-only look at the database: new, current, or at an older revision.

    Raises StorageError for a newer (unknown) revision or a foreign database.
    """
    tables = set(inspect(conn).get_table_names())
    if "alembic_version" not in tables:
        ours = sorted(tables & OUR_TABLES)
        if ours:
            raise StorageError(
                f"database {target.display} has cellsearch tables ({', '.join(ours)}) "
                "but no alembic_version table, so its schema revision is unknown",
                "it was not created by cellsearch's migrations; use a new database",
            )
        if target.is_sqlite and tables:
            raise StorageError(
                f"{target.display} is an SQLite database of something else "
                f"(tables: {', '.join(sorted(tables)[:5])}), not a cellsearch results database",
                "point NAS_DB / --db at a cellsearch database or at a new file",
            )
        return SchemaState("new", ())
    revs = tuple(
        r for r in conn.execute(text("SELECT version_num FROM alembic_version")).scalars() if r
    )
    script = ScriptDirectory.from_config(alembic_config())
    heads = set(script.get_heads())
    for rev in revs:
        try:
            known = script.get_revision(rev) is not None
        except Exception:  # alembic.util.CommandError / ResolutionError
            known = False
        if not known:
            raise SchemaVersionError(
                f"the database {target.display} has schema revision {rev!r}, which is newer "
                f"than this cellsearch knows (latest: {', '.join(sorted(heads))})",
                "upgrade cellsearch (pip install -U cellsearch) to read it; "
                "the database was left unchanged",
                older=False, revisions=revs, heads=tuple(sorted(heads)),
            )
    if set(revs) == heads:
        return SchemaState("current", revs)
    return SchemaState("old", revs)


@dataclass(frozen=True)
class SchemaStatus:
    """What :func:`schema_status` found (nothing is written to find it).

    ``state``: ``"missing"`` (no SQLite file), ``"empty"`` (no cellsearch schema
    yet), ``"old"`` (an older revision: ``nas db upgrade`` migrates it) or
    ``"current"``.
    """

    url: str  # password masked
    state: str
    revisions: tuple[str, ...]
    heads: tuple[str, ...]

    @property
    def up_to_date(self) -> bool:
        return self.state == "current"

    @property
    def revision(self) -> str | None:
        """The database's revision(s) as text, None if it has none."""
        return ", ".join(self.revisions) or None

    @property
    def head(self) -> str:
        return ", ".join(self.heads)


def schema_status(url_or_path: str | os.PathLike[str] | None = None) -> SchemaStatus:
    """Read-only look at a database's schema revision.

    Raises StorageError (:class:`SchemaVersionError` for a newer revision) for
    a bad URL or path, a file that is not a database, or a foreign database.
    """
    target = resolve(url_or_path)
    heads = head_revisions()
    if target.sqlite_path is not None:
        if not target.sqlite_path.exists():
            return SchemaStatus(target.display, "missing", (), heads)
        check_sqlite_path(target, create=False)
    engine = make_engine(target)
    try:
        with engine.connect() as conn:
            state = schema_state(conn, target)
            conn.rollback()
    except SQLAlchemyError as e:
        raise describe_open_error(e, target) from None
    finally:
        engine.dispose()
    kind = {"new": "empty"}.get(state.kind, state.kind)
    return SchemaStatus(target.display, kind, state.revisions, heads)


def prepare(engine: Engine, target: Target, *, create: bool, upgrade: bool) -> None:
    """Check the schema and create/upgrade it if allowed. Writes nothing unless it has to."""
    with engine.connect() as conn:
        state = schema_state(conn, target)
        conn.rollback()
    if state.kind == "current":
        return
    if state.kind == "new" and not create:
        raise StorageError(
            f"{target.display} has no cellsearch schema",
            "create it with `nas db upgrade` (from Python: open it with create=True), "
            "or run a search into it",
        )
    if state.kind == "old" and not upgrade:
        raise SchemaVersionError(
            f"the database {target.display} has schema revision "
            f"{', '.join(state.revisions) or '(none)'}; this cellsearch needs "
            f"{', '.join(head_revisions())}",
            "migrate it with `nas db upgrade` (from Python: open it with upgrade=True); "
            "back up the file first",
            older=True, revisions=state.revisions, heads=head_revisions(),
        )
    if target.is_sqlite:
        enable_wal(engine)
    with engine.connect() as conn:
        conn.execution_options(nas_write=True)
        with conn.begin():
            if target.is_postgres:
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
            # Someone may have created/upgraded it while we waited for the lock.
            if schema_state(conn, target).kind != "current":
                cfg = alembic_config(target.url)
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")


def describe_open_error(e: SQLAlchemyError, target: Target) -> StorageError:
    """Turn a driver error met while opening into a StorageError saying what to do."""
    orig = getattr(e, "orig", None) or e
    msg = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    low = msg.lower()
    where = str(target.sqlite_path) if target.sqlite_path else target.display
    if target.is_sqlite:
        if "not a database" in low or "malformed" in low or "encrypted" in low:
            return StorageError(
                f"{where} is not an SQLite database (or it is corrupt): {msg}",
                "point NAS_DB / --db at a cellsearch results database, or at a new file",
            )
        if "unable to open" in low:
            return StorageError(
                f"cannot open or create the SQLite database {where}: {msg}",
                "check that the directory exists and is writable",
            )
        if "readonly" in low or "read-only" in low:
            return StorageError(
                f"the SQLite database {where} is read-only: {msg}",
                "make the file and its directory writable, or copy it somewhere writable",
            )
        if "locked" in low or "busy" in low:
            return StorageError(
                f"the SQLite database {where} stayed locked for {BUSY_TIMEOUT_S:.0f} s: {msg}",
                "another process holds a long write transaction; try again",
            )
        return StorageError(f"cannot open the SQLite database {where}: {msg}")
    if target.is_postgres:
        return StorageError(
            f"cannot use the PostgreSQL database {where}: {msg}",
            "check that the server is running and that the URL's user, password, host, port "
            "and database name are right",
        )
    return StorageError(f"cannot open the database {where}: {msg}", URL_HINT)
