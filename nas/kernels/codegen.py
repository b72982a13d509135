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

The kernels (per program: BLOCK_B batch rows, the whole time loop inside):
  fwd: for t: for each block of BLOCK_H hidden units: every per-step linear's
       pre-activation = (its hoisted x part + bias, read from XP) + sum over the states it
       reads of state_{t-1} @ W^T (a K-loop of tl.dot over the previous state, read back
       from the state workspace S); pre-activations are written to PRE; the elementwise
       graph runs in registers and the new states are written to S[t+1].
  bwd: for t = T-1 .. 0: phase 1, per hidden block: reload PRE, XP and S[t], recompute
       the elementwise graph, run it backwards (derivative code per op), write the
       pre-activation gradients and those of the hoisted inputs to DXP, and the direct
       gradient of each previous state to GD; phase 2, per hidden block:
       dstate_{t-1} = GD + sum dpre @ W (K-loop of tl.dot), kept in GC for step t-1.
Hidden sizes above BLOCK_H are split into BLOCK_H-column blocks looped inside the program
(the rule is `choose_blocks` in `nas.kernels.fused`): the previous state is re-read from
global memory (L1/L2) every step, so any H runs; no hidden size falls back.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from ..ir import INPUT

if TYPE_CHECKING:  # nas.compile imports this module
    from ..compile.plan import CellPlan

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
SUPPORTED_OPS = frozenset(FWD) | {"max", "linear", "const", "input"}

_HELPERS = '''
@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    e = tl.exp(-2.0 * tl.abs(x))
    r = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0.0, -r, r)


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
    return tl.where(x > 20.0, x, tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x))))


@triton.jit
def _max_grad(a, b, g):
    # torch.maximum's rule: the gradient is split evenly on ties
    return tl.where(a > b, g, tl.where(a == b, g * 0.5, 0.0))
'''


@dataclass
class FusedSpec:
    """How a cell maps onto the fused kernels' arguments (slots of H columns each)."""

    states: tuple[str, ...]
    linears: list[str]  # per-step linears: XP slots 0..NL-1 (hoisted part + bias), PRE slots
    ext: list[str]  # hoisted nodes (or x) read per step: XP slots NL..
    wstates: list[str]  # states that a per-step linear projects: one weight argument each
    wrows: dict[str, int]  # rows blocks (parts) of each such state's weight group
    parts: list[tuple[int, int, int]]  # (linear index, wstate index, row block in its group)
    canonical_hash: str
    source: str = ""
    key: str = ""
    extra: dict = field(default_factory=dict)


def unsupported(plan: CellPlan) -> str | None:
    """None if the fused kernels support this cell, else why not."""
    graph = plan.graph
    live = graph.live_nodes()
    hoisted = set(plan.hoisted) | {INPUT}
    states = set(graph.states)
    for nid in plan.per_step:
        if nid not in live:
            continue
        n = graph.nodes[nid]
        if n.op not in SUPPORTED_OPS:
            return f"node '{nid}' uses op '{n.op}', which the fused kernel does not implement"
        if n.op == "linear":
            for src in n.inputs:
                if src not in states and src not in hoisted:
                    return (f"node '{nid}' projects the per-step node '{src}' with a matrix (a chain of "
                            "linears, as in DARTS/ENAS), which the fused kernel does not support yet")
    for nid in live:
        n = graph.nodes[nid]
        if n.op == "const" and not math.isfinite(float(n.value)):
            return f"node '{nid}' is a non-finite constant"
    return None


