"""What "better" means for a controller: one objective or several, and Pareto ranking.

Every objective is turned into a value to minimise (a `max` objective is negated), so an
outcome becomes a tuple of floats, or None when it has no usable value (a failed,
diverged or pruned trial, or a missing / non-finite metric).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from ..errors import UserError

Vector = tuple[float, ...]


@dataclass(frozen=True)
class Objectives:
    """`names` / `modes` of the objectives; empty: the trial's primary metric.

    A name is a metric of the trial's result (`val_loss`, `params`, `tokens_per_s`, ...)
    or `objective`, the trial's primary metric in its own direction."""

    names: tuple[str, ...] = ()
    modes: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str | None, controller: str = "") -> "Objectives":
        if text is None or not str(text).strip():
            return cls()
        names, modes = [], []
        for part in str(text).split(","):
            part = part.strip()
            if not part:
                continue
            name, _, mode = part.partition(":")
            name, mode = name.strip(), mode.strip().lower()
            if name != "objective":
                mode = mode or "min"
            if not name or mode not in ("min", "max", ""):
                raise UserError(f"controller '{controller}': objectives={text!r}: expected name:min or name:max, "
                                f"got {part!r}", 'for example --controller-opt objectives="val_loss:min,params:min"')
            if name in names:
                raise UserError(f"controller '{controller}': objective '{name}' is listed twice")
            names.append(name)
            modes.append(mode)
        return cls(tuple(names), tuple(modes))

    @property
    def count(self) -> int:
        return max(1, len(self.names))

    @property
    def multi(self) -> bool:
        return len(self.names) > 1

    def vector(self, outcome: Any) -> Vector | None:
        """The outcome as values to minimise, or None if it has none."""
        if outcome.status != "completed":
            return None
        if not self.names:
            v = outcome.objective
            if v is None or not math.isfinite(v):
                return None
            return (-float(v),) if outcome.mode == "max" else (float(v),)
        out = []
        for name, mode in zip(self.names, self.modes):
            if name == "objective":  # the trial's primary metric, in its own mode unless one is given
                v = outcome.objective
                mode = mode or outcome.mode
            else:
                v = outcome.metrics.get(name)
            if v is None:
                return None
            v = float(v)
            if not math.isfinite(v):
                return None
            out.append(-v if mode == "max" else v)
        return tuple(out)


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """a is no worse than b everywhere and better somewhere (minimisation)."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def pareto_ranks(points: Sequence[Sequence[float]]) -> list[int]:
    """Non-dominated sorting (Deb et al.): 0 for the Pareto front, 1 for the next, ..."""
    n = len(points)
    dominated_by = [0] * n
    dominates_list: list[list[int]] = [[] for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            if dominates(points[i], points[j]):
                dominates_list[i].append(j)
                dominated_by[j] += 1
            elif dominates(points[j], points[i]):
                dominates_list[j].append(i)
                dominated_by[i] += 1
    ranks = [0] * n
    front = [i for i in range(n) if dominated_by[i] == 0]
    r = 0
    while front:
        nxt = []
        for i in front:
            ranks[i] = r
            for j in dominates_list[i]:
                dominated_by[j] -= 1
                if dominated_by[j] == 0:
                    nxt.append(j)
        front = nxt
        r += 1
    return ranks


def crowding_distances(points: Sequence[Sequence[float]]) -> list[float]:
    """NSGA-II crowding distance within one set of points (larger: more isolated)."""
    n = len(points)
    if n == 0:
        return []
    dist = [0.0] * n
    for m in range(len(points[0])):
        order = sorted(range(n), key=lambda i: (points[i][m], i))
        lo, hi = points[order[0]][m], points[order[-1]][m]
        dist[order[0]] = dist[order[-1]] = math.inf
        if hi == lo:
            continue
        for k in range(1, n - 1):
            dist[order[k]] += (points[order[k + 1]][m] - points[order[k - 1]][m]) / (hi - lo)
    return dist


def pareto_front(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the non-dominated points."""
    ranks = pareto_ranks(points)
    return [i for i, r in enumerate(ranks) if r == 0]
