"""Random search: uniform samples of the space's decisions (the baseline every NAS
method must beat)."""

from __future__ import annotations

import random
from typing import Any

from ..space import Assignment, SearchSpace
from .base import Controller


def _rng_state_to_json(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _rng_state_from_json(data: list) -> tuple:
    version, internal, gauss = data
    return (version, tuple(internal), gauss)


class RandomSearch(Controller):
    name = "random"

    def __init__(self, space: SearchSpace, seed: int = 0):
        super().__init__(space, seed)
        self.rng = random.Random(seed)
        self.asked = 0

    def ask(self, n: int = 1) -> list[Assignment]:
        out = [self.space.sample(self.rng) for _ in range(n)]
        self.asked += n
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"rng": _rng_state_to_json(self.rng.getstate()), "asked": self.asked}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.setstate(_rng_state_from_json(state["rng"]))
        self.asked = int(state["asked"])
