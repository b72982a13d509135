"""Where the fused sequential kernel's time goes, and the scan kernel's tuning (development
probe for one GPU call; the numbers feed benchmarks/fused_notes.md, not RESULTS.md).

    python benchmarks/fused_probe.py [--parts scan,darts,lstm,ncu,tune,fp32,kp,bwd,prof,kc,kcbwd,next]

scan   the forward scan kernel (it prefetches the next tile) over (BLOCK_T, BLOCK_D, warps),
       against the device-to-device copy
darts  DARTS V2 (64, 512, 512) fp32: forward alone and forward+backward, for block choices,
       matmul precisions (ieee, tf32, tf32x3) and source variants of the generated kernel
       (no grid barrier: wrong results, timing only; K-loops fully unrolled)
lstm   the DSL LSTM at (256, 256, 1024) in fp32+tf32 and bf16 for block choices, with cuDNN
fp32   candidates for DARTS V2 in strict fp32 (wider tiles, tf32x3 with K slices);
       no correctness check: run `fused_tune.py --check-cells darts_v2` on a winner
tune   split-K (KS) and tile choices for every case of the issue's tables (rule vs variants)
kp     K groups (KP programs share a column block's K, then each finishes its rows) against
       the rule, DARTS V2 and the LSTM
bwd    the backward kernel's blocks alone (NAS_FUSED_BLOCKS_BWD), DARTS V2 fp32
kc     K groups over columns (KC), DARTS V2 and the LSTM in fp32; kcbwd: the backward's alone
next   queued, not yet run: the backward with one phase-B accumulator per linear (`bwdacc`)
prof   DARTS V2 fp32 under torch.profiler (the kernels' shares), and a GEMM on a second
       stream beside the fused kernel (does it overlap?)
ncu    Nsight Compute on one forward and one backward launch of DARTS V2 fp32 and of the
       LSTM tf32 (stall reasons, source counters): $OUT/ncu_*.txt; PROBE_NCU=darts picks the cases,
       PROBE_NCU_STALLS=1 measures only the stall reasons per issued instruction
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import os
import re
import subprocess
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from common import NCU_STALL_METRICS, device_name, log, md_table, out_dir, stamp  # noqa: E402
from fused import darts_v2, fwd_bwd, space, tf32  # noqa: E402
from triton.testing import do_bench  # noqa: E402

import nas.kernels.fused as KF  # noqa: E402
from nas.compile import build_rnn  # noqa: E402
from nas.kernels import scan as KS  # noqa: E402

REPORT: list[str] = []
_ORIGINAL = (KF.load, KF._prec)  # what `_patched` wraps and restores


def emit(title: str, headers: list[str], rows: list[list]) -> None:
    text = f"## {title}\n\n" + md_table(headers, rows)
    print(text, flush=True)
    REPORT.append(text)


# ---- scan ----------------------------------------------------------------------------------
def part_scan() -> None:
    B, D, T = 16, 1024, 4096
    n = B * D * T
    x = torch.randn(n, device="cuda")
    y = torch.empty_like(x)
    copy_ms = do_bench(lambda: y.copy_(x), warmup=25, rep=200, return_mode="median")
    copy_tbps = 2 * n * 4 / copy_ms / 1e9
    rows = [["copy", "-", "-", "-", copy_ms, copy_tbps, 1.0, "-"]]
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.rand(B, T, D, device="cuda", dtype=dtype) * 0.5 + 0.5
        b = torch.randn(B, T, D, device="cuda", dtype=dtype)
        h0 = torch.zeros(B, D, device="cuda", dtype=dtype)
        ref = KS.linear_scan_reference(a[:2, :300].double(), b[:2, :300].double())
        lib_ms = do_bench(lambda: KS.linear_scan(a, b), warmup=25, rep=200, return_mode="median")
        tb = 3 * n * a.element_size() / lib_ms / 1e9
        rows.append([f"linear_scan {str(dtype)[6:]}", "lib", "-", "-", lib_ms, tb, tb / copy_tbps, "-"])
        h = torch.empty_like(b)
        for kern_name, kern in (("fwd", KS._scan_fwd),):  # 2026-12-01 also the pre-prefetch kernel: RESULTS.md
            for bt in (64, 128, 256):
                for bd in (16, 32, 64, 128):
                    for warps in ((4, 8) if dtype == torch.float32 else (4,)):
                        if bt * bd > 16384 or bt * bd < 2048:
                            continue
                        grid = (B, triton.cdiv(D, bd))

                        def run(kern=kern, bt=bt, bd=bd, warps=warps, grid=grid):
                            kern[grid](a, b, h0, h, T, D, T * D, D, BLOCK_T=bt, BLOCK_D=bd, N_TILES=triton.cdiv(T, bt),
                                       ACC=tl.float32, num_warps=warps)
                        try:
                            run()
                            err = ((h[:2, :300].double() - ref).norm() / ref.norm()).item()
                            ms = do_bench(run, warmup=10, rep=100, return_mode="median")
                            tb = 3 * n * a.element_size() / ms / 1e9
                            rows.append([f"{kern_name} {str(dtype)[6:]}", bt, bd, warps, ms, tb, tb / copy_tbps, err])
                        except Exception as exc:  # noqa: BLE001
                            rows.append([f"{kern_name} {str(dtype)[6:]}", bt, bd, warps, f"ERROR {type(exc).__name__}",
                                         "-", "-", "-"])
        log(f"scan {dtype} done")
    best = sorted([r for r in rows[1:] if isinstance(r[4], float) and r[1] != "lib"], key=lambda r: r[4])[:12]
    emit(f"Scan forward (B, T, D) = ({B}, {T}, {D}), best 12 of {len(rows) - 1}", ["kernel", "BLOCK_T", "BLOCK_D", "warps", "ms", "TB/s",
         "of copy", "rel err"], rows[:3] + best)
    (out_dir() / "probe_scan_all.md").write_text(md_table(["kernel", "BLOCK_T", "BLOCK_D", "warps", "ms", "TB/s", "of copy",
                                                          "rel err"], rows))


# ---- fused kernel variants ------------------------------------------------------------------
def _bwd_acc_per_linear(src: str) -> str:
    """The backward's phase B (one K slice) with one accumulator per linear, summed after the
    K-loop, instead of every linear's dot chaining into the source's one (ncu, 2026-12-02 14:50:
    0.81 cycles per instruction of fixed-latency waits in the backward, 0.34 in the forward)."""
    lines, out, i = src.split("\n"), [], 0
    zeros = re.compile(r"^(\s*)(c\d+) = (tl\.zeros\(.*\))$")
    while i < len(lines):
        m = zeros.match(lines[i])
        if not m or i + 1 >= len(lines) or lines[i + 1].strip() != "for k in range(NK):":
            out.append(lines[i])
            i += 1
            continue
        ind, acc, init = m.groups()
        body, j = [], i + 2
        while j < len(lines) and (not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > len(ind)):
            body.append(lines[j])
            j += 1
        dot = re.compile(rf"^(\s*){acc} = tl\.dot\((d\d+), w_, acc={acc},")
        parts = [dm.group(2) for dm in map(dot.match, body) if dm]
        out += [f"{ind}{acc}_{d} = {init}" for d in parts] + [lines[i + 1]]
        def own(mm: re.Match) -> str:  # this linear's accumulator
            pad, d = mm.groups()
            return f"{pad}{acc}_{d} = tl.dot({d}, w_, acc={acc}_{d},"
        out += [dot.sub(own, b) for b in body]
        out.append(f"{ind}{acc} = " + " + ".join(f"{acc}_{d}" for d in parts) if parts else f"{ind}{acc} = {init}")
        i = j
    return "\n".join(out)


SOURCE_VARIANTS = {
    "base": lambda s: s,
    "nosync": lambda s: s.replace("if NPC > 1:", "if NPC > 1000000:"),  # wrong results: timing only
    "unrollK": lambda s: s.replace("for k in range(NK):", "for k in tl.static_range(NK):"),
    "bwdacc": _bwd_acc_per_linear,
}


@dataclasses.dataclass
class Variant:
    name: str
    blocks: str = ""  # NAS_FUSED_BLOCKS ('' = the rule)
    bwd_blocks: str = ""  # NAS_FUSED_BLOCKS_BWD ('' = as the forward)
    prec: str = ""  # '' = follow torch's flag
    source: str = "base"


def _patched(variant: Variant):
    """Install the variant: block override, precision and source transform of the generated kernel."""
    os.environ["NAS_FUSED_BLOCKS"] = variant.blocks
    os.environ["NAS_FUSED_BLOCKS_BWD"] = variant.bwd_blocks
    orig_load, orig_prec = _ORIGINAL
    transform = SOURCE_VARIANTS[variant.source]

    def load(spec):
        if variant.source == "base":
            return orig_load(spec)
        src = transform(spec.source)
        key = hashlib.sha256(src.encode()).hexdigest()[:16]
        return orig_load(dataclasses.replace(spec, source=src, key=key))

    KF.load = load
    KF._prec = (lambda dtype: variant.prec) if variant.prec else orig_prec


def time_variants(label: str, graph, B: int, T: int, H: int, dtype, allow_tf32: bool, variants: list[Variant],
                  cudnn: bool = False) -> list[list]:
    rows = []
    with tf32(allow_tf32):
        x = torch.randn(B, T, H, device="cuda", dtype=dtype, requires_grad=True)
        base = None
        if cudnn:
            m = torch.nn.LSTM(H, H, 1, batch_first=True).cuda().to(dtype)
            m.flatten_parameters()
            base = do_bench(fwd_bwd(m, x), warmup=25, rep=200, return_mode="median")
            rows.append([label, "cuDNN", "-", "-", base, 1.0])
        for v in variants:
            try:
                _patched(v)
                torch.manual_seed(0)
                model = build_rnn(graph, H, H, 1, backend="triton").cuda().to(dtype)
                fb = fwd_bwd(model, x)
                fb()
                torch.cuda.synchronize()

                def fwd_only():
                    with torch.no_grad():
                        model(x)
                f_ms = do_bench(fwd_only, warmup=10, rep=150, return_mode="median")
                fb_ms = do_bench(fb, warmup=10, rep=150, return_mode="median")
                blk = KF.choose_blocks(model.layers[0].spec, B, H, torch.device("cuda"), dtype)
                rows.append([label, v.name, f"{blk['BLOCK_B']},{blk['BLOCK_H']},{blk['BLOCK_K']},{blk['num_warps']}"
                             f" KS={blk['KS']} KP={blk['KP']} NPC={blk['NPC']}x{blk['NB']}", f_ms, fb_ms,
                             fb_ms / base if base else "-"])
                model = fb = None
            except Exception as exc:  # noqa: BLE001
                traceback.print_exc()
                rows.append([label, v.name, "-", f"ERROR {type(exc).__name__}: {str(exc)[:80]}", "-", "-"])
            log(f"{label} {v.name}: {rows[-1][3:]}")
        _patched(Variant("reset"))
    return rows


def part_darts() -> None:
    g = darts_v2()
    variants = [Variant("rule"), Variant("rule again"),
                Variant("nosync", source="nosync"), Variant("unrollK", source="unrollK"),
                Variant("stages1", blocks="16,16,32,4,1"), Variant("stages4", blocks="16,16,32,4,4"),
                Variant("BK16", blocks="16,16,16,4"), Variant("warps8", blocks="16,16,32,8"),
                Variant("warps2", blocks="16,16,32,2"),
                Variant("tf32", prec="tf32"), Variant("tf32x3", prec="tf32x3"),
                Variant("tf32x3 BK16", prec="tf32x3", blocks="16,16,16,4")]
    rows = time_variants("darts_v2 64x512x512 fp32", g, 64, 512, 512, torch.float32, False, variants)
    emit("DARTS V2 fused kernel variants", ["case", "variant", "blocks", "fwd ms", "fwd+bwd ms", "/ cuDNN"], rows)


def part_lstm() -> None:
    g = space("lstm").instantiate({})
    variants = [Variant("rule"), Variant("nosync", source="nosync"), Variant("64,32,32,4", blocks="64,32,32,4"),
                Variant("64,32,32,8,2", blocks="64,32,32,8,2"), Variant("32,32,32,4", blocks="32,32,32,4"),
                Variant("64,16,32,4", blocks="64,16,32,4"), Variant("128,16,32,8", blocks="128,16,32,8"),
                Variant("64,32,64,8", blocks="64,32,64,8"), Variant("unrollK", source="unrollK")]
    rows = time_variants("lstm 256x256x1024 fp32+tf32", g, 256, 256, 1024, torch.float32, True, variants, cudnn=True)
    rows += time_variants("lstm 256x256x1024 bf16", g, 256, 256, 1024, torch.bfloat16, False, variants[:1] + variants[2:],
                          cudnn=True)
    emit("LSTM (256, 256, 1024) fused kernel variants", ["case", "variant", "blocks", "fwd ms", "fwd+bwd ms",
                                                         "/ cuDNN"], rows)


def _vs(specs: str) -> list[Variant]:
    """'name=blocks[@prec]' items separated by ';' ('rule' = no override)."""
    out = []
    for item in specs.split(";"):
        name, _, rest = item.partition("=")
        blocks, _, prec = rest.partition("@")
        out.append(Variant(name, blocks=blocks, prec=prec))
    return out


def part_tune() -> None:
    """Split-K (KS) and tile choices for the block rule, every case of the issue's tables."""
    lstm, v2 = space("lstm").instantiate({}), darts_v2()
    cases = [
        ("darts_v2 64x512x512 fp32", v2, (64, 512, 512), torch.float32, False, False,
         "rule=;KS2=16,16,32,4,0,2;KS1=16,16,32,4,0,1;w8KS4=16,16,32,8,0,4;w8KS8=16,16,32,8,0,8;BK16KS4=16,16,16,4,0,4"),
        ("darts_v2 64x512x512 tf32", v2, (64, 512, 512), torch.float32, True, False, "rule=;KS1=16,16,32,4,0,1"),
        ("lstm 256x256x1024 tf32", lstm, (256, 256, 1024), torch.float32, True, True,
         "rule=;128x16w8=128,16,32,8;128x16w4=128,16,32,4;64x32w4=64,32,32,4;64x32w8KS2=64,32,32,8,0,2;"
         "32x32KS2=32,32,32,4,0,2;128x16w8KS2=128,16,32,8,0,2"),
        ("lstm 256x256x1024 bf16", lstm, (256, 256, 1024), torch.bfloat16, False, True,
         "rule=;128x16w8=128,16,64,8;64x32w4=64,32,64,4;128x16w8BK32=128,16,32,8;64x32w8KS2=64,32,64,8,0,2"),
        ("lstm 256x256x1024 fp32", lstm, (256, 256, 1024), torch.float32, False, True, "rule=;128x16w8=128,16,32,8"),
        ("lstm 64x512x512 fp32", lstm, (64, 512, 512), torch.float32, False, True, "rule=;KS1=16,16,32,4,0,1"),
        ("lstm 64x512x512 tf32", lstm, (64, 512, 512), torch.float32, True, True, "rule=;KS1=16,16,32,4,0,1"),
        ("lstm 64x512x512 bf16", lstm, (64, 512, 512), torch.bfloat16, False, True, "rule=;KS1=16,16,32,4,0,1"),
        ("lstm 16x512x256 fp32", lstm, (16, 512, 256), torch.float32, False, True, "rule=;KS1=16,16,32,4,0,1"),
        ("lstm 16x512x256 bf16", lstm, (16, 512, 256), torch.bfloat16, False, True, "rule=;KS1=16,16,32,4,0,1"),
    ]
    run_cases("Split-K and tiles (so far)", cases)


