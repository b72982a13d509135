"""Where the fused sequential kernel's time goes, and the scan kernel's tuning (development
probe for one GPU call; the numbers feed benchmarks/fused_notes.md, not RESULTS.md).

    python benchmarks/fused_probe.py [--parts scan,darts,lstm,ncu,tune,fp32,kp,bwd,prof,kc,kcbwd,next,
                                              stack,timeline,wgrad,xchg,small]

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
next   independent FMA chains: one phase-B accumulator per linear (`bwdacc`), K-loops
       alternating between two accumulator copies (`kint2`); PROBE_NEXT picks variants
stack  stacked FMA products (codegen.stacked_products) for block choices and STACK_MAX;
       PROBE_STACK=2..7 the later rounds (stages and the backward beside them, its K groups,
       8 warps, one pipeline stage, the forward in K groups over columns, runs of 4 in small
       cells)
timeline  clock64 stamps per pass phase inside the kernels (PROBE_TL_BLOCKS / _BWD / _STACK
       pin a config; PROBE_TL_CELL=nasbench_nlp#1@64x256x512 a random cell instead): where a
       pass's time goes
xchg   the backward's K-group exchange: without its barrier, its loads, either, any barrier
       (timing only)
wgrad  the weight-gradient GEMMs in K chunks, and one bias column sum against 18
small  small random cells (nasbench_nlp#0-2 at (64, 256, 512) fp32): a call's profile, the eager
       loop over 5 calls, each kernel's block choices (PROBE_SMALL picks the cells)
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
from fused import check_cell, darts_v2, fwd_bwd, meaningful, random_cells, space, tf32  # noqa: E402
from triton.testing import do_bench  # noqa: E402

import nas.kernels.codegen as KCG  # noqa: E402
import nas.kernels.fused as KF  # noqa: E402
from nas.compile import build_rnn  # noqa: E402
from nas.kernels import scan as KS  # noqa: E402

REPORT: list[str] = []
_ORIGINAL = (KF.load, KF._prec)  # what `_patched` wraps and restores
_STACK_MAX = KCG.STACK_MAX


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
def _loop_body(lines: list[str], j: int, ind: str) -> tuple[list[str], int]:
    """The lines from j indented deeper than `ind` (a loop's body), and the index after them."""
    body = []
    while j < len(lines) and (not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > len(ind)):
        body.append(lines[j])
        j += 1
    return body, j


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
        body, j = _loop_body(lines, i + 2, ind)
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


def _k_interleaved(src: str, ways: int = 2) -> str:
    """Every one-slice K-loop split into `ways` interleaved chains: iteration k adds into the
    (k % ways)-th copy of each accumulator, the copies summed after the loop. Triton's FMA dot
    chains each output's FMAs over K (two outputs per thread on a 16x16 tile), so the copies
    are independent work for the same operand registers (a tail runs the last NK % ways)."""
    lines, out, i = src.split("\n"), [], 0
    head = re.compile(r"^(\s*)for k in range\(NK\):$")
    while i < len(lines):
        m = head.match(lines[i])
        if not m:
            out.append(lines[i])
            i += 1
            continue
        ind = m.group(1)
        body, j = _loop_body(lines, i + 1, ind)
        accs = sorted({dm.group(1) for dm in (re.match(r"^\s*(\w+) = tl\.dot\(.*acc=(\w+),", b) for b in body)
                       if dm and dm.group(1) == dm.group(2)})
        if not accs:
            out += [lines[i]] + body
            i = j
            continue
        out += [f"{ind}{a}_{q} = tl.zeros_like({a})" for a in accs for q in range(1, ways)]
        out.append(f"{ind}for k_ in range(NK // {ways}):")
        for q in range(ways):
            out.append(f"{ind}    k = k_ * {ways} + {q}")
            for b in body:
                if q:
                    for a in accs:
                        b = re.sub(rf"\b{a}\b", f"{a}_{q}", b)
                out.append(b)
        for q in range(ways - 1):  # the last NK % ways iterations
            out += [f"{ind}if NK % {ways} > {q}:", f"{ind}    k = NK // {ways} * {ways} + {q}"]
            for b in body:
                for a in accs if q else []:
                    b = re.sub(rf"\b{a}\b", f"{a}_{q}", b)
                out.append(b)
        out += [f"{ind}{a} = {a} + " + " + ".join(f"{a}_{q}" for q in range(1, ways)) for a in accs if ways > 1]
        i = j
    return "\n".join(out)


_TS_HELPER = """
@triton.jit
def _ts(SCR, pid, t, T, p: tl.constexpr, q: tl.constexpr):
    tl.debug_barrier()  # every warp has issued the phase's work
    c = tl.inline_asm_elementwise("mov.u64 $0, %clock64;", "=l", [], dtype=tl.int64, is_pure=False, pack=1)
    tl.store(SCR.to(tl.pointer_type(tl.int64)) + ((pid * T + t) * 8 + p) * 4 + q, c)

"""


def _timed(src: str) -> str:
    """Clock64 stamps at each pass's phase boundaries, per program and step, into SCR (timing
    only: `part_timeline` hands the kernels a large SCR; needs KP = 1). Forward: pass start,
    products done, pass done (before its barrier); backward: phase A start, phase A done (before
    the barrier), phase B start, phase B done."""
    out, kernel, first_pre = [], "", set()
    for line in src.split("\n"):
        m = re.match(r"^def (fwd|bwd)\(", line)
        if m:
            kernel = m.group(1)
            if kernel == "fwd":
                out[-1:] = [_TS_HELPER, out[-1]] if out and out[-1].startswith("@triton.jit") else out[-1:]
        fp = re.match(r"^        # pass (\d+)$", line)
        bp = re.match(r"^        # pass (\d+), phase (A|B)", line)
        ind = line[:len(line) - len(line.lstrip())]
        if kernel == "fwd" and fp:
            cur = int(fp.group(1))
            out.append(f"        _ts(SCR, pid, t, T, {cur}, 0)")
        elif kernel == "fwd" and line.strip().startswith("tl.store(PRE + lrow") and cur not in first_pre:
            first_pre.add(cur)
            out.append(f"{ind}_ts(SCR, pid, t, T, {cur}, 1)")
        elif kernel == "fwd" and line == "        ep += 1":
            out.append(f"        _ts(SCR, pid, t, T, {cur}, 2)")
        elif kernel == "bwd" and bp:
            cur = int(bp.group(1))
            out.append(f"        _ts(SCR, pid, t, T, {cur}, {0 if bp.group(2) == 'A' else 2})")
        elif kernel == "bwd" and line.startswith("        _sync(bar, ep, NPC * KP)  # every column's dpre"):
            out.append(f"        _ts(SCR, pid, t, T, {cur}, 1)")
        elif kernel == "bwd" and line == "        tl.debug_barrier()":
            out.append(f"        _ts(SCR, pid, t, T, {cur}, 3)")
        out.append(line)
    return "\n".join(out)


def _no_group_barrier(src: str) -> str:
    return src.replace("_sync(barq, eq, KP)", "tl.debug_barrier()")


def _no_scratch_loads(src: str) -> str:
    return re.sub(r"(\w+) \+= tl\.load\(SCR [^\n]*", r"\1 += zero", src)


SOURCE_VARIANTS = {
    "base": lambda s: s,
    "nosync": lambda s: s.replace("if NPC > 1:", "if NPC > 1000000:"),  # wrong results: timing only
    "unrollK": lambda s: s.replace("for k in range(NK):", "for k in tl.static_range(NK):"),
    "bwdacc": _bwd_acc_per_linear,
    "kint2": _k_interleaved,
    "timed": _timed,
    "kint1": lambda s: _k_interleaved(s, 1),
    "bwdacc+kint2": lambda s: _k_interleaved(_bwd_acc_per_linear(s)),
    # the K groups' exchange (wrong results, timing only): no group barrier; no loads of the parts
    "nogroupbar": _no_group_barrier,
    "noscrload": _no_scratch_loads,
    "noxchg": lambda s: _no_scratch_loads(_no_group_barrier(s)),
}


@dataclasses.dataclass
class Variant:
    name: str
    blocks: str = ""  # NAS_FUSED_BLOCKS ('' = the rule)
    bwd_blocks: str = ""  # NAS_FUSED_BLOCKS_BWD ('' = as the forward)
    prec: str = ""  # '' = follow torch's flag
    source: str = "base"
    stack_max: int | None = None  # codegen.STACK_MAX while its kernels are generated (None: the default)


def _patched(variant: Variant):
    """Install the variant: block override, precision and source transform of the generated kernel."""
    os.environ["NAS_FUSED_BLOCKS"] = variant.blocks
    os.environ["NAS_FUSED_BLOCKS_BWD"] = variant.bwd_blocks
    KCG.STACK_MAX = variant.stack_max or _STACK_MAX
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
        base = first = None  # cuDNN's time; the first variant's output and input gradient
        probe_w = torch.randn(B, T, H, device="cuda", dtype=dtype)
        if cudnn:
            m = torch.nn.LSTM(H, H, 1, batch_first=True).cuda().to(dtype)
            m.flatten_parameters()
            base = do_bench(fwd_bwd(m, x), warmup=25, rep=200, return_mode="median")
            rows.append([label, "cuDNN", "-", "-", base, 1.0, "-"])
        for v in variants:
            try:
                _patched(v)
                torch.manual_seed(0)
                model = build_rnn(graph, H, H, 1, backend="triton").cuda().to(dtype)
                fb = fwd_bwd(model, x)
                x.grad = None
                out, _ = model(x)
                (out * probe_w).sum().backward()
                got = torch.cat([out.detach().flatten(), x.grad.flatten()]).double()
                first = got if first is None else first
                err = float((got - first).norm() / first.norm())
                x.grad = None
                torch.cuda.synchronize()

                def fwd_only():
                    with torch.no_grad():
                        model(x)
                f_ms = do_bench(fwd_only, warmup=10, rep=150, return_mode="median")
                fb_ms = do_bench(fb, warmup=10, rep=150, return_mode="median")
                blk = KF.choose_blocks(model.layers[0].spec, B, H, torch.device("cuda"), dtype)
                rows.append([label, v.name, f"{blk['BLOCK_B']},{blk['BLOCK_H']},{blk['BLOCK_K']},{blk['num_warps']}"
                             f" KS={blk['KS']} KP={blk['KP']} NPC={blk['NPC']}x{blk['NB']}", f_ms, fb_ms,
                             fb_ms / base if base else "-", f"{err:.1e}"])
                model = fb = None
            except Exception as exc:  # noqa: BLE001
                traceback.print_exc()
                rows.append([label, v.name, "-", f"ERROR {type(exc).__name__}: {str(exc)[:80]}", "-", "-", "-"])
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
    emit("DARTS V2 fused kernel variants", ["case", "variant", "blocks", "fwd ms", "fwd+bwd ms", "/ cuDNN", "vs first"], rows)


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
        emit(title, ["case", "variant", "blocks", "fwd ms", "fwd+bwd ms", "/ cuDNN", "vs first"], rows)


def part_fp32() -> None:
    """Candidates for DARTS V2 in strict fp32: tf32x3 with K slices, wider tiles (H200,
    2026-12-01 23:15: none beat the rule's 73 ms; RESULTS.md)."""
    variants = [Variant("rule"), Variant("tf32x3 KS4", blocks="16,16,32,4,0,4", prec="tf32x3"),
                Variant("tf32x3 KS2", blocks="16,16,32,4,0,2", prec="tf32x3"),
                Variant("tf32x3 KS4 BK16", blocks="16,16,16,4,0,4", prec="tf32x3"),
                Variant("tf32x3 KS2 KP2", blocks="16,16,32,4,0,2,2", prec="tf32x3"),
                Variant("16x32 w8", blocks="16,32,32,8,0,1")]
    rows = time_variants("darts_v2 64x512x512 fp32", darts_v2(), 64, 512, 512, torch.float32, False, variants)
    emit("DARTS V2 strict fp32 candidates", ["case", "variant", "blocks", "fwd ms", "fwd+bwd ms", "/ cuDNN", "vs first"], rows)


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
    emit("DARTS V2 fp32: the backward kernel's blocks", ["case", "variant", "blocks", "fwd ms", "fwd+bwd ms", "/ cuDNN", "vs first"],
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
                                                                    "fwd+bwd ms", "/ cuDNN", "vs first"], rows)


