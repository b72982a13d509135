"""Cell-level measurements for `benchmarks/scan.py` (the one script that checks and times
the scan core and the fused sequential kernel in a single run): correctness of a cell
against the float64 reference backend, LSTM against cuDNN, and a cell's forward+backward
on backend="triton" against the reference eager loop and torch.compile of it.

    python benchmarks/fused.py [scan.py options]

runs `scan.py --only check,lstm,darts,random` (the fused-kernel sections of that report).
Everything goes through the public API (`build_rnn(..., backend="triton"|"reference")`,
`choose_backend`), so a cell the kernel cannot run yet gives an ERROR row, not a crash.
"""

from __future__ import annotations

import functools
import os
import random
import sys
import types
from contextlib import contextmanager
from pathlib import Path

if __name__ == "__main__" and "--smoke" in sys.argv:  # before triton is imported (as in scan.py)
    os.environ["TRITON_INTERPRET"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from common import bench, error_text, median_of_calls, rel_err  # noqa: E402

from nas.compile import build_rnn, choose_backend  # noqa: E402
from nas.genotypes import darts_assignment  # noqa: E402
from nas.ir import INPUT  # noqa: E402
from nas.space import load_space  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPACES = tuple(sorted(p.stem for p in (ROOT / "searchspaces").glob("*.cell")))
FP32_TOL, BF16_TOL, BF16_DEEP_TOL = 1e-5, 2e-2, 3e-2
DEEP = 3  # a chain of this many linears in one step counts as deep (bf16 tolerance 3e-2)
UNSTABLE_ABS = 1e6  # |value| or |gradient| of the float64 reference above this: unstable
DEGENERATE = "skip (degenerate: the output is identically zero)"


# ---- cells ---------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def space(name: str):
    return load_space(ROOT / "searchspaces" / f"{name}.cell")


def darts_v2():
    """The DARTS V2 recurrent cell (Liu et al. 2019) as a graph of searchspaces/darts_ptb.cell."""
    sp = space("darts_ptb")
    return sp.instantiate(darts_assignment(sp))


def named_cells() -> list[tuple[str, object]]:
    return [(n, space(n).instantiate({})) for n in ("lstm", "gru", "mingru")] + [("darts_v2", darts_v2())]


def output_reads_params(graph) -> bool:
    """Whether the output (the first state) depends on a linear (else it has no gradient)."""
    seen, stack = set(), [graph.outputs[graph.states[0]]]
    while stack:
        nid = stack.pop()
        if nid in seen:
            continue
        seen.add(nid)
        n = graph.nodes[nid]
        if n.op == "linear":
            return True
        stack.extend(n.inputs)
        if n.op == "input" and nid in graph.states:
            stack.append(graph.outputs[nid])
    return False


def meaningful(graph) -> bool:
    """A cell worth timing: it reads x and its output depends on parameters."""
    return "x" in graph.live_nodes() and output_reads_params(graph)


def random_candidates(name: str, n: int, seed: int = 0, keep=None,
                      exclude: set[str] = frozenset()) -> list[tuple[dict[str, int], object]]:
    """`n` distinct random cells of a space (fewer if the space has fewer), seeded per space,
    each with the assignment it came from: a small, picklable recipe that a worker process
    (scan.py --check-workers) turns back into the same cell with `space(name).instantiate`."""
    sp = space(name)
    rng = random.Random(f"{name}:{seed}")
    out, seen = [], set(exclude)
    for _ in range(50 * n + 50):
        if len(out) >= n:
            break
        a = sp.sample(rng)
        g = sp.instantiate(a)
        if g.short_hash in seen or (keep is not None and not keep(g)):
            continue
        seen.add(g.short_hash)
        out.append((dict(a), g))
    return out


def random_cells(name: str, n: int, seed: int = 0, keep=None, exclude: set[str] = frozenset()) -> list[tuple[str, object]]:
    """`n` distinct random cells of a space (fewer if the space has fewer), seeded per space."""
    return [(f"{name}#{i}", g) for i, (_, g) in enumerate(random_candidates(name, n, seed, keep, exclude))]


def linear_depth(graph) -> int:
    """The longest chain of linears one step goes through (1 for LSTM/GRU, up to 9 for DARTS)."""
    depth: dict[str, int] = {}
    for nid, n in graph.nodes.items():
        d = max((depth.get(i, 0) for i in n.inputs), default=0)
        depth[nid] = d + (n.op == "linear")
    return max((depth.get(graph.outputs[s], 0) for s in graph.states), default=0)


# ---- correctness ---------------------------------------------------------------------------
def _run(model, x, h0, dtype):
    """Outputs (sequence and final states) and the gradients of a fixed random projection of
    them with respect to every parameter, the input and the initial states, in `dtype`."""
    x = x.detach().to(dtype).requires_grad_(True)
    h0 = [h.detach().to(dtype).requires_grad_(True) for h in h0]
    out, st = model(x, h0[0] if len(h0) == 1 else tuple(h0))
    outs = [out] + (list(st) if isinstance(st, tuple) else [st])
    gen = torch.Generator().manual_seed(2)
    ws = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.device, o.dtype) for o in outs]
    loss = sum((o * w).sum() for o, w in zip(outs, ws))
    names = [k for k, _ in model.named_parameters()] + ["input"] + [f"h0[{i}]" for i in range(len(h0))]
    wrt = [p for _, p in model.named_parameters()] + [x] + h0
    grads = torch.autograd.grad(loss, wrt, allow_unused=True) if loss.requires_grad else [None] * len(wrt)
    return ([o.detach() for o in outs],
            {k: (torch.zeros_like(p) if g is None else g.detach()) for k, p, g in zip(names, wrt, grads)})


