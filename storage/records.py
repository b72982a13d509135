"""Plain records returned by :class:`Store` (no live ORM objects, no open sessions)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import Any


class _Record:
    def to_dict(self) -> dict[str, Any]:
        """A shallow dict of the fields (handy for JSON output or ``pandas.DataFrame``)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]


@dataclass(frozen=True)
class SearchRecord(_Record):
    id: int
    name: str
    space_name: str | None
    space_text: str | None
    space_hash: str | None
    controller: str | None
    controller_config: Any
    task: str | None
    seed: int | None
    status: str
    config: Any
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class ArchitectureRecord(_Record):
    id: int
    canonical_hash: str
    space_name: str | None
    ir_json: Any
    dsl_text: str | None
    created_at: datetime


@dataclass(frozen=True)
class TrialRecord(_Record):
    id: int
    search_id: int
    search_name: str
    trial_index: int
    architecture_id: int | None
    architecture_hash: str | None  # joined from architecture
    dsl_text: str | None  # joined from architecture
    assignment: Any
    hyperparameters: Any
    config_hash: str | None
    status: str
    metrics: Any
    objective: float | None
    error: str | None
    diverged_step: int | None
    host: str | None
    gpu: str | None
    attempt: int
    budget: float | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    wall_time_s: float | None
    reused_from_trial_id: int | None


@dataclass(frozen=True)
class CheckpointRecord(_Record):
    id: int
    search_id: int
    n_told: int
    state: bytes
    created_at: datetime
