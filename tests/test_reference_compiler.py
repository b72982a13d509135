"""The reference backend computes exactly what torch.nn.LSTM / torch.nn.GRU compute."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nas.compile import build_rnn
from nas.space import load_space

SPACES = Path(__file__).resolve().parents[1] / "searchspaces"
I, H, L, B, T = 5, 7, 2, 3, 6


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def _copy_lstm(ref: torch.nn.LSTM, ours) -> dict:
    """Copy weights; return {our param view getter: ref tensor} pairs for gradient checks."""
    pairs = []
    with torch.no_grad():
        for k, layer in enumerate(ours.layers):
            w_ih, w_hh = getattr(ref, f"weight_ih_l{k}"), getattr(ref, f"weight_hh_l{k}")
            b_ih, b_hh = getattr(ref, f"bias_ih_l{k}"), getattr(ref, f"bias_hh_l{k}")
            for j, gate in enumerate("ifgo"):
                rows = slice(j * H, (j + 1) * H)
                layer.linear_weight(gate, 0).copy_(w_ih[rows])
                layer.linear_weight(gate, 1).copy_(w_hh[rows])
                layer.linear_bias(gate).copy_(b_ih[rows] + b_hh[rows])
                pairs += [(lambda l=layer, g=gate: l.linear_weight(g, 0), w_ih, rows),
                          (lambda l=layer, g=gate: l.linear_weight(g, 1), w_hh, rows),
                          (lambda l=layer, g=gate: l.linear_bias(g), b_ih, rows)]
    return pairs


def _find_linear(layer, inputs: tuple[str, ...]) -> str:
    nodes = layer.plan.graph.nodes
    [nid] = [n for n in layer.plan.linears if nodes[n].inputs == inputs]
    return nid


def _copy_gru(ref: torch.nn.GRU, ours) -> list:
    pairs = []
    with torch.no_grad():
        for k, layer in enumerate(ours.layers):
            w_ih, w_hh = getattr(ref, f"weight_ih_l{k}"), getattr(ref, f"weight_hh_l{k}")
            b_ih, b_hh = getattr(ref, f"bias_ih_l{k}"), getattr(ref, f"bias_hh_l{k}")
            r, z, n = (slice(j * H, (j + 1) * H) for j in range(3))
            for gate, rows in (("r", r), ("z", z)):
                layer.linear_weight(gate, 0).copy_(w_ih[rows])
                layer.linear_weight(gate, 1).copy_(w_hh[rows])
                layer.linear_bias(gate).copy_(b_ih[rows] + b_hh[rows])
                pairs += [(lambda l=layer, g=gate: l.linear_weight(g, 0), w_ih, rows),
                          (lambda l=layer, g=gate: l.linear_weight(g, 1), w_hh, rows),
                          (lambda l=layer, g=gate: l.linear_bias(g), b_ih, rows)]
            xn, hn = _find_linear(layer, ("x",)), _find_linear(layer, ("h",))
            layer.linear_weight(xn, 0).copy_(w_ih[n])
            layer.linear_bias(xn).copy_(b_ih[n])
            layer.linear_weight(hn, 0).copy_(w_hh[n])
            layer.linear_bias(hn).copy_(b_hh[n])
            pairs += [(lambda l=layer, g=xn: l.linear_weight(g, 0), w_ih, n),
                      (lambda l=layer, g=xn: l.linear_bias(g), b_ih, n),
                      (lambda l=layer, g=hn: l.linear_weight(g, 0), w_hh, n),
                      (lambda l=layer, g=hn: l.linear_bias(g), b_hh, n)]
    return pairs


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("with_state", [True, False])
def test_matches_torch_rnn(cell: str, batch_first: bool, with_state: bool) -> None:
    torch.manual_seed(hash((cell, batch_first, with_state)) % 1000)
    graph = load_space(SPACES / f"{cell}.cell").instantiate({})
    ref_cls = torch.nn.LSTM if cell == "lstm" else torch.nn.GRU
    ref = ref_cls(I, H, L, batch_first=batch_first).double()
    ours = build_rnn(graph, I, H, L, batch_first=batch_first).double()
    pairs = (_copy_lstm if cell == "lstm" else _copy_gru)(ref, ours)

    shape = (B, T, I) if batch_first else (T, B, I)
    x_ref = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    x_our = x_ref.detach().clone().requires_grad_(True)
    n_states = 2 if cell == "lstm" else 1
    if with_state:
        init = [torch.randn(L, B, H, dtype=torch.float64) for _ in range(n_states)]
        s_ref = [s.clone().requires_grad_(True) for s in init]
        s_our = [s.clone().requires_grad_(True) for s in init]
        st_ref = tuple(s_ref) if n_states == 2 else s_ref[0]
        st_our = tuple(s_our) if n_states == 2 else s_our[0]
    else:
        st_ref = st_our = None
    out_r, fin_r = ref(x_ref, st_ref)
    out_o, fin_o = ours(x_our, st_our)
    fin_r = fin_r if isinstance(fin_r, tuple) else (fin_r,)
    fin_o = fin_o if isinstance(fin_o, tuple) else (fin_o,)
    assert out_o.shape == out_r.shape
    assert _rel(out_o, out_r) < 1e-6
    for a, b in zip(fin_o, fin_r):
        assert _rel(a, b) < 1e-6

    w = torch.randn_like(out_r)
    ws = [torch.randn_like(f) for f in fin_r]
    loss_r = (out_r * w).sum() + sum((f * v).sum() for f, v in zip(fin_r, ws))
    loss_o = (out_o * w).sum() + sum((f * v).sum() for f, v in zip(fin_o, ws))
    loss_r.backward()
    loss_o.backward()
    assert _rel(x_our.grad, x_ref.grad) < 1e-6
    if with_state:
        for a, b in zip(s_our, s_ref):
            assert _rel(a.grad, b.grad) < 1e-6
    checked = 0
    for view, ref_param, rows in pairs:
        ours_view = view()
        # the view is a slice of a leaf parameter: its gradient is the same slice of .grad
        param = next(p for p in ours.parameters() if ours_view.untyped_storage().data_ptr() == p.untyped_storage().data_ptr())
        offset = (ours_view.storage_offset() - param.storage_offset())
        g = param.grad.view(-1)[offset:offset + ours_view.numel()].view_as(ours_view)
        assert _rel(g, ref_param.grad[rows]) < 1e-6
        checked += 1
    assert checked >= 12 * L - 4
