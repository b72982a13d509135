"""From alpha to a discrete cell: the strongest choice of every active decision."""

from __future__ import annotations

from typing import Mapping, Sequence

from ...elaborate import EChoice, ELoose, EOp
from ...errors import UserError
from ...space import Assignment, SearchSpace


def walk_expr(e, fn) -> None:
    """Call `fn` on every node of an elaborated expression (alternatives included)."""
    fn(e)
    if isinstance(e, EChoice):
        for a in e.alts:
            walk_expr(a, fn)
    elif isinstance(e, EOp):
        for a in e.args:
            if not isinstance(a, ELoose):
                walk_expr(a, fn)


def cell_decisions(space: SearchSpace) -> list[int]:
    """Indices of the decisions that occur inside the cell (the mixable ones)."""
    found: set[int] = set()
    for st in space.program.statements:
        for e in st.exprs:
            walk_expr(e, lambda n: found.add(n.decision) if isinstance(n, EChoice) else None)
    return sorted(found)


def check_mixable(space: SearchSpace) -> list[int]:
    """The mixable decisions; UserError (exit 2) when there are none."""
    idx = [i for i in cell_decisions(space) if space.decisions[i].size > 1]
    if not idx:
        raise UserError(f"space '{space.name}' has no op, input or alternative choice inside its cell, "
                        "so a differentiable (darts) search has nothing to mix",
                        "use a space with choice points in the cell, or another controller")
    return idx


def derive(space: SearchSpace, probs: Mapping[str, Sequence[float]]) -> Assignment:
    """argmax op, strongest input and alternative per decision (ties: the first listed).

    Decisions without alpha (hyperparameters, single-choice) take their first choice,
    as in the supernet; decisions inside an alternative that is not chosen are inactive.
    """
    a = {d.name: 0 for d in space.decisions}
    for name, p in probs.items():
        p = list(p)
        a[name] = max(range(len(p)), key=lambda k: (p[k], -k))
    return space.normalize(a)


def fixed_cell_text(space: SearchSpace, assignment: Assignment, name: str | None = None) -> str:
    """The derived cell as a fixed-cell space file (size 1) with the space's recipe."""
    return space.to_dsl(assignment, name=name)