def part_next() -> None:
    """Independent FMA chains (2026-12-02): Triton's FMA dot chains each output's FMAs over K,
    two outputs per thread on a 16x16 tile; the backward's phase B adds all of a source's
    linears into one accumulator (ncu: 0.81 cycles per instruction of fixed-latency waits).
    `bwdacc`: one accumulator per linear there; `kint2`: every K-loop's iterations alternate
    between two copies of each accumulator (both float64-checked on the CPU, 1e-16; sm_90
    code compiled on the CPU without spills). `vs first`: the output and input gradient
    against the first row's (the rule)."""
    variants = [Variant("rule"), Variant("bwdacc", source="bwdacc"), Variant("kint2", source="kint2"),
                Variant("bwdacc+kint2", source="bwdacc+kint2"),
                Variant("BK16", blocks="16,16,16,4"), Variant("BK16 bwdacc+kint2", blocks="16,16,16,4",
                                                              source="bwdacc+kint2"),
                Variant("bwdacc + bwd KC8 w8", source="bwdacc", bwd_blocks="16,16,16,8,0,1,8,8")]
    only = os.environ.get("PROBE_NEXT", "")
    if only:
        variants = [variants[0]] + [v for v in variants[1:] if v.name in only.split(";")]
    rows = time_variants("darts_v2 64x512x512 fp32", darts_v2(), 64, 512, 512, torch.float32, False, variants)
    emit("Independent FMA chains: DARTS V2", ["case", "variant", "blocks", "fwd ms", "fwd+bwd ms", "/ cuDNN",
                                              "vs first"], rows)
    rows = time_variants("lstm 64x512x512 fp32", space("lstm").instantiate({}), 64, 512, 512, torch.float32, False,
                         [Variant("rule"), Variant("bwdacc+kint2", source="bwdacc+kint2")], cudnn=True)
    emit("Independent FMA chains: the LSTM", ["case", "variant", "blocks", "fwd ms", "fwd+bwd ms", "/ cuDNN",
                                              "vs first"], rows)