def _errs(vals, grads, ref_vals, ref_grads) -> tuple[float, float]:
    out = max(rel_err(a, b) for a, b in zip(vals, ref_vals))
    grad = max(rel_err(grads[k], g) for k, g in ref_grads.items())
    return out, grad


def _finite_small(ts) -> bool:
    return all(bool(torch.isfinite(t).all()) and float(t.abs().max()) < UNSTABLE_ABS for t in ts if t.numel())


def check_cell(label: str, graph, B: int, T: int, H: int, device, dtypes=(torch.float32, torch.bfloat16)) -> list[dict]:
    """One row per dtype: backend="triton" in that dtype against backend="reference" in float64
    (values of the output sequence and final states; gradients of every parameter, of the
    input and of the random initial states). The reference backend in the same dtype is shown alongside ("eager" columns): a
    cell where even it misses the tolerance, and triton is within twice its error, is
    ill-conditioned, not a kernel bug (marked skip).
    A cell whose float64 reference is not finite or explodes is skipped (unstable)."""
    depth = linear_depth(graph)
    base = {"cell": label, "hash": graph.short_hash, "size": f"{B}x{T}x{H}", "depth": depth}
    try:
        torch.manual_seed(0)
        ref = build_rnn(graph, H, H, 1, backend="reference").to(device).double()
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(B, T, H, generator=gen, dtype=torch.float64).to(device)
        h0 = [0.5 * torch.randn(1, B, H, generator=gen, dtype=torch.float64).to(device) for _ in graph.states]
        v64, g64 = _run(ref, x, h0, torch.float64)
    except Exception as exc:  # noqa: BLE001 - report and go on
        return [dict(base, dtype="float64", status=f"ERROR {error_text(exc)}")]
    if not (_finite_small(v64) and _finite_small(g64.values())):
        return [dict(base, dtype="-", status="skip (unstable in float64)")]
    if float(v64[0].abs().max()) == 0:
        return [dict(base, dtype="-", status=DEGENERATE)]
    state = ref.state_dict()
    rows = []
    for dtype in dtypes:
        name = str(dtype).replace("torch.", "")
        tol = FP32_TOL if dtype == torch.float32 else (BF16_DEEP_TOL if depth >= DEEP else BF16_TOL)
        row = dict(base, dtype=name, tol=tol)
        try:
            eager = build_rnn(graph, H, H, 1, backend="reference").to(device).to(dtype)
            eager.load_state_dict({k: v.to(dtype) for k, v in state.items()})
            row["eager_out"], row["eager_grad"] = _errs(*_run(eager, x, h0, dtype), v64, g64)
            fast = build_rnn(graph, H, H, 1, backend="triton").to(device).to(dtype)
            row["kind"] = choose_backend(graph, "triton")
            fast.load_state_dict({k: v.to(dtype) for k, v in state.items()})
            row["out"], row["grad"] = _errs(*_run(fast, x, h0, dtype), v64, g64)
            ok = row["out"] < tol and row["grad"] < tol  # NaN compares False: never passes
            as_eager = row["out"] <= 2 * row["eager_out"] and row["grad"] <= 2 * row["eager_grad"]
            if ok:
                row["status"] = "ok"
            elif not (row["eager_out"] < tol and row["eager_grad"] < tol) and as_eager:
                row["status"] = "skip (ill-conditioned: the eager reference misses the tolerance too)"
            else:
                row["status"] = "FAIL"
        except Exception as exc:  # noqa: BLE001
            row["status"] = f"ERROR {error_text(exc)}"
        rows.append(row)
    return rows


