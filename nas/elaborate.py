"""Elaboration: a parsed space file -> a `SpaceProgram` (loops unrolled, names resolved,
choice points turned into numbered decisions, hyperparameters checked).

Everything a user can get wrong about the *meaning* of a space file is caught here, at
the file:line:col of the mistake, before any search starts.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from typing import Any, Union

import networkx as nx
from pydantic import ValidationError

from .config import KNOWN_TASKS, MODEL_KEYS, TRAIN_KEYS, ModelConfig, TaskSpec, TrainConfig
from .dsl import ast
from .errors import SpaceError
from .ir import INPUT, RESERVED
from .ops import OPS, USER_OPS, check_arity, resolve_op

MAX_LOOP = 1000  # iterations of one `for`
MAX_STATEMENTS = 20_000  # statements after unrolling
MAX_INT_RANGE = 100_000
DEFAULT_GRID = 16  # points of a uniform / log_uniform range
BUILTINS = ("one_of", "split", "loose_ends")
HP_FUNCS = ("one_of", "int_range", "uniform", "log_uniform")


# ---- the elaborated program ---------------------------------------------------------
@dataclass(frozen=True)
class EConst:
    value: float


@dataclass(frozen=True)
class ERef:
    name: str  # "x", a state ("h"), a new state ("h'"), or a node name
    pos: ast.Pos


@dataclass(frozen=True)
class EOp:
    op: str
    args: tuple["EArg", ...]
    pos: ast.Pos


@dataclass(frozen=True)
class EChoice:
    decision: int
    alts: tuple["EExpr", ...]
    pos: ast.Pos


@dataclass(frozen=True)
class ELoose:
    """`loose_ends(a .. b)`: those of the listed nodes that no other node consumes."""

    names: tuple[str, ...]
    pos: ast.Pos


EExpr = Union[EConst, ERef, EOp, EChoice]
EArg = Union[EExpr, ELoose]


@dataclass(frozen=True)
class Decision:
    """One choice point. `choices` are labels (cell) or values (hyperparameters)."""

    name: str
    kind: str  # input | op | alt | value | int | float
    choices: tuple[Any, ...]
    parent: tuple[int, int] | None  # (decision index, choice index) that makes it active
    line: int
    col: int

    @property
    def size(self) -> int:
        return len(self.choices)


@dataclass(frozen=True)
class Statement:
    targets: tuple[str, ...]  # node names, or "h'" for a state update
    exprs: tuple[EExpr, ...]  # one per target
    pos: ast.Pos
    uses_loose: bool = False


@dataclass
class SpaceProgram:
    name: str
    file: str
    text: str
    states: tuple[str, ...]
    statements: list[Statement]  # in an order that evaluates dependencies first
    decisions: list[Decision]
    settings: dict[str, dict[str, Any]]  # block -> key -> fixed value or ("decision", index)
    reserved_names: set[str]
    warnings: list[str] = field(default_factory=list)


# ---- helpers ----------------------------------------------------------------------------
def _did_you_mean(word: str, options) -> str | None:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


_KEY_ALIASES = {"learning_rate": "lr", "lerning_rate": "lr", "hidden_size": "hidden", "num_layers": "layers",
                "embedding": "embed", "embed_size": "embed", "bptt": "seq_len", "grad_clip": "clip",
                "max_steps": "steps", "batch": "batch_size", "optim": "optimizer"}
_INDEXED = re.compile(r"^(.*?)(\d+)$")


class _Elaborator:
    def __init__(self, f: ast.SpaceFile):
        self.f = f
        self.decisions: list[Decision] = []
        self.decision_labels: dict[str, int] = {}
        self.parent_stack: list[tuple[int, int]] = []
        self.statements: list[Statement] = []
        self.target_pos: dict[str, ast.Pos] = {}

    # errors
    def err(self, msg: str, pos: ast.Pos | None, hint: str | None = None) -> SpaceError:
        return SpaceError(msg, file=self.f.file, line=pos.line if pos else 1, col=pos.col if pos else 1, hint=hint)

    # ---- names -------------------------------------------------------------------
    def ieval(self, e: ast.IExpr, env: dict[str, int]) -> int:
        if isinstance(e, ast.IInt):
            return e.value
        if isinstance(e, ast.IVar):
            if e.name not in env:
                raise self.err(f"'{e.name}' is not a loop variable here", e.pos,
                               "indices and loop bounds use integers and enclosing loop variables")
            return env[e.name]
        a = self.ieval(e.left, env)
        if e.op == "neg":
            return -a
        b = self.ieval(e.right, env)
        return a + b if e.op == "+" else a - b if e.op == "-" else a * b

    def resolve(self, name: ast.Name, env: dict[str, int], local: dict[str, str]) -> str:
        if name.index is None:
            return local.get(name.base, name.base)
        i = self.ieval(name.index, env)
        if i < 0:
            raise self.err(f"index of '{name.base}{{...}}' evaluates to {i}; indices must be >= 0", name.pos)
        return f"{name.base}{i}"

    def expand_range(self, r: ast.Range, env, local) -> list[str]:
        a, b = self.resolve(r.start, env, local), self.resolve(r.end, env, local)
        ma, mb = _INDEXED.match(a), _INDEXED.match(b)
        if not ma or not mb or ma.group(1) != mb.group(1):
            raise self.err(f"range '{a} .. {b}' needs two names with the same prefix and a number, like n0 .. n7",
                           r.pos)
        lo, hi = int(ma.group(2)), int(mb.group(2))
        if lo > hi:
            raise self.err(f"inverted range '{a} .. {b}' ({lo} > {hi})", r.pos, "write the smaller end first")
        if hi - lo >= MAX_LOOP:
            raise self.err(f"range '{a} .. {b}' has {hi - lo + 1} names; at most {MAX_LOOP}", r.pos)
        return [f"{ma.group(1)}{k}" for k in range(lo, hi + 1)]

    # ---- decisions ------------------------------------------------------------------
    def new_decision(self, owner: str, label: str, kind: str, choices, pos: ast.Pos) -> int:
        base = f"{owner}.{label}"
        n = self.decision_labels.get(base, 0) + 1
        self.decision_labels[base] = n
        name = base if n == 1 else f"{base}{n}"
        parent = self.parent_stack[-1] if self.parent_stack else None
        self.decisions.append(Decision(name, kind, tuple(choices), parent, pos.line, pos.col))
        return len(self.decisions) - 1

    # ---- cell expressions -------------------------------------------------------------
    def expr(self, e: ast.Expr, env, local, owner: str) -> EExpr:
        if isinstance(e, ast.Num):
            return EConst(float(e.value))
        if isinstance(e, (ast.Str, ast.Bool)):
            raise self.err("strings and true/false are not allowed inside a cell", e.pos,
                           "cells compute on numbers and nodes")
        if isinstance(e, ast.Ref):
            if e.name.index is None and e.name.base in env and not e.primed:
                raise self.err(f"'{e.name.base}' is a loop variable (an integer), not a node", e.pos,
                               f"use it in an index, like n{{{e.name.base}}}")
            name = self.resolve(e.name, env, local)
            if e.primed:
                if name not in self.f_states:
                    raise self.err(f"{name}' refers to the next value of '{name}', which is not a declared state",
                                   e.pos, f"declared states: {', '.join(self.f_states)}")
                name = name + "'"
            if name in self.choice_sets:
                raise self.err(f"'{name}' is a choice set; use it as {name}(...) or one_of({name})", e.pos)
            return ERef(name, e.pos)
        if isinstance(e, ast.Neg):
            inner = self.expr(e.operand, env, local, owner)
            if isinstance(inner, EConst):
                return EConst(-inner.value)
            return EOp("neg", (inner,), e.pos)
        if isinstance(e, ast.BinOp):
            left = self.expr(e.left, env, local, owner)
            if e.op == "div":
                right = e.right
                sign = 1.0
                if isinstance(right, ast.Neg) and isinstance(right.operand, ast.Num):
                    right, sign = right.operand, -1.0
                if not isinstance(right, ast.Num) or right.value == 0:
                    raise self.err("division is only by a non-zero number", e.pos, "write a * b for products")
                return EOp("mul", (left, EConst(sign / float(right.value))), e.pos)
            right = self.expr(e.right, env, local, owner)
            return EOp(e.op, (left, right), e.pos)
        if isinstance(e, ast.Call):
            return self.call(e, env, local, owner)
        raise self.err(f"unexpected expression {e!r}", getattr(e, "pos", None))

    def args_of(self, call: ast.Call, env, local, owner, allow_loose=False) -> list[EArg]:
        out: list[EArg] = []
        for a in call.args:
            if isinstance(a, ast.KwArg):
                raise self.err(f"keyword argument '{a.key}=' is not allowed in a cell", a.pos)
            if isinstance(a, ast.Range):
                out.extend(ERef(n, a.pos) for n in self.expand_range(a, env, local))
            elif isinstance(a, ast.Ref) and not a.primed and a.name.index is None and a.name.base in self.choice_sets:
                out.extend(ERef(m, p) for m, p in self.choice_sets[a.name.base].members)
            elif isinstance(a, ast.Call) and a.func.base == "loose_ends" and a.func.index is None:
                if not allow_loose:
                    raise self.err("loose_ends(...) can only be the argument of mean, add or mul", a.pos)
                names: list[str] = []
                for la in a.args:
                    if isinstance(la, ast.Range):
                        names.extend(self.expand_range(la, env, local))
                    elif isinstance(la, ast.Ref) and not la.primed:
                        names.append(self.resolve(la.name, env, local))
                    else:
                        raise self.err("loose_ends(...) takes node names and ranges", getattr(la, "pos", a.pos))
                if not names:
                    raise self.err("loose_ends() needs at least one node", a.pos)
                out.append(ELoose(tuple(names), a.pos))
            else:
                out.append(self.expr(a, env, local, owner))
        return out

    def call(self, c: ast.Call, env, local, owner: str) -> EExpr:
        fname = c.func.base if c.func.index is None else self.resolve(c.func, env, local)
        if fname == "split":
            raise self.err("split(...) must be the whole right-hand side of `a, b = split(linear(...), 2)`", c.pos)
        if fname == "loose_ends":
            raise self.err("loose_ends(...) can only be the argument of mean, add or mul", c.pos)
        if fname == "one_of":
            return self.one_of(c, env, local, owner)
        if fname in self.choice_sets:
            cs = self.choice_sets[fname]
            args = self.args_of(c, env, local, owner)
            alts = []
            for member, mpos in cs.members:
                op = resolve_op(member)
                if op is None:
                    raise self.err(f"choice set '{fname}' is used as an op here, but its member '{member}' is not an op",
                                   mpos, _did_you_mean(member, USER_OPS))
                msg = check_arity(op, len(args))
                if msg:
                    raise self.err(f"{fname}(...) with member {msg}", c.pos)
                alts.append(EOp(op, tuple(args), c.pos))
            if len(alts) == 1:
                return alts[0]
            d = self.new_decision(owner, fname, "op", [m for m, _ in cs.members], c.pos)
            return EChoice(d, tuple(alts), c.pos)
        op = resolve_op(fname)
        if op is None:
            hint = _did_you_mean(fname, [*USER_OPS, *self.choice_sets, *BUILTINS]) or \
                f"ops: {', '.join(USER_OPS)}; or a choice set declared with `choice`"
            raise self.err(f"unknown op '{fname}'", c.func.pos, hint)
        args = self.args_of(c, env, local, owner, allow_loose=op in ("mean", "add", "mul"))
        has_loose = any(isinstance(a, ELoose) for a in args)
        if not has_loose:
            msg = check_arity(op, len(args))
            if msg:
                raise self.err(msg, c.pos)
        return EOp(op, tuple(args), c.pos)

    def one_of(self, c: ast.Call, env, local, owner: str) -> EExpr:
        if not c.args:
            raise self.err("empty choice: one_of() needs at least one alternative", c.pos)
        plain = all(isinstance(a, (ast.Range, ast.Ref)) for a in c.args)
        numeric = all(isinstance(a, ast.Num) or (isinstance(a, ast.Neg) and isinstance(a.operand, ast.Num))
                      for a in c.args)
        if plain or numeric:
            alts = self.args_of(c, env, local, owner)
            if len(alts) == 1:
                return alts[0]
            if plain:
                labels = [a.name for a in alts]
                if len(set(labels)) != len(labels):
                    raise self.err("one_of(...) lists the same node twice", c.pos)
                d = self.new_decision(owner, "in", "input", labels, c.pos)
            else:
                d = self.new_decision(owner, "val", "value", [a.value for a in alts], c.pos)
            return EChoice(d, tuple(alts), c.pos)
        for a in c.args:
            if isinstance(a, ast.KwArg):
                raise self.err(f"keyword argument '{a.key}=' is not allowed in one_of", a.pos)
        if len(c.args) == 1:
            return self.expr(c.args[0], env, local, owner)
        labels = [_short(a) for a in c.args]
        d = self.new_decision(owner, "op", "alt", labels, c.pos)
        alts = []
        for k, a in enumerate(c.args):
            self.parent_stack.append((d, k))
            try:
                if isinstance(a, ast.Range):
                    raise self.err("a range inside one_of(...) with other expressions; list nodes separately", a.pos)
                alts.append(self.expr(a, env, local, owner))
            finally:
                self.parent_stack.pop()
        return EChoice(d, tuple(alts), c.pos)

    # ---- statements -----------------------------------------------------------------
    def stmts(self, body, env: dict[str, int], local: dict[str, str], suffix: str) -> None:
        for s in body:
            if len(self.statements) > MAX_STATEMENTS:
                raise self.err(f"the cell unrolls to more than {MAX_STATEMENTS} statements", s.pos)
            if isinstance(s, ast.For):
                lo, hi = self.ieval(s.lo, env), self.ieval(s.hi, env)
                if s.var in env:
                    raise self.err(f"loop variable '{s.var}' shadows an enclosing loop's", s.pos)
                if hi < lo:
                    raise self.err(f"inverted loop range {lo}..{hi}", s.pos, "write the smaller bound first")
                if hi - lo + 1 > MAX_LOOP:
                    raise self.err(f"loop runs {hi - lo + 1} times; at most {MAX_LOOP}", s.pos)
                inner_locals = _local_names(s.body)
                for i in range(lo, hi + 1):
                    sfx = f"{suffix}_{i}"
                    loc = dict(local)
                    loc.update({n: f"{n}{sfx}" for n in inner_locals})
                    self.stmts(s.body, {**env, s.var: i}, loc, sfx)
            else:
                self.assign(s, env, local)

    def assign(self, s: ast.Assign, env, local) -> None:
        names: list[str] = []
        for t in s.targets:
            n = self.resolve(t.name, env, local)
            if t.primed:
                if n == INPUT:
                    raise self.err("x is the cell's input and cannot be updated", t.pos)
                if n not in self.f_states:
                    raise self.err(f"{n}' updates state '{n}', which is not declared", t.pos,
                                   f"add it to `state {', '.join([*self.f_states, n])}`")
                n = n + "'"
            else:
                if n == INPUT:
                    raise self.err("cannot assign to x, the cell's input", t.pos)
                if n in self.f_states:
                    raise self.err(f"'{n}' is the previous value of a state and cannot be assigned", t.pos,
                                   f"write {n}' = ... to give the state its next value")
                if n in RESERVED:
                    raise self.err(f"'{n}' is a reserved word and cannot name a node", t.pos)
                if n in self.choice_sets:
                    raise self.err(f"'{n}' is already a choice set", t.pos)
            if n in self.target_pos:
                first = self.target_pos[n]
                raise self.err(f"duplicate name: '{n}' is already defined at line {first.line}", t.pos,
                               "every node is assigned once")
            self.target_pos[n] = t.pos
            names.append(n)
        owner = names[0]
        e = s.expr
        if len(names) > 1:
            if not (isinstance(e, ast.Call) and e.func.base == "split" and e.func.index is None):
                raise self.err(f"{len(names)} names on the left need `split(linear(...), {len(names)})` on the right",
                               s.pos)
            if len(e.args) != 2 or not isinstance(e.args[1], ast.Num):
                raise self.err(f"write split(linear(...), {len(names)}) for {len(names)} names on the left", e.pos)
            if e.args[1].value != len(names):
                raise self.err(f"{len(names)} names on the left, but split(..., {e.args[1].value}) makes "
                               f"{e.args[1].value} parts", e.pos, f"write split(linear(...), {len(names)})")
            inner = self.expr(e.args[0], env, local, owner)
            if not _is_linear(inner):
                raise self.err("split(...) splits a linear(...) projection", e.pos,
                               "write c, g = split(linear(x, h), 2)")
            exprs = tuple(inner for _ in names)
        else:
            if isinstance(e, ast.Call) and e.func.base == "split":
                if len(e.args) == 2 and isinstance(e.args[1], ast.Num) and e.args[1].value == 1:
                    e = e.args[0]
                else:
                    raise self.err("split(..., k) needs k names on the left", e.pos)
            exprs = (self.expr(e, env, local, owner),)
        uses_loose = any(_has_loose(x) for x in exprs)
        self.statements.append(Statement(tuple(names), exprs, s.pos, uses_loose))

    # ---- whole file -------------------------------------------------------------------
    def run(self) -> SpaceProgram:
        f = self.f
        if not f.states:
            raise self.err("no `state` declaration", ast.Pos(1, 1), "declare the recurrent states, e.g. `state h, c`")
        seen: dict[str, ast.Pos] = {}
        for s, p in f.states:
            if s in seen:
                raise self.err(f"duplicate state '{s}'", p)
            if s == INPUT:
                raise self.err("'x' cannot be a state name", p, "x is the cell's input")
            if s in RESERVED:
                raise self.err(f"'{s}' is a reserved word and cannot be a state name", p)
            seen[s] = p
        self.f_states = [s for s, _ in f.states]
        self.choice_sets = dict(f.choices)
        for cs in self.choice_sets.values():
            if not cs.members:
                raise self.err(f"empty choice set '{cs.name}'", cs.pos, "list at least one member")
            dup = [m for m, _ in cs.members]
            if len(set(dup)) != len(dup):
                raise self.err(f"choice set '{cs.name}' lists a member twice", cs.pos)
            if cs.name in BUILTINS or resolve_op(cs.name) or cs.name in self.f_states or cs.name == INPUT:
                raise self.err(f"'{cs.name}' cannot name a choice set (it is an op, a builtin or a state)", cs.pos)
        if f.cell is None:
            raise self.err("no `cell { ... }` block", ast.Pos(1, 1), "the cell says how the states are updated")
        self.stmts(f.cell, {}, {n: n for n in ()}, "")
        for s, p in f.states:
            if f"{s}'" not in self.target_pos:
                raise self.err(f"state '{s}' is never updated", p, f"add `{s}' = ...` to the cell")
        order = self.check_references_and_order()
        settings = self.settings()
        reserved = set(self.target_pos) | {INPUT, *self.f_states} | set(self.choice_sets)
        prog = SpaceProgram(
            name=f.name or _stem(f.file), file=f.file, text=f.text, states=tuple(self.f_states),
            statements=order, decisions=self.decisions, settings=settings, reserved_names=reserved,
        )
        prog.warnings = self.dead_warnings(order)
        return prog

    def check_references_and_order(self) -> list[Statement]:
        defined = set(self.target_pos)
        sources = {INPUT, *self.f_states}
        g = nx.DiGraph()
        by_target: dict[str, Statement] = {}
        for st in self.statements:
            for t in st.targets:
                by_target[t] = st
                g.add_node(t)
        for st in self.statements:
            for e in st.exprs:
                for ref in _refs(e):
                    if ref.name in sources:
                        continue
                    if ref.name not in defined:
                        if ref.name.endswith("'"):
                            raise self.err(f"'{ref.name}' is used but state '{ref.name[:-1]}' is never updated",
                                           ref.pos)
                        hint = _did_you_mean(ref.name, [*defined, *sources])
                        if hint is None:
                            known = sorted(defined | sources)
                            hint = "defined nodes: " + ", ".join(known[:12]) + (", ..." if len(known) > 12 else "")
                        raise self.err(f"undefined node '{ref.name}'", ref.pos, hint)
                    for t in st.targets:
                        g.add_edge(ref.name, t)
                for names, pos in _loose_lists(e):
                    for n in names:
                        if n not in defined and n not in sources:
                            raise self.err(f"undefined node '{n}' in loose_ends(...)", pos,
                                           _did_you_mean(n, defined))
                        for t in st.targets:
                            g.add_edge(n, t)
        try:
            cycle = nx.find_cycle(g)
        except nx.NetworkXNoCycle:
            cycle = None
        if cycle:
            path = " -> ".join([a for a, _ in cycle] + [cycle[0][0]])
            pos = self.target_pos[cycle[0][1]]
            raise self.err(f"cycle within a step: {path}", pos,
                           "a node cannot depend on itself within one step; use a state to carry values across steps")
        loose_users = {t for st in self.statements if st.uses_loose for t in st.targets}
        for t in loose_users:
            for succ in g.successors(t):
                raise self.err(f"'{t}' uses loose_ends(...) and so cannot feed other nodes ('{succ}' uses it)",
                               self.target_pos[succ])
        rank = {t: i for i, st in enumerate(self.statements) for t in st.targets}
        topo = list(nx.lexicographical_topological_sort(g, key=lambda n: rank[n]))
        ordered, seen = [], set()
        for t in topo:
            st = by_target[t]
            if id(st) not in seen and not st.uses_loose:
                seen.add(id(st))
                ordered.append(st)
        ordered += [st for st in self.statements if st.uses_loose]
        return ordered

    def dead_warnings(self, statements: list[Statement]) -> list[str]:
        g = nx.DiGraph()
        for st in statements:
            for t in st.targets:
                g.add_node(t)
                for e in st.exprs:
                    for ref in _refs(e):
                        g.add_edge(ref.name, t)
                    for names, _ in _loose_lists(e):
                        for n in names:
                            g.add_edge(n, t)
        live: set[str] = set()
        for s in self.f_states:
            live |= nx.ancestors(g, f"{s}'") | {f"{s}'"}
        out = []
        for t, pos in self.target_pos.items():
            if t not in live:
                out.append(f"{self.f.file}:{pos.line}:{pos.col}: warning: node '{t}' never reaches a state (dead)")
        return out

    # ---- model / train / search blocks -----------------------------------------------------
    def settings(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {"model": {}, "train": {}, "search": {}}
        allowed = {"model": MODEL_KEYS, "train": TRAIN_KEYS, "search": None}
        for block, items in self.f.blocks.items():
            seen: dict[str, ast.Pos] = {}
            for st in items:
                if st.key in seen:
                    raise self.err(f"duplicate key '{st.key}' in {block} block (first at line {seen[st.key].line})",
                                   st.pos)
                seen[st.key] = st.pos
                keys = allowed[block]
                if keys is not None and st.key not in keys:
                    alias = _KEY_ALIASES.get(st.key.lower().replace("-", "_"))
                    hint = (f"did you mean '{alias}'?" if alias in keys else None) or _did_you_mean(st.key, keys) \
                        or f"{block} keys: {', '.join(keys)}"
                    raise self.err(f"unknown key '{st.key}' in {block} block", st.pos, hint)
                if block == "train" and st.key == "task":
                    out[block]["task"] = self.task_spec(st.value)
                    continue
                out[block][st.key] = self.hp_value(block, st.key, st.value)
        return out

    def literal(self, e: ast.Expr) -> Any:
        if isinstance(e, (ast.Num, ast.Str, ast.Bool)):
            return e.value
        if isinstance(e, ast.Neg) and isinstance(e.operand, ast.Num):
            return -e.operand.value
        if isinstance(e, ast.Ref) and e.name.index is None and not e.primed:
            raise self.err(f"'{e.name.base}' is a name here; write \"{e.name.base}\" for a string", e.pos)
        raise self.err("expected a number, a \"string\" or true/false here", getattr(e, "pos", None))

    def number(self, e, what: str) -> float:
        v = self.literal(e)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.err(f"{what} must be a number, got {v!r}", e.pos)
        if not math.isfinite(v):
            raise self.err(f"{what} must be finite", e.pos)
        return v

    def task_spec(self, e: ast.Expr) -> TaskSpec:
        if not isinstance(e, ast.Call) or e.func.index is not None:
            raise self.err("task must be a call like char_lm(\"input.txt\") or parity(length=20)",
                           getattr(e, "pos", None))
        args, kwargs = [], {}
        for a in e.args:
            if isinstance(a, ast.KwArg):
                if a.key in kwargs:
                    raise self.err(f"duplicate task argument '{a.key}'", a.pos)
                kwargs[a.key] = self.literal(a.value)
            elif isinstance(a, ast.Range):
                raise self.err("ranges are not task arguments", a.pos)
            else:
                if kwargs:
                    raise self.err("positional task arguments must come before keyword arguments", a.pos)
                args.append(self.literal(a))
        if e.func.base not in KNOWN_TASKS:
            raise self.err(f"unknown task '{e.func.base}'", e.func.pos,
                           _did_you_mean(e.func.base, KNOWN_TASKS) or f"tasks: {', '.join(KNOWN_TASKS)}")
        return TaskSpec(name=e.func.base, args=tuple(args), kwargs=kwargs)

    def hp_value(self, block: str, key: str, e: ast.Expr) -> Any:
        owner = f"{block}"
        if isinstance(e, ast.Call) and e.func.index is None and e.func.base in HP_FUNCS:
            fn = e.func.base
            if any(isinstance(a, ast.Range) for a in e.args):
                raise self.err(f"{fn}(...) takes numbers, not a range of names", e.pos)
            pos_args = [a for a in e.args if not isinstance(a, ast.KwArg)]
            kw = {a.key: a for a in e.args if isinstance(a, ast.KwArg)}
            if fn == "one_of":
                if not pos_args:
                    raise self.err("empty choice: one_of() needs at least one value", e.pos)
                if kw:
                    raise self.err("one_of(...) takes no keyword arguments", e.pos)
                values = [self.literal(a) for a in pos_args]
                if len(set(map(repr, values))) != len(values):
                    raise self.err("one_of(...) lists the same value twice", e.pos)
                kind = "value"
            elif fn == "int_range":
                if len(pos_args) not in (2, 3) or set(kw) - {"step"}:
                    raise self.err("int_range(lo, hi[, step]) takes two or three integers", e.pos)
                nums = [self.number(a, f"{fn} bound") for a in pos_args]
                step = nums[2] if len(nums) == 3 else (self.number(kw["step"].value, "step") if "step" in kw else 1)
                lo, hi = nums[0], nums[1]
                if any(not float(v).is_integer() for v in (lo, hi, step)):
                    raise self.err("int_range(...) bounds and step must be integers", e.pos)
                lo, hi, step = int(lo), int(hi), int(step)
                if hi < lo:
                    raise self.err(f"inverted range: int_range({lo}, {hi})", e.pos, "write the smaller bound first")
                if step <= 0:
                    raise self.err("int_range step must be positive", e.pos)
                if (hi - lo) // step + 1 > MAX_INT_RANGE:
                    raise self.err(f"int_range has more than {MAX_INT_RANGE} values", e.pos, "use a step")
                values = list(range(lo, hi + 1, step))
                kind = "int"
            else:
                if len(pos_args) != 2 or set(kw) - {"n"}:
                    raise self.err(f"{fn}(lo, hi[, n=points]) takes two numbers", e.pos)
                lo, hi = (self.number(a, f"{fn} bound") for a in pos_args)
                n = self.number(kw["n"].value, "n") if "n" in kw else DEFAULT_GRID
                if not float(n).is_integer():
                    raise self.err(f"n must be an integer number of points, got {n}", kw["n"].pos)
                n = int(n)
                if hi <= lo:
                    raise self.err(f"inverted range: {fn}({lo}, {hi})", e.pos, "write the smaller bound first")
                if fn == "log_uniform" and lo <= 0:
                    raise self.err("log_uniform bounds must be > 0", e.pos)
                if not 2 <= n <= MAX_INT_RANGE:
                    raise self.err(f"n must be between 2 and {MAX_INT_RANGE}", e.pos)
                if fn == "log_uniform":
                    values = [float(f"{math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * k / (n - 1)):.6g}")
                              for k in range(n)]
                else:
                    values = [float(f"{lo + (hi - lo) * k / (n - 1):.6g}") for k in range(n)]
                kind = "float"
            for v in values:
                self.check_setting(block, key, v, e.pos)
            d = self.new_decision(owner, key, kind, values, e.pos)
            return ("decision", d)
        if isinstance(e, ast.Call):
            raise self.err(f"unknown function '{e.func.base}' for {block}.{key}", e.pos,
                           _did_you_mean(e.func.base, HP_FUNCS) or f"use a value or one of {', '.join(HP_FUNCS)}")
        v = self.literal(e)
        self.check_setting(block, key, v, e.pos)
        return v

    def check_setting(self, block: str, key: str, value: Any, pos: ast.Pos) -> None:
        model = {"model": ModelConfig, "train": TrainConfig}.get(block)
        if model is None:
            return
        try:
            model.model_validate({key: value}, strict=True)
        except ValidationError as exc:
            msg = exc.errors()[0].get("msg", str(exc))
            raise self.err(f"{block}.{key} = {value!r}: {msg}", pos) from None


def _short(e: ast.Expr) -> str:
    if isinstance(e, ast.Call):
        return e.func.base
    if isinstance(e, ast.Ref):
        return e.name.base + ("'" if e.primed else "")
    if isinstance(e, ast.Num):
        return repr(e.value)
    if isinstance(e, ast.BinOp):
        return e.op
    return type(e).__name__.lower()


def _stem(file: str) -> str:
    import os
    base = os.path.basename(file)
    return base.split(".")[0] or "space"


def _local_names(body) -> set[str]:
    out = set()
    for s in body:
        if isinstance(s, ast.Assign):
            for t in s.targets:
                if t.name.index is None and not t.primed:
                    out.add(t.name.base)
    return out


def _is_linear(e: EExpr) -> bool:
    if isinstance(e, EOp):
        return e.op == "linear"
    if isinstance(e, EChoice):
        return all(_is_linear(a) for a in e.alts)
    return False


def _walk(e):
    yield e
    if isinstance(e, EOp):
        for a in e.args:
            yield from _walk(a)
    elif isinstance(e, EChoice):
        for a in e.alts:
            yield from _walk(a)


def _refs(e) -> list[ERef]:
    return [x for x in _walk(e) if isinstance(x, ERef)]


def _loose_lists(e) -> list[tuple[tuple[str, ...], ast.Pos]]:
    return [(x.names, x.pos) for x in _walk(e) if isinstance(x, ELoose)]


def _has_loose(e) -> bool:
    return any(isinstance(x, ELoose) for x in _walk(e))


def parse_task(text: str, where: str = "--task") -> TaskSpec:
    """A task written as in a space file, e.g. `char_lm("input.txt", seq_len=128)`."""
    from .dsl import parse_expr

    return _Elaborator(ast.SpaceFile(file=where, text=text)).task_spec(parse_expr(text, where))


def elaborate(f: ast.SpaceFile) -> SpaceProgram:
    return _Elaborator(f).run()
