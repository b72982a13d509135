"""A DARTS supernet built from any space file: every choice point becomes a mixture.

The elaborated program (`nas.elaborate.SpaceProgram`) is evaluated directly, with every
choice point (`EChoice`: an op choice through a named set, an input choice `one_of(n0 ..
n3)`, an alternative subexpression `one_of(e1, e2)`, a numeric `one_of(0.5, 1)` inside the
cell) computed as `sum_k w_k * alternative_k`, where `w` comes from the architecture
parameters alpha (`ArchParams`: softmax, a Gumbel-softmax sample, or a fixed one-hot).
Hyperparameter decisions (model/train blocks) cannot be mixed: the supernet and the
derived cell use their first listed choice.

Parameter layout follows the reference backend: every `linear` expression owns one
weight block per operand and one bias, so with a one-hot alpha the supernet computes what
the discrete cell computes, and `copy_weights` moves weights between the two.

`loose_ends(...)` (ENAS) depends on which nodes are consumed: a listed node counts with
weight `u = prod(1 - P(consumed by op k))` over the ops that may read it (exact for
one-hot alpha, a product approximation otherwise).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...compile.rnn import run_layers
from ...compile.torch_ops import ELEMENTWISE
from ...elaborate import EChoice, EConst, ELoose, EOp, ERef
from ...errors import UserError
from ...space import Assignment, SearchSpace
from .derive import check_mixable, walk_expr as _walk
Key = tuple[str, int]  # (statement target, id of the EOp): one linear expression


class ArchParams(nn.Module):
    """alpha: one logit vector per mixable decision, initialised at 1e-3 * randn (DARTS)."""

    def __init__(self, space: SearchSpace, init_scale: float = 1e-3, seed: int = 0):
        super().__init__()
        self.space = space
        self.index: list[int] = check_mixable(space)
        g = torch.Generator().manual_seed(seed)
        self.alpha = nn.ParameterList(
            nn.Parameter(init_scale * torch.randn(space.decisions[i].size, generator=g)) for i in self.index)
        self.sampler = "softmax"
        self.tau = 1.0
        self.fixed: Assignment | None = None  # a one-hot assignment overrides alpha (derived-cell checks)

    @property
    def names(self) -> list[str]:
        return [self.space.decisions[i].name for i in self.index]

    def logits(self) -> dict[int, Tensor]:
        return dict(zip(self.index, self.alpha))

    def mixture(self) -> dict[int, Tensor]:
        """The weights every choice point uses in this forward pass (decision index -> vector)."""
        out: dict[int, Tensor] = {}
        for i, a in zip(self.index, self.alpha):
            if self.fixed is not None:
                w = torch.zeros_like(a)
                w[self.fixed[self.space.decisions[i].name]] = 1.0
            elif self.sampler == "gumbel":
                w = F.gumbel_softmax(a, tau=self.tau, hard=True)  # one-hot forward, straight-through grads
            else:
                w = torch.softmax(a, -1)
            out[i] = w
        return out

    def probs(self) -> dict[str, list[float]]:
        """softmax(alpha) per decision name (for logs, history and derivation)."""
        with torch.no_grad():
            return {n: torch.softmax(a.float(), -1).tolist() for n, a in zip(self.names, self.alpha)}

    def set_one_hot(self, a: Mapping[str, int]) -> None:
        """alpha = log(one-hot): softmax gives exactly the assignment's choices."""
        with torch.no_grad():
            for i, p in zip(self.index, self.alpha):
                p.fill_(-math.inf)
                p[a[self.space.decisions[i].name]] = 0.0


