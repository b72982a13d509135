"""The Triton scan core matches the reference backend (values and gradients), on the CPU
under TRITON_INTERPRET=1 at small sizes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

from nas.compile import build_rnn, choose_backend, explain  # noqa: E402
from nas.compile.plan import make_plan  # noqa: E402
from nas.kernels.scan import linear_scan, linear_scan_reference  # noqa: E402
from nas.space import load_space  # noqa: E402

SPACES = Path(__file__).resolve().parents[1] / "searchspaces"


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    assert torch.isfinite(a).all()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("shape", [(2, 5, 3), (3, 70, 40), (1, 33, 65), (2, 1, 8)])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("time_major", [False, True])
def test_scan_kernel_matches_loop(shape, dtype, tol, time_major) -> None:
    torch.manual_seed(sum(shape))
    a = torch.rand(*shape, dtype=dtype, requires_grad=True)
    b = torch.randn(*shape, dtype=dtype, requires_grad=True)
    h0 = torch.randn(shape[1] if time_major else shape[0], shape[2], dtype=dtype, requires_grad=True)
    h = linear_scan(a, b, h0, time_major=time_major)
    if time_major:
        r = linear_scan_reference(a.transpose(0, 1), b.transpose(0, 1), h0).transpose(0, 1)
    else:
        r = linear_scan_reference(a, b, h0)
    assert rel(h, r) < tol
    g = torch.randn_like(h)
    for x, y in zip(torch.autograd.grad((h * g).sum(), (a, b, h0)), torch.autograd.grad((r * g).sum(), (a, b, h0))):
        assert rel(x, y) < tol


def test_scan_bf16_accumulates_in_fp32() -> None:
    torch.manual_seed(0)
    a = torch.rand(2, 64, 16) * 0.5 + 0.5
    b = torch.randn(2, 64, 16)
    r = linear_scan_reference(a.double(), b.double())
    h = linear_scan(a.bfloat16(), b.bfloat16())
    assert h.dtype == torch.bfloat16
    assert rel(h.double(), r) < 1e-2


def _compare(graph, layers: int = 2) -> tuple[float, float]:
    torch.manual_seed(0)
    ref = build_rnn(graph, 6, 5, layers, backend="reference").double()
    fast = build_rnn(graph, 6, 5, layers, backend="auto").double()
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(3, 9, 6, dtype=torch.float64)
    states = ref.initial_state(3)
    states = tuple(torch.randn_like(s) for s in states) if isinstance(states, tuple) else torch.randn_like(states)
    o1, s1 = ref(x, states)
    o2, s2 = fast(x, states)
    if not torch.isfinite(o1).all():  # an unstable NAS-Bench-NLP cell overflows in both backends alike
        assert torch.equal(torch.isfinite(o1), torch.isfinite(o2))
        return float("nan"), float("nan")
    s1 = s1 if isinstance(s1, tuple) else (s1,)
    s2 = s2 if isinstance(s2, tuple) else (s2,)
    loss1 = o1.square().sum() + sum(s.sum() for s in s1)
    loss2 = o2.square().sum() + sum(s.sum() for s in s2)
    if not loss1.requires_grad:  # the cell ignores x and its parameters
        return rel(o2, o1), 0.0
    params1 = [p for p in ref.parameters()]
    params2 = [p for p in fast.parameters()]
    g1 = torch.autograd.grad(loss1, params1, allow_unused=True)
    g2 = torch.autograd.grad(loss2, params2, allow_unused=True)
    gerr = max((rel(a, b) for a, b in zip(g2, g1) if b is not None and b.norm() > 0), default=0.0)
    return rel(o2, o1), gerr


@pytest.mark.parametrize("name", ["mingru", "linear_scan"])
def test_every_scan_family_cell_matches_reference(name: str) -> None:
    space = load_space(SPACES / f"{name}.cell")
    for a in space.enumerate():
        graph = space.instantiate(a)
        assert choose_backend(graph, "auto") == "scan", explain(make_plan(graph))
        out_err, grad_err = _compare(graph)
        assert out_err < 1e-12 and grad_err < 1e-12, (a, out_err, grad_err)


def test_triton_backend_refuses_unsupported_cells_with_the_reason(monkeypatch, caplog) -> None:
    """Every shipped op has a kernel today; an op without one (simulated by taking tanh out
    of the fused kernel's table) makes 'triton' raise with the reason and 'auto' fall back.
    (30 random cells of every shipped space on backend='triton': tests/test_fused.py.)"""
    import nas.kernels.fused_spec as fused_spec

    graph = load_space(SPACES / "gru.cell").instantiate({})
    assert choose_backend(graph, "triton") == "fused"
    monkeypatch.setattr(fused_spec, "SUPPORTED_OPS", fused_spec.SUPPORTED_OPS - {"tanh"})
    with pytest.raises(NotImplementedError, match="op 'tanh', which the fused kernel does not implement"):
        build_rnn(graph, 4, 4, backend="triton")
    with caplog.at_level("INFO", logger="nas.compile"):
        assert choose_backend(graph, "auto") == "reference"
    assert "does not implement" in caplog.text


def test_auto_falls_back_and_triton_raises_where_triton_cannot_run(monkeypatch) -> None:
    graph = load_space(SPACES / "mingru.cell").instantiate({})
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # a CPU tensor without the interpreter
    x = torch.randn(2, 4, 3)
    out, _ = build_rnn(graph, 3, 4, backend="auto")(x)
    assert out.shape == (2, 4, 4)
    with pytest.raises(RuntimeError, match="need a CUDA device"):
        build_rnn(graph, 3, 4, backend="triton")(x)


@pytest.mark.parametrize("T", [1, 5, 8, 17, 24])
@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize("time_major", [False, True])
def test_scan_tile_edges_and_no_h0(monkeypatch, T: int, with_h0: bool, time_major: bool) -> None:
    """Small fixed tiles (BLOCK_T 8, BLOCK_D 4, D = 6 not a multiple) put T == 1, T < BLOCK_T,
    T == BLOCK_T, T not a multiple and a multiple of BLOCK_T through the forward's prefetch and
    the backward; h0 = None runs the kernels' zero-carry path (no gradient for h0)."""
    import triton

    import nas.kernels.scan as ks

    def fixed(T_: int, D_: int, elements: int) -> tuple[int, int, int]:
        return 8, 4, triton.cdiv(T_, 8)

    monkeypatch.setattr(ks, "_tiles", fixed)
    torch.manual_seed(T)
    B, D = 3, 6
    shape = (T, B, D) if time_major else (B, T, D)
    a = torch.rand(*shape, dtype=torch.float64, requires_grad=True)
    b = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(B, D, dtype=torch.float64, requires_grad=True) if with_h0 else None
    h = ks.linear_scan(a, b, h0, time_major=time_major)
    if time_major:
        r = linear_scan_reference(a.transpose(0, 1), b.transpose(0, 1), h0).transpose(0, 1)
    else:
        r = linear_scan_reference(a, b, h0)
    assert rel(h, r) < 1e-12
    g = torch.randn_like(h)
    inputs = (a, b, h0) if with_h0 else (a, b)
    for x, y in zip(torch.autograd.grad((h * g).sum(), inputs), torch.autograd.grad((r * g).sum(), inputs)):
        assert rel(x, y) < 1e-12


def test_scan_empty_sequence() -> None:
    a = torch.rand(2, 0, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 0, 4, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    h = linear_scan(a, b, h0)
    assert h.shape == (2, 0, 4)
    ga, gb, gh0 = torch.autograd.grad(h.sum(), (a, b, h0))
    assert ga.shape == a.shape and gb.shape == b.shape and torch.equal(gh0, torch.zeros_like(h0))
