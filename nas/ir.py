"""`CellGraph`: the intermediate representation of one recurrent cell.

A cell maps `(x_t, states_{t-1}) -> states_t`. It is a DAG of typed ops (see `nas.ops`)
whose sources are the input `x` and the previous value of each state, and where each
state names the node that becomes its next value. The canonical hash makes isomorphic
cells (renamed nodes, commuted operands of commutative ops, identity ops) equal, so a
search never trains the same cell twice.
"""

from __future__ import annotations

import hashlib
import json
import keyword
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Iterable, Mapping, Sequence

import networkx as nx

from .ops import OPS, check_arity

INPUT = "x"
IR_FORMAT = 1
_IDENT = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
RESERVED = {"x", "space", "state", "choice", "cell", "model", "train", "search", "for", "in", "true", "false"}


class GraphError(ValueError):
    """An invalid cell graph (a bug in a space file's semantics or in hand-built IR)."""


@dataclass(frozen=True)
class Node:
    id: str
    op: str
    inputs: tuple[str, ...] = ()
    value: float | None = None  # for op == "const"

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "op": self.op}
        if self.inputs:
            d["inputs"] = list(self.inputs)
        if self.value is not None:
            d["value"] = self.value
        return d


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _canonical_order(g: "CellGraph") -> list[str]:
    """Nodes in an order that depends only on the cell's structure, not on names.

    Colour refinement (1-dimensional Weisfeiler-Lehman on the directed graph, with the
    operand position on edges into non-commutative ops), then individualisation: while
    a colour class still has several members (symmetric nodes, e.g. two identical
    branches averaged by a mean), one member gets its own colour and refinement runs
    again, so the nodes that hang off it are told apart consistently.
    """
    nodes = g.nodes
    ids = list(nodes)
    state_index = {s: i for i, s in enumerate(g.states)}
    outs = {nid: tuple(sorted(state_index[s] for s, o in g.outputs.items() if o == nid)) for nid in ids}
    ins: dict[str, list[tuple[str, int]]] = {nid: [] for nid in ids}
    cons: dict[str, list[tuple[str, int]]] = {nid: [] for nid in ids}
    for nid, n in nodes.items():
        comm = OPS[n.op].commutative
        for k, src in enumerate(n.inputs):
            pos = -1 if comm else k
            ins[nid].append((src, pos))
            cons[src].append((nid, pos))

    def initial(nid: str) -> tuple:
        n = nodes[nid]
        role = -1 if nid == INPUT else (state_index[nid] if n.op == "input" else -2)
        return (n.op, repr(float(n.value)) if n.value is not None else "", role, outs[nid])

    def ranks(sig: dict[str, tuple]) -> dict[str, int]:
        order = {v: i for i, v in enumerate(sorted(set(sig.values())))}
        return {nid: order[sig[nid]] for nid in ids}

    def refine(color: dict[str, int]) -> dict[str, int]:
        while True:
            sig = {nid: (color[nid], tuple(sorted((color[s], p) for s, p in ins[nid])),
                         tuple(sorted((color[c], p) for c, p in cons[nid]))) for nid in ids}
            new = ranks(sig)
            if len(set(new.values())) == len(set(color.values())):
                return new
            color = new

    color = refine(ranks({nid: initial(nid) for nid in ids}))
    while len(set(color.values())) < len(ids):
        classes: dict[int, list[str]] = {}
        for nid in ids:
            classes.setdefault(color[nid], []).append(nid)
        tied = min(c for c, members in classes.items() if len(members) > 1)
        chosen = classes[tied][0]
        color = refine({nid: (2 * c + (1 if nid == chosen else 0)) for nid, c in color.items()})
    return sorted(ids, key=color.__getitem__)


