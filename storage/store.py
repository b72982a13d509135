"""The query layer: :class:`Store`.

Every public method runs in its own short transaction and returns plain records
(dataclasses, dicts, lists), never live ORM objects. Writes that meet a locked
SQLite database (or a PostgreSQL serialization failure / deadlock) are retried
a few times with backoff; any other database error becomes a :class:`StorageError`.

A ``Store`` may be used from several threads; do not carry one across ``fork``
(open a new one in the child).
"""

from __future__ import annotations

import functools
import math
import os
import random
import re
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, TypeVar

from sqlalchemy import case, delete, func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from . import engine as _eng
from .errors import StorageError
from .models import (
    SEARCH_STATUSES,
    TERMINAL_TRIAL_STATUSES,
    TRIAL_STATUSES,
    Architecture,
    ControllerCheckpoint,
    Search,
    Trial,
    TrialStep,
    to_jsonable,
    utcnow,
)
from .records import ArchitectureRecord, CheckpointRecord, SearchRecord, TrialRecord

T = TypeVar("T")

_RETRIES = 6
_STEP_CHUNK = 500


def _is_transient(e: BaseException) -> bool:
    if not isinstance(e, DBAPIError):
        return False
    orig = e.orig
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate in ("40001", "40P01"):  # PostgreSQL serialization failure, deadlock
        return True
    msg = str(orig).lower()
    return "database is locked" in msg or "database is busy" in msg or "database table is locked" in msg


def _db_op(fn: Callable[..., T]) -> Callable[..., T]:
    """Retry transient lock errors; turn other database errors into StorageError."""

    @functools.wraps(fn)
    def wrapper(self: "Store", *args: Any, **kwargs: Any) -> T:
        if self._engine is None:
            raise StorageError(f"the store for {self.url} is closed")
        delay = 0.05
        for attempt in range(_RETRIES):
            try:
                return fn(self, *args, **kwargs)
            except SQLAlchemyError as e:
                if _is_transient(e) and attempt < _RETRIES - 1:
                    time.sleep(delay * (1.0 + random.random()))
                    delay = min(delay * 2, 2.0)
                    continue
                orig = getattr(e, "orig", None) or e
                raise StorageError(
                    f"database error in {fn.__name__} on {self.url}: {str(orig).strip()}"
                ) from e
        raise AssertionError("unreachable")

    return wrapper


def _finite(x: Any) -> float | None:
    if x is None:
        return None
    if not isinstance(x, (int, float)) and hasattr(x, "item"):  # numpy / torch scalar
        x = x.item()
    try:
        f = float(x)
    except (TypeError, ValueError):
        raise StorageError(f"objective must be a number or None, got {x!r}") from None
    return f if not math.isnan(f) else None


def _check_status(status: str, allowed: Sequence[str], what: str) -> str:
    if status not in allowed:
        raise StorageError(f"unknown {what} status {status!r}; expected one of {', '.join(allowed)}")
    return status


def _statuses(status: str | Iterable[str] | None) -> list[str] | None:
    if status is None:
        return None
    items = [status] if isinstance(status, str) else list(status)
    for s in items:
        _check_status(s, TRIAL_STATUSES, "trial")
    return items


def _json(value: Any, what: str) -> Any:
    try:
        return to_jsonable(value)
    except TypeError as e:
        raise StorageError(f"{what}: {e}") from None


# ------------------------------------------------------------------------- records


def _search_record(s: Search) -> SearchRecord:
    return SearchRecord(
        id=s.id, name=s.name, space_name=s.space_name, space_text=s.space_text,
        space_hash=s.space_hash, controller=s.controller, controller_config=s.controller_config,
        task=s.task, seed=s.seed, status=s.status, config=s.config,
        created_at=s.created_at, updated_at=s.updated_at,
    )


def _arch_record(a: Architecture) -> ArchitectureRecord:
    return ArchitectureRecord(
        id=a.id, canonical_hash=a.canonical_hash, space_name=a.space_name,
        ir_json=a.ir_json, dsl_text=a.dsl_text, created_at=a.created_at,
    )