def run_cases(title: str, cases: list[tuple]) -> None:
    """Time every case's variants, emitting the table after each case (a cut run keeps them)."""
    rows = []
    for label, g, (B, T, H), dtype, on, cudnn, specs in cases:
        rows += time_variants(label, g, B, T, H, dtype, on, _vs(specs), cudnn=cudnn)
        emit(title, ["case", "variant", "blocks", "fwd ms", "fwd+bwd ms", "/ cuDNN"], rows)


def part_fp32() -> None:
    """Candidates for DARTS V2 in strict fp32: tf32x3 with K slices, wider tiles (H200,
    2026-12-01 23:15: none beat the rule's 73 ms; RESULTS.md)."""
    variants = [Variant("rule"), Variant("tf32x3 KS4", blocks="16,16,32,4,0,4", prec="tf32x3"),
                Variant("tf32x3 KS2", blocks="16,16,32,4,0,2", prec="tf32x3"),
                Variant("tf32x3 KS4 BK16", blocks="16,16,16,4,0,4", prec="tf32x3"),
                Variant("tf32x3 KS2 KP2", blocks="16,16,32,4,0,2,2", prec="tf32x3"),
                Variant("16x32 w8", blocks="16,32,32,8,0,1")]
    rows = time_variants("darts_v2 64x512x512 fp32", darts_v2(), 64, 512, 512, torch.float32, False, variants)
    emit("DARTS V2 strict fp32 candidates", ["case", "variant", "blocks", "fwd ms", "fwd+bwd ms", "/ cuDNN"], rows)


