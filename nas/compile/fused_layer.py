"""The fused sequential backend of one layer: for cells that are not diagonal linear
recurrences (LSTM, GRU, NAS-Bench-NLP-like cells), one generated Triton kernel runs the
whole time loop (see `nas.kernels.codegen`).

Same parameters as `CellLayer` (state dicts load across backends). All x-only work runs
over the whole sequence at once with ordinary torch ops, exactly as in the reference
layer (so autograd reaches the input projections); the kernel takes the x part of each
per-step linear that has one, the hoisted values the cell reads per step, and the linears'
biases (added in the kernel).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..ir import INPUT, CellGraph
from ..kernels.codegen import make_spec
from ..kernels.fused import fused_available, fused_sequence
from .reference import CellLayer


class FusedCellLayer(CellLayer):
    def __init__(self, graph: CellGraph, input_size: int, hidden_size: int, fallback: bool = False):
        super().__init__(graph, input_size, hidden_size)
        self.spec = make_spec(self.plan)  # NotImplementedError(reason) if unsupported
        self.fallback = fallback  # auto: run the reference loop where Triton cannot run

    def _inputs(self, x: Tensor) -> Tensor:
        plan, spec, H = self.plan, self.spec, self.hidden_size
        T, B = x.shape[0], x.shape[1]
        hoisted: dict[str, Tensor] = {INPUT: x}
        houts: dict[str, Tensor] = {}
        self._eval(plan.hoisted, hoisted, houts)
        for src, group in plan.groups.items():  # every projection of x-only values: one GEMM each
            if group.hoisted and src not in houts:
                houts[src] = self._group_matmul(src, hoisted[src])
        nodes = plan.graph.nodes
        slots: list[Tensor] = []
        for li in spec.xlins:  # the x-only parts; the biases, states and chain sources go in the kernel
            lin = spec.linears[li]
            acc = None
            for k, src in enumerate(nodes[lin].inputs):
                if plan.groups[src].hoisted:
                    _, row = plan.slot[(lin, k)]
                    part = houts[src][..., row * H:(row + 1) * H]
                    acc = part if acc is None else acc + part
            slots.append(acc.to(x.dtype))
        for nid in spec.ext:
            slots.append(hoisted[nid].to(x.dtype).expand(T, B, H))
        if not slots:  # the step reads neither x nor a linear (the states evolve on their own)
            return x.new_zeros(T, B, 0)
        return torch.cat(slots, -1).contiguous()

    def forward(self, x: Tensor, states: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
        ok, why = fused_available(x.device)
        if not ok:
            if self.fallback:
                return super().forward(x, states)
            raise RuntimeError(f"backend 'triton': {why}")
        H, T = self.hidden_size, x.shape[0]
        xp = self._inputs(x)
        bias = torch.stack([self.linear_bias(lin) for lin in self.spec.linears]) if self.spec.linears \
            else x.new_zeros(1, H)
        h0 = torch.cat([s.to(x.dtype).expand(x.shape[1], H) for s in states], -1)
        weights = [self.weights[self._group_param[s]] for s in self.spec.wsrcs]
        S = fused_sequence(self.spec, xp, bias, h0, weights)
        n = len(self.plan.states)
        return S[1:, :, :H], tuple(S[T, :, i * H:(i + 1) * H] for i in range(n))
