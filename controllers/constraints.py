"""Hard resource constraints every ask meets, and the exact parameter counter behind them.

`count_cell_params` counts the parameters of the stacked cell layers exactly as
`nas.compile.build_rnn` allocates them, without building any torch module: each `linear`
node owns one (H x in) weight block per operand (in = embed for `x` in layer 0, hidden
otherwise) and one bias of H; the sum runs over all layers. Embedding and decoder are not
counted (they depend on the task's vocabulary, which a controller does not know).

The latency proxies are structural: `num_ops` (ops per step) and `step_depth`, the number
of ops on the longest path through one time step that depends on the previous state
(work that depends on `x` alone is hoisted out of the time loop by the compiler, so it is
not on the sequential critical path).
"""

from __future__ import annotations

import hashlib
import json
import random
import weakref
from collections import OrderedDict
from typing import Any, Mapping

from ..config import ModelConfig
from ..ir import INPUT, CellGraph
from ..space import Assignment, SearchSpace

HP_KINDS = ("value", "int", "float")


def count_cell_params(graph: CellGraph, model: ModelConfig) -> int:
    """Parameters of `model.layers` stacked cell layers (weights and biases), exactly."""
    H = model.hidden
    total = 0
    for layer in range(model.layers):
        x_dim = model.embed if layer == 0 else H
        for n in graph.nodes.values():
            if n.op == "linear":
                total += H + sum((x_dim if src == INPUT else H) * H for src in n.inputs)
    return total


def step_depth(graph: CellGraph) -> int:
    """Ops on the longest state-dependent path through one step (the sequential work)."""
    depth: dict[str, int] = {}
    per_step: set[str] = set(graph.states)
    for nid, n in graph.nodes.items():  # topological order
        if n.op == "input":
            depth[nid] = 0
            continue
        if any(i in per_step for i in n.inputs):
            per_step.add(nid)
            depth[nid] = 1 + max(depth[i] for i in n.inputs if i in per_step)
        else:
            depth[nid] = 0
    return max((depth[o] for o in graph.outputs.values()), default=0)


def hp_values(space: SearchSpace, a: Mapping[str, int]) -> dict[str, Any]:
    """The chosen values of the active hyperparameter decisions."""
    act = space.active(a)
    return {d.name: d.choices[a[d.name]] for i, d in enumerate(space.decisions) if act[i] and d.kind in HP_KINDS}


class _Cache(OrderedDict):
    def __init__(self, size: int = 20000):
        super().__init__()
        self.size = size

    def put(self, k, v):
        self[k] = v
        if len(self) > self.size:
            self.popitem(last=False)
        return v


_KEYS: "weakref.WeakKeyDictionary[SearchSpace, _Cache]" = weakref.WeakKeyDictionary()


def arch_key(space: SearchSpace, a: Mapping[str, int]) -> str:
    """Canonical cell hash plus the hyperparameter values: what a trial of `a` trains."""
    a = space.normalize(a)
    cache = _KEYS.setdefault(space, _Cache())
    t = tuple(a.values())
    hit = cache.get(t)
    if hit is not None:
        return hit
    h = space.instantiate(a).canonical_hash()
    hp = hp_values(space, a)
    if hp:
        h = hashlib.sha256((h + json.dumps(hp, sort_keys=True, default=str)).encode()).hexdigest()
    return cache.put(t, h[:32])


class Constraint:
    """The hard limits of one search; `ok(a)` is cached per assignment."""

    def __init__(self, space: SearchSpace, max_params: int | None = None, max_ops: int | None = None,
                 max_depth: int | None = None):
        self.space = space
        self.limits = {k: v for k, v in (("params", max_params), ("ops", max_ops), ("depth", max_depth))
                       if v is not None}
        self._cache = _Cache()
        self.smallest: dict[str, int] = {}

    @property
    def active(self) -> bool:
        return bool(self.limits)

    def measure(self, a: Mapping[str, int]) -> dict[str, int]:
        """params / ops / depth of an assignment (all three, whatever is limited)."""
        a = self.space.normalize(a)
        graph = self.space.instantiate(a)
        model = self.space.hyperparameters(a).model
        return {"params": count_cell_params(graph, model), "ops": graph.num_ops(), "depth": step_depth(graph)}

    def _violation(self, a: Mapping[str, int]) -> float:
        """0 when feasible, else the summed relative excess over the limits."""
        t = tuple(self.space.normalize(a).values())
        v = self._cache.get(t)
        if v is not None:
            return v
        m = self.measure(a)
        excess = 0.0
        for k, limit in self.limits.items():
            self.smallest[k] = min(self.smallest.get(k, m[k]), m[k])
            if m[k] > limit:
                excess += (m[k] - limit) / limit
        return self._cache.put(t, excess)

    def violation(self, a: Mapping[str, int]) -> float:
        """0 when feasible, else the summed relative excess over the limits."""
        return self._violation(a) if self.limits else 0.0

    def ok(self, a: Mapping[str, int]) -> bool:
        return not self.limits or self._violation(a) == 0.0

    def repair(self, a: Mapping[str, int], rng: random.Random, tries: int) -> Assignment | None:
        """A feasible assignment near `a`: hill-climb on the violation by single mutations."""
        best = self.space.normalize(a)
        best_v = self._violation(best) if self.limits else 0.0
        for _ in range(tries):
            if best_v == 0.0:
                return best
            cand = self.space.mutate(best, rng)
            v = self._violation(cand)
            if v <= best_v:
                best, best_v = cand, v
        return best if best_v == 0.0 else None

    def search_feasible(self, rng: random.Random, tries: int) -> Assignment | None:
        """Repair from a uniform sample (for a small feasible region)."""
        if not self.limits:
            return self.space.sample(rng)
        return self.repair(self.space.sample(rng), rng, tries)

    def unmet_message(self, tries: int) -> str:
        parts = [f"{k} <= {v} (smallest seen: {self.smallest.get(k, '?')})" for k, v in self.limits.items()]
        return (f"no assignment of space '{self.space.name}' met the constraint {' and '.join(parts)} "
                f"in {tries} proposals")
