"""Parallel scan for first-order diagonal linear recurrences, h_t = a_t * h_{t-1} + b_t.

Forward and backward are Triton kernels built on `tl.associative_scan` over tiles of
BLOCK_T time steps, with the carry passed from tile to tile, so any length works in one
launch per direction. The forward prefetches: tile i+1's loads are issued before tile i's
scan (its tiles and warps: FWD_TILE, with the measurements). Inputs may be fp32, fp16 or
bf16 (accumulation in fp32) or fp64 (in fp64). Without h0 the carry starts at zero in-kernel.
The tile count is a compile-time constant (the interpreter needs constant loop bounds),
so one kernel is compiled per distinct ceil(T / BLOCK_T): one per sequence length in practice.
The backward is the same recurrence run in reverse time:
    g_t = dL/dh_t + a_{t+1} g_{t+1};  dL/db_t = g_t;  dL/da_t = g_t h_{t-1};  dL/dh_0 = a_0 g_0.
This module knows nothing of cells: `nas.compile` decides when a cell is such a recurrence.
"""

from __future__ import annotations

import os

import torch

try:  # triton is optional: without it the compiler uses the reference loop
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except Exception:  # noqa: BLE001 - ImportError, or a broken install
    HAVE_TRITON = False


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def scan_available(device: torch.device) -> tuple[bool, str]:
    """Whether the Triton scan can run on `device`, and why not."""
    if not HAVE_TRITON:
        return False, "triton is not installed"
    if device.type == "cuda":
        return True, ""
    if device.type == "cpu" and interpreting():
        return True, ""
    return False, f"Triton kernels need a CUDA device (or TRITON_INTERPRET=1 on the CPU); got {device.type}"


