"""The one small interface every search controller implements.

Controllers see only the space: they propose assignments (`ask`) and learn from outcomes
(`tell`), in any order, while other candidates still run. `state_dict` captures all
they need to continue a search exactly where it stopped.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from ..space import Assignment, SearchSpace


@dataclass(frozen=True)
class Outcome:
    """What a controller is told about one evaluated assignment."""

    status: str  # completed | diverged | failed | pruned
    objective: float | None  # the primary metric, None when there is none
    mode: str = "min"  # whether a smaller objective is better
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def score(self) -> float:
        """Larger is better; -inf for trials without an objective."""
        if self.objective is None or not math.isfinite(self.objective):
            return -math.inf
        return -self.objective if self.mode == "min" else self.objective


class Controller(ABC):
    name: str = "base"

    def __init__(self, space: SearchSpace, seed: int = 0, **options: Any):
        self.space = space
        self.seed = seed
        if options:
            raise ValueError(f"controller '{self.name}' has no option(s) {', '.join(sorted(options))}")

    @abstractmethod
    def ask(self, n: int = 1) -> list[Assignment]:
        """Propose n assignments to evaluate next."""

    def tell(self, assignment: Assignment, outcome: Outcome) -> None:
        """Learn from one finished evaluation (default: nothing to learn)."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state; `load_state_dict` of it continues identically."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...