def _trial_record(t: Trial, arch_hash: str | None, dsl: str | None, search_name: str) -> TrialRecord:
    return TrialRecord(
        id=t.id, search_id=t.search_id, search_name=search_name, trial_index=t.trial_index,
        architecture_id=t.architecture_id, architecture_hash=arch_hash, dsl_text=dsl,
        assignment=t.assignment, hyperparameters=t.hyperparameters, config_hash=t.config_hash,
        status=t.status, metrics=t.metrics, objective=t.objective, error=t.error,
        diverged_step=t.diverged_step, host=t.host, gpu=t.gpu, attempt=t.attempt,
        budget=t.budget, created_at=t.created_at, started_at=t.started_at,
        finished_at=t.finished_at, wall_time_s=t.wall_time_s,
        reused_from_trial_id=t.reused_from_trial_id,
    )


def _trial_select():  # type: ignore[no-untyped-def]
    return (
        select(Trial, Architecture.canonical_hash, Architecture.dsl_text, Search.name)
        .join(Search, Search.id == Trial.search_id)
        .outerjoin(Architecture, Architecture.id == Trial.architecture_id)
    )


_HEX_RE = re.compile(r"^[0-9a-fA-F]+$")


def _metric_paths(metrics: Any, prefix: str = "") -> list[str]:
    """Keys of a metrics dict; nested dicts as dotted paths (``val.ppl``)."""
    if not isinstance(metrics, dict):
        return []
    out: list[str] = []
    for k, v in metrics.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.extend(_metric_paths(v, key + "."))
        else:
            out.append(key)
    return out


def _metric_value(metrics: Any, metric: str) -> float | None:
    """``metrics[metric]``, or a dotted path into nested dicts; None unless a finite-or-inf number."""
    if not isinstance(metrics, dict):
        return None
    if metric in metrics:
        v = metrics[metric]
    else:
        v = metrics
        for part in metric.split("."):
            if not isinstance(v, dict) or part not in v:
                return None
            v = v[part]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return None if math.isnan(v) else v


# --------------------------------------------------------------------------- Store