def part_kp() -> None:
    """K groups (KP programs share a column block over a tile of KP * BLOCK_B rows, each summing
    one KP-th of K, then each finishing its own BLOCK_B rows) against the rule."""
    lstm, v2 = space("lstm").instantiate({}), darts_v2()
    cases = [
        ("darts_v2 64x512x512 fp32", v2, (64, 512, 512), torch.float32, False, False,
         "rule=;KP2=16,16,32,4,0,1,2;KP4=16,16,32,4,0,1,4;KP8 BB8=8,16,32,4,0,1,8;KP8 BB8 BH32=8,32,32,4,0,1,8;"
         "KP4 BH32=16,32,32,4,0,1,4;KP4 w8=16,16,32,8,0,1,4;KP8 BB8 BH32 w8=8,32,32,8,0,1,8;"
         "KP4 BK64=16,16,64,4,0,1,4;KP4 BK16=16,16,16,4,0,1,4;KP4 st2=16,16,32,4,2,1,4"),
        ("lstm 64x512x512 fp32", lstm, (64, 512, 512), torch.float32, False, True,
         "rule=;KP4=16,16,32,4,0,1,4;KP8 BB8 BH32=8,32,32,4,0,1,8;KP2=16,16,32,4,0,1,2"),
        ("lstm 16x512x256 fp32", lstm, (16, 512, 256), torch.float32, False, True,
         "rule=;KP2 BB8=8,16,32,4,0,1,2;KP4 BB4=4,16,32,4,0,1,4"),
        ("lstm 256x256x1024 fp32", lstm, (256, 256, 1024), torch.float32, False, True,
         "rule=;KP2 64x32w8=64,32,32,8,0,1,2;KP4 32x32=32,32,32,4,0,1,4"),
        ("darts_v2 64x512x512 tf32", v2, (64, 512, 512), torch.float32, True, False,
         "rule=;KP4=16,16,32,4,0,0,4;KP4 KS1=16,16,32,4,0,1,4"),
        ("lstm 64x512x512 tf32", lstm, (64, 512, 512), torch.float32, True, True, "rule=;KP4=16,16,32,4,0,0,4"),
        ("lstm 64x512x512 bf16", lstm, (64, 512, 512), torch.bfloat16, False, True, "rule=;KP4=16,16,32,4,0,0,4"),
        ("lstm 16x512x256 bf16", lstm, (16, 512, 256), torch.bfloat16, False, True, "rule=;KP2 BB8=8,16,32,4,0,0,2"),
        ("lstm 256x256x1024 bf16", lstm, (256, 256, 1024), torch.bfloat16, False, True,
         "rule=;KP2 64x32=64,32,64,4,0,0,2"),
    ]
    run_cases("K groups", cases)