if HAVE_TRITON:

    @triton.jit
    def _combine(a1, b1, a2, b2):
        return a1 * a2, b1 * a2 + b2

    @triton.jit
    def _scan_fwd(A, Bv, H0, Hout, T, D, SB, ST, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, N_TILES: tl.constexpr,
                  ACC: tl.constexpr, HAS_H0: tl.constexpr = True):
        # Software prefetch: tile i+1's loads are issued before tile i's scan, so the memory
        # system is busy while the scan runs. Loads past T are masked off (the last iteration
        # moves no bytes); padded rows are a = 1, b = 0, so they only repeat the carry.
        pid_b = tl.program_id(0)
        pid_d = tl.program_id(1)
        offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        rows = tl.arange(0, BLOCK_T)
        base = pid_b.to(tl.int64) * SB
        if HAS_H0:
            carry = tl.load(H0 + pid_b.to(tl.int64) * D + offs_d, mask=mask_d, other=0.0).to(ACC)
        else:
            carry = tl.zeros([BLOCK_D], dtype=ACC)
        mask = (rows[:, None] < T) & mask_d[None, :]
        ptr = base + rows[:, None].to(tl.int64) * ST + offs_d[None, :]
        a_next = tl.load(A + ptr, mask=mask, other=1.0)
        b_next = tl.load(Bv + ptr, mask=mask, other=0.0)
        for i in range(N_TILES):
            a = a_next.to(ACC)
            b = b_next.to(ACC)
            t = i * BLOCK_T + rows
            mask = (t[:, None] < T) & mask_d[None, :]
            ptr = base + t[:, None].to(tl.int64) * ST + offs_d[None, :]
            tn = t + BLOCK_T
            mask_n = (tn[:, None] < T) & mask_d[None, :]
            ptr_n = base + tn[:, None].to(tl.int64) * ST + offs_d[None, :]
            a_next = tl.load(A + ptr_n, mask=mask_n, other=1.0)
            b_next = tl.load(Bv + ptr_n, mask=mask_n, other=0.0)
            ca, cb = tl.associative_scan((a, b), 0, _combine)
            h = ca * carry[None, :] + cb
            tl.store(Hout + ptr, h.to(Hout.dtype.element_ty), mask=mask)
            last = tl.minimum(T - i * BLOCK_T, BLOCK_T) - 1
            carry = tl.sum(tl.where(rows[:, None] == last, h, 0.0), axis=0)

    @triton.jit
    def _scan_bwd(A, Hs, H0, G, GA, GB, GH0, T, D, SB, ST, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
                  N_TILES: tl.constexpr, ACC: tl.constexpr, HAS_H0: tl.constexpr = True):
        # HAS_H0 = False: h_{-1} = 0 and no dL/dh_0 is written (H0 and GH0 are not dereferenced).
        pid_b = tl.program_id(0)
        pid_d = tl.program_id(1)
        offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        rows = tl.arange(0, BLOCK_T)
        base = pid_b.to(tl.int64) * SB
        if HAS_H0:
            h0 = tl.load(H0 + pid_b.to(tl.int64) * D + offs_d, mask=mask_d, other=0.0).to(ACC)
        carry = tl.zeros([BLOCK_D], dtype=ACC)  # g_{t+1} after the current tile
        g_first = tl.zeros([BLOCK_D], dtype=ACC)
        for j in range(N_TILES):
            hi = T - j * BLOCK_T  # this tile covers times hi-BLOCK_T .. hi-1, walked backwards
            t = hi - 1 - rows
            valid = t >= 0
            mask = valid[:, None] & mask_d[None, :]
            ptr = base + t[:, None].to(tl.int64) * ST + offs_d[None, :]
            nxt = t + 1
            mask_n = valid[:, None] & (nxt[:, None] < T) & mask_d[None, :]
            a_next = tl.load(A + base + nxt[:, None].to(tl.int64) * ST + offs_d[None, :], mask=mask_n,
                             other=0.0).to(ACC)
            gh = tl.load(G + ptr, mask=mask, other=0.0).to(ACC)
            ca, cb = tl.associative_scan((a_next, gh), 0, _combine)
            g = ca * carry[None, :] + cb
            prev = t - 1
            mask_p = valid[:, None] & (prev[:, None] >= 0) & mask_d[None, :]
            h_prev = tl.load(Hs + base + prev[:, None].to(tl.int64) * ST + offs_d[None, :], mask=mask_p,
                             other=0.0).to(ACC)
            if HAS_H0:
                h_prev = tl.where((prev[:, None] < 0) & valid[:, None], h0[None, :], h_prev)
            tl.store(GB + ptr, g.to(GB.dtype.element_ty), mask=mask)
            tl.store(GA + ptr, (g * h_prev).to(GA.dtype.element_ty), mask=mask)
            last = tl.minimum(hi, BLOCK_T) - 1
            carry = tl.sum(tl.where(rows[:, None] == last, g, 0.0), axis=0)
            g_first = carry
        if HAS_H0:
            a0 = tl.load(A + base + offs_d, mask=mask_d, other=0.0).to(ACC)
            tl.store(GH0 + pid_b.to(tl.int64) * D + offs_d, (a0 * g_first).to(GH0.dtype.element_ty), mask=mask_d)


