"""The outcome of one trial, as stored in the database and told to controllers."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["completed", "diverged", "failed", "pruned"]
STATUSES: tuple[str, ...] = ("completed", "diverged", "failed", "pruned")


def _json_float(v: float) -> float | None:
    """Strict JSON has no NaN/inf: those become null."""
    v = float(v)
    return v if math.isfinite(v) else None


def _from_json_float(v: Any) -> float:
    return float("nan") if v is None else float(v)


@dataclass
class TrialResult:
    """Status, final metrics and learning curve of one trial.

    `metrics` holds the task metrics of the final evaluation (for a pruned trial: of the
    evaluation that pruned it; for a diverged or failed one: none) plus `params`,
    `tokens_per_s`, `peak_mem_mb`, `wall_time_s`, `steps` and `train_loss`.
    `curve` is one `(step, metrics)` entry per intermediate evaluation (with
    `train_loss`, the mean training loss since the previous entry, and `lr`), plus one
    for the final evaluation when no intermediate one fell on the last step.
    """

    status: Status
    metrics: dict[str, float] = field(default_factory=dict)
    curve: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    error: str | None = None
    diverged_step: int | None = None
    primary_metric: str = "val_loss"
    mode: Literal["min", "max"] = "min"

    @property
    def objective(self) -> float | None:
        """The primary metric's value, or None if this trial has none (or it is not finite)."""
        v = self.metrics.get(self.primary_metric)
        return v if v is not None and math.isfinite(v) else None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-safe data (non-finite floats become null)."""
        return {
            "status": self.status,
            "metrics": {k: _json_float(v) for k, v in self.metrics.items()},
            "curve": [[int(s), {k: _json_float(v) for k, v in m.items()}] for s, m in self.curve],
            "error": self.error,
            "diverged_step": self.diverged_step,
            "primary_metric": self.primary_metric,
            "mode": self.mode,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrialResult:
        """Inverse of `to_dict` (null metric values come back as NaN)."""
        if d.get("status") not in STATUSES:
            raise ValueError(f"unknown trial status {d.get('status')!r}; expected one of {', '.join(STATUSES)}")
        return cls(
            status=d["status"],
            metrics={k: _from_json_float(v) for k, v in (d.get("metrics") or {}).items()},
            curve=[(int(s), {k: _from_json_float(v) for k, v in m.items()}) for s, m in d.get("curve") or []],
            error=d.get("error"),
            diverged_step=d.get("diverged_step"),
            primary_metric=d.get("primary_metric", "val_loss"),
            mode=d.get("mode", "min"),
        )