def part_bwd() -> None:
    """The backward kernel's blocks alone (NAS_FUSED_BLOCKS_BWD) for DARTS V2 fp32: K groups
    with short K tiles and one stage keep its products in registers (sm_90, compiled on the
    CPU: no spills, where the forward with K groups spills)."""
    variants = [Variant("rule")] + [Variant(f"bwd {b}", bwd_blocks=b) for b in (
        "16,16,16,4,1,1,4", "16,16,16,4,1,1,2", "16,16,16,8,1,1,4", "16,16,16,4,1,1,1",
        "16,16,32,4,1,1,1", "16,16,32,4,2,1,1", "16,16,16,4,2,1,4")]
    rows = time_variants("darts_v2 64x512x512 fp32", darts_v2(), 64, 512, 512, torch.float32, False, variants)
    emit("DARTS V2 fp32: the backward kernel's blocks", ["case", "variant", "blocks", "fwd ms", "fwd+bwd ms", "/ cuDNN"],
         rows)


def part_kc() -> None:
    """K groups over columns (KC = KP: the group's product tile is KP column blocks wide, each
    program sums one KP-th of K over it, then finishes its own block): the products-alone probe
    (fma_layout_probe.py, 2026-12-02 13:40) ran 16x128 FMA tiles at 24.8 TFLOP/s against 14.1
    for the kernel's 16x16 ones."""
    lstm, v2 = space("lstm").instantiate({}), darts_v2()
    kc = ("KC4 BK16=16,16,16,4,0,1,4,4;KC4 BK16 st1=16,16,16,4,1,1,4,4;KC8 BK16=16,16,16,4,0,1,8,8;"
          "KC8 BK16 st1=16,16,16,4,1,1,8,8;KC8=16,16,32,4,0,1,8,8;KC2=16,16,32,4,0,1,2,2;"
          "KC8 BK16 w8=16,16,16,8,0,1,8,8")
    cases = [("darts_v2 64x512x512 fp32", v2, (64, 512, 512), torch.float32, False, False, "rule=;" + kc),
             ("lstm 64x512x512 fp32", lstm, (64, 512, 512), torch.float32, False, True,
              "rule=;KC4 BK16=16,16,16,4,0,1,4,4;KC8 BK16=16,16,16,4,0,1,8,8"),
             ("lstm 256x256x1024 fp32", lstm, (256, 256, 1024), torch.float32, False, True,
              "rule=;KC8 BK16=16,16,16,4,0,1,8,8;KC4 BK16=16,16,16,4,0,1,4,4")]
    run_cases("K groups over columns", cases)


