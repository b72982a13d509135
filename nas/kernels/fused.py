"""Launch and autograd glue for the generated fused sequential kernels (`nas.kernels.codegen`).

`fused_sequence(spec, xp, h0, weights)` runs a cell's whole time loop:
  xp      (T, B, NX*H)  per-step inputs computed outside the loop by the caller (one GEMM
                        for x's projections): per per-step linear, its x part plus bias,
                        then the hoisted values the elementwise graph reads;
  h0      (B, NS*H)     initial states, concatenated;
  weights one (n_parts*H, H) matrix per state that a per-step linear projects (the
                        CellLayer parameter of that state's weight group).
It returns S (T+1, B, NS*H): S[0] = h0 and S[t+1] the states after step t. Gradients reach
xp (and through autograd the input GEMM and the biases), h0 and the weights; the weight
gradients are one GEMM per weight group over all T*B rows after the reverse-time kernel.

Dtypes: fp32, bf16 or fp16 storage with fp32 accumulation, or fp64 throughout (tests).
fp32 matmuls use tf32 only where torch.backends.cuda.matmul.allow_tf32 is set (as torch).

Block rule (`choose_blocks`): BLOCK_B = 16 batch rows per program (tl.dot's minimum), one
program per batch tile; BLOCK_H = min(next_pow2(H), 64), or 32 for cells with many live
values (register pressure); larger H is looped in BLOCK_H blocks inside the program.
"""

from __future__ import annotations

import torch

from .codegen import FusedSpec, load
from .scan import HAVE_TRITON, interpreting, scan_available

if HAVE_TRITON:
    import triton
    import triton.language as tl

fused_available = scan_available  # same rule: CUDA, or the CPU under TRITON_INTERPRET=1

MIN_BLOCK = 16  # tl.dot's smallest tile edge on the GPU (tests lower it in the interpreter)
MAX_BLOCK_H = 64


def choose_blocks(spec: FusedSpec, B: int, H: int) -> dict:
    n_values = spec.extra.get("n_values", 0)
    block_h = max(MIN_BLOCK, min(triton.next_power_of_2(H), MAX_BLOCK_H if n_values <= 48 else MAX_BLOCK_H // 2))
    block_k = block_h
    block_b = MIN_BLOCK
    return dict(BLOCK_B=block_b, BLOCK_H=block_h, BLOCK_K=block_k, NJ=triton.cdiv(H, block_h),
                NK=triton.cdiv(H, block_k))


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _prec(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 and not interpreting():
        return "tf32"
    return "ieee"


class _FusedSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec: FusedSpec, xp: torch.Tensor, h0: torch.Tensor, *weights: torch.Tensor):
        mod = load(spec)
        T, B, _ = xp.shape
        NS, NL = len(spec.states), len(spec.linears)
        H = h0.shape[1] // NS
        xp, h0 = xp.contiguous(), h0.contiguous()
        S = torch.empty(T + 1, B, NS * H, dtype=xp.dtype, device=xp.device)
        S[0] = h0
        pre = torch.empty(T, B, max(NL, 1) * H, dtype=xp.dtype, device=xp.device)
        wts = [w.t().contiguous() for w in weights]
        blocks = choose_blocks(spec, B, H)
        grid = (triton.cdiv(B, blocks["BLOCK_B"]),)
        mod.fwd[grid](xp, S, pre, *wts, B, T, H, ACC=_acc(xp.dtype), PREC=_prec(xp.dtype), **blocks)
        ctx.spec = spec
        ctx.save_for_backward(xp, S, pre, *weights)
        return S

    @staticmethod
    def backward(ctx, dS: torch.Tensor):
        spec: FusedSpec = ctx.spec
        xp, S, pre, *weights = ctx.saved_tensors
        mod = load(spec)
        T, B, XW = xp.shape
        NS = len(spec.states)
        H = S.shape[2] // NS
        acc_dtype = torch.float64 if xp.dtype == torch.float64 else torch.float32
        dS = dS.contiguous()
        dxp = torch.empty_like(xp)
        gc = torch.zeros(B, NS * H, dtype=acc_dtype, device=xp.device)
        gd = torch.empty(B, NS * H, dtype=acc_dtype, device=xp.device)
        ws = [w.contiguous() for w in weights]
        blocks = choose_blocks(spec, B, H)
        grid = (triton.cdiv(B, blocks["BLOCK_B"]),)
        mod.bwd[grid](xp, S, pre, dS, dxp, gc, gd, *ws, B, T, H, ACC=_acc(xp.dtype), PREC=_prec(xp.dtype),
                      **blocks)
        dh0 = (dS[0].to(acc_dtype) + gc).to(xp.dtype)
        # weight gradients: one GEMM per weight group over all T*B rows
        dws = []
        for w, s in enumerate(spec.wstates):
            si = spec.states.index(s)
            prev = S[:-1, :, si * H:(si + 1) * H].reshape(T * B, H)
            rows = [None] * spec.wrows[s]
            for li, wi, row in spec.parts:
                if wi == w:
                    rows[row] = li
            cols = []
            for li in rows:
                if li is None:  # a dead linear's rows: no gradient
                    cols.append(torch.arange(0, 0, device=xp.device))
                else:
                    cols.append(torch.arange(li * H, (li + 1) * H, device=xp.device))
            dpre = dxp.reshape(T * B, XW)
            if all(li is not None for li in rows):
                g = dpre.index_select(1, torch.cat(cols)).t() @ prev
            else:
                g = torch.zeros(spec.wrows[s] * H, H, dtype=xp.dtype, device=xp.device)
                for row, li in enumerate(rows):
                    if li is not None:
                        g[row * H:(row + 1) * H] = dpre[:, li * H:(li + 1) * H].t() @ prev
            dws.append(g)
        return (None, dxp, dh0, *dws)


def fused_sequence(spec: FusedSpec, xp: torch.Tensor, h0: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
    if not HAVE_TRITON:
        raise RuntimeError("the fused kernel needs triton")
    return _FusedSequence.apply(spec, xp, h0, *weights)