# ---- timing --------------------------------------------------------------------------------
def fwd_bwd(model, x):
    def run():
        out, _ = model(x)
        out.sum().backward()
    return run


@contextmanager
def tf32(on: bool):
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = on
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


LSTM_DTYPES = (("fp32", torch.float32, False), ("fp32+tf32", torch.float32, True), ("bf16", torch.bfloat16, False))


def lstm_vs_cudnn(B: int, T: int, H: int, label: str, dtype, allow_tf32: bool, device, log=print) -> dict:
    """Forward+backward of the DSL LSTM (backend triton) and torch.nn.LSTM (cuDNN on a GPU),
    input size = H, batch first, input requiring grad, both in the same run."""
    row = {"size": f"{B}x{T}x{H}", "B": B, "dtype": label}
    graph = space("lstm").instantiate({})
    x = torch.randn(B, T, H, device=device, dtype=dtype, requires_grad=True)
    with tf32(allow_tf32):
        try:
            ours = build_rnn(graph, H, H, 1, backend="triton").to(device).to(dtype)
            row["triton_ms"] = bench(fwd_bwd(ours, x), device, reps=20, budget_s=1.0)["ms"]
            del ours
        except Exception as exc:  # noqa: BLE001
            row["triton_error"] = error_text(exc)
        try:
            cudnn = torch.nn.LSTM(H, H, 1, batch_first=True).to(device).to(dtype)
            cudnn.flatten_parameters()  # after .to(dtype): else cuDNN re-packs the weights every call
            row["cudnn_ms"] = bench(fwd_bwd(cudnn, x), device, reps=20, budget_s=1.0)["ms"]
        except Exception as exc:  # noqa: BLE001
            row["cudnn_error"] = error_text(exc)
    if "triton_ms" in row and "cudnn_ms" in row:
        row["ratio"] = row["triton_ms"] / row["cudnn_ms"]
    row["target"] = 1.0 if B <= 16 else 1.5
    return row


# torch.compile of the reference backend. "whole": torch.compile(module), which unrolls the
# Python time loop into one graph (compile time grows with T: minutes for DARTS at T=512);
# "step": torch.compile of the reference layer's per-step cell evaluation (the same code
# CellLayer.forward runs per step: the per-step nodes), called once per step; step 0 runs
# that function eagerly, so the compiled one sees a single kind of input (states that
# require grad) and compiles once. Both use mode="default".
def _step(layer, x_t, ht, ot, cur):
    plan = layer.plan
    graph = plan.graph
    vals = {INPUT: x_t, **cur, **ht}
    layer._eval(plan.per_step, vals, dict(ot))
    B, H = x_t.shape[0], layer.hidden_size
    new = {}
    for s in graph.states:
        v = vals[graph.outputs[s]]
        new[s] = v if v.dim() == 2 else v.expand(B, H)
    return new


def _stepwise_forward(layer, x, states):
    """CellLayer.forward (the reference loop) with the per-step evaluation compiled."""
    plan = layer.plan
    graph = plan.graph
    hoisted = {INPUT: x}
    houts: dict = {}
    layer._eval(plan.hoisted, hoisted, houts)
    for src, group in plan.groups.items():
        if group.hoisted and src not in houts:
            houts[src] = layer._group_matmul(src, hoisted[src])
    cur = dict(zip(graph.states, states))
    outs = []
    for t in range(x.shape[0]):
        ht = {nid: (hoisted[nid][t] if hoisted[nid].dim() > 0 else hoisted[nid]) for nid in plan.hoisted}
        ot = {src: o[t] for src, o in houts.items()}
        cur = (layer._bench_eager_step if t == 0 else layer._bench_compiled_step)(x[t], ht, ot, cur)
        outs.append(cur[graph.states[0]])
    return torch.stack(outs, 0), tuple(cur[s] for s in graph.states)


