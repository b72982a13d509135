"""Is Triton's FMA dot the limit of the fused kernel in strict fp32? (development probe, GPU)

    python benchmarks/fma_layout_probe.py [--steps 512] [--once] [--ncu [--stalls]]

The fused kernel's DARTS V2 forward spends its time in per-step products of a 16-row tile
of the batch with a 16-column block of each of 9 linear pairs' weights (K = 512), one
program per SM. This times that product structure alone, no barrier and no elementwise
work, written two ways over the same memory:
  dot     plain Triton `tl.dot` (input_precision="ieee"), as the generated kernel writes it;
  gluon   a register-blocked product with explicit layouts (`triton.experimental.gluon`):
          each warp sums one quarter of K, each thread owns a 4x4 output tile (times KI
          accumulators, one per k of its register chunk, so every product is one FMA),
          operands are loaded as vectors straight into the registers that use them, and the
          partial tiles are summed once per product.
Both are checked against torch.matmul (fp32, tf32 off). --ncu profiles one launch of each
under Nsight Compute (`--set full`, source counters) into $OUT/ncu_fma.txt. The ratio tells whether rewriting
the fused kernel's products with explicit layouts is worth it (benchmarks/fused_notes.md).
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from common import NCU_STALL_METRICS, device_name, md_table, out_dir, stamp  # noqa: E402
from triton.testing import do_bench  # noqa: E402

try:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.ampere import async_copy as cp
except ImportError:  # an older Triton: the dot variant only
    gluon = gl = None

B, K, N, P = 64, 512, 1024, 9  # batch, hidden (K), a linear pair's outputs, pairs per step
SLOTS = 4  # per-step inputs/outputs rotate over a few slots (stay in L2, as the kernel's S does)


@triton.jit
def dot_products(A, W, O, T, B: tl.constexpr, K: tl.constexpr, N: tl.constexpr, P: tl.constexpr,
                 BB: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr, SAME_W: tl.constexpr):
    pid = tl.program_id(0)
    nc = N // (2 * BH)
    pid_b, pid_c = pid // nc, pid % nc
    rows = pid_b * BB + tl.arange(0, BB)
    cols = pid_c * BH + tl.arange(0, BH)
    kk = tl.arange(0, BK)
    for t in range(T):
        slot = t % 4
        for p in range(P):
            pw = 0 if SAME_W else p  # SAME_W: one pair's weights for all (they stay in L1): timing only
            acc0 = tl.zeros([BB, BH], dtype=tl.float32)
            acc1 = tl.zeros([BB, BH], dtype=tl.float32)
            for k in range(K // BK):
                ck = k * BK + kk
                a = tl.load(A + (slot * B + rows)[:, None] * K + ck[None, :], cache_modifier=".cg")
                w0 = tl.load(W + (pw * K + ck)[:, None] * N + cols[None, :])
                acc0 = tl.dot(a, w0, acc=acc0, input_precision="ieee")
                w1 = tl.load(W + (pw * K + ck)[:, None] * N + (N // 2 + cols)[None, :])
                acc1 = tl.dot(a, w1, acc=acc1, input_precision="ieee")
            o = O + ((slot * P + p) * B + rows)[:, None] * N + cols[None, :]
            tl.store(o, acc0)
            tl.store(o + N // 2, acc1)


@triton.jit
def dot_stacked(A, W, O, T, B: tl.constexpr, K: tl.constexpr, N: tl.constexpr, P: tl.constexpr,
                BB: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr, NP: tl.constexpr):
    """As dot_products, but NP pairs' weight blocks side by side in one (BK, 2*BH*NP) tile, so
    one tl.dot per K step covers them all: each thread owns more outputs per operand load."""
    pid = tl.program_id(0)
    nc = N // (2 * BH)
    pid_b, pid_c = pid // nc, pid % nc
    rows = pid_b * BB + tl.arange(0, BB)
    n = tl.arange(0, 2 * BH * NP)
    q = n // (2 * BH)  # the pair within the group
    wcol = ((n // BH) % 2) * (N // 2) + pid_c * BH + n % BH  # its half's column
    kk = tl.arange(0, BK)
    for t in range(T):
        slot = t % 4
        for g in range(P // NP):
            pq = g * NP + q
            acc = tl.zeros([BB, 2 * BH * NP], dtype=tl.float32)
            for k in range(K // BK):
                ck = k * BK + kk
                a = tl.load(A + (slot * B + rows)[:, None] * K + ck[None, :], cache_modifier=".cg")
                w = tl.load(W + (pq[None, :] * K + ck[:, None]) * N + wcol[None, :])
                acc = tl.dot(a, w, acc=acc, input_precision="ieee")
            tl.store(O + ((slot * P + pq[None, :]) * B + rows[:, None]) * N + wcol[None, :], acc)


@triton.jit
def dot3_stacked(A, W, O, T, B: tl.constexpr, K: tl.constexpr, N: tl.constexpr, P: tl.constexpr,
                 BB: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr, NP: tl.constexpr, S: tl.constexpr):
    """As dot_stacked, with K cut into S slices (a 3-D `tl.dot`, one slice per warp or so, summed
    once per group): Triton 3.6 lays a (4, 16, 32) FMA dot out as 4x4 outputs per thread (sm_90
    code compiled on the CPU: 64 registers, ~0.2 shared loads per FMA), a 2-D 16x16 one as 1x1."""
    pid = tl.program_id(0)
    nc = N // (2 * BH)
    pid_b, pid_c = pid // nc, pid % nc
    rows = pid_b * BB + tl.arange(0, BB)
    n = tl.arange(0, 2 * BH * NP)
    q = n // (2 * BH)
    wcol = ((n // BH) % 2) * (N // 2) + pid_c * BH + n % BH
    kk = tl.arange(0, BK)
    ks = tl.arange(0, S)
    for t in range(T):
        slot = t % 4
        for g in range(P // NP):
            pq = g * NP + q
            acc = tl.zeros([S, BB, 2 * BH * NP], dtype=tl.float32)
            for k in range(K // (S * BK)):
                ck = (ks * (K // S) + k * BK)[:, None] + kk[None, :]  # (S, BK)
                a = tl.load(A + (slot * B + rows)[None, :, None] * K + ck[:, None, :], cache_modifier=".cg")
                w = tl.load(W + (pq[None, None, :] * K + ck[:, :, None]) * N + wcol[None, None, :])
                acc = tl.dot(a, w, acc=acc, input_precision="ieee")
            out = tl.sum(acc, axis=0)
            tl.store(O + ((slot * P + pq[None, :]) * B + rows[:, None]) * N + wcol[None, :], out)


if gluon is not None:
    @gluon.jit
    def _indices3(D0: gl.constexpr, D1: gl.constexpr, D2: gl.constexpr, L: gl.constexpr):
        """An arange along each dim of the 3-D layout L, shaped to broadcast against each other."""
        i0 = gl.expand_dims(gl.expand_dims(gl.arange(0, D0, layout=gl.SliceLayout(1, gl.SliceLayout(2, L))), 1), 2)
        i1 = gl.expand_dims(gl.expand_dims(gl.arange(0, D1, layout=gl.SliceLayout(0, gl.SliceLayout(2, L))), 0), 2)
        i2 = gl.expand_dims(gl.expand_dims(gl.arange(0, D2, layout=gl.SliceLayout(0, gl.SliceLayout(1, L))), 0), 1)
        return i0, i1, i2

    @gluon.jit
    def _pair_col(n, pid_c, BH: gl.constexpr, N: gl.constexpr):
        """Column n of a program's 2*BH outputs: its block of the pair's first half, then of the second."""
        return gl.where(n < BH, pid_c * BH + n, N // 2 + pid_c * BH + (n - BH))

    @gluon.jit
    def _out_offsets(pid_b, pid_c, BB: gl.constexpr, BH: gl.constexpr, N: gl.constexpr, LO: gl.constexpr):
        rows = gl.expand_dims(gl.arange(0, BB, layout=gl.SliceLayout(1, LO)), 1)
        n = gl.expand_dims(gl.arange(0, 2 * BH, layout=gl.SliceLayout(0, LO)), 0)
        return (pid_b * BB + rows) * N + _pair_col(n, pid_c, BH, N)

    @gluon.jit
    def gluon_products(A, W, O, T, B: gl.constexpr, K: gl.constexpr, N: gl.constexpr, P: gl.constexpr,
                       BB: gl.constexpr, BH: gl.constexpr, KI: gl.constexpr, KW: gl.constexpr,
                       PER_K: gl.constexpr):
        # [KW (one K quarter per warp), BB rows, KI (k in registers), 2*BH columns]; 4x4 per thread
        L4: gl.constexpr = gl.BlockedLayout([1, 4, KI, 4], [1, BB // 4, 1, 32 // (BB // 4)], [KW, 1, 1, 1],
                                            [3, 2, 1, 0])
        LA: gl.constexpr = gl.SliceLayout(3, L4)  # (KW, BB, KI)
        LW: gl.constexpr = gl.SliceLayout(1, L4)  # (KW, KI, NO)
        LC: gl.constexpr = gl.SliceLayout(2, L4)  # (KW, BB, NO)
        LO: gl.constexpr = gl.SliceLayout(0, LC)  # (BB, NO)
        NO: gl.constexpr = 2 * BH
        KSPAN: gl.constexpr = K // KW
        pid = gl.program_id(0)
        nc = N // NO
        pid_b, pid_c = pid // nc, pid % nc
        aw, ar, ak = _indices3(KW, BB, KI, LA)  # operand A (KW, BB, KI)
        a_off = (pid_b * BB + ar) * K + aw * KSPAN + ak
        ww, wk, wn = _indices3(KW, KI, NO, LW)  # operand W (KW, KI, NO): the pair's two blocks side by side
        w_off = (ww * KSPAN + wk) * N + _pair_col(wn, pid_c, BH, N)
        for t in range(T):
            slot = t % 4
            for p in range(P):
                if PER_K:  # one accumulator per k of the register chunk: every product one FMA
                    acc4 = gl.zeros([KW, BB, KI, NO], gl.float32, layout=L4)
                    for k0 in gl.static_range(0, KSPAN, KI):
                        a = gl.load(A + slot * B * K + a_off + k0, cache_modifier=".cg")
                        w = gl.load(W + p * K * N + w_off + k0 * N)
                        acc4 += gl.expand_dims(a, 3) * gl.expand_dims(w, 1)
                    out = gl.sum(gl.sum(acc4, axis=2), axis=0)
                else:  # the chunk summed in registers, then added (a multiply and an add more per chunk)
                    acc = gl.zeros([KW, BB, NO], gl.float32, layout=LC)
                    for k0 in gl.static_range(0, KSPAN, KI):
                        a = gl.load(A + slot * B * K + a_off + k0, cache_modifier=".cg")
                        w = gl.load(W + p * K * N + w_off + k0 * N)
                        acc += gl.sum(gl.expand_dims(a, 3) * gl.expand_dims(w, 1), axis=2)
                    out = gl.sum(acc, axis=0)
                gl.store(O + (slot * P + p) * B * N + _out_offsets(pid_b, pid_c, BB, BH, N, LO), out)

    @gluon.jit
    def gluon_staged(A, W, O, T, B: gl.constexpr, K: gl.constexpr, N: gl.constexpr, P: gl.constexpr,
                     BB: gl.constexpr, BH: gl.constexpr, KI: gl.constexpr, KW: gl.constexpr, SWZ: gl.constexpr):
        """As gluon_products (per-k accumulators), but the operands are staged in shared memory
        by asynchronous copies: the step's A tile once, each pair's W block double-buffered (the
        next pair's copy runs while this one computes)."""
        NO: gl.constexpr = 2 * BH
        KSPAN: gl.constexpr = K // KW
        # rows g, g+4, g+8, g+12 per thread (the layout wraps): with A's 16-byte vectors swizzled
        # by row in shared memory, the 4 row groups' loads fall in different banks
        L4: gl.constexpr = gl.BlockedLayout([1, 1, KI, 4], [1, 4, 1, 8], [KW, 1, 1, 1], [3, 2, 1, 0])
        LA: gl.constexpr = gl.SliceLayout(3, L4)
        LW: gl.constexpr = gl.SliceLayout(1, L4)
        LC: gl.constexpr = gl.SliceLayout(2, L4)
        LO: gl.constexpr = gl.SliceLayout(0, LC)
        # the copies: 16 bytes each, a warp's K slice per warp
        CA: gl.constexpr = gl.BlockedLayout([1, 1, 4], [1, 128 // KSPAN, KSPAN // 4], [KW, 1, 1], [2, 1, 0])
        CW: gl.constexpr = gl.BlockedLayout([1, 1, 4], [1, 4, 8], [KW, 1, 1], [2, 1, 0])
        SA: gl.constexpr = gl.SwizzledSharedLayout(4, 1, 8, [2, 1, 0])  # 16-byte vectors XOR-swizzled by row
        SW: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [2, 1, 0])
        pid = gl.program_id(0)
        nc = N // NO
        pid_b, pid_c = pid // nc, pid % nc
        cw, cr, ck = _indices3(KW, BB, KSPAN, CA)
        a_off = (pid_b * BB + cr) * K + cw * KSPAN + ck
        vw, vk, vn = _indices3(KW, KSPAN, NO, CW)
        w_off = (vw * KSPAN + vk) * N + _pair_col(vn, pid_c, BH, N)
        if SWZ:
            a_smem = gl.allocate_shared_memory(gl.float32, [KW, BB, KSPAN], SA)
        else:  # plain rows: the row groups' loads of A conflict 4 ways
            a_smem = gl.allocate_shared_memory(gl.float32, [KW, BB, KSPAN], SW)
        w_smem = gl.allocate_shared_memory(gl.float32, [2, KW, KSPAN, NO], SW)  # the buffer index is not in the layout
        cp.async_copy_global_to_shared(w_smem.index(0), W + w_off)  # pair 0 of step 0
        cp.commit_group()
        for t in range(T):
            slot = t % 4
            gl.thread_barrier()  # every warp is done with the last step's A
            cp.async_copy_global_to_shared(a_smem, A + slot * B * K + a_off, cache_modifier=".cg")
            cp.commit_group()
            for p in range(P):
                g = t * P + p
                nxt = (p + 1) % P  # the next pair (the last one prefetches the next step's first)
                cp.async_copy_global_to_shared(w_smem.index((g + 1) % 2), W + nxt * K * N + w_off)
                cp.commit_group()
                cp.wait_group(1)  # all but the copy just issued
                gl.thread_barrier()  # and every thread's copies are visible
                wbuf = w_smem.index(g % 2)
                acc4 = gl.zeros([KW, BB, KI, NO], gl.float32, layout=L4)
                for k0 in gl.static_range(0, KSPAN, KI):
                    a = a_smem.slice(k0, KI, dim=2).load(LA)
                    w = wbuf.slice(k0, KI, dim=1).load(LW)
                    acc4 += gl.expand_dims(a, 3) * gl.expand_dims(w, 1)
                out = gl.sum(gl.sum(acc4, axis=2), axis=0)
                gl.thread_barrier()  # done reading this buffer before the next copy into it
                gl.store(O + (slot * P + p) * B * N + _out_offsets(pid_b, pid_c, BB, BH, N, LO), out)
        cp.wait_group(0)

def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=512)
    ap.add_argument("--once", action="store_true",
                    help="launch the tl.dot and the staged Gluon variant once each, untimed (for ncu)")
    ap.add_argument("--ncu", action="store_true", help="run --once --steps 64 under Nsight Compute")
    ap.add_argument("--stalls", action="store_true",
                    help="with --ncu: only the stall reasons per issued instruction (quick), not the full set")
    args = ap.parse_args()
    if args.ncu:
        exe = shutil.which("ncu") or next(iter(sorted(glob.glob("/opt/nvidia/nsight-compute/*/ncu"))), "ncu")
        what = (["--metrics", NCU_STALL_METRICS] if args.stalls
                else ["--set", "full", "--import-source", "yes"])
        cmd = [exe, "--clock-control", "none", *what, "--kernel-name",
               "regex:dot_products|gluon_staged", "--launch-count", "2", sys.executable, __file__, "--once",
               "--steps", "64"]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=500)
        (out_dir() / "ncu_fma.txt").write_text(res.stdout + "\n--- stderr ---\n" + res.stderr)
        print(res.stdout[-8000:])
        return
    torch.backends.cuda.matmul.allow_tf32 = False
    T = args.steps
    A = torch.randn(SLOTS, B, K, device="cuda")
    W = torch.randn(P * K, N, device="cuda") / K ** 0.5
    ref = torch.stack([torch.stack([A[s] @ W[p * K:(p + 1) * K] for p in range(P)]) for s in range(SLOTS)])
    flop = 2 * B * K * N * P * T
    rows = []
    variants = [("dot 16x16 BK32", "dot", dict(BB=16, BH=16, BK=32, SAME_W=False), 4),
                ("dot 16x16 BK32, one pair's weights for all (timing only)", "dot",
                 dict(BB=16, BH=16, BK=32, SAME_W=True), 4),
                ("dot 64x16 BK32 (all rows: weights read once per step)", "dot",
                 dict(BB=64, BH=16, BK=32, SAME_W=False), 4),
                ("dot 64x16 BK16 (all rows: weights read once per step)", "dot",
                 dict(BB=64, BH=16, BK=16, SAME_W=False), 4),
                ("dot 64x16 BK16, 8 warps", "dot", dict(BB=64, BH=16, BK=16, SAME_W=False), 8),
                ("dot 64x8 BK16 (all rows, 64 programs)", "dot", dict(BB=64, BH=8, BK=16, SAME_W=False), 4)]
    variants += [(f"dot stacked {bb}x{32 * np_} BK{bk} ({np_} pairs per dot){'' if w == 4 else f', {w} warps'}",
                  "stacked", dict(BB=bb, BH=16, BK=bk, NP=np_), w)
                 for bb, np_, bk, w in ((16, 1, 32, 4), (16, 2, 32, 4), (16, 4, 32, 4), (16, 8, 32, 4), (16, 2, 16, 4),
                                        (16, 4, 16, 4), (16, 4, 32, 8), (32, 1, 32, 4), (32, 2, 32, 4))]
    variants += [(f"dot3 stacked {s_}x16x{32 * np_} BK{bk} ({np_} pairs per dot, K in {s_} slices)"
                  f"{'' if w == 4 else f', {w} warps'}", "stacked3", dict(BB=16, BH=16, BK=bk, NP=np_, S=s_), w)
                 for s_, np_, bk, w in ((4, 1, 32, 4), (4, 1, 16, 4), (8, 1, 16, 4), (2, 1, 32, 4), (4, 2, 16, 4),
                                        (2, 2, 32, 4), (8, 1, 16, 8), (4, 1, 32, 8))]
    if os.environ.get("FMA_PROBE_ONLY"):
        variants = [v for v in variants if v[0].split(" (")[0] in ("dot 16x16 BK32", "dot stacked 16x128 BK32")
                    or v[1] == "stacked3"]
    if gluon is not None and not os.environ.get("FMA_PROBE_ONLY"):
        variants += [(f"gluon 16x32 KI{ki} {'per-k acc' if per_k else 'chunk sum'}", "gluon",
                      dict(BB=16, BH=16, KI=ki, KW=4, PER_K=per_k), 4)
                     for ki, per_k in ((4, True),)]
        variants += [(f"gluon staged 16x32 KI{ki}{'' if swz else ' unswizzled'}", "staged",
                      dict(BB=16, BH=16, KI=ki, KW=4, SWZ=swz), 4)
                     for ki, swz in ((1, True),)]
        variants += [(f"gluon staged 16x32 KI{ki}, {kw} warps (K in {kw} slices)", "staged",
                      dict(BB=16, BH=16, KI=ki, KW=kw, SWZ=True), kw) for ki, kw in ((1, 8), (2, 8), (1, 16))]
    if args.once:
        variants = [v for v in variants if v[0] in ("dot 16x16 BK32", "gluon staged 16x32 KI1")]
    for name, kind, meta, warps in variants:
        npairs = P - P % meta.get("NP", 1)  # stacked groups of NP pairs: the whole groups only
        O = torch.zeros(SLOTS, npairs, B, N, device="cuda")
        grid = (B // meta["BB"] * (N // (2 * meta["BH"])),)
        kern = {"dot": dot_products, "stacked": dot_stacked, "stacked3": dot3_stacked, "gluon": gluon_products, "staged": gluon_staged}[kind]
        try:
            def run():
                kern[grid](A, W, O, T, B, K, N, npairs, **meta, num_warps=warps)
            run()
            torch.cuda.synchronize()
            err = ((O - ref[:, :npairs]).norm() / ref[:, :npairs].norm()).item()
            ms = do_bench(run, warmup=5, rep=50, return_mode="median") if not args.once else float("nan")
            rows.append([name, f"{grid[0]} x {warps} warps", f"{err:.2e}", ms,
                         flop * npairs / P / ms / 1e9])  # TFLOP/s
        except Exception as exc:  # noqa: BLE001 - a variant that does not compile gets a row
            rows.append([name, "-", f"ERROR {type(exc).__name__}: {str(exc)[:160]}", "-", "-"])
        print(rows[-1], flush=True)
    text = (f"## Product structure of the DARTS V2 forward, strict fp32 ({device_name()}, {stamp()})\n\n"
            f"(B, K, N) = ({B}, {K}, {N}), {P} linear pairs per step, {T} steps; rel. error vs torch.matmul\n\n"
            + md_table(["variant", "grid", "rel err", "ms", "TFLOP/s"], rows))
    print(text)
    (out_dir() / "fma_layout_probe.md").write_text(text)


if __name__ == "__main__":
    main()