# ---- static analysis of the program ----------------------------------------------------------
class _Program:
    """What the supernet needs to know about a program: linears, widths, x-only targets."""

    def __init__(self, space: SearchSpace, input_size: int, hidden: int):
        self.space = space
        self.statements = [(t, e) for st in space.program.statements for t, e in zip(st.targets, st.exprs)]
        self.targets = {t for t, _ in self.statements}
        self.states = space.states
        self.xonly: set[str] = {"x"}
        self.is_x: dict[str, bool] = {"x": True}
        self.linears: dict[Key, list[int]] = {}  # key -> in width per operand
        self.xo_operands: dict[Key, list[int]] = {}  # operands to project over all steps at once
        self.linear_expr: dict[Key, EOp] = {}
        for target, e in self.statements:
            def visit(n, target=target):
                if isinstance(n, EOp) and n.op == "linear":
                    key = (target, id(n))
                    if key not in self.linears:
                        self.linears[key] = [input_size if self.x_value(a, input_size != hidden) else hidden
                                             for a in n.args]
                        self.xo_operands[key] = [k for k, a in enumerate(n.args) if self.x_only(a)]
                        self.linear_expr[key] = n
            _walk(e, visit)
            if self.x_only(e):
                self.xonly.add(target)
            self.is_x[target] = self.x_value(e, input_size != hidden)

    def x_only(self, e) -> bool:
        if isinstance(e, ERef):
            return e.name in self.xonly
        if isinstance(e, EConst):
            return True
        if isinstance(e, EChoice):
            return all(self.x_only(a) for a in e.alts)
        if isinstance(e, EOp):
            return all(not isinstance(a, ELoose) and self.x_only(a) for a in e.args)
        return False

    def x_value(self, e, strict: bool) -> bool:
        """True if `e` is the input x itself (input width); mixing x with a state-width value is an error."""
        if isinstance(e, ERef):
            return self.is_x.get(e.name, False)
        if isinstance(e, EChoice):
            kinds = {self.x_value(a, strict) for a in e.alts if not isinstance(a, EConst)}
            if len(kinds) > 1 and strict:
                d = self.space.decisions[e.decision]
                raise UserError(f"decision '{d.name}' (line {d.line}) mixes x (width model.embed) with "
                                "hidden-width values; a supernet needs one width",
                                "set model.embed equal to model.hidden for the darts search")
            return kinds == {True}
        return False


