"""Launch and autograd glue for the generated fused sequential kernels (`nas.kernels.codegen`).

`fused_sequence(spec, xp, bias, h0, weights)` runs a cell's whole time loop:
  xp      (T, B, NXP*H) per-step inputs computed outside the loop by the caller (one GEMM
                        for x's projections): the x part of each per-step linear that has
                        one (spec.xlins), then the hoisted values the elementwise graph reads;
  bias    (NL, H)       every per-step linear's bias (added in the kernel: a linear without
                        an x part needs no (T, B, H) slot, and the bias gradients are one
                        column sum of the pre-activation gradients);
  h0      (B, NS*H)     initial states, concatenated;
  weights one (n_parts*H, H) matrix per per-step source that a linear projects (each
                        state, then each chain source; the CellLayer parameter of that
                        source's weight group).
It returns S (T+1, B, NS*H): S[0] = h0 and S[t+1] the states after step t. Gradients reach
xp (and through autograd the input GEMM), the biases, h0 and the weights; the weight
gradients are one GEMM per weight group over all T*B rows after the reverse-time kernel
(sources: S for states, V, the chain sources the forward kernel saved, for the rest).

Dtypes: fp32, bf16 or fp16 storage with fp32 accumulation (pre-activations are kept in
fp32), or fp64 throughout (tests). fp32 matmuls use tf32 only where
torch.backends.cuda.matmul.allow_tf32 is set (as torch).

Blocks: `choose_blocks` (the rule, with its reasons). The column split and the K groups need
every program of the grid resident at once (at most one per multiprocessor is launched); a
GPU shared with other processes through MPS could break that, and the kernel would then
wait forever: run such setups with backend="reference" or on a GPU of their own.
"""

from __future__ import annotations

import logging
import os

import torch

from .codegen import FusedSpec, load
from .scan import HAVE_TRITON, interpreting, scan_available

if HAVE_TRITON:
    import triton
    import triton.language as tl
    from triton.runtime.errors import OutOfResources

log = logging.getLogger(__name__)
fused_available = scan_available  # same rule: CUDA, or the CPU under TRITON_INTERPRET=1

MIN_BLOCK = 16  # tl.dot's smallest tile edge on the GPU (tests lower it in the interpreter)
MAX_BLOCK_H = 64  # the interpreter's single-program blocks
ACC_BUDGET = 8192  # fp32 accumulator elements per program in one pass (register pressure)


def _pow2(v: int) -> bool:
    return v > 0 and not v & (v - 1)


def _tuning_override(kernel: str = "fwd") -> tuple[int, ...] | None:
    """NAS_FUSED_BLOCKS="BLOCK_B,BLOCK_H,BLOCK_K,WARPS[,STAGES[,KS[,KP[,KC]]]]" pins the blocks
    (benchmarks, tuning; STAGES 0 = Triton's default, KS = K slices per program, a power of two,
    0 = the rule; KP = programs in a K group, a power of two up to 8, 0 = the rule; KC = how
    many of them lie side by side over columns, 1 (rows, the default) up to KP);
    NAS_FUSED_BLOCKS_BWD pins the backward kernel's alone (the two kernels share no layout)."""
    name = "NAS_FUSED_BLOCKS"
    if kernel == "bwd" and os.environ.get("NAS_FUSED_BLOCKS_BWD", "").strip():
        name = "NAS_FUSED_BLOCKS_BWD"
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        vals = tuple(int(v) for v in text.split(","))
    except ValueError:
        vals = ()
    if (len(vals) not in (4, 5, 6, 7, 8) or not all(_pow2(v) for v in vals[:4]) or vals[2] < 16
            or (len(vals) >= 6 and vals[5] and not _pow2(vals[5]))
            or (len(vals) >= 7 and vals[6] not in (0, 1, 2, 4, 8))
            or (len(vals) == 8 and (vals[7] not in (0, 1, 2, 4, 8) or (vals[7] or 1) > max(1, vals[6])))):
        raise ValueError(f"{name}={text!r}: expected integers BLOCK_B,BLOCK_H,BLOCK_K,WARPS"
                         "[,STAGES[,KS[,KP[,KC]]]] (the first four powers of two, BLOCK_K >= 16 as tl.dot needs; "
                         "KS a power of two, KP 1, 2, 4 or 8, KC 1, 2, 4 or 8 and at most KP; 0 = the rule for "
                         "KS and KP, 1 for KC)")
    return vals


