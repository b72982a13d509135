"""The scan backend of one layer: for cells whose every state update is
`s_t = a_t * s_{t-1} + b_t` with a_t, b_t from x alone (minGRU, minLSTM, HGRN-like).

All x-only work runs over the whole sequence at once (as in the reference layer); a_t and
b_t are assembled from it with ordinary torch ops (so autograd reaches every parameter),
and the recurrence itself is one Triton parallel scan per state, forward and backward.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..ir import CellGraph, INPUT
from ..kernels.scan import linear_scan, scan_available
from .analysis import Poly, scan_form
from .reference import CellLayer


class ScanCellLayer(CellLayer):
    """Same parameters as `CellLayer` (weights copy across), different execution."""

    def __init__(self, graph: CellGraph, input_size: int, hidden_size: int, fallback: bool = False):
        super().__init__(graph, input_size, hidden_size)
        self.form = scan_form(self.plan)  # NotLinear if the cell is not a diagonal linear recurrence
        self.fallback = fallback  # auto: run the reference loop where Triton cannot run

    def _poly(self, poly: Poly, vals: dict[str, Tensor], like: Tensor) -> Tensor:
        out = torch.zeros_like(like)
        for coef, ids in poly:
            term: Tensor | float = coef
            for i in ids:
                term = term * vals[i]
            out = out + term
        return out

    def forward(self, x: Tensor, states: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
        ok, why = scan_available(x.device)
        if not ok:
            if self.fallback:
                return super().forward(x, states)
            raise RuntimeError(f"backend 'triton': {why}")
        hoisted: dict[str, Tensor] = {INPUT: x}
        self._eval(self.plan.hoisted, hoisted, {})
        T, B = x.shape[0], x.shape[1]
        like = x.new_zeros(T, B, self.hidden_size)
        seqs = []
        for s, h0 in zip(self.plan.graph.states, states):
            a = self._poly(self.form.a[s], hoisted, like)
            b = self._poly(self.form.b[s], hoisted, like)
            seqs.append(linear_scan(a, b, h0, time_major=True))
        return seqs[0], tuple(seq[-1] for seq in seqs)