class CellGraph:
    """A validated cell. `nodes` are kept in a topological order, sources first."""

    def __init__(self, states: Sequence[str], nodes: Iterable[Node], outputs: Mapping[str, str],
                 validate: bool = True):
        self.states: tuple[str, ...] = tuple(states)
        given = list(nodes)
        present = {n.id for n in given}
        sources = [Node(INPUT, "input")] + [Node(s, "input") for s in self.states]
        self._nodes: dict[str, Node] = {n.id: n for n in sources}
        for n in given:
            if n.op == "input" and n.id in self._nodes:
                continue
            if n.id in self._nodes:
                raise GraphError(f"node '{n.id}' is defined twice (or shadows an input)")
            self._nodes[n.id] = n
        del present
        self.outputs: dict[str, str] = dict(outputs)
        if validate:
            self.validate()
        self._nodes = {nid: self._nodes[nid] for nid in self._topo_order()}

    # ---- structure ---------------------------------------------------------------
    @property
    def nodes(self) -> dict[str, Node]:
        return self._nodes

    @cached_property
    def graph(self) -> nx.MultiDiGraph:
        """The cell as a networkx multigraph: edge u -> v with `pos` = argument index."""
        g = nx.MultiDiGraph()
        for n in self._nodes.values():
            g.add_node(n.id, op=n.op, value=n.value)
        for n in self._nodes.values():
            for i, src in enumerate(n.inputs):
                g.add_edge(src, n.id, pos=i)
        return g

    def _topo_order(self) -> list[str]:
        g = nx.DiGraph()
        g.add_nodes_from(self._nodes)
        for n in self._nodes.values():
            for src in n.inputs:
                g.add_edge(src, n.id)
        order = {nid: i for i, nid in enumerate(self._nodes)}
        return list(nx.lexicographical_topological_sort(g, key=lambda nid: order[nid]))

    def consumers(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {nid: [] for nid in self._nodes}
        for n in self._nodes.values():
            for src in n.inputs:
                out[src].append(n.id)
        return out

    def live_nodes(self) -> set[str]:
        """Nodes the next states depend on (sources included)."""
        live: set[str] = set()
        stack = list(self.outputs.values())
        while stack:
            nid = stack.pop()
            if nid in live:
                continue
            live.add(nid)
            stack.extend(self._nodes[nid].inputs)
        return live | {INPUT, *self.states}

    def dead_nodes(self) -> list[str]:
        live = self.live_nodes()
        return [nid for nid in self._nodes if nid not in live]

    def num_ops(self) -> int:
        return sum(1 for n in self._nodes.values() if n.op not in ("input", "const"))

    # ---- validation ----------------------------------------------------------------
    def validate(self) -> list[str]:
        """Raise GraphError on an invalid cell; return warnings (dead nodes)."""
        if not self.states:
            raise GraphError("a cell needs at least one state")
        if len(set(self.states)) != len(self.states):
            raise GraphError(f"duplicate state names in {self.states}")
        if INPUT in self.states:
            raise GraphError("'x' is the input and cannot be a state")
        for s in self.states:
            if s not in self.outputs:
                raise GraphError(f"state '{s}' is never updated (no {s}' = ...)")
        for s, nid in self.outputs.items():
            if s not in self.states:
                raise GraphError(f"output for unknown state '{s}'")
            if nid not in self._nodes:
                raise GraphError(f"state '{s}' takes its value from unknown node '{nid}'")
        for n in self._nodes.values():
            if n.op not in OPS:
                raise GraphError(f"node '{n.id}': unknown op '{n.op}'")
            if n.op == "input":
                if n.id != INPUT and n.id not in self.states:
                    raise GraphError(f"input node '{n.id}' is neither x nor a state")
                continue
            if n.op == "const":
                if n.value is None or n.inputs:
                    raise GraphError(f"const node '{n.id}' needs a value and no inputs")
                continue
            msg = check_arity(n.op, len(n.inputs))
            if msg:
                raise GraphError(f"node '{n.id}': {msg}")
            for src in n.inputs:
                if src not in self._nodes:
                    raise GraphError(f"node '{n.id}' uses unknown node '{src}'")
        g = nx.DiGraph()
        g.add_nodes_from(self._nodes)
        g.add_edges_from((src, n.id) for n in self._nodes.values() for src in n.inputs)
        try:
            cycle = nx.find_cycle(g)
        except nx.NetworkXNoCycle:
            cycle = None
        if cycle:
            path = " -> ".join([e[0] for e in cycle] + [cycle[0][0]])
            raise GraphError(f"cycle within a step: {path}")
        return [f"node '{nid}' does not contribute to any state (dead)" for nid in self.dead_nodes()]

    # ---- canonical form ------------------------------------------------------------
    def simplified(self) -> "CellGraph":
        """Dead nodes removed, identity ops (and one-input mean/add) bypassed."""
        alias: dict[str, str] = {}

        def res(nid: str) -> str:
            while nid in alias:
                nid = alias[nid]
            return nid

        kept: list[Node] = []
        for n in self._nodes.values():
            if n.op == "input":
                continue
            ins = tuple(res(i) for i in n.inputs)
            if n.op == "identity" or (n.op == "mean" and len(ins) == 1):
                alias[n.id] = ins[0]
                continue
            kept.append(Node(n.id, n.op, ins, n.value))
        outs = {s: res(nid) for s, nid in self.outputs.items()}
        g = CellGraph(self.states, kept, outs, validate=False)
        live = g.live_nodes()
        return CellGraph(self.states, [n for n in kept if n.id in live], outs)

    def canonical(self) -> dict[str, Any]:
        """A JSON form that is equal for isomorphic cells (node ids become n0, n1, ...)."""
        g = self.simplified()
        nodes = g.nodes
        index = {nid: i for i, nid in enumerate(_canonical_order(g))}
        ranked = sorted(nodes, key=index.__getitem__)
        out_nodes = []
        for nid in ranked:
            n = nodes[nid]
            if n.op == "input":
                continue
            ins = [index[i] for i in n.inputs]
            if OPS[n.op].commutative:
                ins.sort()
            entry: dict[str, Any] = {"op": n.op, "inputs": ins}
            if n.op == "const":
                entry["value"] = float(n.value)
            out_nodes.append(entry)
        sources = [INPUT, *g.states]
        return {
            "states": len(g.states),
            "sources": [index[s] for s in sources],
            "nodes": out_nodes,
            "outputs": [index[g.outputs[s]] for s in g.states],
        }

    def canonical_hash(self) -> str:
        """Hex SHA-256 of the canonical form: equal for isomorphic cells."""
        return _sha(self.canonical())

    @property
    def short_hash(self) -> str:
        return self.canonical_hash()[:12]

    # ---- serialisation ---------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "format": IR_FORMAT,
            "states": list(self.states),
            "nodes": [n.to_json() for n in self._nodes.values() if n.op != "input"],
            "outputs": dict(self.outputs),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "CellGraph":
        try:
            if data.get("format", IR_FORMAT) != IR_FORMAT:
                raise GraphError(f"unsupported IR format {data.get('format')!r}")
            nodes = [Node(d["id"], d["op"], tuple(d.get("inputs", ())), d.get("value")) for d in data["nodes"]]
            return cls(data["states"], nodes, data["outputs"])
        except (KeyError, TypeError, AttributeError) as exc:
            raise GraphError(f"malformed cell JSON: {exc}") from None

    def to_dsl(self, name: str = "cell") -> str:
        """A fixed-cell space file (size 1) that computes this cell."""
        names: dict[str, str] = {INPUT: INPUT, **{s: s for s in self.states}}
        used = set(names.values())
        counter = 0
        for nid, n in self._nodes.items():
            if n.op in ("input", "const"):
                continue
            cand = nid
            if not _IDENT.match(cand) or cand in RESERVED or cand in used or keyword.iskeyword(cand):
                while f"n{counter}" in used or f"n{counter}" in self._nodes:
                    counter += 1
                cand = f"n{counter}"
            names[nid] = cand
            used.add(cand)

        def arg(nid: str) -> str:
            n = self._nodes[nid]
            if n.op == "const":
                v = float(n.value)
                text = repr(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)
                return f"({text})" if v < 0 else text
            return names[nid]

        consumers = self.consumers()
        output_nodes = set(self.outputs.values())
        inline = {nid for nid, n in self._nodes.items()
                  if n.op not in ("input", "linear") and len(consumers[nid]) == 1 and nid not in output_nodes}
        # a node that only feeds a state update is written as that update
        as_update = {nid: s for s, nid in self.outputs.items()
                     if self._nodes[nid].op not in ("input", "const") and not consumers[nid]
                     and list(self.outputs.values()).count(nid) == 1}
        prec = {"add": 1, "sub": 1, "mul": 2}

        def text(nid: str, parent_prec: int = 0, right: bool = False) -> str:
            n = self._nodes[nid]
            if n.op == "const" or nid not in inline:
                return arg(nid)
            args_ = n.inputs
            if n.op in prec and len(args_) == 2:
                p = prec[n.op]
                sym = {"add": " + ", "sub": " - ", "mul": " * "}[n.op]
                body = text(args_[0], p) + sym + text(args_[1], p, right=True)
                need = p < parent_prec or (right and p == parent_prec and parent_prec in (1,))
                return f"({body})" if need else body
            return f"{n.op}({', '.join(text(i) for i in args_)})"

        def top(nid: str) -> str:
            n = self._nodes[nid]
            if n.op in prec and len(n.inputs) == 2:
                sym = {"add": " + ", "sub": " - ", "mul": " * "}[n.op]
                p = prec[n.op]
                return text(n.inputs[0], p) + sym + text(n.inputs[1], p, right=True)
            return f"{n.op}({', '.join(text(i) for i in n.inputs)})"

        lines = [f"space {name}", f"state {', '.join(self.states)}", "", "cell {"]
        for nid, n in self._nodes.items():
            if n.op in ("input", "const") or nid in inline or nid in as_update:
                continue
            lines.append(f"  {names[nid]} = {top(nid)}")
        for s in self.states:
            nid = self.outputs[s]
            lines.append(f"  {s}' = {top(nid) if nid in as_update else arg(nid)}")
        lines.append("}")
        return "\n".join(lines) + "\n"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CellGraph) and self.to_json() == other.to_json()

    def __hash__(self) -> int:
        return hash(self.canonical_hash())

    def __repr__(self) -> str:
        return f"CellGraph(states={self.states}, ops={self.num_ops()}, hash={self.short_hash})"