def part_kcbwd() -> None:
    """The backward kernel alone with K groups over columns (its products are only H wide per
    source; at 14:03 KC 8 with 8 warps in both kernels left the backward 1.5 ms faster)."""
    variants = [Variant("rule")] + [Variant(f"bwd {b}", bwd_blocks=b) for b in (
        "16,16,16,8,0,1,8,8", "16,16,16,8,1,1,8,8", "16,16,16,8,1,1,4,4", "16,16,16,4,1,1,4,4")]
    rows = time_variants("darts_v2 64x512x512 fp32", darts_v2(), 64, 512, 512, torch.float32, False, variants)
    emit("DARTS V2 fp32: the backward with K groups over columns", ["case", "variant", "blocks", "fwd ms",
                                                                    "fwd+bwd ms", "/ cuDNN"], rows)


def part_next() -> None:
    """Queued for the next device session (2026-12-02): the backward with one accumulator per
    linear in phase B (`bwdacc`; float64-checked on the CPU: 5e-16 for DARTS V2 and the LSTM;
    sm_90 code compiled on the CPU: 255 registers, 24 B of stack), alone and with the backward's
    K groups over columns (KC 8, 8 warps: 71.3 vs 73.2 ms at 14:19)."""
    variants = [Variant("rule"), Variant("bwd acc per linear", source="bwdacc"),
                Variant("bwd acc per linear + bwd KC8 w8", source="bwdacc", bwd_blocks="16,16,16,8,0,1,8,8"),
                Variant("bwd KC8 w8", bwd_blocks="16,16,16,8,0,1,8,8")]
    rows = time_variants("darts_v2 64x512x512 fp32", darts_v2(), 64, 512, 512, torch.float32, False, variants)
    rows += time_variants("lstm 64x512x512 fp32", space("lstm").instantiate({}), 64, 512, 512, torch.float32, False,
                          variants[:2], cudnn=True)
    emit("The backward's accumulators", ["case", "variant", "blocks", "fwd ms", "fwd+bwd ms", "/ cuDNN"], rows)