def part_stack() -> None:
    """Stacked FMA products (codegen.stacked_products: with K slices, a run of up to STACK_MAX
    of a source's linears in one wide product tile), forward only (the backward pinned to the
    rule's blocks), DARTS V2 and the LSTM in strict fp32. sm_90 code compiled on the CPU: the
    forward spills 160 B (KS 2, BK 16) to 960 B (KS 4, BK 32)."""
    rule_bwd = "16,16,32,4"
    rounds = {"5": _stack_round5,  # 2026-12-02 20:05: one pipeline stage
              "6": _stack_round6,  # 20:37: the stacked forward in K groups over columns
              "7": _stack_round7}  # 20:48: runs of 4 in small cells
    if os.environ.get("PROBE_STACK") in rounds:
        rounds[os.environ["PROBE_STACK"]]()
        return
    if os.environ.get("PROBE_STACK") == "4":  # round 4 (18:20): runs of 4 with 8 warps
        variants = [Variant("rule")] + [Variant(f"fwd {b} stack {m}", blocks=b, bwd_blocks="16,16,16,8,0,1,8,8",
                                                stack_max=m)
                                        for b, m in (("16,16,16,8,0,4", 4), ("16,16,16,8,0,2", 4), ("16,16,16,8,0,2", 2))]
        rows = time_variants("darts_v2 64x512x512 fp32", darts_v2(), 64, 512, 512, torch.float32, False, variants)
        emit("Stacked FMA products: runs of 4 with 8 warps", [
            "case", "variant", "blocks", "fwd ms", "fwd+bwd ms", "/ cuDNN", "vs first"], rows)
        return
    if os.environ.get("PROBE_STACK") == "3":  # round 3 (18:25): the backward's K groups beside the new rule
        variants = [Variant("rule")] + [Variant(f"bwd {b}", bwd_blocks=b) for b in (
            "16,16,32,8,0,1,8,8", "16,16,16,8,1,1,8,8", "16,16,16,8,2,1,8,8", "16,16,16,4,0,1,8,8",
            "16,16,16,8,0,1,4,4", "16,16,16,8,0,2,8,8", "16,16,16,16,0,1,8,8")]
        rows = time_variants("darts_v2 64x512x512 fp32", darts_v2(), 64, 512, 512, torch.float32, False, variants)
        emit("Stacked FMA products: the backward's K groups beside them", [
            "case", "variant", "blocks", "fwd ms", "fwd+bwd ms", "/ cuDNN", "vs first"], rows)
        return
    if os.environ.get("PROBE_STACK") == "2":  # round 2 (2026-12-02 17:50): the backward beside stack 2
        f2 = "16,16,16,4,0,2"
        variants = [Variant("rule"), Variant("fwd stack2", blocks=f2, bwd_blocks=rule_bwd, stack_max=2)]
        variants += [Variant(f"fwd stack2 {f}", blocks=f, bwd_blocks=rule_bwd, stack_max=2)
                     for f in ("16,16,16,4,2,2", "16,16,16,4,4,2", "16,16,16,8,0,4", "16,16,16,4,1,2")]
        variants += [Variant(f"fwd stack2, bwd {b}", blocks=f2, bwd_blocks=b, stack_max=2)
                     for b in ("16,16,16,4,0,2", "16,16,16,4,0,4", "16,16,16,8,0,1,8,8", "16,16,32,4,2", "16,16,32,4,4")]
        rows = time_variants("darts_v2 64x512x512 fp32", darts_v2(), 64, 512, 512, torch.float32, False, variants)
        emit("Stacked FMA products: the forward's stages and the backward beside them", [
            "case", "variant", "blocks", "fwd ms", "fwd+bwd ms", "/ cuDNN", "vs first"], rows)
        return
    cfgs = [("16,16,16,4,0,2", 4), ("16,16,32,4,0,2", 4), ("16,16,16,4,0,4", 4), ("16,16,16,4,0,2", 2),
            ("16,16,32,4,0,2", 2), ("16,16,16,4,0,4", 2)]
    for label, g, cells in (("darts_v2 64x512x512 fp32", darts_v2(), cfgs), ("lstm 64x512x512 fp32",
                                                                             space("lstm").instantiate({}), cfgs[:3])):
        variants = [Variant("rule")] + [Variant(f"fwd {b} stack {m}", blocks=b, bwd_blocks=rule_bwd, stack_max=m)
                                        for b, m in cells]
        rows = time_variants(label, g, 64, 512, 512, torch.float32, False, variants)
        emit(f"Stacked FMA products in the forward: {label}", ["case", "variant", "blocks", "fwd ms", "fwd+bwd ms",
                                                                "/ cuDNN", "vs first"], rows)


