"""The scan core on the GPU: correctness against the reference backend, then speed.

    python benchmarks/scan.py [--data .bench_data/input.txt] [--quick]

Checks (fp32 and bf16, values and gradients, every cell of the scan family), then times
in the same run: device-to-device copy bandwidth, the scan's forward bandwidth and
forward+backward at minGRU's (B, D, T) = (16, 1024, 4096), the scan versus the eager
sequential loop over T, a whole minGRU layer on the triton versus the reference backend,
and a short Tiny Shakespeare trial of a minGRU model on each backend.
Prints a markdown report and writes it (and JSON) under $OUT.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from common import device_name, md_table, out_dir, stamp, write_json  # noqa: E402
from triton.testing import do_bench  # noqa: E402

from nas.compile import build_rnn  # noqa: E402
from nas.kernels.scan import linear_scan, linear_scan_reference  # noqa: E402
from nas.space import load_space  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    if not torch.isfinite(a).all():
        return float("nan")
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def check_cells() -> list[list]:
    rows = []
    for name in ("mingru", "linear_scan"):
        space = load_space(ROOT / "searchspaces" / f"{name}.cell")
        for a in space.enumerate():
            if a.get("model.layers", 0) != 0:
                continue
            graph = space.instantiate(a)
            for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
                torch.manual_seed(0)
                ref = build_rnn(graph, 64, 128, 1, backend="reference").cuda().double()
                fast = build_rnn(graph, 64, 128, 1, backend="triton").cuda().to(dtype)
                fast.load_state_dict({k: v.to(dtype) for k, v in ref.state_dict().items()})
                x = torch.randn(8, 300, 64, device="cuda", dtype=torch.float64)
                o1, _ = ref(x)
                o2, _ = fast(x.to(dtype))
                g = torch.randn_like(o1)
                g1 = torch.autograd.grad((o1 * g).sum(), list(ref.parameters()))
                g2 = torch.autograd.grad((o2 * g.to(dtype)).sum(), list(fast.parameters()))
                out_err = rel(o2, o1)
                grad_err = max(rel(p, q) for p, q in zip(g2, g1))
                ok = out_err < tol and grad_err < tol
                rows.append([name, str({k: v for k, v in a.items() if not k.startswith("model.")}),
                             str(dtype).replace("torch.", ""), out_err, grad_err, "ok" if ok else "FAIL"])
    return rows


def timings(quick: bool) -> dict:
    res: dict = {}
    B, D, T = 16, 1024, 4096
    n = B * D * T
    x = torch.randn(n, device="cuda")
    y = torch.empty_like(x)
    t_copy = do_bench(lambda: y.copy_(x))
    res["copy_ms"] = t_copy
    res["copy_TBps"] = 2 * n * 4 / t_copy / 1e9
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.rand(B, T, D, device="cuda", dtype=dtype) * 0.5 + 0.5
        b = torch.randn(B, T, D, device="cuda", dtype=dtype)
        h = linear_scan(a, b)
        ref = linear_scan_reference(a[:2, :256].float(), b[:2, :256].float())
        res[f"scan_check_{dtype}"] = rel(h[:2, :256], ref)
        t_fwd = do_bench(lambda: linear_scan(a, b))
        el = a.element_size()
        res[f"scan_fwd_ms_{dtype}"] = t_fwd
        res[f"scan_fwd_TBps_{dtype}"] = 3 * n * el / t_fwd / 1e9
        a.requires_grad_(True)
        b.requires_grad_(True)
        gout = torch.randn(B, T, D, device="cuda", dtype=dtype)

        def fwd_bwd():
            out = linear_scan(a, b)
            torch.autograd.grad(out, (a, b), gout)

        res[f"scan_fwdbwd_ms_{dtype}"] = do_bench(fwd_bwd)
    # scan versus the eager sequential loop, fwd+bwd, fp32
    res["vs_loop"] = []
    for t in (64, 256, 1024) if quick else (64, 256, 1024, 4096):
        a = (torch.rand(B, t, D, device="cuda") * 0.5 + 0.5).requires_grad_(True)
        b = torch.randn(B, t, D, device="cuda", requires_grad=True)
        g = torch.randn(B, t, D, device="cuda")
        ts = do_bench(lambda: torch.autograd.grad(linear_scan(a, b), (a, b), g))
        tl_ = do_bench(lambda: torch.autograd.grad(linear_scan_reference(a, b), (a, b), g), rep=200)
        res["vs_loop"].append([t, ts, tl_, tl_ / ts])
    # a whole minGRU layer, both backends, fwd+bwd
    graph = load_space(ROOT / "searchspaces" / "mingru.cell").instantiate({})
    res["layer"] = []
    for (bb, tt, hh) in ((16, 1024, 1024), (64, 256, 512)):
        x = torch.randn(bb, tt, hh, device="cuda")
        row = [f"({bb}, {tt}, {hh})"]
        for backend in ("triton", "reference"):
            rnn = build_rnn(graph, hh, hh, 1, backend=backend).cuda()

            def step():
                out, _ = rnn(x)
                out.sum().backward()

            row.append(do_bench(step, rep=300))
        row.append(row[2] / row[1])
        res["layer"].append(row)
    return res


def trial_effect(data: str, steps: int) -> list[list]:
    from nas.config import ModelConfig, TaskSpec, TrainConfig
    from nas.tasks import make_task, train_trial

    graph = load_space(ROOT / "searchspaces" / "mingru.cell").instantiate({})
    task = make_task(TaskSpec(name="char_lm", args=(data,)))
    rows = []
    for backend in ("triton", "reference"):
        cfg = TrainConfig(steps=steps, batch_size=64, seq_len=256, lr=2e-3, eval_every=steps, backend=backend)
        t0 = time.time()
        r = train_trial(task, lambda i, h, n, d: build_rnn(graph, i, h, n, d, batch_first=True, backend=backend),
                        ModelConfig(embed=256, hidden=512, layers=2), cfg, seed=0, device="cuda")
        rows.append([backend, r.status, r.metrics.get("val_loss"), r.metrics.get("tokens_per_s"), time.time() - t0])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default="../shared/data/tinyshakespeare/input.txt")
    ap.add_argument("--trial-steps", type=int, default=200)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    checks = check_cells()
    print(md_table(["space", "cell", "dtype", "out rel err", "grad rel err", ""], checks), flush=True)
    t = timings(args.quick)
    print(t, flush=True)
    trial = trial_effect(args.data, args.trial_steps) if Path(args.data).exists() else []
    failed = sum(r[-1] != "ok" for r in checks)
    lines = [f"### Scan core ({stamp()})", "", f"Device: {device_name()}  ",
             "Command: `python benchmarks/scan.py --data .bench_data/input.txt`", "",
             f"Correctness: {len(checks) - failed}/{len(checks)} checks within tolerance (fp32 < 1e-5, bf16 < 2e-2 "
             "relative to the float64 reference backend, values and all parameter gradients; B=8, T=300, H=128).", "",
             md_table(["measure", "value"], [
                 ["device-to-device copy (read+write)", f"{t['copy_TBps']:.2f} TB/s"],
                 ["scan forward fp32, (B,T,D)=(16,4096,1024)", f"{t['scan_fwd_ms_torch.float32']:.3f} ms, "
                  f"{t['scan_fwd_TBps_torch.float32']:.2f} TB/s = {t['scan_fwd_TBps_torch.float32'] / t['copy_TBps']:.0%} of copy"],
                 ["scan forward bf16", f"{t['scan_fwd_ms_torch.bfloat16']:.3f} ms, "
                  f"{t['scan_fwd_TBps_torch.bfloat16']:.2f} TB/s = {t['scan_fwd_TBps_torch.bfloat16'] / t['copy_TBps']:.0%} of copy"],
                 ["scan forward+backward fp32", f"{t['scan_fwdbwd_ms_torch.float32']:.3f} ms"],
                 ["scan forward+backward bf16", f"{t['scan_fwdbwd_ms_torch.bfloat16']:.3f} ms"],
             ]), "",
             "Scan versus the eager sequential loop (the recurrence alone, fwd+bwd, fp32, B=16, D=1024):", "",
             md_table(["T", "scan ms", "eager loop ms", "loop / scan"], t["vs_loop"]), "",
             "A whole minGRU layer (`searchspaces/mingru.cell`, input projections included), fwd+bwd, fp32:", "",
             md_table(["(B, T, H)", "triton ms", "reference ms", "reference / triton"], t["layer"]), ""]
    if trial:
        lines += [f"Effect on a search trial: minGRU char-LM on Tiny Shakespeare, 2 layers x 512, batch 64, "
                  f"BPTT 256, {args.trial_steps} steps:", "",
                  md_table(["backend", "status", "val loss", "train tokens/s", "wall s"], trial), ""]
    text = "\n".join(lines)
    print(text)
    out = out_dir()
    write_json(out / "scan.json", {"checks": checks, "timings": t, "trial": trial})
    (out / "scan.md").write_text(text)


if __name__ == "__main__":
    main()
