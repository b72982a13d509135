"""Triton source for one cell's fused sequential kernels, generated from a validated CellPlan.

What is generated: a module with two kernels, `fwd` and `bwd`, that run a cell's whole
time loop (see `nas.kernels.fused` for the launch and the autograd glue).

Safety of the generated text: it is built from the plan only, never from user text.
Every op name is looked up in the fixed tables below (an op missing from them makes the
cell unsupported), node ids never appear (nodes become `v0, v1, ...` by position, their
gradients `g0, g1, ...`), and constants are printed with `repr(float)` after a finiteness
check. The module is written to a file under the kernel cache and imported with
importlib (Triton's `@jit` reads a kernel's source from its file, so a generated kernel
must live in a real file; this is the usual way Triton code generators load their
output). Nothing is passed to exec/eval.

Cache: `$NAS_KERNEL_CACHE/<triton version>/<canonical hash>-<source hash>.py` (root
default `~/.cache/cellsearch/kernels`). The canonical hash names the cell; the source
hash is there because the kernel's argument layout follows the plan's node order, which
isomorphic cells written differently do not share. Files are written atomically, so
concurrent workers may share the cache.

The kernels (grid: NB batch tiles of KP // KC * BLOCK_B rows x NPC column programs x KP;
each program owns BLOCK_B rows and every NPC-th group of KC blocks of BLOCK_H hidden
columns, one block of each group (all of it with KC = 1); the whole time
loop runs inside). A step runs in passes (`nas.kernels.fused_spec`: a linear that projects
a per-step node, as in DARTS/ENAS, runs one pass after it):
  fwd: for t, for each pass k, per owned column block: the pass's linears' pre-activations
       = bias (BIAS) + hoisted x part (XP, where there is one) + sum over their per-step
       sources of source @ W^T (a K-loop of tl.dot over every column of the source: the previous
       state in S, or a chain source written to V in an earlier pass); PRE is written, the
       elementwise graph of the pass runs in registers (values of earlier passes are
       recomputed from PRE, S and XP), chain sources go to V and next states to S[t+1];
       then `_sync`: every program of the tile has finished the pass. With KS > 1 (the
       matrix units, see `choose_blocks`) the K-loop runs 3-D products: slice s of KS
       covers one KS-th of the columns, each warp accumulates its own slice, and the slices
       are summed once after the loop (phase B below does the same). With KP > 1 a K group
       of KP programs shares a product tile of KP // KC * BLOCK_B rows by KC * BLOCK_H
       columns: each sums one KP-th of K over the whole tile (larger products: more outputs
       per thread for the same operand loads), stores them in SCR, a barrier among the
       group, and each adds up the KP parts of its own BLOCK_B x BLOCK_H block and runs the
       rest of the pass on it (phase B: the same exchange). KC = 1 stacks the group's rows,
       KC = KP its columns (wider FMA products: Triton's FMA dot loads fewer operands per
       FMA for wide tiles than for tall ones).
  bwd: for t = T-1 .. 0, for each pass k from the last: phase A, per owned block: reload
       and recompute, run the pass's elementwise graph backwards (derivative code per
       op), write its linears' dpre to DXP, and add gradients for values of earlier
       passes into their accumulators (GV, the previous step's state gradient GS, DXP of
       hoisted values); `_sync`; phase B: each source's accumulator += dpre @ W (K-loop
       over every column of dpre). Weight gradients are one GEMM per group after the loop.
`_sync` is a barrier among the NPC * KP programs of a tile, or the KP of a K group (an
atomic counter in global memory, release/acquire at GPU scope); loads of other programs'
values bypass L1 (`.cg`). It needs all programs resident, which `choose_blocks` guarantees
(at most one program per multiprocessor); under TRITON_INTERPRET programs run one after
another, so there NPC = KP = 1 and the barrier is a no-op (tests run programs in threads).
Any hidden size runs: none falls back.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from .fused_spec import ELEMENTWISE_OPS, SUPPORTED_OPS, FusedSpec, analyse, unsupported

if TYPE_CHECKING:  # nas.compile imports this module
    from ..compile.plan import CellPlan
    from ..ir import CellGraph

# ---- the op tables: forward expression and per-operand gradient of every supported op -----
# Arguments are generated variable names (v<i>, g<i>), never user text.


def _prod(names: list[str]) -> str:
    return " * ".join(names) if names else "1.0"


FWD = {
    "add": lambda a: "(" + " + ".join(a) + ")",
    "mul": lambda a: "(" + " * ".join(a) + ")",
    "sub": lambda a: f"({a[0]} - {a[1]})",
    "neg": lambda a: f"(-{a[0]})",
    "blend": lambda a: f"({a[0]} * {a[1]} + (1.0 - {a[0]}) * {a[2]})",
    "mean": lambda a: "((" + " + ".join(a) + f") * {repr(1.0 / len(a))})",
    "tanh": lambda a: f"_tanh({a[0]})",
    "sigmoid": lambda a: f"_sigmoid({a[0]})",
    "relu": lambda a: f"tl.where({a[0]} < 0.0, 0.0, {a[0]})",
    "identity": lambda a: f"{a[0]}",
    "gelu": lambda a: f"_gelu({a[0]})",  # erf form, as torch's default F.gelu
    "leaky_relu": lambda a: f"tl.where({a[0]} > 0.0, {a[0]}, {a[0]} * 0.01)",
    "silu": lambda a: f"({a[0]} * _sigmoid({a[0]}))",
    "softplus": lambda a: f"_softplus({a[0]})",
    # max: emitted as a chain of binary maxima (see _emit_max)
}

# (out, args, g) -> one expression per operand
BWD = {
    "add": lambda o, a, g: [g] * len(a),
    "mul": lambda o, a, g: [f"{g} * " + _prod(a[:i] + a[i + 1:]) for i in range(len(a))],
    "sub": lambda o, a, g: [g, f"(-{g})"],
    "neg": lambda o, a, g: [f"(-{g})"],
    "blend": lambda o, a, g: [f"{g} * ({a[1]} - {a[2]})", f"{g} * {a[0]}", f"{g} * (1.0 - {a[0]})"],
    "mean": lambda o, a, g: [f"{g} * {repr(1.0 / len(a))}"] * len(a),
    "tanh": lambda o, a, g: [f"{g} * (1.0 - {o} * {o})"],
    "sigmoid": lambda o, a, g: [f"{g} * {o} * (1.0 - {o})"],
    "relu": lambda o, a, g: [f"tl.where({o} > 0.0, {g}, 0.0)"],
    "identity": lambda o, a, g: [g],
    "gelu": lambda o, a, g: [f"{g} * _gelu_grad({a[0]})"],
    "leaky_relu": lambda o, a, g: [f"tl.where({a[0]} > 0.0, {g}, {g} * 0.01)"],
    "silu": lambda o, a, g: [f"{g} * _silu_grad({a[0]})"],
    "softplus": lambda o, a, g: [f"tl.where({a[0]} > 20.0, {g}, {g} * _sigmoid({a[0]}))"],
}

STACK_MAX = 0  # a source's linears per stacked FMA product tile; 0: `stack_max`'s rule
SMALL_CELL_PARTS = 8  # recurrent parts (linear x per-step source) of a cell whose runs may be 4 long
# the split products stack on the FMA path only (strict fp32, and fp64 in the CPU tests): the
# matrix units' K slices are tuned on 16-wide tiles
FMA_STACK = 'PREC == "ieee" and XP.dtype.element_ty != tl.bfloat16 and XP.dtype.element_ty != tl.float16'

_HELPERS = '''
@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    # (1 - e) / (1 + e) cancels for small |x| (relative error ~3e-8 / |x| in fp32): there an
    # odd polynomial (Taylor to x^11 in fp64, Cephes tanhf's in fp32), only mul/add so the
    # interpreter runs it too
    a = tl.abs(x)
    e = tl.exp(-2.0 * a)
    r = (1.0 - e) / (1.0 + e)
    s = a * a
    if x.dtype == tl.float64:
        p = a + a * s * (-0.3333333333333333 + s * (0.13333333333333333 + s * (-0.05396825396825397
                        + s * (0.021869488536155203 - s * 0.008863235529902197))))
        r = tl.where(a < 0.0625, p, r)
    else:
        p = a + a * s * (-3.33332819422e-1 + s * (1.33314422036e-1 + s * (-5.37397155531e-2
                        + s * (2.06390887954e-2 - s * 5.70498872745e-3))))
        r = tl.where(a < 0.625, p, r)
    return tl.where(x < 0.0, -r, r)


@triton.jit
def _log1p(y):
    # log(1 + y) accurate for small y (Goldberg: log(u) * y / (u - 1), u = 1 + y)
    u = 1.0 + y
    return tl.where(u == 1.0, y, tl.log(u) * (y / tl.where(u == 1.0, 1.0, u - 1.0)))


@triton.jit
def _gelu(x):
    return 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))


@triton.jit
def _gelu_grad(x):
    return 0.5 * (1.0 + tl.math.erf(x * 0.7071067811865476)) + x * tl.exp(-0.5 * x * x) * 0.3989422804014327


@triton.jit
def _silu_grad(x):
    s = _sigmoid(x)
    return s * (1.0 + x * (1.0 - s))


@triton.jit
def _softplus(x):
    return tl.where(x > 20.0, x, tl.maximum(x, 0.0) + _log1p(tl.exp(-tl.abs(x))))


@triton.jit
def _max_grad(a, b, g):
    # torch.maximum's rule: the gradient is split evenly on ties
    return tl.where(a > b, g, tl.where(a == b, g * 0.5, 0.0))
'''


assert set(FWD) | {"max"} == ELEMENTWISE_OPS  # the tables and the analysis agree
__all__ = ["FusedSpec", "SUPPORTED_OPS", "make_spec", "unsupported", "load", "cache_dir"]

_SYNC = '''
@triton.jit
def _sync(bar, epoch, NPC: tl.constexpr):
    # The programs of one batch tile own disjoint hidden columns (a K group shares them); a
    # pass that reads every column waits here until all NPC of them have finished the previous
    # pass (`epoch` counts the barriers passed). Only a grid whose programs are all resident
    # may use NPC > 1 (see nas.kernels.fused.choose_blocks).
    tl.debug_barrier()
    if NPC > 1:
        tl.atomic_add(bar, 1, sem="release", scope="gpu")
        target = epoch * NPC
        seen = tl.atomic_add(bar, 0, sem="acquire", scope="gpu")
        while seen < target:
            seen = tl.atomic_add(bar, 0, sem="acquire", scope="gpu")
        tl.debug_barrier()
'''


def stack_max(spec: FusedSpec) -> int:
    """How many of a source's linears one stacked product tile takes (`stacked_products`):
    up to 4 in cells of at most SMALL_CELL_PARTS recurrent parts, 2 in larger ones, whose
    forward spills with runs of 4 (sm_90 code compiled on the CPU: DARTS V2 160 B, random
    darts_ptb / enas_ptb cells 136-280 B; none for the LSTM and random nasbench_nlp /
    nasrl_ptb cells). H200, (64, 512, 512) fp32 forward (fused_probe.py --parts stack,
    PROBE_STACK=7): the LSTM 6.2 ms with runs of 4 vs 8.5 with pairs, random nasrl_ptb cells
    (8 parts) 11.2-11.4 vs 12.9-13.2, nasbench_nlp ones (5 parts) equal; DARTS V2 28.7 vs
    25.2. STACK_MAX pins it."""
    if STACK_MAX:
        return STACK_MAX
    return 4 if len(spec.parts) <= SMALL_CELL_PARTS else 2


def make_spec(plan: CellPlan) -> FusedSpec:
    """The spec and generated source of a supported cell (NotImplementedError otherwise)."""
    spec = analyse(plan)
    spec.source = _generate(plan.graph, spec)
    spec.key = hashlib.sha256(spec.source.encode()).hexdigest()[:16]
    return spec


# ---- generation -------------------------------------------------------------------------------

class _Emitter:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, indent: int, text: str) -> None:
        self.lines.append("    " * indent + text)


def _generate(graph: CellGraph, spec: FusedSpec) -> str:  # noqa: C901 - one generator, read top-down
    nodes = graph.nodes
    index = {nid: i for i, nid in enumerate(nodes)}
    var = {nid: f"v{index[nid]}" for nid in nodes}  # values
    grad = {nid: f"g{index[nid]}" for nid in nodes}  # gradients of the current pass's nodes
    part = {nid: f"q{index[nid]}" for nid in nodes}  # this event's share of an accumulator
    states = list(spec.states)
    order, stage, P = spec.order, spec.stage, spec.passes
    per_step = set(order)
    NS, NL, NV, NG = len(states), len(spec.linears), len(spec.chain), len(spec.gv)
    NX = NL + len(spec.ext)  # DXP's slots: every linear's dpre, then the hoisted values'
    NXP = len(spec.xlins) + len(spec.ext)  # XP's: the linears' hoisted parts, then the values
    lin_slot = {lin: i for i, lin in enumerate(spec.linears)}
    ext_slot = {x: NL + i for i, x in enumerate(spec.ext)}  # in DXP
    xp_slot = {li: i for i, li in enumerate(spec.xlins)}  # in XP
    xp_ext_slot = {x: len(spec.xlins) + i for i, x in enumerate(spec.ext)}
    v_slot = {c: i for i, c in enumerate(spec.chain)}
    gv_slot = {u: i for i, u in enumerate(spec.gv)}
    consts = [nid for nid in nodes if nodes[nid].op == "const"]

    def stage_of(nid: str) -> int:
        return stage[nid] if nid in per_step else 0

    def closure(targets) -> set[str]:
        need: set[str] = set()
        stack = list(targets)
        while stack:
            nid = stack.pop()
            if nid in need:
                continue
            need.add(nid)
            if nid in per_step and nodes[nid].op != "linear":
                stack.extend(nodes[nid].inputs)
        return need

    e = _Emitter()
    e(0, f'"""Generated by nas.kernels.codegen for cell {spec.canonical_hash}. Do not edit."""')
    e(0, "import triton")
    e(0, "import triton.language as tl")
    e(0, "")
    e.lines.extend(_HELPERS.strip("\n").split("\n"))
    e(0, "")
    e.lines.extend(_SYNC.strip("\n").split("\n"))
    e(0, "")
    e(0, f"NS = {NS}  # states")
    e(0, f"NL = {NL}  # per-step linears")
    e(0, f"NX = {NX}  # DXP slots: linears, then hoisted values")
    e(0, f"NXP = {NXP}  # XP slots: the linears' hoisted parts, then hoisted values")
    e(0, f"NV = {NV}  # chain sources (per-step values a linear projects)")
    e(0, f"PASSES = {P}")
    e(0, "")

    def col(slot: int, c: str = "cj") -> str:
        return f"({slot} * H + {c})[None, :]"

    def prologue(ind: int) -> None:
        e(ind, "pid = tl.program_id(0)")
        e(ind, "pid_k = pid % KP  # the part of K this program sums, and the rows or columns it finishes")
        e(ind, "kr = pid_k // KC  # a K group's product tile: KP // KC row blocks by KC column blocks")
        e(ind, "kc = pid_k % KC")
        e(ind, "pid_b = pid // (KP * NPC)")
        e(ind, "pid_c = (pid // KP) % NPC")
        e(ind, "kbase = pid_k * (KS * NK * BLOCK_K)")
        e(ind, "ep = 0  # tile barriers passed")
        e(ind, "eq = 0  # K-group barriers passed")
        e(ind, "rp = (pid_b * (KP // KC * BLOCK_B) + tl.arange(0, KP // KC * BLOCK_B)).to(tl.int64)  # products' rows")
        e(ind, "mp = rp < B")
        e(ind, "rb = (pid_b * (KP // KC * BLOCK_B) + kr * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)  # its rows")
        e(ind, "mb = rb < B")
        e(ind, "cols = tl.arange(0, BLOCK_H)")
        e(ind, "pcols = tl.arange(0, KC * BLOCK_H)")
        e(ind, "kk = tl.arange(0, BLOCK_K)")
        e(ind, "ks = tl.arange(0, KS)")
        for g in (2, 4):  # a stacked run's columns (stacked_products)
            e(ind, f"sq{g} = tl.arange(0, {g} * KC * BLOCK_H)")
        e(ind, f"XW = {NX} * H")
        e(ind, f"XPW = {NXP} * H")
        e(ind, f"SW = {NS} * H")
        e(ind, f"LW = {max(NL, 1)} * H")
        e(ind, f"VW = {max(NV, 1)} * H")
        e(ind, f"GW = {max(NG, 1)} * H")
        e(ind, "bar = BAR + pid_b  # the tile's barrier")
        e(ind, "barq = BAR + tl.cdiv(B, KP // KC * BLOCK_B) + pid_b * NPC + pid_c  # the K group's")

    def rows(ind: int, products: tuple[tuple[str, str], ...]) -> None:
        """Step t's row offsets: of this program's rows, and of the product rows (the K group's
        tile) in the tensors the kernel's products read (`products`: (name, row width))."""
        e(ind, "tb = t * B + rb")
        e(ind, "xrow = (tb * XW)[:, None]")
        e(ind, "xprow = (tb * XPW)[:, None]")
        e(ind, "lrow = (tb * LW)[:, None]")
        e(ind, "vrow = (tb * VW)[:, None]")
        e(ind, "prow = (tb * SW)[:, None]")
        e(ind, "nrow = ((tb + B) * SW)[:, None]")
        e(ind, "tp = t * B + rp")
        for name, width in products:
            e(ind, f"{name} = (tp * {width})[:, None]")

    def block_head(ind: int) -> None:
        e(ind, "cg = pid_c + jj * NPC  # the column group: KC blocks (one without K groups over columns)")
        e(ind, "j = cg * KC + kc  # this program's own column block")
        e(ind, "cj = j * BLOCK_H + cols")
        e(ind, "mj = cj < H")
        e(ind, "m2 = mb[:, None] & mj[None, :]")
        e(ind, "cp = cg * (KC * BLOCK_H) + pcols  # the products' columns")
        e(ind, "mc = cp < H")
        e(ind, "mp2 = mp[:, None] & mc[None, :]")
        e(ind, "zero = tl.zeros([BLOCK_B, BLOCK_H], dtype=ACC)")

    def k_head(ind: int) -> None:
        e(ind, "ck = kbase + k * BLOCK_K + kk")
        e(ind, "mk = ck < H")
        e(ind, "ma = mp[:, None] & mk[None, :]")
        e(ind, "mw = mk[:, None] & mc[None, :]")

    def k_head3(ind: int) -> None:
        """Split K: slice s of the KS slices covers columns kbase + [s*NK*BLOCK_K, (s+1)*NK*BLOCK_K)."""
        e(ind, "ck = (kbase + ks * (NK * BLOCK_K) + k * BLOCK_K)[:, None] + kk[None, :]  # (KS, BLOCK_K)")
        e(ind, "mk = ck < H")
        e(ind, "ma = mp[None, :, None] & mk[:, None, :]  # (KS, KP // KC * BLOCK_B, BLOCK_K)")
        e(ind, "mw = mk[:, :, None] & mc[None, None, :]  # (KS, BLOCK_K, KC * BLOCK_H)")

    def values(ind: int, need: set[str], k: int, forward: bool) -> None:
        """Loads and recomputes, per column block, every value in `need`."""
        for si, s in enumerate(states):
            if s in need:
                e(ind, f"{var[s]} = tl.load(S + prow + {col(si)}, mask=m2, other=0.0).to(ACC)")
        for x in spec.ext:
            if x in need:
                e(ind, f"{var[x]} = tl.load(XP + xprow + {col(xp_ext_slot[x])}, mask=m2, other=0.0).to(ACC)")
        for c in consts:
            if c in need:
                e(ind, f"{var[c]} = zero + {repr(float(nodes[c].value))}")
        for nid in order:
            if nid not in need:
                continue
            n = nodes[nid]
            if n.op == "linear":
                if not (forward and stage[nid] == k):  # else: the pass's accumulator
                    e(ind, f"{var[nid]} = tl.load(PRE + lrow + {col(lin_slot[nid])}, mask=m2, other=0.0).to(ACC)")
                continue
            args = [var[i] for i in n.inputs]
            if n.op == "max":
                cur = args[0]
                for m, a in enumerate(args[1:], start=1):
                    nxt = var[nid] if m == len(args) - 1 else f"{var[nid]}_m{m}"
                    e(ind, f"{nxt} = tl.maximum({cur}, {a})")
                    cur = nxt
            else:
                e(ind, f"{var[nid]} = {FWD[n.op](args)}")

    def group_exchange(sums: list[tuple[str, int, str]], width: str, stored: bool = False) -> None:
        """A K group (KP > 1) reduce-scatters its partial products: every program stores its
        sums over the group's product tile in SCR[pid_k] (at block `slot` of a row of `width`
        columns), a barrier among the group, and each program adds up all KP parts of its own
        rows and columns onto `start` (the x part and bias, or zero). `sums`: (variable, slot,
        start); `stored`: over columns with one K slice the products are in SCR already
        (`group_products`)."""
        e(3, "if KP > 1:  # reduce-scatter across the K group")
        ind = 4
        if stored:
            e(4, "if KS > 1 or KC == 1:  # (else each product went to SCR as its K-loop ended)")
            ind = 5
        for name, slot, _ in sums:
            e(ind, f"tl.store(SCR + ((pid_k * B + rp) * {width})[:, None] + {col(slot, 'cp')}, {name}, mask=mp2)")
        e(4, "eq += 1")
        e(4, "_sync(barq, eq, KP)")
        for name, slot, start in sums:
            e(4, f"{name} = {start}")
            e(4, "for q in tl.static_range(KP):")
            e(5, f"{name} += tl.load(SCR + ((q * B + rb) * {width})[:, None] + {col(slot)}, mask=m2, other=0.0, "
                 "cache_modifier='.cg')")

    # ---- forward kernel --------------------------------------------------------------------
    wt_args = "".join(f"WT{w}, " for w in range(len(spec.wsrcs)))
    consts_sig = ("B, T, H, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, "
                  "JPP: tl.constexpr, NK: tl.constexpr, NPC: tl.constexpr, KS: tl.constexpr, KP: tl.constexpr, "
                  "KC: tl.constexpr, "
                  "ACC: tl.constexpr, PREC: tl.constexpr")
    e(0, "@triton.jit")
    e(0, f"def fwd(XP, S, PRE, V, SCR, BAR, BIAS, {wt_args}{consts_sig}):")
    prologue(1)
    e(1, "for t in range(T):")
    rows(2, (("pvrow", "VW"), ("pprow", "SW")))  # sources: V and S

    def col3(slot: int) -> str:
        return f"({slot} * H + ck)[:, None, :]"

    def src_load(w: int, ind: int, name: str, split: bool) -> None:
        src = spec.wsrcs[w]
        base, slot = ("S + pprow", states.index(src)) if src in states else ("V + pvrow", v_slot[src])
        where = f"{base}[None, :, :] + {col3(slot)}" if split else f"{base} + {col(slot, 'ck')}"
        e(ind, f"{name} = tl.load({where}, mask=ma, other=0.0, cache_modifier='.cg')")

    def weight_dot(ind: int, w: int, row: int, acc: str, split: bool) -> None:
        """acc += a<w> @ (row block `row` of source w's weights, over the products' columns)."""
        ld = spec.wrows[spec.wsrcs[w]]
        rows_ = "ck[:, :, None]" if split else "ck[:, None]"
        cols_ = f"({row} * H + cp)[None, None, :]" if split else f"({row} * H + cp)[None, :]"
        e(ind, f"w_ = tl.load(WT{w} + {rows_} * ({ld} * H) + {cols_}, mask=mw, other=0.0)")
        e(ind, f"{acc} = tl.dot(a{w}, w_, acc={acc}, input_precision=PREC, out_dtype=ACC)")

    def stack_groups(pparts) -> list[tuple[int, list[tuple[int, int]]]]:
        """A pass's parts by source, in runs of up to `stack_max` (powers of two): each run's
        weight blocks lie side by side in one product tile, (source, [(linear, row), ...])."""
        groups, smax = [], stack_max(spec)
        for w in sorted({w for _, w, _ in pparts}):
            mine = [(li, row) for li, w2, row in pparts if w2 == w]
            while mine:
                g = 1 << (min(len(mine), smax).bit_length() - 1)
                groups.append((w, mine[:g]))
                mine = mine[g:]
        return groups

    def stacked_products(ind: int, groups) -> None:
        """Split K with a run of a source's linears in one product tile (KS, rows, G * width):
        Triton lays a wide 3-D FMA dot out with 4x4 outputs per thread where a 16x16 one has
        one or two, so each operand load feeds more FMAs (H200: DARTS V2's products alone with 4
        linears per tile in 2 K slices 13.0 ms vs 22.0 for 16x16 tiles; its forward with runs of
        2, KS 2, BK 16 25.2 ms vs 30.0; runs of 4 spill there, 28.7). The sums are split back
        into the linears' tiles once per pass (reshape, permute, split); `groups`: stack_groups'."""
        for gi, (w, run) in enumerate(groups):
            G = len(run)
            e(ind, f"s{gi} = tl.zeros([KS, KP // KC * BLOCK_B, {G} * KC * BLOCK_H], dtype=ACC)")
            if G > 1:
                rows_ = " + ".join(f"(sq{G} // (KC * BLOCK_H) == {q}) * {row}" for q, (_, row) in enumerate(run))
                e(ind, f"sc{gi} = ({rows_}) * H + cg * (KC * BLOCK_H) + sq{G} % (KC * BLOCK_H)  # the run's columns")
                e(ind, f"ms{gi} = cg * (KC * BLOCK_H) + sq{G} % (KC * BLOCK_H) < H")
        e(ind, "for k in range(NK):")
        k_head3(ind + 1)
        for w in sorted({w for w, _ in groups}):
            src_load(w, ind + 1, f"a{w}", True)
        for gi, (w, run) in enumerate(groups):
            if len(run) == 1:
                weight_dot(ind + 1, w, run[0][1], f"s{gi}", True)
                continue
            ld = spec.wrows[spec.wsrcs[w]]
            e(ind + 1, f"w_ = tl.load(WT{w} + ck[:, :, None] * ({ld} * H) + sc{gi}[None, None, :], "
                       f"mask=mk[:, :, None] & ms{gi}[None, None, :], other=0.0)")
            e(ind + 1, f"s{gi} = tl.dot(a{w}, w_, acc=s{gi}, input_precision=PREC, out_dtype=ACC)")
        for gi, (w, run) in enumerate(groups):
            lvs = [var[spec.linears[li]] for li, _ in run]
            e(ind, f"u_ = tl.sum(s{gi}, axis=0)")
            if len(run) == 1:
                e(ind, f"{lvs[0]} = {lvs[0]} + u_")
                continue
            if len(run) == 2:
                e(ind, "u0, u1 = tl.split(tl.permute(tl.reshape(u_, [KP // KC * BLOCK_B, 2, KC * BLOCK_H]), (0, 2, 1)))")
                parts = ["u0", "u1"]
            else:  # four: q = 2a + b, split on b, then on a
                e(ind, "ub0, ub1 = tl.split(tl.permute(tl.reshape(u_, [KP // KC * BLOCK_B, 2, 2, KC * BLOCK_H]), "
                       "(0, 3, 1, 2)))")
                e(ind, "u0, u2 = tl.split(ub0)")
                e(ind, "u1, u3 = tl.split(ub1)")
                parts = ["u0", "u1", "u2", "u3"]
            for lv, part in zip(lvs, parts):
                e(ind, f"{lv} = {lv} + {part}")

    def forward_products(ind: int, pparts, split: bool) -> None:
        """The pass's linears' recurrent products; with `split`, K is cut into KS slices whose
        partial products (each warp's own) are summed once after the loop."""
        groups = stack_groups(pparts) if split else []
        if len(groups) < len(pparts) and split:
            e(ind, f"if {FMA_STACK}:")
            stacked_products(ind + 1, groups)
            e(ind, "else:")
            ind += 1
        lins = sorted({li for li, _, _ in pparts})
        for li in lins if split else []:
            e(ind, f"p{li} = tl.zeros([KS, KP // KC * BLOCK_B, KC * BLOCK_H], dtype=ACC)")
        e(ind, "for k in range(NK):")
        (k_head3 if split else k_head)(ind + 1)
        for w in sorted({w for _, w, _ in pparts}):
            src_load(w, ind + 1, f"a{w}", split)
        for li, w, row in pparts:
            weight_dot(ind + 1, w, row, f"p{li}" if split else var[spec.linears[li]], split)
        for li in lins if split else []:
            lv = var[spec.linears[li]]
            e(ind, f"{lv} = {lv} + tl.sum(p{li}, axis=0)")

    def group_products(ind: int, pparts) -> None:
        """A K group's products over columns (KC > 1) with one K slice: one linear at a time,
        each K-loop's sum stored in SCR when it ends, so that one accumulator of the wide tile
        is live at a time (a pass's all at once spill more: DARTS V2's six in pass 2)."""
        for li in sorted({li for li, _, _ in pparts}):
            acc = var[spec.linears[li]]
            e(ind, "for k in range(NK):")
            k_head(ind + 1)
            for w, row in [(w, row) for li2, w, row in pparts if li2 == li]:
                src_load(w, ind + 1, f"a{w}", False)
                weight_dot(ind + 1, w, row, acc, False)
            e(ind, f"tl.store(SCR + ((pid_k * B + rp) * LW)[:, None] + {col(li, 'cp')}, {acc}, mask=mp2)")

    for k in range(P):
        e(2, f"# pass {k}")
        e(2, "for jj in range(JPP):")
        block_head(3)
        lins = spec.pass_linears(k)
        pparts = spec.pass_parts(k)
        xpart = {li: f"zero + tl.load(BIAS + {li} * H + cj, mask=mj, other=0.0).to(ACC)[None, :]"
                 + (f" + tl.load(XP + xprow + {col(xp_slot[li])}, mask=m2, other=0.0).to(ACC)" if li in xp_slot else "")
                 for li in lins}
        if pparts:
            e(3, "if KP == 1:  # the products start from the x part and bias")
            for li in lins:
                e(4, f"{var[spec.linears[li]]} = {xpart[li]}")
            e(3, "else:  # each part of K from zero, over the tile's rows")
            for li in lins:
                e(4, f"{var[spec.linears[li]]} = tl.zeros([KP // KC * BLOCK_B, KC * BLOCK_H], dtype=ACC)")
            e(3, "if KS == 1 and KC > 1:")
            group_products(4, pparts)
            e(3, "elif KS == 1:")
            forward_products(4, pparts, split=False)
            e(3, "else:")
            forward_products(4, pparts, split=True)
            group_exchange([(var[spec.linears[li]], li, xpart[li]) for li in lins], "LW", stored=True)
        else:
            for li in lins:
                e(3, f"{var[spec.linears[li]]} = {xpart[li]}")
        for li in lins:
            e(3, f"tl.store(PRE + lrow + {col(li)}, {var[spec.linears[li]]}.to(PRE.dtype.element_ty), mask=m2)")
        chain_k = [c for c in spec.chain if stage[c] == k]
        outs_k = [(si, spec.outputs[s]) for si, s in enumerate(states) if stage_of(spec.outputs[s]) == k]
        values(3, closure(chain_k + [o for _, o in outs_k]), k, forward=True)
        for c in chain_k:
            e(3, f"tl.store(V + vrow + {col(v_slot[c])}, {var[c]}.to(V.dtype.element_ty), mask=m2)")
        for si, o in outs_k:
            e(3, f"tl.store(S + nrow + {col(si)}, {var[o]}.to(S.dtype.element_ty), mask=m2)")
        e(2, "ep += 1")
        e(2, f"_sync(bar, ep, NPC * KP)  # pass {k} complete on every column")
    e(0, "")

    # ---- backward kernel -------------------------------------------------------------------
    w_args = "".join(f"W{w}, " for w in range(len(spec.wsrcs)))
    e(0, "@triton.jit")
    e(0, f"def bwd(XP, S, PRE, V, DS, DXP, GV, GS, SCR, BAR, {w_args}{consts_sig}):")
    prologue(1)
    e(1, "grow = (rb * GW)[:, None]")
    e(1, f"WW = {max(len(spec.wsrcs), 1)} * H  # SCR's row: one block per weight source")
    e(1, "for r in range(T):")
    e(2, "t = T - 1 - r")
    rows(2, (("pxrow", "XW"),))  # phase B reads dpre in DXP
    e(2, "gcur = (((t % 2) * B + rb) * SW)[:, None]  # d loss / d S[t], built during this step")
    e(2, "gnxt = ((((t + 1) % 2) * B + rb) * SW)[:, None]  # d loss / d S[t+1] through later steps")
    silent_states = [s for s in states if ("state", s) not in spec.events]

    def acc_ptr(kind: str, name: str, c: str = "cj") -> str:
        if kind == "gv":
            return f"GV + grow + {col(gv_slot[name], c)}"
        if kind == "state":
            return f"GS + gcur + {col(states.index(name), c)}"
        return f"DXP + xrow + {col(ext_slot[name], c)}"

    def write_acc(ind: int, kind: str, name: str, value: str, ev) -> None:
        ptr = acc_ptr(kind, name)
        first = spec.events[(kind, name)][0] == ev
        cast = ".to(DXP.dtype.element_ty)" if kind == "ext" else ""
        if first:
            e(ind, f"tl.store({ptr}, ({value}){cast}, mask=m2)")
        else:
            e(ind, f"tl.store({ptr}, (tl.load({ptr}, mask=m2, other=0.0).to(ACC) + {value}){cast}, mask=m2)")

    def backward_products(ind: int, w: int, mine, split: bool) -> None:
        """c<w> = sum of dpre @ W over the pass's linears that read source w (split as forward)."""
        acc = f"p{w}" if split else f"c{w}"
        e(ind, f"{acc} = tl.zeros([KS, KP // KC * BLOCK_B, KC * BLOCK_H], dtype=ACC)" if split
          else f"{acc} = tl.zeros([KP // KC * BLOCK_B, KC * BLOCK_H], dtype=ACC)")
        e(ind, "for k in range(NK):")
        (k_head3 if split else k_head)(ind + 1)
        for li in sorted({li for li, _ in mine}):
            where = f"DXP + pxrow[None, :, :] + {col3(li)}" if split else f"DXP + pxrow + {col(li, 'ck')}"
            e(ind + 1, f"d{li} = tl.load({where}, mask=ma, other=0.0, cache_modifier='.cg')")
        for li, row in mine:
            where = (f"W{w} + ({row} * H + ck)[:, :, None] * H + cp[None, None, :]" if split
                     else f"W{w} + ({row} * H + ck)[:, None] * H + cp[None, :]")
            e(ind + 1, f"w_ = tl.load({where}, mask=mw, other=0.0)")
            e(ind + 1, f"{acc} = tl.dot(d{li}, w_, acc={acc}, input_precision=PREC, out_dtype=ACC)")
        if split:
            e(ind, f"c{w} = tl.sum({acc}, axis=0)")

    for k in reversed(range(P)):
        ev_a = ("A", k)
        e(2, f"# pass {k}, phase A: the elementwise graph backwards")
        e(2, "for jj in range(JPP):")
        block_head(3)
        elem_k = [n for n in order if stage[n] == k and nodes[n].op != "linear"]
        values(3, closure(elem_k), k, forward=False)
        have: set[str] = set()
        shares: set[str] = set()

        def route(src: str, expr: str) -> None:
            if nodes[src].op == "const":
                return
            if src in per_step and stage[src] == k:
                name, pool = grad[src], have
            else:
                name, pool = part[src], shares
            if src in pool:
                e(3, f"{name} = {name} + {expr}")
            else:
                e(3, f"{name} = {expr}")
                pool.add(src)

        for u in order:
            if stage[u] == k and ("gv", u) in spec.events:
                e(3, f"{grad[u]} = tl.load(GV + grow + {col(gv_slot[u])}, mask=m2, other=0.0)")
                have.add(u)
        for si, s in enumerate(states):
            o = spec.outputs[s]
            if stage_of(o) != k:
                continue
            seed = (f"(tl.load(DS + nrow + {col(si)}, mask=m2, other=0.0).to(ACC) + "
                    f"tl.load(GS + gnxt + {col(si)}, mask=m2, other=0.0))")
            route(o, seed)
        for nid in reversed(elem_k):
            if nid not in have:
                continue  # nothing downstream of it reaches a state
            n = nodes[nid]
            args = [var[i] for i in n.inputs]
            if n.op == "max":  # walk the chain of binary maxima backwards
                chain = [args[0]] + [f"{var[nid]}_m{m}" for m in range(1, len(args) - 1)] + [var[nid]]
                e(3, f"gm_ = {grad[nid]}")
                for m in range(len(args) - 1, 0, -1):
                    left, right = chain[m - 1], args[m]
                    route(n.inputs[m], f"_max_grad({right}, {left}, gm_)")
                    if m > 1:
                        e(3, f"gm_ = _max_grad({left}, {right}, gm_)")
                    else:
                        route(n.inputs[0], f"_max_grad({left}, {right}, gm_)")
                continue
            for src, expr in zip(n.inputs, BWD[n.op](var[nid], args, grad[nid])):
                route(src, expr)
        for li in spec.pass_linears(k):
            lin = spec.linears[li]
            g = grad[lin] if lin in have else "zero"
            e(3, f"tl.store(DXP + xrow + {col(li)}, {g}.to(DXP.dtype.element_ty), mask=m2)")
        for (kind, name), evs in spec.events.items():
            if ev_a in evs:
                write_acc(3, kind, name, part[name] if name in shares else "zero", ev_a)
        if k == 0:
            for s in silent_states:  # read by nothing: no gradient through this state
                e(3, f"tl.store(GS + gcur + {col(states.index(s))}, zero, mask=m2)")
        pparts = spec.pass_parts(k)
        if not pparts:
            e(2, "tl.debug_barrier()")
            continue
        e(2, "ep += 1")
        e(2, "_sync(bar, ep, NPC * KP)  # every column's dpre before phase B")
        e(2, f"# pass {k}, phase B: dpre @ W to the sources of its linears")
        e(2, "for jj in range(JPP):")
        block_head(3)
        srcs = sorted({w for _, w, _ in pparts})
        for w in srcs:
            mine = [(li, row) for li, ww, row in pparts if ww == w]
            e(3, "if KS == 1:")
            backward_products(4, w, mine, split=False)
            e(3, "else:")
            backward_products(4, w, mine, split=True)
        group_exchange([(f"c{w}", w, "zero") for w in srcs], "WW")
        for w in srcs:
            src = spec.wsrcs[w]
            write_acc(3, "state" if src in states else "gv", src, f"c{w}", ("B", k))
        e(2, "tl.debug_barrier()")
    return "\n".join(e.lines) + "\n"


# ---- the on-disk cache and loading -------------------------------------------------------------

_LOADED: dict[str, ModuleType] = {}
_LOCK = threading.Lock()


def cache_dir() -> Path:
    import triton

    root = os.environ.get("NAS_KERNEL_CACHE") or str(Path.home() / ".cache" / "cellsearch" / "kernels")
    return Path(root) / f"triton-{triton.__version__}"


def load(spec: FusedSpec) -> ModuleType:
    """The generated module for `spec`, written to the cache (if absent) and imported."""
    path = cache_dir() / f"{spec.canonical_hash}-{spec.key}.py"
    with _LOCK:
        mod = _LOADED.get(str(path))
        if mod is not None:
            return mod
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != spec.source:
            tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_text(spec.source)
            os.replace(tmp, path)  # atomic: concurrent writers write the same text
        name = f"_cellsearch_fused_{spec.key}"
        ispec = importlib.util.spec_from_file_location(name, path)
        assert ispec is not None and ispec.loader is not None
        mod = importlib.util.module_from_spec(ispec)
        sys.modules[name] = mod  # triton resolves a kernel's globals through its module
        ispec.loader.exec_module(mod)
        _LOADED[str(path)] = mod
        return mod