def _rule_blocks(graph, B: int, H: int, kernel: str) -> str:
    """The rule's blocks for one kernel as a NAS_FUSED_BLOCKS string (to pin the other kernel)."""
    _patched(Variant("reset"))
    spec = build_rnn(graph, H, H, 1, backend="triton").layers[0].spec
    b = KF.choose_blocks(spec, B, H, torch.device("cuda"), torch.float32, kernel=kernel)
    return ",".join(str(b[k]) for k in ("BLOCK_B", "BLOCK_H", "BLOCK_K", "num_warps")) + \
        f",{b.get('num_stages', 0)},{b['KS']},{b['KP']},{b['KC']}"


def _fma_small_tiles_2026_12_02(spec, best: dict, B: int, H: int, sms: int, kernel: str) -> dict:
    """The rule's strict-fp32 small-tile step before 2026-12-03 (the forward's K slices where
    products stack; the backward's column K groups for multi-pass cells only, 8 warps)."""
    cdiv, m = triton.cdiv, KF.MIN_BLOCK
    best = dict(best)
    if kernel == "fwd" and spec.stacks() and H >= 4 * m:
        best.update(KS=2, BLOCK_K=m, NK=cdiv(H, 2 * m))
        best.pop("num_stages", None)
    elif kernel == "bwd" and spec.passes > 1 and H >= 32 * m and cdiv(B, m) * 8 <= sms:
        best = KF._column_k_groups(B, H, sms, warps=8)
    return best


def _rule_blocks_before(graph, B: int, H: int, kernel: str) -> str:
    """_rule_blocks under the rule of 2026-12-02 (to time the rule's change against it)."""
    current = KF._fma_small_tiles
    KF._fma_small_tiles = _fma_small_tiles_2026_12_02
    try:
        return _rule_blocks(graph, B, H, kernel)
    finally:
        KF._fma_small_tiles = current


