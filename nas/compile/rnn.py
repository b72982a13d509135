"""`CellRNN`: stacked layers of a compiled cell with torch.nn.LSTM's calling convention."""

from __future__ import annotations

from typing import Union

import torch
from torch import Tensor, nn

from ..ir import CellGraph
from .reference import CellLayer

State = Union[Tensor, tuple[Tensor, ...]]


def _layer(graph: CellGraph, input_size: int, hidden_size: int, backend: str) -> CellLayer:
    if backend == "reference":
        return CellLayer(graph, input_size, hidden_size)
    from . import choose_backend

    kind = choose_backend(graph, backend)
    if kind == "reference":
        return CellLayer(graph, input_size, hidden_size)
    if kind == "fused":
        from .fused_layer import FusedCellLayer

        return FusedCellLayer(graph, input_size, hidden_size, fallback=(backend == "auto"))
    from .scan_layer import ScanCellLayer

    return ScanCellLayer(graph, input_size, hidden_size, fallback=(backend == "auto"))


class CellRNN(nn.Module):
    """Like torch.nn.LSTM/GRU for any cell: `out, state = rnn(x, state)`.

    `state` is a (layers, B, H) tensor for one-state cells (as GRU) and a tuple of them,
    one per state in declaration order, otherwise (as LSTM's (h, c)). The output is the
    first state of the last layer at every step. Dropout applies between layers.
    """

    def __init__(self, graph: CellGraph, input_size: int, hidden_size: int, num_layers: int = 1,
                 dropout: float = 0.0, batch_first: bool = False, backend: str = "reference"):
        super().__init__()
        if num_layers < 1:
            raise ValueError("num_layers must be >= 1")
        if not 0.0 <= dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")
        self.graph = graph
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.batch_first = batch_first
        self.backend = backend
        self.layers = nn.ModuleList(
            _layer(graph, input_size if i == 0 else hidden_size, hidden_size, backend) for i in range(num_layers))
        self.drop = nn.Dropout(dropout)

    @property
    def num_states(self) -> int:
        return len(self.graph.states)

    def initial_state(self, batch: int, device=None, dtype=None) -> State:
        ref = self.layers[0].bias
        z = torch.zeros(self.num_layers, batch, self.hidden_size, device=device or ref.device,
                        dtype=dtype or ref.dtype)
        return z if self.num_states == 1 else tuple(z.clone() for _ in range(self.num_states))

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        if x.dim() != 3:
            raise ValueError(f"expected a 3-D input (batch, time, features) or (time, batch, features), got {tuple(x.shape)}")
        if self.batch_first:
            x = x.transpose(0, 1)
        B = x.shape[1]
        if state is None:
            state = self.initial_state(B, x.device, x.dtype)
        per_state = (state,) if isinstance(state, Tensor) else tuple(state)
        if len(per_state) != self.num_states:
            raise ValueError(f"the cell has {self.num_states} states, got {len(per_state)} initial states")
        return run_layers(self.layers, self.drop, x, per_state, self.batch_first, lambda layer, h, s: layer(h, s))


def run_layers(layers, drop: nn.Module, x: Tensor, per_state: tuple[Tensor, ...], batch_first: bool,
               call) -> tuple[Tensor, State]:
    """Stacked layers over time-major `x` with dropout between them; `call(layer, input,
    states)` runs one layer. Returns the output (batch first if asked) and the final states
    stacked per layer, as torch.nn.LSTM does (shared by CellRNN and the darts supernet)."""
    finals: list[list[Tensor]] = [[] for _ in per_state]
    out = x
    for i, layer in enumerate(layers):
        if i > 0:
            out = drop(out)
        out, last = call(layer, out, tuple(s[i] for s in per_state))
        for k, s in enumerate(last):
            finals[k].append(s)
    stacked = tuple(torch.stack(f, 0) for f in finals)
    if batch_first:
        out = out.transpose(0, 1)
    return out, (stacked[0] if len(stacked) == 1 else stacked)