def part_prof() -> None:
    """Where DARTS V2's fp32 forward+backward goes (the CUDA kernels, torch.profiler), and
    whether a weight-gradient-sized GEMM on a second stream overlaps the fused kernel (the
    fused kernel keeps one program per SM, issuing an instruction every ~3 cycles per scheduler;
    a co-resident GEMM could use the rest)."""
    from torch.profiler import ProfilerActivity, profile
    g, (B, T, H) = darts_v2(), (64, 512, 512)
    with tf32(False):
        torch.manual_seed(0)
        model = build_rnn(g, H, H, 1, backend="triton").cuda()
        x = torch.randn(B, T, H, device="cuda", requires_grad=True)
        fb = fwd_bwd(model, x)
        for _ in range(3):
            fb()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                fb()
            torch.cuda.synchronize()
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=30)
        print(table, flush=True)
        REPORT.append("## DARTS V2 (64, 512, 512) fp32 forward+backward, 3 calls, CUDA kernels\n\n```\n" + table + "\n```")

        def fwd_only():
            with torch.no_grad():
                model(x)
        dp = torch.randn(T * B, 18 * H, device="cuda")
        vals = torch.randn(T * B, H, device="cuda")
        side = torch.cuda.Stream()

        def gemm():
            return dp.t() @ vals

        def both(gemm_first: bool):
            def run():
                ev = torch.cuda.Event()
                ev.record()
                if not gemm_first:
                    fwd_only()
                with torch.cuda.stream(side):
                    side.wait_event(ev)
                    gemm()
                if gemm_first:
                    fwd_only()
                torch.cuda.current_stream().wait_stream(side)
            return run
        rows = []
        for name, fn in (("fused forward alone", fwd_only), ("GEMM (9216 x 32768) @ (32768 x 512) alone", gemm),
                         ("both, fused launched first", both(False)), ("both, GEMM launched first", both(True)),
                         ("forward+backward (rule)", fb)):
            rows.append([name, do_bench(fn, warmup=5, rep=60, return_mode="median")])
            log(f"prof {rows[-1]}")
        emit("A GEMM on a second stream beside the fused kernel (DARTS V2 fp32)", ["case", "ms"], rows)


