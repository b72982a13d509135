"""`SearchSpace`: the decisions of a space file and what an assignment of them means.

An assignment maps every decision name to a choice index. Decisions nested inside an
alternative of another are inactive unless that alternative is chosen; `normalize` sets
inactive ones to 0 so that equal cells have equal assignments and equal vectors.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .config import ModelConfig, TaskSpec, TrainConfig
from .dsl import parse_file, parse_text
from .elaborate import Decision, EChoice, EConst, ELoose, EOp, ERef, SpaceProgram, elaborate
from .errors import UserError
from .ir import CellGraph, Node

Assignment = dict[str, int]


@dataclass(frozen=True)
class Hyperparameters:
    model: ModelConfig
    train: TrainConfig
    task: TaskSpec | None
    search: dict[str, Any] = field(default_factory=dict)

    def flat(self) -> dict[str, Any]:
        out = {f"model.{k}": v for k, v in self.model.model_dump().items()}
        out.update({f"train.{k}": v for k, v in self.train.model_dump().items()})
        out["train.task"] = str(self.task) if self.task else None
        return out


class SearchSpace:
    """The decisions of one space file, with sampling, mutation and instantiation."""

    def __init__(self, program: SpaceProgram):
        self.program = program
        self.decisions: list[Decision] = program.decisions
        self._index = {d.name: i for i, d in enumerate(self.decisions)}
        self._children: dict[tuple[int, int], list[int]] = {}
        for i, d in enumerate(self.decisions):
            if d.parent is not None:
                self._children.setdefault(d.parent, []).append(i)

    # ---- construction -------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | Path) -> "SearchSpace":
        return cls(elaborate(parse_file(path)))

    @classmethod
    def from_text(cls, text: str, file: str = "<space>") -> "SearchSpace":
        return cls(elaborate(parse_text(text, file)))

    # ---- facts ------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.program.name

    @property
    def text(self) -> str:
        return self.program.text

    @property
    def text_hash(self) -> str:
        return hashlib.sha256(self.program.text.encode()).hexdigest()

    @property
    def states(self) -> tuple[str, ...]:
        return self.program.states

    @property
    def warnings(self) -> list[str]:
        return list(self.program.warnings)

    def decision(self, name: str) -> Decision:
        return self.decisions[self._index[name]]

    def _size_of(self, idx: int) -> int:
        total = 0
        for k in range(self.decisions[idx].size):
            prod = 1
            for c in self._children.get((idx, k), []):
                prod *= self._size_of(c)
            total += prod
        return total

    def _size(self, keep) -> int:
        size = 1
        for i, d in enumerate(self.decisions):
            if d.parent is None and keep(d):
                size *= self._size_of(i)
        return size

    @property
    def size(self) -> int:
        """Number of distinct assignments (cell and hyperparameters), exact."""
        return self._size(lambda d: True)

    @property
    def cell_size(self) -> int:
        """Number of distinct assignments of the cell's decisions alone."""
        return self._size(lambda d: d.kind in ("input", "op", "alt"))

    @property
    def size_log10(self) -> float:
        s = self.size
        return math.log10(s) if s > 0 else float("-inf")

    # ---- assignments ---------------------------------------------------------------------
    def active(self, a: Mapping[str, int]) -> list[bool]:
        act: list[bool] = []
        for d in self.decisions:
            if d.parent is None:
                act.append(True)
            else:
                p, k = d.parent
                act.append(act[p] and a.get(self.decisions[p].name, 0) == k)
        return act

    def normalize(self, a: Mapping[str, int]) -> Assignment:
        act = self.active(a)
        return {d.name: (int(a.get(d.name, 0)) if act[i] else 0) for i, d in enumerate(self.decisions)}

    def validate_assignment(self, a: Mapping[str, Any]) -> Assignment:
        unknown = set(a) - set(self._index)
        if unknown:
            raise UserError(f"unknown decision(s) for space '{self.name}': {', '.join(sorted(unknown))}",
                            "list the decisions with `nas space show`")
        for d in self.decisions:
            if d.name not in a:
                raise UserError(f"assignment lacks decision '{d.name}'")
            v = a[d.name]
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < d.size:
                raise UserError(f"decision '{d.name}' = {v!r} is out of range 0..{d.size - 1}")
        return self.normalize(a)

    def sample(self, rng: random.Random) -> Assignment:
        return self.normalize({d.name: rng.randrange(d.size) for d in self.decisions})

    def mutate(self, a: Mapping[str, int], rng: random.Random) -> Assignment:
        """Change one active decision (op, input or hyperparameter) to another choice."""
        a = self.normalize(a)
        act = self.active(a)
        movable = [i for i, d in enumerate(self.decisions) if act[i] and d.size > 1]
        if not movable:
            return dict(a)
        d = self.decisions[rng.choice(movable)]
        new = rng.randrange(d.size - 1)
        if new >= a[d.name]:
            new += 1
        child = dict(a)
        child[d.name] = new
        # decisions that just became active take a random choice, as a fresh sample would
        act2 = self.active(child)
        for i, dd in enumerate(self.decisions):
            if act2[i] and not act[i]:
                child[dd.name] = rng.randrange(dd.size)
        return self.normalize(child)

    def encode(self, a: Mapping[str, int]) -> list[int]:
        a = self.normalize(a)
        return [a[d.name] for d in self.decisions]

    def decode(self, vector) -> Assignment:
        vec = list(vector)
        if len(vec) != len(self.decisions):
            raise UserError(f"vector has {len(vec)} entries; space '{self.name}' has {len(self.decisions)} decisions")
        return self.validate_assignment({d.name: int(v) for d, v in zip(self.decisions, vec)})

    def describe(self, a: Mapping[str, int]) -> dict[str, Any]:
        """Human-readable values of the active decisions."""
        a = self.normalize(a)
        act = self.active(a)
        return {d.name: d.choices[a[d.name]] for i, d in enumerate(self.decisions) if act[i]}

    def enumerate(self, limit: int = 1_000_000):
        """All normalized assignments (for small spaces), in a fixed order."""
        if self.size > limit:
            raise UserError(f"space '{self.name}' has {self.size} assignments; too many to enumerate")
        out: list[Assignment] = [{}]
        for i, d in enumerate(self.decisions):
            nxt = []
            for a in out:
                if self.active(a)[i] if len(a) == i else True:
                    for k in range(d.size):
                        nxt.append({**a, d.name: k})
                else:
                    nxt.append({**a, d.name: 0})
            out = nxt
        seen, result = set(), []
        for a in out:
            key = tuple(self.normalize(a).values())
            if key not in seen:
                seen.add(key)
                result.append(self.normalize(a))
        return result

    # ---- meaning ---------------------------------------------------------------------------
    def instantiate(self, a: Mapping[str, int]) -> CellGraph:
        """The cell an assignment describes (dead nodes pruned)."""
        return _Instantiator(self, self.normalize(a)).run()

    def instantiate_traced(self, a: Mapping[str, int]) -> tuple[CellGraph, dict[tuple[str, int], str]]:
        """The cell, and which node each op expression became: (target, id(EOp)) -> node id.

        A supernet built from the same program uses the keys to copy its weights into the
        discrete cell (nodes pruned as dead are absent from the graph, not from the map).
        """
        inst = _Instantiator(self, self.normalize(a))
        return inst.run(), inst.trace

    def hyperparameters(self, a: Mapping[str, int]) -> Hyperparameters:
        a = self.normalize(a)
        vals: dict[str, dict[str, Any]] = {}
        for block, items in self.program.settings.items():
            vals[block] = {}
            for key, v in items.items():
                if isinstance(v, tuple) and len(v) == 2 and v[0] == "decision":
                    d = self.decisions[v[1]]
                    v = d.choices[a[d.name]]
                vals[block][key] = v
        task = vals["train"].pop("task", None)
        return Hyperparameters(ModelConfig(**vals["model"]), TrainConfig(**vals["train"]), task, vals["search"])

    def to_dsl(self, a: Mapping[str, int], name: str | None = None) -> str:
        """A fixed-cell space file (size 1) for this assignment: cell and hyperparameters."""
        graph = self.instantiate(a)
        hp = self.hyperparameters(a)
        name = name or f"{self.name}_{graph.short_hash}"
        text = graph.to_dsl(name)
        model = {k: v for k, v in hp.model.model_dump().items() if k in self.program.settings["model"]}
        train = {k: v for k, v in hp.train.model_dump().items() if k in self.program.settings["train"]}
        if model:
            text += "\nmodel {\n" + "".join(f"  {k} = {_lit(v)}\n" for k, v in model.items()) + "}\n"
        if train or hp.task:
            text += "\ntrain {\n"
            if hp.task:
                text += f"  task = {_task_text(hp.task)}\n"
            text += "".join(f"  {k} = {_lit(v)}\n" for k, v in train.items()) + "}\n"
        return text