# ---- one layer ------------------------------------------------------------------------------------
class SupernetLayer(nn.Module):
    """One layer of the mixed cell over a whole sequence (time-major), like `CellLayer`."""

    def __init__(self, space: SearchSpace, input_size: int, hidden_size: int):
        super().__init__()
        self.prog = _Program(space, input_size, hidden_size)
        self.input_size, self.hidden_size = input_size, hidden_size
        self.weights = nn.ParameterList()  # one (H, in) block per (linear, operand)
        self.biases = nn.ParameterList()  # one per linear
        self._slot: dict[Key, tuple[int, int]] = {}  # key -> (bias index, first weight index)
        for key, widths in self.prog.linears.items():
            self._slot[key] = (len(self.biases), len(self.weights))
            self.weights.extend(nn.Parameter(torch.empty(hidden_size, w)) for w in widths)
            self.biases.append(nn.Parameter(torch.empty(hidden_size)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def linear_weight(self, key: Key, operand: int) -> Tensor:
        """The (H, in) block that linear `key` applies to its `operand`-th argument."""
        return self.weights[self._slot[key][1] + operand]

    def linear_bias(self, key: Key) -> Tensor:
        return self.biases[self._slot[key][0]]

    # ---- evaluation ---------------------------------------------------------------------------
    def _ev(self, e, env: dict[str, Tensor], memo: dict[int, Tensor], target: str, ctx: "_Ctx") -> Tensor:
        k = id(e)
        if k in memo:
            return memo[k]
        if isinstance(e, ERef):
            return env[e.name]
        if isinstance(e, EConst):
            v = ctx.consts.get(k)
            if v is None:  # one host-to-device copy per forward, not per step
                v = ctx.consts[k] = torch.tensor(e.value, dtype=ctx.dtype, device=ctx.device)
        elif isinstance(e, EChoice):
            w = ctx.w[e.decision]
            if ctx.fixed is not None:  # derived-cell mode: only the chosen alternative runs
                v = self._ev(e.alts[ctx.fixed[e.decision]], env, memo, target, ctx)
            elif ctx.stacked:  # one stacked weighted sum: few kernel launches (GPU); exact for one-hot w
                vals = torch.broadcast_tensors(*(self._ev(alt, env, memo, target, ctx) for alt in e.alts))
                stacked = torch.stack(vals, 0)
                v = (w.view(-1, *([1] * (stacked.dim() - 1))).to(stacked.dtype) * stacked).sum(0)
            else:
                v = None
                for j, alt in enumerate(e.alts):
                    term = w[j] * self._ev(alt, env, memo, target, ctx)
                    v = term if v is None else v + term
        elif e.op == "linear":
            key = (target, k)
            v = self.linear_bias(key)
            for j, a in enumerate(e.args):
                pre = ctx.hproj.get((key, j)) if ctx.t is not None else None
                if pre is not None:
                    v = v + pre[ctx.t]
                else:
                    v = v + self._ev(a, env, memo, target, ctx) @ self.linear_weight(key, j).t()
        else:
            vals: list[Tensor] = []
            loose: list[tuple[Tensor, Tensor]] = []
            for a in e.args:
                if isinstance(a, ELoose):
                    loose.extend((env[n], u) for n, u in zip(a.names, ctx.loose[id(a)]))
                else:
                    vals.append(self._ev(a, env, memo, target, ctx))
            if loose:
                v = _loose_combine(e.op, vals, loose)
            else:
                op = "identity" if e.op in ("add", "mul") and len(vals) == 1 else e.op
                v = ELEMENTWISE[op](vals)
        memo[k] = v
        return v

    def forward(self, x: Tensor, states: tuple[Tensor, ...], ctx: "_Ctx") -> tuple[Tensor, tuple[Tensor, ...]]:
        prog = self.prog
        ctx.t = None
        ctx.hproj = {}
        full: dict[str, Tensor] = {"x": x}
        for target, e in prog.statements:  # x-only work over all steps at once
            if target in prog.xonly:
                full[target] = self._ev(e, full, {}, target, ctx)
        for key, operands in prog.xo_operands.items():  # x-only operands of per-step linears: one GEMM
            if key[0] not in prog.xonly:
                for j in operands:
                    arg = prog.linear_expr[key].args[j]
                    ctx.hproj[(key, j)] = self._ev(arg, full, {}, key[0], ctx) @ self.linear_weight(key, j).t()
        B, H = x.shape[1], self.hidden_size
        cur = dict(zip(prog.states, states))
        outputs = []
        for t in range(x.shape[0]):
            ctx.t = t
            env: dict[str, Tensor] = {"x": x[t], **cur}
            for target, e in prog.statements:
                if target in prog.xonly:
                    v = full[target]
                    env[target] = v[t] if v.dim() > 0 else v
                else:
                    env[target] = self._ev(e, env, {}, target, ctx)
            cur = {s: _as_state(env[f"{s}'"], B, H) for s in prog.states}
            outputs.append(cur[prog.states[0]])
        return torch.stack(outputs, 0), tuple(cur[s] for s in prog.states)


def _as_state(v: Tensor, batch: int, hidden: int) -> Tensor:
    return v if v.dim() == 2 else v.expand(batch, hidden)


def _loose_combine(op: str, vals: list[Tensor], loose: list[tuple[Tensor, Tensor]]) -> Tensor:
    """mean/add/mul over fixed args and loose-end candidates weighted by u (1: loose, 0: consumed)."""
    if op == "mean":
        num = None
        for v in vals:
            num = v if num is None else num + v
        den = float(len(vals))
        for v, u in loose:
            num = u * v if num is None else num + u * v
            den = den + u
        return num / den
    if op == "add":
        out = None
        for v in [*vals, *(u * v for v, u in loose)]:
            out = v if out is None else out + v
        return out
    out = None  # mul: a consumed candidate contributes the factor 1
    for v in [*vals, *(u * v + (1 - u) for v, u in loose)]:
        out = v if out is None else out * v
    return out


class _Ctx:
    """Per-forward state shared by the layers: mixture weights, loose-end weights, time step."""

    def __init__(self, w, loose, fixed, dtype, device):
        self.w, self.loose, self.fixed = w, loose, fixed
        self.dtype, self.device = dtype, device
        self.stacked = device.type == "cuda"
        self.t: int | None = None
        self.hproj: dict = {}
        self.consts: dict[int, Tensor] = {}


# ---- loose ends ------------------------------------------------------------------------------------
def loose_weights(space: SearchSpace, w: dict[int, Tensor]) -> dict[int, list[Tensor]]:
    """For every `loose_ends(...)`: u per listed node, the probability that no op reads it."""
    alias: dict[str, dict[str, Any]] = {}
    events: dict[str, list[Any]] = {}  # concrete node -> probabilities of ops that read it
    out: dict[int, list[Tensor]] = {}

    def dist(e, top: str | None) -> dict[str, Any]:
        if isinstance(e, ERef):
            return alias.get(e.name, {e.name: 1.0})
        if isinstance(e, EChoice):
            acc: dict[str, Any] = {}
            for j, a in enumerate(e.alts):
                for c, p in dist(a, top).items():
                    acc[c] = acc.get(c, 0.0) + w[e.decision][j] * p if e.decision in w else acc.get(c, 0.0) + p
            return acc
        return {top: 1.0} if top else {}

    def walk(e, p) -> None:
        if isinstance(e, EChoice):
            for j, a in enumerate(e.alts):
                walk(a, p * w[e.decision][j])
        elif isinstance(e, EOp):
            for a in e.args:
                if isinstance(a, ELoose):
                    us = []
                    for n in a.names:
                        u = 1.0
                        for q in events.get(n, []):
                            u = u * (1 - q)
                        us.append(u)
                    none = 1.0
                    for u in us:
                        none = none * (1 - u)
                    us[-1] = us[-1] + none  # no loose end at all: the last node (as the instantiator)
                    out[id(a)] = us
                    continue
                for c, q in dist(a, None).items():
                    events.setdefault(c, []).append(p * q)
                walk(a, p)

    for st in space.program.statements:
        for t, e in zip(st.targets, st.exprs):
            walk(e, 1.0)
            alias[t] = dist(e, t)
    return out


# ---- the recurrent module ---------------------------------------------------------------------------
class SupernetRNN(nn.Module):
    """Stacked supernet layers with the `torch.nn.LSTM(batch_first=True)` convention.

    alpha (`arch`) is shared by the layers and deliberately not a submodule, so
    `parameters()` are the weights only (the bilevel optimiser trains the two apart).
    """

    def __init__(self, space: SearchSpace, arch: ArchParams, input_size: int, hidden_size: int,
                 num_layers: int = 1, dropout: float = 0.0, batch_first: bool = True):
        super().__init__()
        self.space = space
        self._arch = (arch,)
        self.hidden_size, self.num_layers, self.batch_first = hidden_size, num_layers, batch_first
        self.layers = nn.ModuleList(SupernetLayer(space, input_size if i == 0 else hidden_size, hidden_size)
                                    for i in range(num_layers))
        self.drop = nn.Dropout(dropout)
        self.stack_mixtures: bool | None = None  # None: stacked on CUDA (fewer launches), a sum on CPU

    @property
    def arch(self) -> ArchParams:
        return self._arch[0]

    @property
    def num_states(self) -> int:
        return len(self.space.states)

    def forward(self, x: Tensor, state=None):
        if self.batch_first:
            x = x.transpose(0, 1)
        B = x.shape[1]
        if state is None:
            z = x.new_zeros(self.num_layers, B, self.hidden_size)
            state = z if self.num_states == 1 else tuple(z.clone() for _ in range(self.num_states))
        per_state = (state,) if isinstance(state, Tensor) else tuple(state)
        arch = self.arch
        w = arch.mixture()
        fixed = None
        if arch.fixed is not None:
            fixed = {i: arch.fixed[arch.space.decisions[i].name] for i in arch.index}
        ctx = _Ctx(w, loose_weights(self.space, w), fixed, x.dtype, x.device)
        if self.stack_mixtures is not None:
            ctx.stacked = self.stack_mixtures
        return run_layers(self.layers, self.drop, x, per_state, self.batch_first,
                          lambda layer, h, s: layer(h, s, ctx))


def copy_weights(supernet: SupernetRNN, cell_rnn: nn.Module, assignment: Assignment, to_cell: bool = True) -> int:
    """Copy the linear weights between the supernet and the discrete cell of `assignment`
    (a `nas.compile.CellRNN` with the reference layout); returns the blocks copied."""
    _, trace = supernet.space.instantiate_traced(assignment)
    n = 0
    with torch.no_grad():
        for sl, cl in zip(supernet.layers, cell_rnn.layers):
            nodes = cl.plan.graph.nodes
            for key, widths in sl.prog.linears.items():
                nid = trace.get(key)
                if nid is None or nid not in nodes or nodes[nid].op != "linear":
                    continue
                pairs = [(sl.linear_bias(key), cl.linear_bias(nid))]
                pairs += [(sl.linear_weight(key, j), cl.linear_weight(nid, j)) for j in range(len(widths))]
                for s, c in pairs:
                    (c if to_cell else s).copy_(s if to_cell else c)
                    n += 1
    return n