def make_spec(plan: CellPlan) -> FusedSpec:
    reason = unsupported(plan)
    if reason is not None:
        raise NotImplementedError(reason)
    graph = plan.graph
    nodes = graph.nodes
    live = graph.live_nodes()
    states = graph.states
    hoisted = set(plan.hoisted) | {INPUT}
    per_step = [nid for nid in plan.per_step if nid in live]
    linears = [nid for nid in per_step if nodes[nid].op == "linear"]
    # values the elementwise code reads: operands of non-linear per-step nodes, and outputs
    read: list[str] = []
    for nid in per_step:
        if nodes[nid].op != "linear":
            read.extend(nodes[nid].inputs)
    read.extend(graph.outputs[s] for s in states)
    ext: list[str] = []
    for nid in read:
        if nid in hoisted and nodes[nid].op != "const" and nid not in ext:
            ext.append(nid)
    wstates = [s for s in states if s in plan.groups and any(lin in linears for lin, _ in plan.groups[s].parts)]
    wrows = {s: len(plan.groups[s].parts) for s in wstates}
    parts = []
    for li, lin in enumerate(linears):
        for k, src in enumerate(nodes[lin].inputs):
            if src in states:
                _, row = plan.slot[(lin, k)]
                parts.append((li, wstates.index(src), row))
    spec = FusedSpec(states, linears, ext, wstates, wrows, parts, graph.canonical_hash())
    spec.extra["n_values"] = len(per_step) + len(ext) + len(states)
    spec.source = _generate(plan, spec)
    spec.key = hashlib.sha256(spec.source.encode()).hexdigest()[:16]
    return spec


# ---- generation -------------------------------------------------------------------------------

class _Emitter:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, indent: int, text: str) -> None:
        self.lines.append("    " * indent + text)