def _lit(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    return repr(v)


def _task_text(t: TaskSpec) -> str:
    parts = [_lit(a) for a in t.args] + [f"{k}={_lit(v)}" for k, v in t.kwargs.items()]
    return f"{t.name}({', '.join(parts)})"


class _Instantiator:
    def __init__(self, space: SearchSpace, a: Assignment):
        self.space = space
        self.a = a
        self.env: dict[str, str] = {"x": "x", **{s: s for s in space.states}}
        self.nodes: list[Node] = []
        self.taken = set(space.program.reserved_names)
        self.counter = 0
        # (statement target, id of the EOp) -> node id: lets a supernet map its parameters
        # onto the discrete cell's (see `SearchSpace.instantiate_traced`)
        self.trace: dict[tuple[str, int], str] = {}
        self.target = ""

    def fresh(self, base: str = "t") -> str:
        while True:
            self.counter += 1
            cand = f"{base}{self.counter}"
            if cand not in self.taken:
                self.taken.add(cand)
                return cand

    def node_name(self, target: str) -> str:
        if not target.endswith("'"):
            return target
        base = target[:-1] + "_next"
        if base not in self.taken:
            self.taken.add(base)
            return base
        return self.fresh(base)

    def evaluate(self, e, want: str | None) -> str:
        if isinstance(e, ERef):
            return self.env[e.name]
        if isinstance(e, EChoice):
            d = self.space.decisions[e.decision]
            return self.evaluate(e.alts[self.a[d.name]], want)
        if isinstance(e, EConst):
            nid = want or self.fresh("k")
            self.nodes.append(Node(nid, "const", (), float(e.value)))
            return nid
        if isinstance(e, EOp):
            ins: list[str] = []
            for arg in e.args:
                if isinstance(arg, ELoose):
                    ins.extend(self.loose(arg))
                else:
                    ins.append(self.evaluate(arg, None))
            op = e.op
            if op in ("add", "mul") and len(ins) == 1:
                op = "identity"
            nid = want or self.fresh()
            self.nodes.append(Node(nid, op, tuple(ins)))
            self.trace[(self.target, id(e))] = nid
            return nid
        raise TypeError(f"cannot evaluate {e!r}")

    def loose(self, e: ELoose) -> list[str]:
        used = {i for n in self.nodes for i in n.inputs}
        ids = [self.env[n] for n in e.names]
        out = [i for i in ids if i not in used]
        return out or ids[-1:]

    def run(self) -> CellGraph:
        outputs: dict[str, str] = {}
        for st in self.space.program.statements:
            for target, expr in zip(st.targets, st.exprs):
                self.target = target
                nid = self.evaluate(expr, None if isinstance(expr, (ERef, EChoice)) and _is_ref(expr, self)
                                else self.node_name(target))
                self.env[target] = nid
                if target.endswith("'"):
                    outputs[target[:-1]] = nid
        g = CellGraph(self.space.states, self.nodes, outputs, validate=True)
        live = g.live_nodes()
        return CellGraph(g.states, [n for n in g.nodes.values() if n.id in live and n.op != "input"], outputs)


def _is_ref(e, inst: _Instantiator) -> bool:
    """True if `e` resolves (under the assignment) to a plain reference: an alias."""
    while isinstance(e, EChoice):
        e = e.alts[inst.a[inst.space.decisions[e.decision].name]]
    return isinstance(e, ERef)


def load_space(path: str | Path) -> SearchSpace:
    """Parse and check a space file; SpaceError (file:line:col) on any mistake."""
    return SearchSpace.from_file(path)