def ncu_target(which: str) -> None:
    """One forward+backward (the launches ncu profiles)."""
    if which == "darts":
        g, (B, T, H), dtype, on = darts_v2(), (64, 512, 512), torch.float32, False
    else:
        g, (B, T, H), dtype, on = space("lstm").instantiate({}), (256, 256, 1024), torch.float32, True
    with tf32(on):
        model = build_rnn(g, H, H, 1, backend="triton").cuda().to(dtype)
        x = torch.randn(B, T, H, device="cuda", dtype=dtype, requires_grad=True)
        fwd_bwd(model, x)()
        torch.cuda.synchronize()


def part_ncu() -> None:
    sections = ["SpeedOfLight", "Occupancy", "LaunchStats", "WarpStateStats", "SchedulerStats",
                "MemoryWorkloadAnalysis", "ComputeWorkloadAnalysis", "InstructionStats", "SourceCounters"]
    for which in os.environ.get("PROBE_NCU", "darts,lstm").split(","):  # which cases
        import glob
        import shutil
        exe = shutil.which("ncu") or next(iter(sorted(glob.glob("/opt/nvidia/nsight-compute/*/ncu"))), "ncu")
        cmd = [exe, "--clock-control", "none", "--kernel-name", "regex:^(fwd|bwd)$", "--launch-count", "2"]
        if os.environ.get("PROBE_NCU_STALLS"):  # only the stall reasons per issued instruction (quick)
            cmd += ["--metrics", NCU_STALL_METRICS]
        else:
            for s in sections:
                cmd += ["--section", s]
        cmd += [sys.executable, __file__, "--ncu-target", which]
        log("ncu " + which)
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=200)
            (out_dir() / f"ncu_{which}.txt").write_text(res.stdout + "\n--- stderr ---\n" + res.stderr)
            print(res.stdout[-6000:], flush=True)
        except Exception as exc:  # noqa: BLE001
            print(f"ncu {which}: {exc}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="darts,ncu,scan,lstm")
    ap.add_argument("--ncu-target", default="")
    args = ap.parse_args()
    if args.ncu_target:
        ncu_target(args.ncu_target)
        return
    logging.basicConfig(format="%(name)s: %(message)s")
    logging.getLogger("nas.kernels.fused").setLevel(logging.INFO)  # fallbacks and residency
    log(f"probe on {device_name()}")
    for part in args.parts.split(","):
        try:
            {"scan": part_scan, "darts": part_darts, "lstm": part_lstm, "ncu": part_ncu, "tune": part_tune,
             "fp32": part_fp32, "kp": part_kp, "bwd": part_bwd,
             "prof": part_prof, "kc": part_kc,
             "kcbwd": part_kcbwd, "next": part_next}[part]()
        except Exception:  # noqa: BLE001
            traceback.print_exc()
        (out_dir() / "probe.md").write_text(f"# Fused/scan probe — {device_name()}, {stamp()}\n\n" + "\n\n".join(REPORT))


if __name__ == "__main__":
    main()
