"""Regularized (aging) evolution (Real et al., AAAI 2019), steady-state and asynchronous.

The first `population` asks are uniform samples. After that every ask — whenever a
worker frees up — runs a tournament: `sample_size` members of the population drawn
uniformly, the best one (single objective: best value; several: lowest Pareto rank within
the population, then largest crowding distance) is the parent, and the child is the
parent changed by `mutations` calls of the space's `mutate` (one op, input or
hyperparameter change each). When a result is told, the individual joins the population
and, once it holds more than `population`, the oldest member dies (aging, not the worst).
Trials without a usable objective (failed, diverged, pruned) do not join.
"""

from __future__ import annotations

import random
from collections import deque
from typing import Any

from ..space import Assignment, SearchSpace
from .base import Controller, Option, Outcome, positive, rng_state_from_json, rng_state_to_json
from .objectives import crowding_distances, pareto_ranks


class RegularizedEvolution(Controller):
    name = "evolution"
    OPTIONS = {
        "population": Option(50, "population size P (also the number of initial random samples)", (int,),
                             lambda v: v >= 2, "an integer >= 2"),
        "sample_size": Option(10, "tournament size S", (int,), positive, "a positive integer"),
        "mutations": Option(1, "mutate() calls per child", (int,), positive, "a positive integer"),
    }

    def __init__(self, space: SearchSpace, seed: int = 0, **options: Any):
        super().__init__(space, seed, **options)
        self.population_size = int(self.options["population"])
        self.sample_size = int(self.options["sample_size"])
        self.mutations = int(self.options["mutations"])
        self.rng = random.Random(seed)
        self.population: deque[tuple[list[int], list[float]]] = deque()  # (vector, values to minimise)
        self.asked = 0
        self.random_asked = 0
        self.told = 0

    # ---- asking ------------------------------------------------------------------------
    def _parent(self) -> list[int]:
        pop = list(self.population)
        idx = self.rng.sample(range(len(pop)), min(self.sample_size, len(pop)))
        if self.objectives.multi:
            vals = [p[1] for p in pop]
            ranks = pareto_ranks(vals)
            crowd: dict[int, float] = {}
            for r in {ranks[i] for i in idx}:
                members = [i for i in range(len(pop)) if ranks[i] == r]
                for i, d in zip(members, crowding_distances([vals[i] for i in members])):
                    crowd[i] = d
            best = min(idx, key=lambda i: (ranks[i], -crowd[i], i))
        else:
            best = min(idx, key=lambda i: (pop[i][1][0], i))
        return pop[best][0]

    def _child(self, parent: list[int]) -> Assignment:
        a = self.unvec(parent)
        for _ in range(self.mutations):
            a = self.space.mutate(a, self.rng)
        return a

    def ask(self, n: int = 1) -> list[Assignment]:
        out = []
        for _ in range(n):
            if self.random_asked < self.population_size or not self.population:
                self.random_asked += 1
                out.append(self.draw(lambda: self.space.sample(self.rng)))
            else:
                parent = self._parent()
                out.append(self.draw(lambda: self._child(parent)))
            self.asked += 1
        return out

    # ---- learning ------------------------------------------------------------------------
    def tell(self, assignment: Assignment, outcome: Outcome) -> None:
        self.told += 1
        v = self.objectives.vector(outcome)
        if v is None:
            return
        self.population.append((self.vec(assignment), list(v)))
        while len(self.population) > self.population_size:
            self.population.popleft()  # the oldest dies

    # ---- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_state_to_json(self.rng.getstate()), "asked": self.asked,
                "random_asked": self.random_asked, "told": self.told,
                "population": [[v, vals] for v, vals in self.population], **self.base_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.setstate(rng_state_from_json(state["rng"]))
        self.asked = int(state["asked"])
        self.random_asked = int(state["random_asked"])
        self.told = int(state.get("told", 0))
        self.population = deque((list(map(int, v)), [float(x) for x in vals]) for v, vals in state["population"])
        self.load_base_state(state)