def _generate(plan: CellPlan, spec: FusedSpec) -> str:
    graph = plan.graph
    nodes = graph.nodes
    index = {nid: i for i, nid in enumerate(nodes)}
    live = graph.live_nodes()
    var = {nid: f"v{index[nid]}" for nid in nodes}
    grad = {nid: f"g{index[nid]}" for nid in nodes}
    states = list(spec.states)
    NS, NL, NX = len(states), len(spec.linears), len(spec.linears) + len(spec.ext)
    lin_index = {lin: i for i, lin in enumerate(spec.linears)}
    ext_index = {e: NL + i for i, e in enumerate(spec.ext)}
    per_step = [nid for nid in plan.per_step if nid in live]
    elementwise = [nid for nid in per_step if nodes[nid].op != "linear"]
    # which state / const values the elementwise code reads directly
    direct_states: list[str] = []
    consts: list[str] = []
    for nid in [i for n in elementwise for i in nodes[n].inputs] + [graph.outputs[s] for s in states]:
        if nid in states and nid not in direct_states:
            direct_states.append(nid)
        if nodes[nid].op == "const" and nid not in consts:
            consts.append(nid)

    e = _Emitter()
    e(0, f'"""Generated by nas.kernels.codegen for cell {spec.canonical_hash}. Do not edit."""')
    e(0, "import triton")
    e(0, "import triton.language as tl")
    e(0, "")
    e.lines.extend(_HELPERS.strip("\n").split("\n"))
    e(0, "")
    e(0, f"NS = {NS}  # states")
    e(0, f"NL = {NL}  # per-step linears")
    e(0, f"NX = {NX}  # XP slots: linears, then hoisted values")
    e(0, "")

    def prologue(ind: int) -> None:
        e(ind, "pid = tl.program_id(0)")
        e(ind, "rb = (pid * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)")
        e(ind, "mb = rb < B")
        e(ind, "cols = tl.arange(0, BLOCK_H)")
        e(ind, "kk = tl.arange(0, BLOCK_K)")
        e(ind, f"XW = {NX} * H")
        e(ind, f"SW = {NS} * H")
        e(ind, f"LW = {max(NL, 1)} * H")

    def block_head(ind: int) -> None:
        e(ind, "cj = j * BLOCK_H + cols")
        e(ind, "mj = cj < H")
        e(ind, "m2 = mb[:, None] & mj[None, :]")
        e(ind, "zero = tl.zeros([BLOCK_B, BLOCK_H], dtype=ACC)")

    def load_sources(ind: int) -> None:
        for s in direct_states:
            e(ind, f"{var[s]} = tl.load(S + prow + ({states.index(s)} * H + cj)[None, :], mask=m2, other=0.0).to(ACC)")
        for x in spec.ext:
            e(ind, f"{var[x]} = tl.load(XP + xrow + ({ext_index[x]} * H + cj)[None, :], mask=m2, other=0.0).to(ACC)")
        for c in consts:
            e(ind, f"{var[c]} = zero + {repr(float(nodes[c].value))}")

    def elementwise_forward(ind: int) -> None:
        for nid in elementwise:
            n = nodes[nid]
            args = [var[i] for i in n.inputs]
            if n.op == "max":
                cur = args[0]
                for k, a in enumerate(args[1:], start=1):
                    nxt = var[nid] if k == len(args) - 1 else f"{var[nid]}_m{k}"
                    e(ind, f"{nxt} = tl.maximum({cur}, {a})")
                    cur = nxt
            else:
                e(ind, f"{var[nid]} = {FWD[n.op](args)}")

    # ---- forward kernel --------------------------------------------------------------------
    wt_args = "".join(f"WT{w}, " for w in range(len(spec.wstates)))
    e(0, "@triton.jit")
    e(0, f"def fwd(XP, S, PRE, {wt_args}B, T, H, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, "
         "BLOCK_K: tl.constexpr, NJ: tl.constexpr, NK: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr):")
    prologue(1)
    e(1, "for t in range(T):")
    e(2, "tb = t * B + rb")
    e(2, "xrow = (tb * XW)[:, None]")
    e(2, "lrow = (tb * LW)[:, None]")
    e(2, "prow = (tb * SW)[:, None]")
    e(2, "nrow = ((tb + B) * SW)[:, None]")
    e(2, "for j in range(NJ):")
    block_head(3)
    for li, lin in enumerate(spec.linears):
        e(3, f"{var[lin]} = tl.load(XP + xrow + ({li} * H + cj)[None, :], mask=m2, other=0.0).to(ACC)")
    if spec.parts:
        e(3, "for k in range(NK):")
        e(4, "ck = k * BLOCK_K + kk")
        e(4, "mk = ck < H")
        e(4, "mw = mk[:, None] & mj[None, :]")
        for w, s in enumerate(spec.wstates):
            e(4, f"a{w} = tl.load(S + prow + ({states.index(s)} * H + ck)[None, :], mask=mb[:, None] & mk[None, :], "
                 "other=0.0)")
        for li, w, row in spec.parts:
            ld = spec.wrows[spec.wstates[w]]
            lv = var[spec.linears[li]]
            e(4, f"w_ = tl.load(WT{w} + ck[:, None] * ({ld} * H) + ({row} * H + cj)[None, :], mask=mw, other=0.0)")
            e(4, f"{lv} = tl.dot(a{w}, w_, acc={lv}, input_precision=PREC, out_dtype=ACC)")
    for li, lin in enumerate(spec.linears):
        e(3, f"tl.store(PRE + lrow + ({li} * H + cj)[None, :], {var[lin]}.to(PRE.dtype.element_ty), mask=m2)")
    load_sources(3)
    elementwise_forward(3)
    for si, s in enumerate(states):
        e(3, f"tl.store(S + nrow + ({si} * H + cj)[None, :], {var[graph.outputs[s]]}.to(S.dtype.element_ty), mask=m2)")
    e(2, "tl.debug_barrier()  # S[t+1] complete before the next step reads it")
    e(0, "")

    # ---- backward kernel -------------------------------------------------------------------
    w_args = "".join(f"W{w}, " for w in range(len(spec.wstates)))
    e(0, "@triton.jit")
    e(0, f"def bwd(XP, S, PRE, DS, DXP, GC, GD, {w_args}B, T, H, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, "
         "BLOCK_K: tl.constexpr, NJ: tl.constexpr, NK: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr):")
    prologue(1)
    e(1, "crow = (rb * SW)[:, None]")
    e(1, "for r in range(T):")
    e(2, "t = T - 1 - r")
    e(2, "tb = t * B + rb")
    e(2, "xrow = (tb * XW)[:, None]")
    e(2, "lrow = (tb * LW)[:, None]")
    e(2, "prow = (tb * SW)[:, None]")
    e(2, "nrow = ((tb + B) * SW)[:, None]")
    e(2, "for j in range(NJ):  # phase 1: elementwise backward")
    block_head(3)
    for li, lin in enumerate(spec.linears):
        e(3, f"{var[lin]} = tl.load(PRE + lrow + ({li} * H + cj)[None, :], mask=m2, other=0.0).to(ACC)")
    load_sources(3)
    elementwise_forward(3)
    have: set[str] = set()

    def acc_grad(nid: str, expr: str) -> None:
        if nodes[nid].op == "const":
            return
        if nid in have:
            e(3, f"{grad[nid]} = {grad[nid]} + {expr}")
        else:
            e(3, f"{grad[nid]} = {expr}")
            have.add(nid)

    for si, s in enumerate(states):
        e(3, f"gs{si} = tl.load(DS + nrow + ({si} * H + cj)[None, :], mask=m2, other=0.0).to(ACC) + "
             f"tl.load(GC + crow + ({si} * H + cj)[None, :], mask=m2, other=0.0)")
        acc_grad(graph.outputs[s], f"gs{si}")
    for nid in reversed(elementwise):
        if nid not in have:
            continue  # nothing downstream of it reaches a state
        n = nodes[nid]
        args = [var[i] for i in n.inputs]
        if n.op == "max":
            # walk the chain of binary maxima backwards
            chain = [args[0]] + [f"{var[nid]}_m{k}" for k in range(1, len(args) - 1)] + [var[nid]]
            g = grad[nid]
            e(3, f"gm_ = {g}")
            for k in range(len(args) - 1, 0, -1):
                left, right = chain[k - 1], args[k]
                acc_grad(n.inputs[k], f"_max_grad({right}, {left}, gm_)")
                if k > 1:
                    e(3, f"gm_ = _max_grad({left}, {right}, gm_)")
                else:
                    acc_grad(n.inputs[0], f"_max_grad({left}, {right}, gm_)")
            continue
        for src, expr in zip(n.inputs, BWD[n.op](var[nid], args, grad[nid])):
            acc_grad(src, expr)
    for li, lin in enumerate(spec.linears):
        g = grad[lin] if lin in have else "zero"
        e(3, f"tl.store(DXP + xrow + ({li} * H + cj)[None, :], {g}.to(DXP.dtype.element_ty), mask=m2)")
    for x in spec.ext:
        g = grad[x] if x in have else "zero"
        e(3, f"tl.store(DXP + xrow + ({ext_index[x]} * H + cj)[None, :], {g}.to(DXP.dtype.element_ty), mask=m2)")
    for si, s in enumerate(states):
        g = grad[s] if s in have else "zero"
        e(3, f"tl.store(GD + crow + ({si} * H + cj)[None, :], {g}, mask=m2)")
    e(2, "tl.debug_barrier()  # DXP[t] and GD complete before phase 2 reads them")
    e(2, "for j in range(NJ):  # phase 2: dstate_{t-1} = GD + dpre @ W")
    block_head(3)
    for si in range(NS):
        e(3, f"c{si} = tl.load(GD + crow + ({si} * H + cj)[None, :], mask=m2, other=0.0)")
    if spec.parts:
        e(3, "for k in range(NK):")
        e(4, "ck = k * BLOCK_K + kk")
        e(4, "mk = ck < H")
        e(4, "mw = mk[:, None] & mj[None, :]")
        used = sorted({li for li, _, _ in spec.parts})
        for li in used:
            e(4, f"d{li} = tl.load(DXP + xrow + ({li} * H + ck)[None, :], mask=mb[:, None] & mk[None, :], other=0.0)")
        for li, w, row in spec.parts:
            si = states.index(spec.wstates[w])
            e(4, f"w_ = tl.load(W{w} + ({row} * H + ck)[:, None] * H + cj[None, :], mask=mw, other=0.0)")
            e(4, f"c{si} = tl.dot(d{li}, w_, acc=c{si}, input_precision=PREC, out_dtype=ACC)")
    for si in range(NS):
        e(3, f"tl.store(GC + crow + ({si} * H + cj)[None, :], c{si}, mask=m2)")
    e(2, "tl.debug_barrier()  # GC complete before step t-1 reads it")
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
