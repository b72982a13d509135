"""How a cell's per-step work maps onto the fused kernels: passes, slots and gradient events.

A cell step is split into *passes* (stages). A per-step `linear` needs every column of the
values it projects before its matmul can start, so a linear that projects a per-step node
(a chain of linears, as in DARTS and ENAS) runs one pass after that node; elementwise nodes
run in the pass of their latest input. States and hoisted (x-only) values are available in
every pass. DARTS V2 needs 5 passes per step (nodes at the same depth share a pass).

Memory slots (each H columns wide, see `nas.kernels.fused` for the buffers):
  XP  the hoisted (x-only) parts of the per-step linears that have one (`xlins`), then the
      hoisted values the step reads; the linears' biases come apart (BIAS), so a linear that
      projects only per-step values or states has no XP slot;
  DXP every per-step linear's pre-activation gradient (dpre), then the hoisted values';
  PRE per-step linears' pre-activations (saved for the backward pass);
  V   per-step nodes that a linear projects ("chain sources"; saved for weight gradients);
  GV  gradient accumulators of per-step nodes consumed in a later pass;
  S   states.

Backward, per step in reverse: for each pass k from the last to the first, phase A(k) runs
the pass's elementwise graph backwards per column block; phase B(k) adds `dpre @ W` of the
pass's linears to their sources. Each gradient accumulator (a GV slot, a state's gradient
for the previous step, a hoisted value's gradient in DXP) lists the events that add to it in
that order: the first event stores, later ones add, so nothing needs zeroing per step.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..ir import INPUT

if TYPE_CHECKING:  # nas.compile imports this package
    from ..compile.plan import CellPlan

ELEMENTWISE_OPS = frozenset({
    "add", "mul", "sub", "neg", "blend", "mean", "tanh", "sigmoid", "relu", "identity", "gelu",
    "leaky_relu", "silu", "softplus", "max",
})
SUPPORTED_OPS = ELEMENTWISE_OPS | {"linear", "const", "input"}

Event = tuple[str, int]  # ("A", pass) or ("B", pass)


@dataclass
class FusedSpec:
    """Everything the generator and the launcher need about one cell."""

    states: tuple[str, ...]
    order: list[str]  # live per-step nodes, topological
    stage: dict[str, int]  # per-step node -> pass
    passes: int
    linears: list[str]  # per-step linears: PRE and DXP slots 0..NL-1
    ext: list[str]  # hoisted values (or x) the step reads: XP slots after xlins', DXP slots NL..
    chain: list[str]  # per-step nodes a linear projects: V slots
    wsrcs: list[str]  # per-step sources with a weight argument (states, then chain sources)
    wrows: dict[str, int]  # row blocks of each such source's weight group
    parts: list[tuple[int, int, int]]  # (linear index, wsrc index, row block in its group)
    gv: list[str]  # per-step nodes with a gradient accumulator (consumed in a later pass)
    events: dict[tuple[str, str], list[Event]]  # (kind, name) -> contributing events, in order
    outputs: dict[str, str]  # state -> the node that becomes its next value
    canonical_hash: str
    source: str = ""
    key: str = ""
    extra: dict = field(default_factory=dict)
    xlins: list[int] = field(default_factory=list)  # linears with a hoisted part: XP slots 0..

    def pass_linears(self, k: int) -> list[int]:
        return [i for i, lin in enumerate(self.linears) if self.stage[lin] == k]

    def pass_parts(self, k: int) -> list[tuple[int, int, int]]:
        return [p for p in self.parts if self.stage[self.linears[p[0]]] == k]

    def stacks(self) -> bool:
        """Whether some pass has two parts from one source (the stacked products apply)."""
        per_pass_source = Counter((self.stage[self.linears[li]], w) for li, w, _ in self.parts)
        return any(n > 1 for n in per_pass_source.values())

    def max_linears_per_pass(self) -> int:
        return max((len(self.pass_linears(k)) for k in range(self.passes)), default=0)


def unsupported(plan: CellPlan) -> str | None:
    """None if the fused kernels support this cell, else why not."""
    graph = plan.graph
    live = graph.live_nodes()
    for nid in plan.per_step:
        if nid in live and graph.nodes[nid].op not in SUPPORTED_OPS:
            return f"node '{nid}' uses op '{graph.nodes[nid].op}', which the fused kernel does not implement"
    for nid in live:
        n = graph.nodes[nid]
        if n.op == "const" and not math.isfinite(float(n.value)):
            return f"node '{nid}' is a non-finite constant"
    return None


def analyse(plan: CellPlan) -> FusedSpec:
    """The spec of a supported cell (NotImplementedError with the reason otherwise)."""
    reason = unsupported(plan)
    if reason is not None:
        raise NotImplementedError(reason)
    graph = plan.graph
    nodes = graph.nodes
    live = graph.live_nodes()
    states = tuple(graph.states)
    hoisted = set(plan.hoisted) | {INPUT}
    order = [nid for nid in plan.per_step if nid in live]
    per_step = set(order)

    stage: dict[str, int] = {}
    for nid in order:
        n = nodes[nid]
        if n.op == "linear":
            stage[nid] = max((stage[s] + 1 for s in n.inputs if s in per_step), default=0)
        else:
            stage[nid] = max((stage[s] for s in n.inputs if s in per_step), default=0)
    outputs = {s: graph.outputs[s] for s in states}
    passes = max(max(stage.values(), default=0), 0) + 1

    linears = [nid for nid in order if nodes[nid].op == "linear"]
    read: list[str] = [i for nid in order if nodes[nid].op != "linear" for i in nodes[nid].inputs]
    read += list(outputs.values())
    ext: list[str] = []
    for nid in read:
        if nid in hoisted and nid not in per_step and nodes[nid].op != "const" and nid not in ext:
            ext.append(nid)
    chain: list[str] = []
    for lin in linears:
        for src in nodes[lin].inputs:
            if src in per_step and src not in chain:
                chain.append(src)
    used_srcs = {src for lin in linears for src in nodes[lin].inputs if src in per_step or src in states}
    wsrcs = [s for s in states if s in used_srcs] + [c for c in chain]
    wrows = {s: len(plan.groups[s].parts) for s in wsrcs}
    parts = []
    for li, lin in enumerate(linears):
        for k, src in enumerate(nodes[lin].inputs):
            if src in wsrcs:
                _, row = plan.slot[(lin, k)]
                parts.append((li, wsrcs.index(src), row))

    # consumers of each node, by pass
    gv: list[str] = []
    for nid in order:
        later = any(stage[c] > stage[nid] for c in order if nid in nodes[c].inputs)
        if later:
            gv.append(nid)
    spec = FusedSpec(states, order, stage, passes, linears, ext, chain, wsrcs, wrows, parts, gv, {}, outputs,
                     graph.canonical_hash())
    spec.xlins = [li for li, lin in enumerate(linears) if any(plan.groups[s].hoisted for s in nodes[lin].inputs)]
    spec.events = _events(spec, nodes, per_step)
    spec.extra["n_values"] = len(order) + len(ext) + len(states)
    return spec


def _events(spec: FusedSpec, nodes, per_step: set[str]) -> dict[tuple[str, str], list[Event]]:
    """Which backward events add to each gradient accumulator, in the order they run."""
    events: dict[tuple[str, str], list[Event]] = {}

    def add(kind: str, name: str, ev: Event) -> None:
        lst = events.setdefault((kind, name), [])
        if ev not in lst:
            lst.append(ev)

    def target(src: str) -> tuple[str, str] | None:
        if src in spec.states:
            return ("state", src)
        if src in spec.ext:
            return ("ext", src)
        if src in per_step:
            return ("gv", src)
        return None  # a constant

    for k in range(spec.passes - 1, -1, -1):
        # phase A(k): the pass's elementwise nodes send gradients to inputs of earlier passes
        for nid in spec.order:
            n = nodes[nid]
            if spec.stage[nid] != k or n.op == "linear":
                continue
            for src in n.inputs:
                tgt = target(src)
                if tgt is None or (tgt[0] == "gv" and spec.stage[src] == k):
                    continue
                add(*tgt, ("A", k))
        if k == 0:  # outputs that are states or hoisted values take their seed in pass 0
            for o in spec.outputs.values():
                tgt = target(o)
                if tgt is not None and tgt[0] != "gv":
                    add(*tgt, ("A", 0))
        # phase B(k): dpre @ W to the pass's linears' sources
        for li, w, _ in spec.pass_parts(k):
            src = spec.wsrcs[w]
            add("state" if src in spec.states else "gv", src, ("B", k))
    return events
