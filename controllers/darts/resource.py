"""RC-DARTS style resource penalty: the expected cost of the cell under alpha, differentiable.

Every op expression is active with the probability of the choice alternatives above it
(the product of their mixture weights; an expression shared by the alternatives of one
decision, like the `linear` under an op choice, sums them). Costs:

* `params`: weights of a `linear` (in x H per operand + H bias); other ops cost 0.
* `ops`: one per op that does work (identity and constants are free), the structural
  latency proxy also behind `max_ops`.

The penalty is `weight * E[cost] / cost_all`, where `cost_all` counts every op as active,
so `resource_weight` does not depend on the cell's size. In the DARTS space every node
keeps its linear whatever is chosen, so E[params] is constant there: use `ops`.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ...elaborate import EChoice, ELoose, EOp
from ...space import SearchSpace

from . import RESOURCES  # noqa: E402  (the option's choices)

FREE_OPS = ("identity",)


def _cost(e: EOp, kind: str, input_size: int, hidden: int, is_x) -> float:
    if kind == "params":
        if e.op != "linear":
            return 0.0
        return float(sum((input_size if is_x(a) else hidden) * hidden for a in e.args) + hidden)
    return 0.0 if e.op in FREE_OPS else 1.0


def expected_cost(space: SearchSpace, w: dict[int, Tensor] | None, kind: str = "params",
                  input_size: int = 1, hidden: int = 1) -> Tensor | float:
    """E[cost] under mixture weights `w` (None: every alternative active, the normaliser)."""
    if kind not in RESOURCES:
        raise ValueError(f"unknown resource {kind!r}; expected one of {', '.join(RESOURCES)}")
    x_names = {"x"}

    def is_x(a) -> bool:
        return getattr(a, "name", None) in x_names

    total: Tensor | float = 0.0

    def walk(e, p) -> None:
        nonlocal total
        if isinstance(e, EChoice):
            for j, a in enumerate(e.alts):
                walk(a, p if w is None else p * w[e.decision][j])
        elif isinstance(e, EOp):
            c = _cost(e, kind, input_size, hidden, is_x)
            if c:
                total = total + p * c
            for a in e.args:
                if not isinstance(a, ELoose):
                    walk(a, p)

    for st in space.program.statements:
        for e in st.exprs:
            walk(e, 1.0)
    return total


def make_penalty(space: SearchSpace, weights: Callable[[], dict[int, Tensor]], kind: str, weight: float,
                 input_size: int, hidden: int) -> Callable[[], Tensor]:
    """`penalty()` = weight * E[cost] / cost with every op active."""
    norm = float(expected_cost(space, None, kind, input_size, hidden)) or 1.0

    def penalty() -> Tensor:
        c = expected_cost(space, weights(), kind, input_size, hidden)
        return weight * (c if isinstance(c, Tensor) else torch.tensor(c)) / norm

    return penalty
