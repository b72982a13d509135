"""How a cell splits into work over all time steps and work per step.

Every backend uses the same plan, so they agree on parameter layout (and weights can be
copied between them): each `linear` node owns one bias and one weight block per operand;
weight blocks are grouped by the node they read, so a group is one matmul. Nodes that
depend only on `x` (and constants) are "hoisted": computed for all steps at once, which
for x-only groups means one batched GEMM over the whole sequence.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..ir import INPUT, CellGraph


@dataclass
class WeightGroup:
    """All weight blocks that read one source node: a single (n*H, in) matrix."""

    source: str
    parts: list[tuple[str, int]] = field(default_factory=list)  # (linear node, operand index)
    hoisted: bool = False  # source depends only on x: one matmul over all steps


@dataclass
class CellPlan:
    graph: CellGraph
    linears: list[str]
    groups: dict[str, WeightGroup]
    slot: dict[tuple[str, int], tuple[str, int]]  # (linear, operand) -> (group source, row block)
    hoisted: list[str]  # x-only nodes, topological order (linears included)
    per_step: list[str]  # the rest, topological order
    x_direct: list[str] = field(default_factory=list)  # non-linear nodes that read x itself

    @property
    def states(self) -> tuple[str, ...]:
        return self.graph.states


def make_plan(graph: CellGraph) -> CellPlan:
    nodes = graph.nodes
    x_only: set[str] = {INPUT}
    for nid, n in nodes.items():
        if n.op == "const" or (n.op not in ("input",) and n.inputs and all(i in x_only for i in n.inputs)):
            x_only.add(nid)
    linears = [nid for nid, n in nodes.items() if n.op == "linear"]
    groups: dict[str, WeightGroup] = {}
    slot: dict[tuple[str, int], tuple[str, int]] = {}
    for lin in linears:
        for k, src in enumerate(nodes[lin].inputs):
            g = groups.setdefault(src, WeightGroup(src, hoisted=src in x_only))
            slot[(lin, k)] = (src, len(g.parts))
            g.parts.append((lin, k))
    hoisted = [nid for nid in nodes if nid in x_only and nid != INPUT and nodes[nid].op != "input"]
    per_step = [nid for nid, n in nodes.items() if n.op != "input" and nid not in x_only]
    x_direct = [nid for nid, n in nodes.items() if n.op != "linear" and INPUT in n.inputs]
    return CellPlan(graph, linears, groups, slot, hoisted, per_step, x_direct)
