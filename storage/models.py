"""SQLAlchemy 2 typed ORM models of the results database.

This module imports nothing but SQLAlchemy and the standard library, so the
Alembic ``env.py`` can load it on its own. The schema it describes is created
and evolved by the Alembic revisions in ``migrations/versions``; a test checks
that the migrated schema matches these models.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

SEARCH_STATUSES = ("created", "running", "stopped", "completed", "failed")
TRIAL_STATUSES = ("pending", "running", "completed", "failed", "diverged", "pruned")
TERMINAL_TRIAL_STATUSES = ("completed", "failed", "diverged", "pruned")

# Deterministic constraint names (Alembic batch migrations on SQLite need them).
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """A timezone-aware UTC datetime on every back end.

    SQLite has no time zones: values are stored as UTC wall time and come back
    with ``tzinfo=UTC``. Naive datetimes given to the database are taken as UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


def to_jsonable(value: Any, _path: str = "$") -> Any:
    """Plain JSON data from what callers hand us.

    Non-finite floats (NaN, +-inf) become ``None`` (JSON has no NaN and
    PostgreSQL's ``json`` type rejects it); tuples become lists; numpy scalars
    and arrays (anything with ``.item()`` / ``.tolist()``), pydantic models
    (``.model_dump()``) and dataclasses are converted. Anything else raises
    ``TypeError`` naming where it sits.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): to_jsonable(v, f"{_path}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v, f"{_path}[{i}]") for i, v in enumerate(value)]
    if hasattr(value, "model_dump"):  # pydantic v2
        return to_jsonable(value.model_dump(mode="json"), _path)
    import dataclasses

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value), _path)
    if hasattr(value, "tolist"):  # numpy array or scalar
        return to_jsonable(value.tolist(), _path)
    if hasattr(value, "item"):
        return to_jsonable(value.item(), _path)
    raise TypeError(f"value at {_path} of type {type(value).__name__} is not JSON serializable")


class PortableJSON(TypeDecorator):
    """``sqlalchemy.JSON`` (SQLite and PostgreSQL) that sanitizes with :func:`to_jsonable`.

    Python ``None`` is stored as SQL NULL.
    """

    impl = JSON(none_as_null=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        return to_jsonable(value)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Search(Base):
    __tablename__ = "search"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), nullable=False, unique=True)
    space_name: Mapped[str | None] = mapped_column(String(200))
    space_text: Mapped[str | None] = mapped_column(Text)
    space_hash: Mapped[str | None] = mapped_column(String(128))
    controller: Mapped[str | None] = mapped_column(String(100))
    controller_config: Mapped[Any] = mapped_column(PortableJSON, nullable=True)
    task: Mapped[str | None] = mapped_column(Text)
    seed: Mapped[int | None] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="created")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    config: Mapped[Any] = mapped_column(PortableJSON, nullable=True)

    # `nas results ... --space NAME` (revision 0002)
    __table_args__ = (Index("ix_search_space_name", "space_name"),)


class Architecture(Base):
    __tablename__ = "architecture"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    canonical_hash: Mapped[str] = mapped_column(String(128), nullable=False)
    space_name: Mapped[str | None] = mapped_column(String(200))
    ir_json: Mapped[Any] = mapped_column(PortableJSON, nullable=True)
    dsl_text: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)

    __table_args__ = (Index("ix_architecture_canonical_hash", "canonical_hash", unique=True),)


class Trial(Base):
    __tablename__ = "trial"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    search_id: Mapped[int] = mapped_column(
        ForeignKey("search.id", ondelete="CASCADE"), nullable=False
    )
    architecture_id: Mapped[int | None] = mapped_column(ForeignKey("architecture.id"))
    trial_index: Mapped[int] = mapped_column(Integer, nullable=False)
    assignment: Mapped[Any] = mapped_column(PortableJSON, nullable=True)
    hyperparameters: Mapped[Any] = mapped_column(PortableJSON, nullable=True)
    config_hash: Mapped[str | None] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="pending")
    metrics: Mapped[Any] = mapped_column(PortableJSON, nullable=True)
    objective: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    diverged_step: Mapped[int | None] = mapped_column(Integer)
    host: Mapped[str | None] = mapped_column(String(255))
    gpu: Mapped[str | None] = mapped_column(String(64))
    attempt: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    budget: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    wall_time_s: Mapped[float | None] = mapped_column(Float)
    reused_from_trial_id: Mapped[int | None] = mapped_column(
        ForeignKey("trial.id", ondelete="SET NULL")
    )

    __table_args__ = (
        UniqueConstraint("search_id", "trial_index"),
        Index("ix_trial_search_id_status", "search_id", "status"),
        Index("ix_trial_search_id_objective", "search_id", "objective"),
        Index("ix_trial_objective", "objective"),
        Index("ix_trial_config_hash", "config_hash"),
        Index("ix_trial_architecture_id", "architecture_id"),
        # revision 0002: `nas results list --status X` over all searches, and the
        # reuses of a trial (`nas results show`; the SET NULL foreign key on delete)
        Index("ix_trial_status", "status"),
        Index("ix_trial_reused_from_trial_id", "reused_from_trial_id"),
    )


class TrialStep(Base):
    __tablename__ = "trial_step"

    trial_id: Mapped[int] = mapped_column(
        ForeignKey("trial.id", ondelete="CASCADE"), primary_key=True
    )
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    metrics: Mapped[Any] = mapped_column(PortableJSON, nullable=True)


class ControllerCheckpoint(Base):
    __tablename__ = "controller_checkpoint"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    search_id: Mapped[int] = mapped_column(
        ForeignKey("search.id", ondelete="CASCADE"), nullable=False
    )
    n_told: Mapped[int] = mapped_column(Integer, nullable=False)
    state: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)

    __table_args__ = (Index("ix_controller_checkpoint_search_id_id", "search_id", "id"),)