def _stack_round5() -> None:
    """One pipeline stage: sm_90 code compiled on the CPU shows the forward's runs of 4 without
    spills at one stage (238 registers; 160 B of spills at the default), and the backward's
    K groups of 4 over columns with 2 K slices at 32 B (1224 B at the default); the rule's
    backward (KC 8, 8 warps) spills 868 B."""
    rows = []
    for label, g in (("darts_v2 64x512x512 fp32", darts_v2()), ("lstm 64x512x512 fp32", space("lstm").instantiate({}))):
        fwd_rule, bwd_rule = _rule_blocks(g, 64, 512, "fwd"), _rule_blocks(g, 64, 512, "bwd")
        log(f"{label}: rule fwd {fwd_rule}, bwd {bwd_rule}")
        variants = [Variant("rule")]
        variants += [Variant(f"fwd {b} stack {m}", blocks=b, bwd_blocks=bwd_rule, stack_max=m)
                     for b, m in (("16,16,16,4,1,2", 4), ("16,16,16,4,2,2", 4), ("16,16,16,4,1,2", 2))]
        if label.startswith("darts"):
            variants += [Variant(f"bwd {b}", bwd_blocks=b) for b in (
                "16,16,16,4,1,2,4,4", "16,16,16,4,0,2,4,4", "16,16,16,4,2,2,4,4", "16,16,16,4,1,2,2,2",
                "16,16,16,4,1,4,4,4", "16,16,16,8,1,2,4,4")]
            variants.append(Variant("fwd stack 4 st1 + bwd KC4 KS2 st1", blocks="16,16,16,4,1,2",
                                    bwd_blocks="16,16,16,4,1,2,4,4", stack_max=4))
        rows += time_variants(label, g, 64, 512, 512, torch.float32, False, variants)
    emit("Stacked FMA products: one pipeline stage, runs of 4, the backward's K groups of 4 with K slices", [
        "case", "variant", "blocks", "fwd ms", "fwd+bwd ms", "/ cuDNN", "vs first"], rows)


def part_xchg() -> None:
    """What the backward's K-group exchange costs (DARTS V2 (64, 512, 512) fp32, the rule's KC 8:
    per pass each program stores its 16 x 128 partial products in SCR, waits at its group's
    barrier and adds 8 parts of its own block): without the group barrier, without the loads
    of the parts, without either, without any barrier (wrong results: timing only)."""
    variants = [Variant("rule")] + [Variant(v, source=v) for v in ("nogroupbar", "noscrload", "noxchg", "nosync")]
    rows = time_variants("darts_v2 64x512x512 fp32", darts_v2(), 64, 512, 512, torch.float32, False, variants)
    emit("The backward's K-group exchange, timing only", ["case", "variant", "blocks", "fwd ms", "fwd+bwd ms",
                                                          "/ cuDNN", "vs first"], rows)


def _stack_round6() -> None:
    """The stacked forward in K groups over columns (KP = KC = 2 or 4 with 2 K slices): each
    program's run of two linears becomes a (2, 16, 64) tile over half of K (the shape of the
    fastest products alone, 13.0 ms against 23.2 for (2, 16, 32)), at the cost of an exchange
    per pass. sm_90 code compiled on the CPU: the K-loops of KC 2 with 4 warps issue 7.3 FMAs
    per shared load against 2.5 under the rule, with no spills inside them."""
    rows = []
    for label, g in (("darts_v2 64x512x512 fp32", darts_v2()), ("lstm 64x512x512 fp32", space("lstm").instantiate({}))):
        bwd_rule = _rule_blocks(g, 64, 512, "bwd")
        variants = [Variant("rule")] + [Variant(f"fwd {b} stack {m}", blocks=b, bwd_blocks=bwd_rule, stack_max=m)
                                        for b, m in (("16,16,16,4,0,2,2,2", 2), ("16,16,16,8,0,2,2,2", 2),
                                                     ("16,16,16,8,0,2,4,4", 2), ("16,16,16,4,0,2,4,4", 2),
                                                     ("16,16,16,4,0,2,2,2", 4), ("16,16,16,4,0,4,2,2", 2))]
        rows += time_variants(label, g, 64, 512, 512, torch.float32, False, variants)
    emit("Stacked FMA products in K groups over columns (the forward)", [
        "case", "variant", "blocks", "fwd ms", "fwd+bwd ms", "/ cuDNN", "vs first"], rows)


def _stack_round7() -> None:
    """Runs of 4 against runs of 2 in cells with few recurrent parts (sm_90 code compiled on the
    CPU: no spills with runs of 4 for the LSTM and random nasbench_nlp / nasrl_ptb cells, spills
    for darts_ptb and enas_ptb ones), the rule's blocks otherwise: the LSTM, and the first
    random cells (seed 11) of nasbench_nlp and nasrl_ptb whose passes stack."""
    import random

    from nas.compile import choose_backend
    from nas.compile.plan import make_plan

    cells = [("lstm", space("lstm").instantiate({}))]
    for name in ("nasbench_nlp", "nasrl_ptb"):
        rng, sp, n = random.Random(11), space(name), 0
        for _ in range(60):
            g = sp.instantiate(sp.sample(rng))
            spec = KCG.make_spec(make_plan(g)) if choose_backend(g, "auto") == "fused" else None
            if spec is not None and spec.stacks():
                cells.append((f"{name}#{n} ({len(spec.parts)} parts)", g))
                n += 1
                if n == 2:
                    break
    rows = []
    for label, g in cells:
        variants = [Variant("rule"), Variant("stack 4", stack_max=4), Variant("stack 2", stack_max=2)]
        rows += time_variants(f"{label} 64x512x512 fp32", g, 64, 512, 512, torch.float32, False, variants)
    emit("Stacked FMA products: runs of 4 in cells with few parts", [
        "case", "variant", "blocks", "fwd ms", "fwd+bwd ms", "/ cuDNN", "vs first"], rows)


