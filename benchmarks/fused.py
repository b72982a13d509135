"""The fused sequential kernels on the GPU: correctness against the reference backend, then
LSTM forward+backward against cuDNN.

    python benchmarks/fused.py [--quick]

Checks LSTM, GRU and a few supported NAS-Bench-NLP cells (fp32 without tf32, and bf16;
values and every gradient, against the reference backend in float64), then times LSTM
forward+backward at (B, T, H) = (16, 512, 256), (64, 512, 512), (256, 256, 1024) (input
size = H) for the fused kernel and torch.nn.LSTM (cuDNN) in the same run, printing
ratios. Prints markdown tables last and writes them (and JSON) under $OUT.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from common import device_name, md_table, out_dir, stamp, write_json  # noqa: E402

from nas.compile import build_rnn, choose_backend  # noqa: E402
from nas.space import load_space  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    if not torch.isfinite(a).all():
        return float("nan")
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def _output_reads_params(graph) -> bool:
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


def cells() -> list[tuple[str, object]]:
    out = [(n, load_space(ROOT / "searchspaces" / f"{n}.cell").instantiate({})) for n in ("lstm", "gru")]
    space = load_space(ROOT / "searchspaces" / "nasbench_nlp.cell")
    rng = random.Random(3)
    while len(out) < 5:
        g = space.instantiate(space.sample(rng))
        if choose_backend(g, "auto") == "fused" and "x" in g.live_nodes() and _output_reads_params(g):
            out.append((f"nasbench_nlp#{len(out) - 1}", g))
    return out


def check(quick: bool) -> list[list]:
    rows = []
    torch.backends.cuda.matmul.allow_tf32 = False
    for name, graph in cells():
        for (B, T, H) in ((8, 64, 128), (5, 33, 300)):
            for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 3e-2)):
                try:
                    torch.manual_seed(0)
                    ref = build_rnn(graph, H, H, 1, backend="reference").cuda().double()
                    fast = build_rnn(graph, H, H, 1, backend="triton").cuda().to(dtype)
                    fast.load_state_dict({k: v.to(dtype) for k, v in ref.state_dict().items()})
                    x = torch.randn(B, T, H, device="cuda", dtype=torch.float64)
                    o1, _ = ref(x)
                    o2, _ = fast(x.to(dtype))
                    g = torch.randn_like(o1)
                    g1 = torch.autograd.grad((o1 * g).sum(), list(ref.parameters()), allow_unused=True)
                    g2 = torch.autograd.grad((o2 * g.to(dtype)).sum(), list(fast.parameters()), allow_unused=True)
                    out_err = rel(o2, o1)
                    grad_err = max((rel(p, q) for p, q in zip(g2, g1) if q is not None and q.norm() > 0),
                                   default=0.0)
                    ok = out_err < tol and grad_err < tol
                    rows.append([name, f"{B}x{T}x{H}", str(dtype).replace("torch.", ""), out_err, grad_err,
                                 "ok" if ok else "FAIL"])
                except Exception as exc:  # noqa: BLE001 - report and go on
                    traceback.print_exc()
                    rows.append([name, f"{B}x{T}x{H}", str(dtype).replace("torch.", ""), "-", "-",
                                 f"ERROR {type(exc).__name__}"])
        if quick:
            break
    return rows


def bench(fn, reps: int = 3) -> float:
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    once = time.perf_counter() - t0
    n = max(1, min(reps, int(3.0 / max(once, 1e-6))))
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(n):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / n


def step(model, x):
    def run():
        out, _ = model(x)
        out.sum().backward()
    return run


def timings(quick: bool) -> list[list]:
    rows = []
    graph = load_space(ROOT / "searchspaces" / "lstm.cell").instantiate({})
    sizes = [(16, 512, 256), (64, 512, 512), (256, 256, 1024)]
    for (B, T, H) in sizes[:1] if quick else sizes:
        for dtype, tf32 in ((torch.float32, False), (torch.float32, True), (torch.bfloat16, False)):
            try:
                torch.backends.cuda.matmul.allow_tf32 = tf32
                torch.backends.cudnn.allow_tf32 = tf32
                ours = build_rnn(graph, H, H, 1, backend="triton").cuda().to(dtype)
                cudnn = torch.nn.LSTM(H, H, 1).cuda().to(dtype)
                cudnn.flatten_parameters()
                x = torch.randn(T, B, H, device="cuda", dtype=dtype, requires_grad=True)
                t_ours = bench(step(ours, x))
                t_cudnn = bench(step(cudnn, x))
                label = "fp32+tf32" if tf32 else str(dtype).replace("torch.", "")
                rows.append([f"{B}x{T}x{H}", label, t_ours, t_cudnn, t_ours / t_cudnn])
            except Exception as exc:  # noqa: BLE001
                traceback.print_exc()
                rows.append([f"{B}x{T}x{H}", str(dtype), "-", "-", f"ERROR {type(exc).__name__}"])
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    out = out_dir()
    t0 = time.time()
    check_rows = check(args.quick)
    print(md_table(["cell", "BxTxH", "dtype", "out rel err", "grad rel err", ""], check_rows), flush=True)
    time_rows = timings(args.quick)
    report = "\n\n".join([
        f"# Fused sequential kernels — {device_name()}, {stamp()}",
        "## Correctness vs reference (fp64)",
        md_table(["cell", "BxTxH", "dtype", "out rel err", "grad rel err", ""], check_rows),
        "## LSTM forward+backward (ms), fused vs cuDNN",
        md_table(["BxTxH", "dtype", "fused ms", "cuDNN ms", "fused/cuDNN"], time_rows),
        f"total {time.time() - t0:.0f} s",
    ])
    print(report)
    (out / "fused.md").write_text(report + "\n")
    write_json(out / "fused.json", {"check": check_rows, "timings": time_rows})


if __name__ == "__main__":
    main()