COMPILE_HOW = {
    "step": "torch.compile (mode default) of the reference layer's per-step cell function, called per step",
    "whole": "torch.compile (mode default) of the whole reference module (time loop unrolled)",
}


def compiled_reference(graph, I: int, H: int, device, how: str = "step"):
    import torch._dynamo

    torch._dynamo.reset()  # one cache per cell: never hit the recompile limit across cells
    ref = build_rnn(graph, I, H, 1, backend="reference").to(device)
    if how == "whole":
        return torch.compile(ref)
    for layer in ref.layers:
        layer._bench_eager_step = functools.partial(_step, layer)
        layer._bench_compiled_step = torch.compile(functools.partial(_step, layer))
        layer.forward = types.MethodType(_stepwise_forward, layer)
    return ref


def cell_speed(label: str, graph, B: int, T: int, H: int, device, *, eager: bool | str = True,
               compile_how: str | None = "step", compiled: bool | str = True, log=print) -> dict:
    """Forward+backward (fp32, no tf32) of one cell: backend triton, the reference eager loop
    (the median of up to 5 single calls within 5 s after a short warm-up: it is slow, and bound
    by the host, so one call varies) and torch.compile of the reference
    (compile time excluded, reported as compile_s). `eager`/`compiled` may be a string: the
    reason that measurement is skipped."""
    row = {"cell": label, "hash": graph.short_hash, "size": f"{B}x{T}x{H}"}
    x = torch.randn(B, T, H, device=device, requires_grad=True)
    try:
        torch.manual_seed(0)
        m = build_rnn(graph, H, H, 1, backend="triton").to(device)
        row["kind"] = choose_backend(graph, "triton")
        r = bench(fwd_bwd(m, x), device, reps=10, budget_s=1.0)
        row["triton_ms"], row["triton_first_s"] = r["ms"], r["first_ms"] / 1e3
        del m
    except Exception as exc:  # noqa: BLE001
        row["triton_error"] = error_text(exc)
    log(f"  {label} {row['size']}: triton {row.get('triton_ms', row.get('triton_error'))}")
    if eager is True:
        try:
            torch.manual_seed(0)
            ref = build_rnn(graph, H, H, 1, backend="reference").to(device)
            r = median_of_calls(fwd_bwd(ref, x), device, warmup=fwd_bwd(ref, x[:, :min(T, 4)]))
            row["eager_ms"], row["eager_calls_ms"] = r["ms"], r["calls_ms"]
            del ref
        except Exception as exc:  # noqa: BLE001
            row["eager_error"] = error_text(exc)
    else:
        row["eager_error"] = f"SKIPPED ({eager})" if eager else "SKIPPED"
    log(f"  {label} {row['size']}: eager {row.get('eager_ms', row.get('eager_error'))}")
    if compiled is True and compile_how:
        try:
            torch.manual_seed(0)
            cm = compiled_reference(graph, H, H, device, compile_how)
            r = bench(fwd_bwd(cm, x), device, reps=3, budget_s=2.0)
            row["compiled_ms"] = r["ms"]
            row["compile_s"] = max(0.0, (r["first_ms"] - r["ms"]) / 1e3)
            row["compile_how"] = compile_how
            del cm
        except Exception as exc:  # noqa: BLE001
            row["compiled_error"] = error_text(exc)
    else:
        row["compiled_error"] = f"SKIPPED ({compiled})" if isinstance(compiled, str) else "SKIPPED"
    log(f"  {label} {row['size']}: torch.compile {row.get('compiled_ms', row.get('compiled_error'))} "
        f"(compile {row.get('compile_s', '-')} s)")
    if "triton_ms" in row:
        for k in ("eager", "compiled"):
            if f"{k}_ms" in row:
                row[f"{k}_over_triton"] = row[f"{k}_ms"] / row["triton_ms"]
    return row


if __name__ == "__main__":
    import scan

    scan.main(["--only", "check,lstm,darts,random", *sys.argv[1:]])