def _acc(dtype: torch.dtype):
    """fp32 accumulation for fp32/fp16/bf16 inputs; fp64 stays fp64 (tests)."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def _tiles(T: int, D: int, elements: int) -> tuple[int, int, int]:
    """(BLOCK_T, BLOCK_D, number of tiles): 64 columns at most, BLOCK_T * BLOCK_D = `elements`
    (BLOCK_T at most 256; 32 under the interpreter, whose tests stay small)."""
    block_d = min(64, triton.next_power_of_2(max(D, 1)))
    block_t = min(256, elements // block_d, triton.next_power_of_2(max(T, 1)))
    if interpreting():
        block_t = min(block_t, 32)
    return block_t, block_d, triton.cdiv(T, block_t)


BWD_TILE = 8192  # the backward's tiles: 128 x 64 (its fwd+bwd target was met as it was)


# The forward's tiles and warps. Measured (benchmarks/fused_probe.py, H200, 2026-12-01,
# (B, T, D) = (16, 4096, 1024)): the prefetching forward at 64 x 64, 4 warps, fp32 0.204 ms =
# 3.95 TB/s, 95% of a device-to-device copy (4.15 TB/s); at 128 x 32 or 64 x 32 about 89%; the
# forward before prefetch at the backward's 128 x 64, 86.5% (0.2246 ms). bf16: 0.197 ms vs 0.245 ms.
# The prefetch keeps two tiles of a and b in registers, hence the smaller tile than the backward's.
# A narrow D (BLOCK_D < 64, not measured) gets a longer tile of the same elements, at most 256.
FWD_TILE, FWD_NUM_WARPS = 4096, 4


def _layout(a: torch.Tensor, time_major: bool) -> tuple[int, int, int, int]:
    """(batch, time, D, batch stride, time stride) of a contiguous (B,T,D) or (T,B,D) tensor."""
    if time_major:
        T, B, D = a.shape
        return B, T, D, D, B * D
    B, T, D = a.shape
    return B, T, D, T * D, D


class _LinearScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None, time_major: bool) -> torch.Tensor:
        a, b = a.contiguous(), b.contiguous()
        has_h0 = h0 is not None
        h0 = h0.contiguous() if has_h0 else None
        B, T, D, sb, st = _layout(a, time_major)
        h = torch.empty_like(b)
        block_t, block_d, n_tiles = _tiles(T, D, FWD_TILE)
        grid = (B, triton.cdiv(D, block_d))
        # without h0, `a` stands in for the H0 pointer, which the kernel then never reads
        _scan_fwd[grid](a, b, h0 if has_h0 else a, h, T, D, sb, st, BLOCK_T=block_t, BLOCK_D=block_d,
                        N_TILES=n_tiles, ACC=_acc(a.dtype), HAS_H0=has_h0, num_warps=FWD_NUM_WARPS)
        ctx.save_for_backward(a, h, h0)
        ctx.time_major = time_major
        return h

    @staticmethod
    def backward(ctx, grad_h: torch.Tensor):
        a, h, h0 = ctx.saved_tensors
        has_h0 = h0 is not None
        B, T, D, sb, st = _layout(a, ctx.time_major)
        grad_h = grad_h.contiguous()
        ga, gb = torch.empty_like(a), torch.empty_like(h)
        gh0 = torch.empty_like(h0) if has_h0 else None
        if T == 0:  # no tiles: the kernel would read a_0 of an empty tensor for dL/dh_0, which is 0
            return ga, gb, None if gh0 is None else gh0.zero_(), None
        block_t, block_d, n_tiles = _tiles(T, D, BWD_TILE)
        grid = (B, triton.cdiv(D, block_d))
        # without h0, `a` stands in for the H0 and GH0 pointers, which the kernel then never touches
        _scan_bwd[grid](a, h, h0 if has_h0 else a, grad_h, ga, gb, gh0 if has_h0 else a, T, D, sb, st,
                        BLOCK_T=block_t, BLOCK_D=block_d, N_TILES=n_tiles, ACC=_acc(a.dtype), HAS_H0=has_h0)
        return ga, gb, gh0, None


def linear_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None,
                time_major: bool = False) -> torch.Tensor:
    """h_t = a_t * h_{t-1} + b_t over the time dim of (B, T, D) tensors ((T, B, D) when
    time_major); h0 is (B, D) (zeros if None, without a zero tensor being made). Returns all
    h_t. Differentiable in a, b, h0.
    """
    if not HAVE_TRITON:
        raise RuntimeError("linear_scan needs triton")
    if a.shape != b.shape or a.dim() != 3:
        raise ValueError(f"a and b must be (B, T, D) of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    dtype = torch.promote_types(a.dtype, b.dtype)
    return _LinearScan.apply(a.to(dtype), b.to(dtype), None if h0 is None else h0.to(dtype), time_major)


def linear_scan_reference(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
    """The same recurrence as an eager loop (the oracle for tests and benchmarks)."""
    h = torch.zeros_like(b[:, 0]) if h0 is None else h0
    out = []
    for t in range(a.shape[1]):
        h = a[:, t] * h + b[:, t]
        out.append(h)
    return torch.stack(out, 1)
