"""Tuning probe for the fused sequential kernel's blocks on the GPU (development tool).

    python benchmarks/fused_tune.py [--quick]

1. Correctness at sizes where the hidden columns are split across programs (the grid
   barrier in use): LSTM, GRU, the DARTS V2 cell and random darts_ptb / enas_ptb /
   nasbench_nlp cells, fp32 (no tf32) and bf16, against the float64 reference; each fast
   run twice on the same inputs (a difference between the two is a race).
2. Forward+backward times for the block choices in VARIANTS (NAS_FUSED_BLOCKS) and the
   default rule, for the LSTM at the issue's sizes (against cuDNN) and DARTS V2 at
   (64, 512, 512) fp32.
Prints markdown tables; writes $OUT/fused_tune.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from common import device_name, md_table, out_dir, stamp  # noqa: E402
from fused import fwd_bwd  # noqa: E402
from triton.testing import do_bench  # noqa: E402

from nas.compile import build_rnn  # noqa: E402
from nas.genotypes import darts_assignment  # noqa: E402
from nas.kernels.fused import choose_blocks  # noqa: E402
from nas.space import load_space  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ["", "16,16,32,4", "32,32,32,4", "64,32,32,8"]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    if not torch.isfinite(a).all():
        return float("nan")
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def cells(quick: bool) -> list[tuple[str, object]]:
    out = [(n, load_space(ROOT / "searchspaces" / f"{n}.cell").instantiate({})) for n in ("lstm", "gru")]
    darts = load_space(ROOT / "searchspaces" / "darts_ptb.cell")
    out.append(("darts_v2", darts.instantiate(darts_assignment(darts))))
    for name in ("darts_ptb", "enas_ptb", "nasbench_nlp"):
        space = load_space(ROOT / "searchspaces" / f"{name}.cell")
        rng = random.Random(5)
        for i in range(1 if quick else 2):
            out.append((f"{name}#{i}", space.instantiate(space.sample(rng))))
    return out


def check(quick: bool, only: str = "") -> list[list]:
    rows = []
    torch.backends.cuda.matmul.allow_tf32 = False
    sizes = [(64, 24, 512), (5, 33, 300)]
    for name, graph in cells(quick):
        if only and name not in only.split(","):
            continue
        for (B, T, H) in sizes[:1] if only else sizes:
            for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 3e-2)):
                try:
                    torch.manual_seed(0)
                    ref = build_rnn(graph, H, H, 1, backend="reference").cuda().double()
                    fast = build_rnn(graph, H, H, 1, backend="triton").cuda().to(dtype)
                    fast.load_state_dict({k: v.to(dtype) for k, v in ref.state_dict().items()})
                    x = torch.randn(B, T, H, device="cuda", dtype=torch.float64) * 0.5
                    o1, _ = ref(x)
                    if not torch.isfinite(o1).all():
                        rows.append([name, f"{B}x{T}x{H}", str(dtype)[6:], "-", "-", "-", "unstable in fp64"])
                        continue
                    g = torch.randn_like(o1)
                    g1 = torch.autograd.grad((o1 * g).sum(), list(ref.parameters()), allow_unused=True)
                    runs = []
                    for _ in range(2):
                        o2, _ = fast(x.to(dtype))
                        g2 = torch.autograd.grad((o2 * g.to(dtype)).sum(), list(fast.parameters()), allow_unused=True)
                        runs.append((o2, g2))
                    (o2, g2), (o3, g3) = runs
                    same = torch.equal(o2, o3) and all((a is None and b is None) or torch.equal(a, b)
                                                       for a, b in zip(g2, g3))
                    out_err = rel(o2, o1)
                    grad_err = max((rel(p, q) for p, q in zip(g2, g1) if q is not None and q.norm() > 0), default=0.0)
                    ok = out_err < tol and grad_err < tol and same
                    blocks = choose_blocks(fast.layers[0].spec, B, H, torch.device("cuda"))
                    rows.append([name, f"{B}x{T}x{H}", str(dtype)[6:], out_err, grad_err,
                                 f"NPC={blocks['NPC']} BB={blocks['BLOCK_B']} BH={blocks['BLOCK_H']} "
                                 f"KP={blocks['KP']} KC={blocks['KC']}",
                                 ("ok" if ok else "FAIL") + ("" if same else " (RACE: runs differ)")])
                except Exception as exc:  # noqa: BLE001
                    traceback.print_exc()
                    rows.append([name, f"{B}x{T}x{H}", str(dtype)[6:], "-", "-", "-", f"ERROR {type(exc).__name__}"])
                print(rows[-1], flush=True)
    return rows


def timings(quick: bool, variants: list[str], only: str) -> list[list]:
    rows = []
    lstm = load_space(ROOT / "searchspaces" / "lstm.cell").instantiate({})
    darts = load_space(ROOT / "searchspaces" / "darts_ptb.cell")
    v2 = darts.instantiate(darts_assignment(darts))
    cases = [("lstm", lstm, (16, 512, 256)), ("lstm", lstm, (64, 512, 512)), ("lstm", lstm, (256, 256, 1024)),
             ("darts_v2", v2, (64, 512, 512))]
    for name, graph, (B, T, H) in cases[-1:] + cases[:-1] if not quick else cases[:1]:
        for dtype, tf32 in ((torch.float32, False), (torch.float32, True), (torch.bfloat16, False)):
            if name == "darts_v2" and dtype != torch.float32:
                continue
            label = "fp32+tf32" if tf32 else str(dtype)[6:]
            if only and f"{name}:{B}:{label}" not in only.split(","):
                continue
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32
            x = torch.randn(T, B, H, device="cuda", dtype=dtype, requires_grad=True)
            base = None
            if name == "lstm":
                cudnn = torch.nn.LSTM(H, H, 1).cuda().to(dtype)
                cudnn.flatten_parameters()
                base = do_bench(fwd_bwd(cudnn, x), warmup=50, rep=300)
            for v in variants:
                os.environ["NAS_FUSED_BLOCKS"] = v
                try:
                    ours = build_rnn(graph, H, H, 1, backend="triton", batch_first=False).cuda().to(dtype)
                    ms = do_bench(fwd_bwd(ours, x), warmup=50, rep=300)
                    b = choose_blocks(ours.layers[0].spec, B, H, torch.device("cuda"))
                    rows.append([name, f"{B}x{T}x{H}", label, v or "rule", f"NPC={b['NPC']} NB={b['NB']}", ms,
                                 base if base is not None else "-", ms / base if base else "-"])
                except Exception as exc:  # noqa: BLE001
                    traceback.print_exc()
                    rows.append([name, f"{B}x{T}x{H}", label, v or "rule", "-", f"ERROR {type(exc).__name__}", "-", "-"])
                print(rows[-1], flush=True)
            os.environ["NAS_FUSED_BLOCKS"] = ""
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--skip-check", action="store_true")
    ap.add_argument("--variants", default=";".join(VARIANTS), help="';'-separated NAS_FUSED_BLOCKS values ('' = the rule)")
    ap.add_argument("--check-cells", default="", help="comma-separated cell names to check (first size only)")
    ap.add_argument("--only", default="", help="comma-separated name:B:dtype cases, e.g. lstm:256:bfloat16")
    args = ap.parse_args()
    logging.basicConfig(format="%(name)s: %(message)s")
    logging.getLogger("nas.kernels.fused").setLevel(logging.INFO)  # fallbacks and residency
    check_rows = [] if args.skip_check else check(args.quick, args.check_cells)
    time_rows = timings(args.quick, args.variants.split(";"), args.only)
    report = "\n\n".join([
        f"# Fused kernel tuning — {device_name()}, {stamp()}",
        md_table(["cell", "BxTxH", "dtype", "out rel err", "grad rel err", "blocks", ""], check_rows),
        md_table(["cell", "BxTxH", "dtype", "blocks (BB,BH,BK,warps)", "grid", "fused ms", "cuDNN ms", "ratio"],
                 time_rows),
    ])
    print(report)
    (out_dir() / "fused_tune.md").write_text(report + "\n")


if __name__ == "__main__":
    main()