class Store:
    """The cellsearch results database. Create with :meth:`Store.open`."""

    def __init__(self, engine: Engine, target: _eng.Target):
        self._engine: Engine | None = engine
        self._write_engine = engine.execution_options(nas_write=True)
        self._target = target

    # -- lifecycle -------------------------------------------------------------

    @classmethod
    def open(
        cls,
        url_or_path: str | os.PathLike[str] | None = None,
        *,
        create: bool = True,
        upgrade: bool = True,
    ) -> "Store":
        """Open (and if needed create or migrate) the results database.

        ``None`` -> ``$NAS_DB`` or ``sqlite:///nas.db`` in the CWD; a bare path ->
        SQLite file; a URL as is (``postgresql+psycopg://user@host:5432/db``).
        Raises :class:`StorageError` (never leaving the database modified) for a
        malformed URL, an unusable path, a file that is not a database, a schema
        newer than this cellsearch, or (``upgrade=False``) an older schema.
        """
        target = _eng.resolve(url_or_path)
        existed = True
        if target.sqlite_path is not None:
            existed = _eng.check_sqlite_path(target, create)
        engine = _eng.make_engine(target)
        try:
            _eng.prepare(engine, target, create=create, upgrade=upgrade)
        except BaseException as e:
            engine.dispose()
            if not existed and target.sqlite_path is not None:
                _remove_sqlite_files(target.sqlite_path)
            if isinstance(e, SQLAlchemyError):
                raise _eng.describe_open_error(e, target) from None
            if isinstance(e, StorageError):
                raise
            if isinstance(e, Exception):
                raise StorageError(
                    f"cannot open the database {target.display}: {type(e).__name__}: {e}"
                ) from e
            raise
        return cls(engine, target)

    @property
    def url(self) -> str:
        """The database URL, password masked."""
        return self._target.display

    @property
    def path(self) -> Path | None:
        """The SQLite file, or None for a server database."""
        return self._target.sqlite_path

    @property
    def dialect(self) -> str:
        return self._target.url.get_backend_name()

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._write_engine = None  # type: ignore[assignment]
            self._engine = None

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.url!r}{'' if self._engine else ', closed'})"

    @contextmanager
    def _session(self, write: bool = False) -> Iterator[Session]:
        bind = self._write_engine if write else self._engine
        with Session(bind, expire_on_commit=False) as s, s.begin():
            yield s

    @staticmethod
    def _search_id(s: Session, search: int | str, *, lock: bool = False) -> int:
        if isinstance(search, bool) or not isinstance(search, (int, str)):
            raise StorageError(f"a search is named by its name (str) or id (int), got {search!r}")
        col = Search.id if isinstance(search, int) else Search.name
        q = select(Search.id).where(col == search)
        if lock:
            q = q.with_for_update()  # PostgreSQL row lock; SQLite: BEGIN IMMEDIATE already
        sid = s.execute(q).scalar_one_or_none()
        if sid is None:
            raise StorageError(f"no search {search!r} in the database")
        return sid

    # -- searches --------------------------------------------------------------

    @_db_op
    def create_search(
        self,
        name: str,
        *,
        space_name: str | None = None,
        space_text: str | None = None,
        space_hash: str | None = None,
        controller: str | None = None,
        controller_config: Any = None,
        task: str | None = None,
        seed: int | None = None,
        config: Any = None,
    ) -> SearchRecord:
        """A new search; StorageError if the name is taken."""
        if not isinstance(name, str) or not name:
            raise StorageError(f"a search name must be a non-empty string, got {name!r}")
        controller_config = _json(controller_config, "controller_config")
        config = _json(config, "config")
        with self._session(write=True) as s:
            if s.execute(select(Search.id).where(Search.name == name)).first() is not None:
                raise StorageError(
                    f"a search named {name!r} already exists in {self.url}",
                    "choose another name, or resume that search",
                )
            now = utcnow()
            row = Search(
                name=name, space_name=space_name, space_text=space_text, space_hash=space_hash,
                controller=controller, controller_config=controller_config, task=task,
                seed=seed, status="created", created_at=now, updated_at=now, config=config,
            )
            s.add(row)
            try:
                s.flush()
            except IntegrityError:
                raise StorageError(f"a search named {name!r} already exists in {self.url}") from None
            return _search_record(row)

    @_db_op
    def get_search(self, search: str | int) -> SearchRecord | None:
        """By name (str) or id (int); None if there is none."""
        col = Search.id if isinstance(search, int) else Search.name
        with self._session() as s:
            row = s.execute(select(Search).where(col == search)).scalar_one_or_none()
            return None if row is None else _search_record(row)

    @_db_op
    def list_searches(self) -> list[SearchRecord]:
        with self._session() as s:
            rows = s.execute(select(Search).order_by(Search.id)).scalars().all()
            return [_search_record(r) for r in rows]

    @_db_op
    def set_search_status(self, search: str | int, status: str) -> None:
        _check_status(status, SEARCH_STATUSES, "search")
        with self._session(write=True) as s:
            sid = self._search_id(s, search)
            s.execute(update(Search).where(Search.id == sid).values(status=status, updated_at=utcnow()))

    # -- architectures ---------------------------------------------------------

    @_db_op
    def get_or_create_architecture(
        self,
        canonical_hash: str,
        *,
        space_name: str | None = None,
        ir_json: Any = None,
        dsl_text: str | None = None,
    ) -> int:
        """The id of the architecture with this canonical hash, inserting it if new."""
        if not isinstance(canonical_hash, str) or not canonical_hash:
            raise StorageError(f"canonical_hash must be a non-empty string, got {canonical_hash!r}")
        ir_json = _json(ir_json, "ir_json")
        q = select(Architecture.id).where(Architecture.canonical_hash == canonical_hash)
        with self._session(write=True) as s:
            aid = s.execute(q).scalar_one_or_none()
            if aid is not None:
                return aid
            try:
                with s.begin_nested():
                    row = Architecture(canonical_hash=canonical_hash, space_name=space_name,
                                       ir_json=ir_json, dsl_text=dsl_text, created_at=utcnow())
                    s.add(row)
                    s.flush()
                    return row.id
            except IntegrityError:  # inserted concurrently (PostgreSQL)
                return s.execute(q).scalar_one()

    @_db_op
    def get_architecture(self, arch: int | str) -> ArchitectureRecord | None:
        """By id (int) or canonical hash (str)."""
        col = Architecture.id if isinstance(arch, int) else Architecture.canonical_hash
        with self._session() as s:
            row = s.execute(select(Architecture).where(col == arch)).scalar_one_or_none()
            return None if row is None else _arch_record(row)

    # -- trials ----------------------------------------------------------------

    def _get_trial(self, s: Session, trial_id: int) -> TrialRecord | None:
        row = s.execute(_trial_select().where(Trial.id == trial_id)).first()
        return None if row is None else _trial_record(*row)

    @_db_op
    def add_trial(
        self,
        search_id: int | str,
        *,
        architecture_id: int | None,
        assignment: Any,
        hyperparameters: Any,
        config_hash: str | None,
        status: str = "pending",
        budget: float | None = None,
        reused_from_trial_id: int | None = None,
    ) -> TrialRecord:
        """A new trial with the next ``trial_index`` (0, 1, ...) of the search.

        With ``reused_from_trial_id`` the trial is recorded as completed at once,
        with the metrics, objective and curve-less result of that (completed)
        trial (following its own ``reused_from_trial_id`` to the original).
        """
        _check_status(status, TRIAL_STATUSES, "trial")
        assignment = _json(assignment, "assignment")
        hyperparameters = _json(hyperparameters, "hyperparameters")
        with self._session(write=True) as s:
            sid = self._search_id(s, search_id, lock=True)
            nxt = s.execute(
                select(func.coalesce(func.max(Trial.trial_index), -1) + 1).where(Trial.search_id == sid)
            ).scalar_one()
            now = utcnow()
            row = Trial(
                search_id=sid, architecture_id=architecture_id, trial_index=nxt,
                assignment=assignment, hyperparameters=hyperparameters, config_hash=config_hash,
                status=status, attempt=0, budget=budget, created_at=now,
            )
            if reused_from_trial_id is not None:
                src = s.get(Trial, reused_from_trial_id)
                if src is None or src.status != "completed":
                    raise StorageError(
                        f"cannot reuse trial {reused_from_trial_id}: "
                        + ("no such trial" if src is None else f"its status is {src.status!r}")
                    )
                root = src.reused_from_trial_id or src.id
                row.status = "completed"
                row.metrics = src.metrics
                row.objective = src.objective
                row.diverged_step = src.diverged_step
                row.started_at = row.finished_at = now
                row.wall_time_s = 0.0
                row.reused_from_trial_id = root
            s.add(row)
            s.flush()
            rec = self._get_trial(s, row.id)
            assert rec is not None
            return rec

    @_db_op
    def get_trial(self, trial_id: int) -> TrialRecord | None:
        with self._session() as s:
            return self._get_trial(s, trial_id)

    def _trial_for_update(self, s: Session, trial_id: int) -> Trial:
        row = s.execute(select(Trial).where(Trial.id == trial_id).with_for_update()).scalar_one_or_none()
        if row is None:
            raise StorageError(f"no trial with id {trial_id} in the database")
        return row

    @_db_op
    def start_trial(self, trial_id: int, *, host: str | None = None, gpu: str | int | None = None,
                    attempt: int = 1) -> None:
        """Mark running on ``host``/``gpu`` (stored as text); clears any earlier
        attempt's result and learning curve."""
        with self._session(write=True) as s:
            row = self._trial_for_update(s, trial_id)
            row.status = "running"
            row.host = host
            row.gpu = None if gpu is None else str(gpu)
            row.attempt = int(attempt)
            row.started_at = utcnow()
            row.finished_at = None
            row.wall_time_s = None
            row.metrics = None
            row.objective = None
            row.error = None
            row.diverged_step = None
            s.execute(delete(TrialStep).where(TrialStep.trial_id == trial_id))

    @_db_op
    def finish_trial(
        self,
        trial_id: int,
        *,
        status: str,
        metrics: Any,
        objective: float | None,
        error: str | None = None,
        diverged_step: int | None = None,
        wall_time_s: float | None = None,
    ) -> None:
        """Record the outcome. ``status`` is completed/failed/diverged/pruned.
        A NaN objective is stored as NULL (sorts last); NaN/inf inside ``metrics``
        become JSON null. ``wall_time_s`` defaults to finished_at - started_at."""
        _check_status(status, TERMINAL_TRIAL_STATUSES, "final trial")
        metrics = _json(metrics, "metrics")
        objective = _finite(objective)
        with self._session(write=True) as s:
            row = self._trial_for_update(s, trial_id)
            now = utcnow()
            row.status = status
            row.metrics = metrics
            row.objective = objective
            row.error = error
            row.diverged_step = diverged_step
            row.finished_at = now
            if wall_time_s is None and row.started_at is not None:
                wall_time_s = (now - row.started_at).total_seconds()
            row.wall_time_s = wall_time_s

    @_db_op
    def record_steps(self, trial_id: int, steps: Sequence[tuple[int, Any]]) -> None:
        """Append learning-curve points ``(step, metrics)``; a step already stored is replaced."""
        rows = []
        for item in steps:
            step, m = item
            rows.append({"trial_id": trial_id, "step": int(step), "metrics": _json(m, f"step {step}")})
        if not rows:
            return
        dedup = {r["step"]: r for r in rows}  # last one wins
        rows = list(dedup.values())
        with self._session(write=True) as s:
            if s.get(Trial, trial_id) is None:
                raise StorageError(f"no trial with id {trial_id} in the database")
            for i in range(0, len(rows), _STEP_CHUNK):
                chunk = rows[i : i + _STEP_CHUNK]
                s.execute(
                    delete(TrialStep).where(
                        TrialStep.trial_id == trial_id,
                        TrialStep.step.in_([r["step"] for r in chunk]),
                    )
                )
                s.execute(TrialStep.__table__.insert(), chunk)

    @_db_op
    def curve(self, trial_id: int) -> list[tuple[int, Any]]:
        """The learning curve of a trial: ``[(step, metrics), ...]`` by step."""
        with self._session() as s:
            rows = s.execute(
                select(TrialStep.step, TrialStep.metrics)
                .where(TrialStep.trial_id == trial_id)
                .order_by(TrialStep.step)
            ).all()
            return [(r[0], r[1]) for r in rows]

    @_db_op
    def find_result(self, config_hash: str) -> TrialRecord | None:
        """A completed trial with this config hash (the original, not a reuse), for reuse."""
        with self._session() as s:
            row = s.execute(
                _trial_select()
                .where(Trial.config_hash == config_hash, Trial.status == "completed")
                .order_by(case((Trial.reused_from_trial_id.is_(None), 0), else_=1), Trial.id)
                .limit(1)
            ).first()
            return None if row is None else _trial_record(*row)

    @_db_op
    def trials(
        self,
        search: str | int | Iterable[str | int] | None = None,
        status: str | Iterable[str] | None = None,
        *,
        space: str | Iterable[str] | None = None,
        architecture: int | None = None,
    ) -> list[TrialRecord]:
        """Trials, by search and index. Filters (all optional, combined with AND):
        ``search`` one search or several (names or ids; StorageError for an unknown
        one), ``status`` one or several, ``space`` the search's space name(s),
        ``architecture`` an architecture id."""
        statuses = _statuses(status)
        with self._session() as s:
            q = _trial_select()
            if search is not None:
                items = [search] if isinstance(search, (str, int)) else list(search)
                q = q.where(Trial.search_id.in_([self._search_id(s, x) for x in items]))
            if statuses is not None:
                q = q.where(Trial.status.in_(statuses))
            if space is not None:
                spaces = [space] if isinstance(space, str) else list(space)
                q = q.where(Search.space_name.in_(spaces))
            if architecture is not None:
                q = q.where(Trial.architecture_id == int(architecture))
            q = q.order_by(Trial.search_id, Trial.trial_index)
            return [_trial_record(*r) for r in s.execute(q).all()]

    @_db_op
    def trial_at(self, search: str | int, trial_index: int) -> TrialRecord | None:
        """The trial with this index in the search (StorageError for an unknown search)."""
        with self._session() as s:
            sid = self._search_id(s, search)
            row = s.execute(
                _trial_select().where(Trial.search_id == sid, Trial.trial_index == int(trial_index))
            ).first()
            return None if row is None else _trial_record(*row)

    @_db_op
    def reuses_of(self, trial_id: int) -> list[TrialRecord]:
        """Trials that reused the result of this one."""
        with self._session() as s:
            rows = s.execute(
                _trial_select().where(Trial.reused_from_trial_id == trial_id).order_by(Trial.id)
            ).all()
            return [_trial_record(*r) for r in rows]

    @_db_op
    def find_architectures(self, prefix: str, limit: int | None = 20) -> list[ArchitectureRecord]:
        """Architectures whose canonical hash starts with ``prefix`` (hex digits), by hash."""
        if not isinstance(prefix, str) or not _HEX_RE.match(prefix):
            return []
        with self._session() as s:
            q = (
                select(Architecture)
                .where(Architecture.canonical_hash.startswith(prefix.lower()))
                .order_by(Architecture.canonical_hash)
            )
            if limit is not None:
                q = q.limit(limit)
            return [_arch_record(r) for r in s.execute(q).scalars().all()]

    @_db_op
    def curves(self, trial_ids: Iterable[int]) -> dict[int, list[tuple[int, Any]]]:
        """Learning curves of several trials: ``{trial_id: [(step, metrics), ...]}``
        (every id asked for is a key; trials without points map to ``[]``)."""
        ids = [int(i) for i in trial_ids]
        out: dict[int, list[tuple[int, Any]]] = {i: [] for i in ids}
        with self._session() as s:
            for i in range(0, len(ids), _STEP_CHUNK):
                chunk = ids[i : i + _STEP_CHUNK]
                rows = s.execute(
                    select(TrialStep.trial_id, TrialStep.step, TrialStep.metrics)
                    .where(TrialStep.trial_id.in_(chunk))
                    .order_by(TrialStep.trial_id, TrialStep.step)
                ).all()
                for tid, step, m in rows:
                    out[tid].append((step, m))
        return out

    @_db_op
    def counts_by_search(self) -> dict[int, dict[str, int]]:
        """Trials per status of every search: ``{search_id: {status: n}}`` (zeros included)."""
        with self._session() as s:
            out: dict[int, dict[str, int]] = {
                sid: {st: 0 for st in TRIAL_STATUSES} for sid in s.execute(select(Search.id)).scalars()
            }
            q = select(Trial.search_id, Trial.status, func.count()).group_by(Trial.search_id, Trial.status)
            for sid, st, n in s.execute(q).all():
                out.setdefault(sid, {x: 0 for x in TRIAL_STATUSES})[st] = int(n)
            return out

    @_db_op
    def metric_names(
        self, search: str | int | Iterable[str | int] | None = None, *, space: str | Iterable[str] | None = None
    ) -> list[str]:
        """Keys of the trials' metrics (nested dicts as dotted paths), sorted."""
        with self._session() as s:
            q = select(Trial.metrics).join(Search, Search.id == Trial.search_id).where(
                Trial.metrics.is_not(None)
            )
            if search is not None:
                items = [search] if isinstance(search, (str, int)) else list(search)
                q = q.where(Trial.search_id.in_([self._search_id(s, x) for x in items]))
            if space is not None:
                q = q.where(Search.space_name.in_([space] if isinstance(space, str) else list(space)))
            names: set[str] = set()
            for m in s.execute(q).scalars():
                names.update(_metric_paths(m))
            return sorted(names)

    @_db_op
    def space_names(self) -> list[str]:
        """The space names of the searches, sorted."""
        with self._session() as s:
            q = select(Search.space_name).where(Search.space_name.is_not(None)).distinct()
            return sorted(s.execute(q).scalars().all())

    @_db_op
    def top(
        self,
        search: str | int | None = None,
        metric: str = "objective",
        k: int | None = 10,
        mode: str = "min",
        status: str | Iterable[str] | None = "completed",
    ) -> list[TrialRecord]:
        """The ``k`` best trials by ``metric`` (``"objective"`` = the indexed column,
        otherwise a key, or dotted path, of the metrics JSON), ``mode`` "min" or "max".
        Trials without a numeric value (missing, None, NaN) come last; ties by id."""
        if mode not in ("min", "max"):
            raise StorageError(f"mode must be 'min' or 'max', got {mode!r}")
        if k is not None and k <= 0:
            return []
        statuses = _statuses(status)
        with self._session() as s:
            sid = None if search is None else self._search_id(s, search)

            def where(q):  # type: ignore[no-untyped-def]
                if sid is not None:
                    q = q.where(Trial.search_id == sid)
                if statuses is not None:
                    q = q.where(Trial.status.in_(statuses))
                return q

            if metric == "objective":
                col = Trial.objective
                q = where(_trial_select()).order_by(
                    case((col.is_(None), 1), else_=0),
                    col.asc() if mode == "min" else col.desc(),
                    Trial.id,
                )
                if k is not None:
                    q = q.limit(k)
                return [_trial_record(*r) for r in s.execute(q).all()]

            pairs = s.execute(where(select(Trial.id, Trial.metrics))).all()
            sign = 1.0 if mode == "min" else -1.0

            def key(p):  # type: ignore[no-untyped-def]
                v = _metric_value(p[1], metric)
                return (1, 0.0, p[0]) if v is None else (0, sign * v, p[0])

            best = [p[0] for p in sorted(pairs, key=key)[: (k if k is not None else len(pairs))]]
            recs: dict[int, TrialRecord] = {}
            for i in range(0, len(best), _STEP_CHUNK):
                chunk = best[i : i + _STEP_CHUNK]
                for r in s.execute(_trial_select().where(Trial.id.in_(chunk))).all():
                    recs[r[0].id] = _trial_record(*r)
            return [recs[i] for i in best]

    @_db_op
    def counts(self, search_id: int | str | None = None) -> dict[str, int]:
        """Trials per status (every known status present, zeros included)."""
        with self._session() as s:
            q = select(Trial.status, func.count()).group_by(Trial.status)
            if search_id is not None:
                q = q.where(Trial.search_id == self._search_id(s, search_id))
            out = {st: 0 for st in TRIAL_STATUSES}
            for st, n in s.execute(q).all():
                out[st] = int(n)
            return out

    @_db_op
    def mark_running_as(
        self,
        search_id: int | str,
        status: str = "failed",
        error: str | None = "interrupted: the driver stopped while the trial was running",
    ) -> int:
        """Crash recovery: trials of the search left 'running' become ``status``
        (a final status, or 'pending' to run them again). Returns how many."""
        _check_status(status, tuple(x for x in TRIAL_STATUSES if x != "running"), "trial")
        with self._session(write=True) as s:
            sid = self._search_id(s, search_id)
            values: dict[str, Any] = {"status": status, "error": error}
            if status in TERMINAL_TRIAL_STATUSES:
                values["finished_at"] = utcnow()
            res = s.execute(
                update(Trial)
                .where(Trial.search_id == sid, Trial.status == "running")
                .values(**values)
                .execution_options(synchronize_session=False)
            )
            return int(res.rowcount or 0)

    # -- controller checkpoints ------------------------------------------------

    @_db_op
    def save_checkpoint(
        self, search_id: int | str, n_told: int, state: bytes, *, keep: int | None = None
    ) -> int:
        """Store a controller state; with ``keep``, delete all but the newest ``keep``."""
        if not isinstance(state, (bytes, bytearray, memoryview)):
            raise StorageError(f"a checkpoint state must be bytes, got {type(state).__name__}")
        with self._session(write=True) as s:
            sid = self._search_id(s, search_id)
            row = ControllerCheckpoint(search_id=sid, n_told=int(n_told), state=bytes(state),
                                       created_at=utcnow())
            s.add(row)
            s.flush()
            if keep is not None:
                old = s.execute(
                    select(ControllerCheckpoint.id)
                    .where(ControllerCheckpoint.search_id == sid)
                    .order_by(ControllerCheckpoint.id.desc())
                    .offset(max(int(keep), 1))
                ).scalars().all()
                if old:
                    s.execute(delete(ControllerCheckpoint).where(ControllerCheckpoint.id.in_(old)))
            return row.id

    @_db_op
    def latest_checkpoint(self, search_id: int | str) -> CheckpointRecord | None:
        """The newest checkpoint of the search (for resume), or None."""
        with self._session() as s:
            sid = self._search_id(s, search_id)
            row = s.execute(
                select(ControllerCheckpoint)
                .where(ControllerCheckpoint.search_id == sid)
                .order_by(ControllerCheckpoint.id.desc())
                .limit(1)
            ).scalar_one_or_none()
            if row is None:
                return None
            return CheckpointRecord(id=row.id, search_id=row.search_id, n_told=row.n_told,
                                    state=bytes(row.state), created_at=row.created_at)


def upgrade_schema(
    url_or_path: str | os.PathLike[str] | None = None, *, create: bool = True
) -> tuple[_eng.SchemaStatus, _eng.SchemaStatus]:
    """Create or migrate the database's schema to this cellsearch's revision.

    Returns the schema status before and after. StorageError for a bad URL or
    path, a foreign database or a newer schema (left unchanged); with
    ``create=False`` also for a missing or empty database.
    """
    before = _eng.schema_status(url_or_path)
    if not create and before.state in ("missing", "empty"):
        raise StorageError(
            f"{before.url} has no cellsearch schema" if before.state == "empty"
            else f"no database at {before.url}",
            "check the path or URL (NAS_DB / --db)",
        )
    Store.open(url_or_path, create=create, upgrade=True).close()
    return before, _eng.schema_status(url_or_path)


def _remove_sqlite_files(path: Path) -> None:
    """Remove a database file this open created (and its -wal/-shm/-journal)."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        p = Path(str(path) + suffix)
        try:
            p.unlink()
        except OSError:
            pass
