"""CellGraph -> torch.nn.Module.

Backends: `reference` (eager time loop, the ground truth); `triton` (the scan core: a
Triton parallel scan for cells whose state updates are diagonal linear recurrences; else
the fused sequential kernel generated from the cell (`nas.kernels.codegen`); raises for
cells neither supports); `auto` (the scan core or the fused kernel where one applies and
can run on the device, else the reference loop, logging why).
"""

from __future__ import annotations

import logging

from ..ir import CellGraph
from ..kernels.codegen import unsupported as fused_unsupported
from .analysis import NotLinear, explain, scan_form
from .plan import make_plan
from .reference import CellLayer
from .rnn import CellRNN

log = logging.getLogger(__name__)
BACKENDS = ("reference", "auto", "triton")


def choose_backend(graph: CellGraph, backend: str) -> str:
    """The layer implementation a backend name resolves to for this cell: reference | scan | fused."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "reference":
        return "reference"
    plan = make_plan(graph)
    reason = explain(plan)
    if reason is None:
        return "scan"
    why_not_fused = fused_unsupported(plan)
    if why_not_fused is None:
        return "fused"
    reason = f"not a scan ({reason}) and no fused kernel ({why_not_fused})"
    if backend == "triton":
        raise NotImplementedError(f"backend 'triton' has no kernel for this cell: {reason}; "
                                  "use backend='auto' to fall back to the reference loop")
    log.info("backend auto: reference loop for cell %s (%s)", graph.short_hash, reason)
    return "reference"


def build_rnn(graph: CellGraph, input_size: int, hidden_size: int, num_layers: int = 1, dropout: float = 0.0,
              batch_first: bool = True, backend: str = "reference") -> CellRNN:
    """Compile a cell into a stacked recurrent module (torch.nn.LSTM calling convention)."""
    kind = choose_backend(graph, backend)
    return CellRNN(graph, input_size, hidden_size, num_layers, dropout, batch_first,
                   "reference" if kind == "reference" else backend)


__all__ = ["build_rnn", "choose_backend", "CellRNN", "CellLayer", "BACKENDS", "NotLinear", "explain", "scan_form"]
