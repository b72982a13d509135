"""The `reference` backend: an eager PyTorch time loop with autograd.

It is the ground truth every faster backend is checked against, so it favours being
obviously right over being fast; it still hoists all x-only work (input projections of
every step in one GEMM, and gates computed from x alone) out of the time loop.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..ir import INPUT, CellGraph
from .plan import CellPlan, make_plan
from .torch_ops import ELEMENTWISE


class CellLayer(nn.Module):
    """One layer of a compiled cell over a whole sequence (time-major)."""

    def __init__(self, graph: CellGraph, input_size: int, hidden_size: int):
        super().__init__()
        self.plan: CellPlan = make_plan(graph)
        self.input_size = input_size
        self.hidden_size = hidden_size
        if self.plan.x_direct and input_size != hidden_size:
            raise ValueError(
                f"the cell uses x directly in {', '.join(self.plan.x_direct)} (not through linear), which needs "
                f"input size == hidden size, got {input_size} != {hidden_size}; wrap x in linear(x)")
        H = hidden_size
        self.weights = nn.ParameterDict()
        self._group_param: dict[str, str] = {}
        for i, (src, g) in enumerate(self.plan.groups.items()):
            in_dim = input_size if src == INPUT else H
            pname = f"w{i}_{''.join(ch if ch.isalnum() else '_' for ch in src)}"
            self.weights[pname] = nn.Parameter(torch.empty(len(g.parts) * H, in_dim))
            self._group_param[src] = pname
        self.bias = nn.Parameter(torch.empty(len(self.plan.linears) * H))
        self._bias_slot = {lin: i for i, lin in enumerate(self.plan.linears)}
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    # ---- parameter views (for weight copying and tests) -----------------------------------
    def linear_weight(self, node: str, operand: int) -> Tensor:
        """The (H, in) weight block that `node` (a linear) applies to its `operand`-th input."""
        src, row = self.plan.slot[(node, operand)]
        H = self.hidden_size
        return self.weights[self._group_param[src]][row * H:(row + 1) * H]

    def linear_bias(self, node: str) -> Tensor:
        i = self._bias_slot[node]
        return self.bias[i * self.hidden_size:(i + 1) * self.hidden_size]

    # ---- evaluation --------------------------------------------------------------------------
    def _group_matmul(self, src: str, value: Tensor) -> Tensor:
        return value @ self.weights[self._group_param[src]].t()

    def _linear(self, node: str, vals: dict[str, Tensor], outs: dict[str, Tensor]) -> Tensor:
        H = self.hidden_size
        n = self.plan.graph.nodes[node]
        acc = self.linear_bias(node)
        for k, src in enumerate(n.inputs):
            if src not in outs:
                outs[src] = self._group_matmul(src, vals[src])
            _, row = self.plan.slot[(node, k)]
            acc = acc + outs[src][..., row * H:(row + 1) * H]
        return acc

    def _eval(self, order: list[str], vals: dict[str, Tensor], outs: dict[str, Tensor]) -> None:
        nodes = self.plan.graph.nodes
        for nid in order:
            n = nodes[nid]
            if n.op == "const":
                vals[nid] = torch.tensor(n.value, dtype=self.bias.dtype, device=self.bias.device)
            elif n.op == "linear":
                vals[nid] = self._linear(nid, vals, outs)
            else:
                vals[nid] = ELEMENTWISE[n.op]([vals[i] for i in n.inputs])

    def forward(self, x: Tensor, states: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
        """x: (T, B, I); states: one (B, H) per state. Returns (T, B, H) outputs and final states."""
        plan = self.plan
        hoisted: dict[str, Tensor] = {INPUT: x}
        houts: dict[str, Tensor] = {}
        self._eval(plan.hoisted, hoisted, houts)
        for src, group in plan.groups.items():  # every projection of x-only values: one GEMM each
            if group.hoisted and src not in houts:
                houts[src] = self._group_matmul(src, hoisted[src])
        graph = plan.graph
        cur = dict(zip(graph.states, states))
        outputs = []
        B = x.shape[1]
        for t in range(x.shape[0]):
            vals: dict[str, Tensor] = {INPUT: x[t], **cur}
            for nid in plan.hoisted:
                v = hoisted[nid]
                vals[nid] = v[t] if v.dim() > 0 else v
            self._eval(plan.per_step, vals, {src: o[t] for src, o in houts.items()})
            cur = {s: _as_state(vals[graph.outputs[s]], B, self.hidden_size) for s in graph.states}
            outputs.append(cur[graph.states[0]])
        return torch.stack(outputs, 0), tuple(cur[s] for s in graph.states)


def _as_state(v: Tensor, batch: int, hidden: int) -> Tensor:
    return v if v.dim() == 2 else v.expand(batch, hidden)