def part_wgrad() -> None:
    """The weight gradients after the backward kernel (DARTS V2 (64, 512, 512): one GEMM per
    source, dW = dpre^T @ values over T*B = 32768 rows; 7.25 ms of the 74 at 14:50): as now, with
    the long K cut into c chunks (a batched GEMM, then a sum), and transposed; the biases' 18
    column sums against one."""
    TB, H, XW = 512 * 64, 512, 18 * 512
    dxp = torch.randn(TB, XW, device="cuda")
    vals = [torch.randn(TB, H, device="cuda") for _ in range(6)]
    runs = [(0, 2), (2, 2), (4, 6), (10, 2), (12, 4), (16, 2)]  # (first linear, count) per source

    def now():
        return [dxp[:, a * H:(a + n) * H].t() @ v for (a, n), v in zip(runs, vals)]

    def chunked(c):
        def run():
            return [torch.bmm(dxp[:, a * H:(a + n) * H].reshape(c, TB // c, n * H).transpose(1, 2),
                              v.reshape(c, TB // c, H)).sum(0) for (a, n), v in zip(runs, vals)]
        return run

    def transposed():
        return [(v.t() @ dxp[:, a * H:(a + n) * H]).t() for (a, n), v in zip(runs, vals)]

    ref = now()
    flop = 2 * TB * H * H * sum(n for _, n in runs)
    rows = []
    with tf32(False):
        for name, fn in [("as now", now), ("transposed", transposed)] + [(f"{c} chunks", chunked(c)) for c in (2, 4, 8, 16)]:
            got = fn()
            err = max(((a - b).norm() / b.norm()).item() for a, b in zip(got, ref))
            ms = do_bench(fn, warmup=10, rep=50, return_mode="median")
            rows.append([name, ms, flop / ms / 1e9, f"{err:.1e}"])
        for name, fn in [("18 column sums", lambda: [dxp[:, i * H:(i + 1) * H].sum(0) for i in range(18)]),
                         ("one column sum", lambda: dxp.sum(0))]:
            rows.append([name, do_bench(fn, warmup=10, rep=50, return_mode="median"), "-", "-"])
    emit("Weight and bias gradients after the backward kernel (DARTS V2 shapes, fp32)",
         ["variant", "ms", "TFLOP/s", "rel err vs as now"], rows)


def part_timeline() -> None:
    """Where a pass's time goes inside the kernels (clock64 stamps per program, pass and step,
    `_timed`): DARTS V2 (64, 512, 512) fp32 and tf32, the LSTM fp32. Per pass the median over
    programs and steps 16..T-16 of each phase, in µs at the clock rate the whole kernel implies."""
    cases = [("darts_v2 fp32", darts_v2(), False, torch.float32), ("darts_v2 tf32", darts_v2(), True, torch.float32),
             ("lstm fp32", space("lstm").instantiate({}), False, torch.float32)]
    B, T, H = 64, 512, 512
    if os.environ.get("PROBE_TL_CELL"):  # one random cell instead, e.g. nasbench_nlp#1@64x256x512
        label, _, size = os.environ["PROBE_TL_CELL"].partition("@")
        cases = [(f"{label} fp32", _random_cell(label), False, torch.float32)]
        B, T, H = (int(v) for v in (size or "64x256x512").split("x"))
    rows = []
    for label, g, allow, dtype in cases:
        bufs = []
        orig = KF._scratch

        def scratch(blocks, B_, width, dtype_, device):
            if blocks["KP"] > 1:  # its K groups need SCR for their exchange
                raise RuntimeError(f"timeline: the stamps take SCR, which K groups need ({blocks}); "
                                   "pin blocks with KP = 1 (PROBE_TL_BLOCKS, PROBE_TL_BWD)")
            nprog = blocks["NB"] * blocks["NPC"] * blocks["KP"]
            bufs.append(torch.zeros(nprog * T * 32 * 2, dtype=torch.float32, device=device))
            return bufs[-1]
        try:
            with tf32(allow):
                _patched(Variant("timed", source="timed", blocks=os.environ.get("PROBE_TL_BLOCKS", ""),
                                 bwd_blocks=os.environ.get("PROBE_TL_BWD", "16,16,32,4"),  # KP = 1
                                 stack_max=int(os.environ.get("PROBE_TL_STACK", "0")) or None))
                KF._scratch = scratch
                torch.manual_seed(0)
                model = build_rnn(g, H, H, 1, backend="triton").cuda().to(dtype)
                x = torch.randn(B, T, H, device="cuda", dtype=dtype, requires_grad=True)
                run = fwd_bwd(model, x)
                run()
                torch.cuda.synchronize()
                bufs.clear()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                with torch.no_grad():
                    model(x)
                end.record()
                torch.cuda.synchronize()
                fwd_ms = start.elapsed_time(end)
                run()
                torch.cuda.synchronize()
        finally:
            KF._scratch = orig
            _patched(Variant("reset"))
        for kernel, buf in zip(("fwd", "fwd", "bwd"), bufs):  # the no-grad forward, then the run's two
            ts = buf.view(torch.int64).view(-1, T, 8, 4).double()
            lo, hi = 16, T - 16
            used = [p for p in range(8) if (ts[:, lo, p, 0] != 0).any()]
            span = (ts[:, hi, used[0], 0] - ts[:, lo, used[0], 0]).abs().median().item() / (hi - lo)  # per step
            names = ["products", "elementwise + stores", "barrier wait"] if kernel == "fwd" else [
                "phase A", "barrier wait", "phase B", "to the next pass"]
            for p in used:
                d = []
                if kernel == "fwd":
                    nxt = ts[:, lo + 1:hi + 1, used[0], 0] if p == used[-1] else ts[:, lo:hi, p + 1, 0]
                    d = [ts[:, lo:hi, p, 1] - ts[:, lo:hi, p, 0], ts[:, lo:hi, p, 2] - ts[:, lo:hi, p, 1],
                         nxt - ts[:, lo:hi, p, 2]]
                else:
                    # the backward runs t downwards and its passes from the last: the next pass is p - 1
                    nxt = ts[:, lo - 1:hi - 1, used[-1], 0] if p == used[0] else ts[:, lo:hi, p - 1, 0]
                    d = [ts[:, lo:hi, p, 1] - ts[:, lo:hi, p, 0], ts[:, lo:hi, p, 2] - ts[:, lo:hi, p, 1],
                         ts[:, lo:hi, p, 3] - ts[:, lo:hi, p, 2], nxt - ts[:, lo:hi, p, 3]]
                rows.append([label, kernel if buf is not bufs[0] else "fwd (no grad)", p]
                            + [f"{v.median().item():.0f}" for v in d] + ["-"] * (4 - len(d))
                            + [f"{sum(v.median().item() for v in d) / span:.2f}"])
            rows.append([label, kernel if buf is not bufs[0] else "fwd (no grad)", "step", f"{span:.0f} cycles",
                         f"fwd {fwd_ms:.2f} ms" if buf is bufs[0] else "", "", "", ""])
        log(f"timeline {label} done")
    emit("Inside the kernels: cycles per phase and pass (medians over programs and steps)",
         ["case", "kernel", "pass", "fwd: products / bwd: phase A", "fwd: elementwise+stores / bwd: barrier",
          "fwd: barrier wait / bwd: phase B", "bwd: to next pass", "of the step"], rows)


def _random_cell(label: str):
    """A random cell as benchmarks/scan.py draws them ('nasbench_nlp#1': the space's second)."""
    name, _, i = label.partition("#")
    if not i:
        return space(name).instantiate({})  # a shipped cell ('lstm')
    return dict(random_cells(name, max(3, int(i) + 1), seed=1, keep=meaningful))[label]


def _warm_fp32(g, B: int, T: int, H: int):
    """A triton layer of the cell, its input and its forward+backward, run 3 times (compiled)."""
    torch.manual_seed(0)
    model = build_rnn(g, H, H, 1, backend="triton").cuda()
    x = torch.randn(B, T, H, device="cuda", requires_grad=True)
    fb = fwd_bwd(model, x)
    for _ in range(3):
        fb()
    torch.cuda.synchronize()
    return model, x, fb


def _small_profile(label: str, g, B: int, T: int, H: int) -> None:
    """One small cell's call profiled (torch.profiler; the GPU's busy share of the wall time)
    and the eager loop's 5 single calls against triton's median."""
    from torch.profiler import ProfilerActivity, profile
    with tf32(False):
        _, x, fb = _warm_fp32(g, B, T, H)
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(5):
                fb()
            end.record()
            torch.cuda.synchronize()
        wall = start.elapsed_time(end) / 5
        busy = sum(e.self_device_time_total for e in prof.key_averages()) / 1e3 / 5
        table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25)
        (out_dir() / f"small_profile_{label.replace('#', '_')}.txt").write_text(
            table + f"\nwall {wall:.3f} ms per call, GPU busy {busy:.3f} ms\n")
        REPORT.append(f"## {label} ({B}, {T}, {H}) fp32 forward+backward, 5 calls: {wall:.3f} ms per call "
                      f"(profiled), GPU busy {busy:.3f} ms\n\n```\n{table}\n```")
        ref = build_rnn(g, H, H, 1, backend="reference").cuda()
        efb = fwd_bwd(ref, x)
        efb()
        eager = []
        for _ in range(5):
            torch.cuda.synchronize()
            start.record()
            efb()
            end.record()
            torch.cuda.synchronize()
            eager.append(start.elapsed_time(end))
        triton_ms = do_bench(fb, warmup=10, rep=300, return_mode="median")
        emit(f"{label}: the eager loop, 5 single calls, against triton", ["eager ms (calls)", "median", "triton ms",
                                                                        "eager / triton"],
             [[" ".join(f"{v:.1f}" for v in eager), sorted(eager)[2], triton_ms, sorted(eager)[2] / triton_ms]])


def part_small() -> None:
    """Small random cells at (64, 256, 512) fp32, the issue's >= 20x the eager loop (nasbench_nlp#1,
    one linear in one pass, was at 18.3x: 3.82 ms, its eager loop 62.8-91.4 ms in single calls):
    where a call's time goes (torch.profiler, and the GPU's busy share of the wall time), the
    eager loop over several calls, and block choices for each kernel alone (the other at the
    rule's), with the barriers off as a floor (timing only). PROBE_SMALL picks the cells; each
    is also timed under the rule of 2026-12-02 ('before'). PROBE_SMALL_PROFILE=0 skips the
    profile, the eager loop and the floor."""
    B, T, H = 64, 256, 512
    # round 1 (2026-12-03 01:40): each kernel's blocks; PROBE_SMALL_BLOCKS replaces the list
    # ('a;b;...'), PROBE_SMALL_PAIRS adds pinned pairs ('fwd|bwd;...')
    fwd_list = ["16,16,16,4,0,2", "16,16,64,4", "16,16,32,2", "16,16,32,8", "16,16,32,4,2", "16,16,32,4,4",
                "8,16,32,4", "8,32,32,4", "16,32,32,4", "32,16,32,4", "16,16,32,4,0,1,2,2", "16,16,16,4,0,1,4,4",
                "16,16,32,4,0,1,4,4", "16,16,16,4,0,1,8,8", "8,16,32,4,0,1,2"]
    if os.environ.get("PROBE_SMALL_BLOCKS") is not None:
        fwd_list = [b for b in os.environ["PROBE_SMALL_BLOCKS"].split(";") if b]
    pairs = [p.split("|") for p in os.environ.get("PROBE_SMALL_PAIRS", "").split(";") if p]
    for label in os.environ.get("PROBE_SMALL", "nasbench_nlp#1,nasbench_nlp#0,nasbench_nlp#2").split(","):
        g = _random_cell(label)
        profiled = os.environ.get("PROBE_SMALL_PROFILE", "1") != "0"  # round 2 (=0): the rules only
        if profiled:
            _small_profile(label, g, B, T, H)
        fwd_rule, bwd_rule = _rule_blocks(g, B, H, "fwd"), _rule_blocks(g, B, H, "bwd")
        log(f"{label}: rule fwd {fwd_rule}, bwd {bwd_rule}")
        before = Variant("before", blocks=_rule_blocks_before(g, B, H, "fwd"),
                         bwd_blocks=_rule_blocks_before(g, B, H, "bwd"))
        variants = [Variant("rule"), before] + ([Variant("nosync", source="nosync")] if profiled else [])
        variants += [Variant(f"fwd {b}", blocks=b, bwd_blocks=bwd_rule) for b in fwd_list]
        variants += [Variant(f"bwd {b}", blocks=fwd_rule, bwd_blocks=b) for b in fwd_list]
        variants += [Variant(f"fwd {f} + bwd {b}", blocks=f, bwd_blocks=b) for f, b in pairs]
        if os.environ.get("PROBE_SMALL_CHECK"):  # the rule and each pair against the float64 reference, at this size
            crow = []
            for v in [Variant("rule")] + [Variant(f"fwd {f} + bwd {b}", blocks=f, bwd_blocks=b) for f, b in pairs]:
                _patched(v)
                for r in check_cell(label, g, B, T, H, torch.device("cuda"), dtypes=(torch.float32,)):
                    crow.append([label, v.name, r.get("eager_out"), r.get("eager_grad"), r.get("out"), r.get("grad"),
                                 r.get("status")])
                _patched(Variant("reset"))
            emit(f"{label} ({B}, {T}, {H}) fp32 against the float64 reference", [
                "cell", "variant", "eager out", "eager grad", "triton out", "triton grad", "status"], crow)
        rows = time_variants(f"{label} {B}x{T}x{H} fp32", g, B, T, H, torch.float32, False, variants)
        emit(f"Small cells: {label}, each kernel's blocks", ["case", "variant", "blocks", "fwd ms", "fwd+bwd ms",
                                                             "/ cuDNN", "vs first"], rows)


def part_prof() -> None:
    """Where DARTS V2's fp32 forward+backward goes (the CUDA kernels, torch.profiler), and
    whether a weight-gradient-sized GEMM on a second stream overlaps the fused kernel (the
    fused kernel keeps one program per SM, issuing an instruction every ~3 cycles per scheduler;
    a co-resident GEMM could use the rest)."""
    from torch.profiler import ProfilerActivity, profile
    g, (B, T, H) = darts_v2(), (64, 512, 512)
    with tf32(False):
        model, x, fb = _warm_fp32(g, B, T, H)
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
             "kcbwd": part_kcbwd, "next": part_next, "timeline": part_timeline,
             "stack": part_stack, "wgrad": part_wgrad, "xchg": part_xchg, "small": part_small}[part]()
        except Exception:  # noqa: BLE001
            traceback.print_exc()
        (out_dir() / "probe.md").write_text(f"# Fused/scan probe — {device_name()}, {stamp()}\n\n" + "\n\n".join(REPORT))


if __name__ == "__main__":
    main()
