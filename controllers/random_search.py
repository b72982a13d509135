"""Random search: uniform samples of the space's decisions (the baseline every NAS
method must beat)."""

from __future__ import annotations

import random
from typing import Any

from ..space import Assignment, SearchSpace
from .base import Controller, rng_state_from_json, rng_state_to_json

# kept for code that imported them from here
_rng_state_to_json = rng_state_to_json
_rng_state_from_json = rng_state_from_json


class RandomSearch(Controller):
    """Uniform samples; constraints by rejection, dedup by resampling."""

    name = "random"

    def __init__(self, space: SearchSpace, seed: int = 0, **options: Any):
        super().__init__(space, seed, **options)
        self.rng = random.Random(seed)
        self.asked = 0

    def ask(self, n: int = 1) -> list[Assignment]:
        out = [self.draw(lambda: self.space.sample(self.rng)) for _ in range(n)]
        self.asked += n
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_state_to_json(self.rng.getstate()), "asked": self.asked, **self.base_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.setstate(rng_state_from_json(state["rng"]))
        self.asked = int(state["asked"])
        self.load_base_state(state)
