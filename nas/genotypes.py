"""Published cells as assignments of the shipped spaces (fixtures for tests and benchmarks)."""

from __future__ import annotations

from .space import Assignment, SearchSpace

# DARTS V2 recurrent genotype (Liu et al. 2019), (activation, input node) for nodes 1..8;
# PTB test perplexity 55.7.
DARTS_V2: tuple[tuple[str, int], ...] = (
    ("sigmoid", 0), ("relu", 1), ("relu", 1), ("identity", 1),
    ("tanh", 2), ("sigmoid", 5), ("tanh", 3), ("relu", 5),
)


def darts_assignment(space: SearchSpace, genotype=DARTS_V2) -> Assignment:
    """The assignment of `searchspaces/darts_ptb.cell` (or enas_ptb) for a genotype."""
    a = space.normalize({})
    for i, (act, j) in enumerate(genotype, start=1):
        d = space.decision(f"n{i}.act")
        a[d.name] = d.choices.index(act)
        if i > 1:
            a[space.decision(f"p_{i}.in").name] = j
        elif j != 0:
            raise ValueError("node 1 can only read node 0")
    return space.normalize(a)