def k_slices(bb: int, bh: int, warps: int, H: int, bk: int, nl: int = 1) -> int:
    """How many slices K is cut into on the matrix units, each warp summing its own (then one
    reduction per pass).

    A 16x16 tile gives each of 4 warps too little independent work (ncu, H200, 2026-12-01: one
    warp per scheduler, issuing every 3.6 cycles), and an MMA tile of 16 rows keeps one warp
    busy. Slicing K so that every warp owns a whole tile's partial product restores it: KS =
    warps / (tiles of 256 outputs), halved while the partial sums would exceed ACC_BUDGET
    (they spill: 300-680 ms instead of 17-33 at (256, 256, 1024)) or a slice would be empty."""
    ks = max(1, min(warps, warps * 256 // max(1, bb * bh)))
    while ks > 1 and (ks * bk > triton.next_power_of_2(H) or ks * bb * bh * nl > ACC_BUDGET):
        ks //= 2
    return ks


def choose_blocks(spec: FusedSpec, B: int, H: int, device: torch.device | None = None,
                  dtype: torch.dtype = torch.float32, kernel: str = "fwd") -> dict:
    """Tile sizes and the split of hidden columns across programs (the rule, in one place).

    Interpreter (CPU tests): one program per 16-row batch tile loops over every column block
    (NPC = 1, so the grid barrier is a no-op). GPU: the programs of a batch tile split the
    column blocks (NPC of them, synchronised per pass by `_sync`), so a step's matmuls spread
    over the chip. Candidates keep each pass's accumulators within ACC_BUDGET and the grid
    within one program per multiprocessor (all resident, which the barrier needs). The most
    programs win (counted in eighths of the chip: 128 and 132 programs tie), then the taller
    batch tile (fewer weight re-reads from L2), then the wider column block. 16-bit inputs in
    tiles of 64 rows or more take K blocks of 64 (fp32 ones run out of shared memory there);
    tf32 may use 128-row tiles. On the matrix units (bf16, fp16, tf32) a small tile's warps
    each sum a slice of K (`k_slices`): DARTS V2 (64, 512, 512) tf32 51.6 ms vs 63.5 with one
    slice, LSTM (64, 512, 512) tf32 10.4 vs 15.8 ms. Plain fp32 (FMA) keeps one slice (its
    3-D 16x16 products were slower: DARTS V2 120 ms with 4 slices vs 73) except on 16x16 tiles
    whose passes stack a source's linears into wider products (`_fma_small_tiles`). Batches with more
    tiles than multiprocessors run NPC = 1. Tuning runs: benchmarks/fused_probe.py --parts
    tune,kp, benchmarks/fused_tune.py.

    K groups (KP > 1: KP programs share a column block over a tile of KP * BLOCK_B rows, each
    summing one KP-th of K, then each finishing BLOCK_B rows; nas.kernels.codegen) buy more
    programs where a batch has few tiles, at the cost of an exchange and a barrier per pass.
    The rule takes them for one-pass cells in plain fp32 over 16-row tiles only (the most
    programs still win, then the fewest K parts; taller products keep whole K tiles of FMA
    operands in registers and spill: LSTM (256, 256, 1024) fp32 with 128-row products 858 ms
    vs 90): measured on the H200 (2026-12-02, fused_probe.py --parts kp) the
    LSTM (16, 512, 256) fp32 5.4 ms with KP 4 over 4-row tiles vs 8.7 with one program per K;
    at equal program counts they do not pay (LSTM (64, 512, 512) 20.6 ms either way, DARTS
    V2's five passes 110 vs 73.7 ms), and on the matrix units they were slower (DARTS V2 tf32
    64.3 vs 51.9 ms). A group's tile over columns (KC > 1, wider FMA products) is in the rule
    only as `_fma_small_tiles` takes it (KP = KC = 8 over 16x16 blocks, H >= 512; elsewhere
    through NAS_FUSED_BLOCKS): at other shapes DARTS V2 87-157 ms, the LSTM (16, 512, 256) 8.4
    vs 5.4 (H200, 2026-12-02, fused_probe.py --parts kc, kcbwd).
    """
    cdiv = triton.cdiv
    if device is None or device.type != "cuda" or interpreting():
        n_values = spec.extra.get("n_values", 0)
        bh = max(MIN_BLOCK, min(triton.next_power_of_2(H), MAX_BLOCK_H if n_values <= 48 else MAX_BLOCK_H // 2))
        ks = 2 if H > bh else 1  # both K paths run in the CPU tests: one slice, and two
        return dict(BLOCK_B=MIN_BLOCK, BLOCK_H=bh, BLOCK_K=bh, JPP=cdiv(H, bh), NK=cdiv(H, ks * bh), NPC=1, KS=ks,
                    KP=1, KC=1, NB=cdiv(B, MIN_BLOCK), num_warps=4)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    pinned = _tuning_override(kernel)
    nl = max(1, spec.max_linears_per_pass())
    wide_k, tf32 = dtype in (torch.bfloat16, torch.float16), _prec(dtype) == "tf32"
    mma = wide_k or tf32
    if pinned is not None:
        choices = [pinned]
    else:
        bmax = max(MIN_BLOCK, min(128 if tf32 else 64, triton.next_power_of_2(B)))
        kps = (1, 2, 4) if not mma and spec.passes == 1 else (1,)  # K groups: see the docstring
        choices = [(bb, bh, 64 if (wide_k and kp * bb >= 64) else 32, _warps(kp * bb, bh, mma), 0, 0, kp)
                   for kp in kps for bh in (32, 16) for bb in (128, 64, 32, 16, 8, 4)
                   if MIN_BLOCK <= kp * bb <= bmax and (kp == 1 or kp * bb == MIN_BLOCK)
                   and (kp * bb * bh * nl <= ACC_BUDGET or kp * bb * bh == MIN_BLOCK * MIN_BLOCK)]
    best, best_key = None, None
    for bb, bh, bk, warps, *extra in choices:
        kp = extra[2] if len(extra) > 2 and extra[2] else 1  # K groups: opt-in (see the docstring)
        kc = extra[3] if len(extra) > 3 and extra[3] else 1  # of them side by side over columns
        if cdiv(B, kp // kc * bb) * kp > sms:
            kp = kc = 1  # more K groups than multiprocessors could not all be resident
        nb, nj = cdiv(B, kp // kc * bb), cdiv(H, kc * bh)  # batch tiles, column groups
        npc = min(nj, max(1, sms // (nb * kp))) if nb <= sms else 1
        ks = extra[1] if len(extra) > 1 and extra[1] else (k_slices(kp // kc * bb, kc * bh, warps, H, bk, nl)
                                                           if mma else 1)
        key = (min(nb * npc * kp, sms) // max(1, sms // 8), -kp, kp // kc * bb, bh)
        if best_key is None or key > best_key:
            best_key = key
            best = dict(BLOCK_B=bb, BLOCK_H=bh, BLOCK_K=bk, JPP=cdiv(nj, npc), NK=cdiv(H, kp * ks * bk), NPC=npc,
                        KS=ks, KP=kp, KC=kc, NB=nb, num_warps=warps,
                        **({"num_stages": extra[0]} if extra and extra[0] else {}))
    assert best is not None
    if pinned is None and not mma and dtype == torch.float32 and best["KP"] == 1 and best["KS"] == 1 \
            and best["BLOCK_B"] * best["BLOCK_H"] == MIN_BLOCK * MIN_BLOCK:
        best = _fma_small_tiles(spec, best, B, H, sms, kernel)
    return best


def _fma_small_tiles(spec: FusedSpec, best: dict, B: int, H: int, sms: int, kernel: str) -> dict:
    """Strict fp32 on 16x16 tiles. The backward in K groups of 8 programs over 8 column blocks
    (8 warps from three passes up, else 4); the forward of a cell of one or two passes without
    stacked products the same way with 4 warps; other forwards in two slices of 16-wide K tiles
    where their passes' products stack (codegen.stacked_products: pairs of a source's linears in
    one tile). Measured on the H200 (2026-12-02, fused_probe.py --parts stack): DARTS V2 (64,
    512, 512) forward 25.2 vs 30.0 ms, forward+backward 66.0 vs 72.7 (68.6 with the stacked
    forward alone); the LSTM (64, 512, 512) forward 6.2 vs 7.9 ms (with its four gates in one
    tile, codegen.stack_max). Small cells at (64, 256, 512) (2026-12-03, --parts small;
    benchmarks/fused_notes.md): the backward's K groups with 4 warps LSTM 8.5 vs 9.6 ms
    forward+backward, nasbench_nlp#1 (one pass) 3.6 vs 3.7, nasbench_nlp#0 (two) 6.2 vs 6.4
    with 8 warps, and 8 warps from three passes up (nasbench_nlp#3-5 4-7% faster than 4); the
    forward's K groups nasbench_nlp#0 2.6 vs 2.8, #1 1.5 vs 1.6 ms, but slower in the LSTM (4.2
    vs 3.4), in a one-pass cell with stacked products (+7%) and from three passes up (DARTS V2
    31.6-49.2 vs 25.2). Not taken: one pipeline stage (DARTS V2 forward 38-40 ms)."""
    cdiv = triton.cdiv
    groups_fit = H >= 32 * MIN_BLOCK and cdiv(B, MIN_BLOCK) * 8 <= sms
    if kernel == "bwd" and groups_fit:
        return _column_k_groups(B, H, sms, warps=8 if spec.passes > 2 else 4)
    if kernel == "fwd" and groups_fit and spec.passes <= 2 and not spec.stacks():
        return _column_k_groups(B, H, sms, warps=4)
    best = dict(best)
    if kernel == "fwd" and spec.stacks() and H >= 2 * 2 * MIN_BLOCK:
        best.update(KS=2, BLOCK_K=MIN_BLOCK, NK=cdiv(H, 2 * MIN_BLOCK))
        best.pop("num_stages", None)
    return best


def _column_k_groups(B: int, H: int, sms: int, warps: int) -> dict:
    """K groups of 8 programs side by side over 8 column blocks of 16 (KP = KC = 8): each sums an
    eighth of K over a 16 x 128 tile, so a batch of few 16-row tiles still fills the chip."""
    cdiv = triton.cdiv
    nb, nj = cdiv(B, MIN_BLOCK), cdiv(H, 8 * MIN_BLOCK)
    npc = min(nj, max(1, sms // (nb * 8)))
    return dict(BLOCK_B=MIN_BLOCK, BLOCK_H=MIN_BLOCK, BLOCK_K=MIN_BLOCK, JPP=cdiv(nj, npc),
                NK=cdiv(H, 8 * MIN_BLOCK), NPC=npc, KS=1, KP=8, KC=8, NB=nb, num_warps=warps)


def _warps(bb: int, bh: int, mma: bool) -> int:
    """Matrix units: one warp per 16-row strip (4 to 8; small tiles give the spare warps K
    slices). FMA (fp32 without tf32): 4 warps up to 1024 outputs, else 8. Measured on the
    H200, 2026-12-01 (benchmarks/fused_probe.py --parts tune): LSTM (256, 256, 1024) tf32
    128x16 tiles with 8 warps 33.0 ms vs 64x32 with 8 warps 41.8; bf16 64x32 with 4 warps
    17.2 vs 8 warps 18.6."""
    if mma:
        return max(4, min(8, bb // 16))
    return 4 if bb * bh <= 1024 else 8


def safe_blocks(B: int, H: int, device: torch.device) -> dict:
    """The smallest tiles: what a launch falls back to when a kernel runs out of shared memory."""
    nb, nj = triton.cdiv(B, MIN_BLOCK), triton.cdiv(H, MIN_BLOCK)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    npc = min(nj, max(1, sms // nb)) if nb <= sms else 1
    return dict(BLOCK_B=MIN_BLOCK, BLOCK_H=MIN_BLOCK, BLOCK_K=32, JPP=triton.cdiv(nj, npc), NK=triton.cdiv(H, 32),
                NPC=npc, KS=1, KP=1, KC=1, NB=nb, num_warps=4)


def _run(kernel, blocks: dict, fallback: dict, bar_at: int, *args, **const) -> None:
    """Launch with `blocks` (fresh barrier counters go in argument `bar_at`: one per batch tile,
    then one per K group); on a shared-memory shortage, once more with the smallest tiles."""
    for attempt in (blocks, fallback):
        meta = {k: v for k, v in attempt.items() if k != "NB"}
        grid = (attempt["NB"] * attempt["NPC"] * attempt["KP"],)
        bar = torch.zeros(attempt["NB"] * (1 + attempt["NPC"]), dtype=torch.int32, device=args[0].device)
        try:
            kernel[grid](*args[:bar_at], bar, *args[bar_at:], **const, **meta)
            return
        except OutOfResources:
            if attempt is fallback:
                raise
            log.info("fused kernel: out of resources with %s; using the smallest tiles", attempt)


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _prec(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 and not interpreting():
        return "tf32"
    return "ieee"


class _FusedSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec: FusedSpec, xp: torch.Tensor, bias: torch.Tensor, h0: torch.Tensor,
                *weights: torch.Tensor):
        mod = load(spec)
        T, B, _ = xp.shape
        NS, NL, NV = len(spec.states), len(spec.linears), len(spec.chain)
        H = h0.shape[1] // NS
        xp, h0, bias = xp.contiguous(), h0.contiguous(), bias.contiguous()
        S = torch.empty(T + 1, B, NS * H, dtype=xp.dtype, device=xp.device)
        S[0] = h0
        acc_dtype = torch.float64 if xp.dtype == torch.float64 else torch.float32
        # pre-activations at accumulator precision: the backward recomputes the cell from them
        pre = torch.empty(T, B, max(NL, 1) * H, dtype=acc_dtype, device=xp.device)
        V = torch.empty(T, B, max(NV, 1) * H, dtype=xp.dtype, device=xp.device)
        wts = [w.t().contiguous() for w in weights]
        blocks = choose_blocks(spec, B, H, xp.device, xp.dtype)
        fallback = safe_blocks(B, H, xp.device) if xp.is_cuda else blocks
        scr = _scratch(blocks, B, pre.shape[2], acc_dtype, xp.device)
        _run(mod.fwd, blocks, fallback, 5, xp, S, pre, V, scr, bias, *wts, B, T, H, ACC=_acc(xp.dtype),
             PREC=_prec(xp.dtype))
        ctx.spec, ctx.bias_dtype = spec, bias.dtype
        ctx.save_for_backward(xp, S, pre, V, *weights)
        return S

    @staticmethod
    def backward(ctx, dS: torch.Tensor):
        spec: FusedSpec = ctx.spec
        xp, S, pre, V, *weights = ctx.saved_tensors
        mod = load(spec)
        T, B, _ = xp.shape
        NS, NL = len(spec.states), len(spec.linears)
        H = S.shape[2] // NS
        acc_dtype = torch.float64 if xp.dtype == torch.float64 else torch.float32
        dS = dS.contiguous()
        dxp = torch.empty(T, B, (NL + len(spec.ext)) * H, dtype=xp.dtype, device=xp.device)  # DXP: dpre, then ext
        gv = torch.empty(B, max(len(spec.gv), 1) * H, dtype=acc_dtype, device=xp.device)
        gs = torch.zeros(2, B, NS * H, dtype=acc_dtype, device=xp.device)  # gs[T % 2]: nothing after T
        ws = [w.contiguous() for w in weights]
        blocks = choose_blocks(spec, B, H, xp.device, xp.dtype, kernel="bwd")
        fallback = safe_blocks(B, H, xp.device) if xp.is_cuda else blocks
        scr = _scratch(blocks, B, max(len(ws), 1) * H, acc_dtype, xp.device)
        _run(mod.bwd, blocks, fallback, 9, xp, S, pre, V, dS, dxp, gv, gs, scr, *ws, B, T, H, ACC=_acc(xp.dtype),
             PREC=_prec(xp.dtype))
        dh0 = (dS[0].to(acc_dtype) + gs[0]).to(xp.dtype)
        dbias = (dxp.view(T * B, -1)[:, :NL * H].sum(0, dtype=acc_dtype).view(NL, H).to(ctx.bias_dtype)
                 if NL else None)  # (no linears: the caller passed a placeholder)
        return (None, _xp_grad(spec, dxp, H), dbias, dh0, *_weight_grads(spec, dxp, S, V, H))


def _xp_grad(spec: FusedSpec, dxp: torch.Tensor, H: int) -> torch.Tensor:
    """XP's gradient from DXP (every linear's dpre, then the hoisted values'): DXP itself where
    every linear has an x part (its layout is XP's), else its x-part linears' and the values'
    columns."""
    NL = len(spec.linears)
    if spec.xlins == list(range(NL)):
        return dxp
    cols = [dxp[..., li * H:(li + 1) * H] for li in spec.xlins] + [dxp[..., NL * H:]]
    return torch.cat(cols, -1)


def _scratch(blocks: dict, B: int, width: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Where a K group's programs leave their partial sums (KP parts of every row; reused each
    pass and step, see nas.kernels.codegen); unused with one program per K."""
    kp = blocks["KP"]
    shape = (kp, B, width) if kp > 1 else (1,)
    return torch.empty(shape, dtype=dtype, device=device)


def _weight_grads(spec: FusedSpec, dxp: torch.Tensor, S: torch.Tensor, V: torch.Tensor, H: int) -> list[torch.Tensor]:
    """One GEMM per weight group over all T*B rows: dW = dpre^T @ source values (per run of
    consecutive linears, on views of DXP: a gather of its columns cost ~1 ms of DARTS V2's 74)."""
    T, B, XW = dxp.shape
    dpre = dxp.reshape(T * B, XW)
    dws = []
    for w, src in enumerate(spec.wsrcs):
        if src in spec.states:
            si = spec.states.index(src)
            values = S[:-1, :, si * H:(si + 1) * H].reshape(T * B, H)
        else:
            vi = spec.chain.index(src)
            values = V[:, :, vi * H:(vi + 1) * H].reshape(T * B, H)
        rows: list[int | None] = [None] * spec.wrows[src]
        for li, wi, row in spec.parts:
            if wi == w:
                rows[row] = li
        runs: list[list[int]] = []  # [first row, first linear, count]: consecutive in both
        for row, li in enumerate(rows):
            if li is None:
                continue  # a dead linear's rows: no gradient
            if runs and runs[-1][0] + runs[-1][2] == row and runs[-1][1] + runs[-1][2] == li:
                runs[-1][2] += 1
            else:
                runs.append([row, li, 1])
        if len(runs) == 1 and runs[0][2] == len(rows):
            g = dpre[:, runs[0][1] * H:(runs[0][1] + runs[0][2]) * H].t() @ values  # a view of DXP: no copy
        else:
            g = (torch.empty if sum(n for *_, n in runs) == len(rows) else torch.zeros)(
                spec.wrows[src] * H, H, dtype=dxp.dtype, device=dxp.device)
            for row, li, n in runs:
                torch.matmul(dpre[:, li * H:(li + n) * H].t(), values, out=g[row * H:(row + n) * H])
        dws.append(g)
    return dws


def fused_sequence(spec: FusedSpec, xp: torch.Tensor, bias: torch.Tensor, h0: torch.Tensor,
                   weights: list[torch.Tensor]) -> torch.Tensor:
    if not HAVE_TRITON:
        raise RuntimeError("the fused kernel needs triton")
    return _FusedSequence.apply(spec, xp, bias, h0, *weights)
