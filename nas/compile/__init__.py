"""CellGraph -> torch.nn.Module. Backends: `reference` (eager loop, the ground truth);
`triton` and `auto` arrive with the scan core."""

from __future__ import annotations

import logging

from ..ir import CellGraph
from .reference import CellLayer
from .rnn import CellRNN

log = logging.getLogger(__name__)
BACKENDS = ("reference", "auto", "triton")


def build_rnn(graph: CellGraph, input_size: int, hidden_size: int, num_layers: int = 1, dropout: float = 0.0,
              batch_first: bool = True, backend: str = "reference") -> CellRNN:
    """Compile a cell into a stacked recurrent module (torch.nn.LSTM calling convention)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "triton":
        raise NotImplementedError("the triton backend is not built yet; use backend='reference' or 'auto'")
    if backend == "auto":
        log.info("backend auto: using the reference loop (no fused kernel available for this cell)")
    return CellRNN(graph, input_size, hidden_size, num_layers, dropout, batch_first, "reference")


__all__ = ["build_rnn", "CellRNN", "CellLayer", "BACKENDS"]
