"""Is a cell a diagonal linear recurrence? If every state update has the form
`s_t = a_t * s_{t-1} + b_t` with a_t, b_t computed from x alone, the cell can run as a
parallel scan instead of a time loop.

The analysis writes each node as an affine function of the previous states whose
coefficients are polynomials in x-only nodes (monomials: a number times a product of
x-only nodes). Anything else - a state through `linear` (a dense matrix), through an
activation, or a product of two state-dependent terms - makes the cell sequential, and
the reason is kept so `backend="auto"` can say why it fell back.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from ..ir import INPUT
from .plan import CellPlan

ONE = ""  # key of the state-free part
Monomial = tuple[float, tuple[str, ...]]  # coefficient, x-only node ids multiplied
Poly = list[Monomial]
Affine = dict[str, Poly]  # key: state name or ONE


@dataclass
class ScanForm:
    """Per state: polynomials of a_t (coefficient of s_{t-1}) and b_t (the rest)."""

    a: dict[str, Poly]
    b: dict[str, Poly]


class NotLinear(Exception):
    pass


def _simplify(p: Poly) -> Poly:
    acc: dict[tuple[str, ...], float] = defaultdict(float)
    for c, ids in p:
        acc[tuple(sorted(ids))] += c
    return [(c, ids) for ids, c in acc.items() if c != 0.0]


def _scale(p: Poly, q: Poly) -> Poly:
    return _simplify([(c1 * c2, i1 + i2) for c1, i1 in p for c2, i2 in q])


def _add(x: Affine, y: Affine, sign: float = 1.0) -> Affine:
    out: dict[str, Poly] = {k: list(v) for k, v in x.items()}
    for k, v in y.items():
        out[k] = _simplify(out.get(k, []) + [(sign * c, ids) for c, ids in v])
    return {k: v for k, v in out.items() if v}


def _times(x: Affine, p: Poly) -> Affine:
    return {k: r for k, v in x.items() if (r := _scale(v, p))}


def _const_part(x: Affine, nid: str) -> Poly:
    if any(k != ONE for k in x):
        raise NotLinear(f"node '{nid}' multiplies two terms that both depend on the state")
    return x.get(ONE, [])


def scan_form(plan: CellPlan) -> ScanForm:
    """The scan form of a cell, or NotLinear(reason)."""
    graph = plan.graph
    hoisted = set(plan.hoisted) | {INPUT}
    forms: dict[str, Affine] = {s: {s: [(1.0, ())]} for s in graph.states}
    for nid in plan.per_step:
        n = graph.nodes[nid]
        args = [forms[i] if i in forms else {ONE: [(1.0, (i,))]} for i in n.inputs]
        for i in n.inputs:
            if i not in forms and i not in hoisted:
                raise NotLinear(f"node '{nid}' reads '{i}', which is neither x-only nor analysed")
        op = n.op
        if op == "identity":
            forms[nid] = args[0]
        elif op == "add":
            acc: Affine = {}
            for a in args:
                acc = _add(acc, a)
            forms[nid] = acc
        elif op == "mean":
            acc = {}
            for a in args:
                acc = _add(acc, a)
            forms[nid] = _times(acc, [(1.0 / len(args), ())])
        elif op == "sub":
            forms[nid] = _add(args[0], args[1], -1.0)
        elif op == "neg":
            forms[nid] = _times(args[0], [(-1.0, ())])
        elif op == "mul":
            dependent = [a for a in args if any(k != ONE for k in a)]
            if len(dependent) > 1:
                raise NotLinear(f"node '{nid}' multiplies two terms that both depend on the state")
            out: Affine = dependent[0] if dependent else {ONE: [(1.0, ())]}
            for a in args:
                if dependent and a is dependent[0]:
                    continue
                out = _times(out, _const_part(a, nid))
            forms[nid] = out
        elif op == "blend":  # z*a + (1-z)*b with z free of the state
            z = _const_part(args[0], nid)
            one_minus_z = _simplify([(1.0, ())] + [(-c, ids) for c, ids in z])
            forms[nid] = _add(_times(args[1], z), _times(args[2], one_minus_z))
        elif op == "linear":
            raise NotLinear(f"node '{nid}' projects a state-dependent value with a matrix (linear)")
        else:
            raise NotLinear(f"node '{nid}' applies {op} to a state-dependent value")
    a: dict[str, Poly] = {}
    b: dict[str, Poly] = {}
    for s in graph.states:
        out_id = graph.outputs[s]
        f = forms.get(out_id, {ONE: [(1.0, (out_id,))]})
        for k in f:
            if k not in (ONE, s):
                raise NotLinear(f"the update of state '{s}' depends on state '{k}' (not diagonal)")
        a[s] = f.get(s, [])
        b[s] = f.get(ONE, [])
    return ScanForm(a, b)


def explain(plan: CellPlan) -> str | None:
    """None if the cell runs as a scan, else why not."""
    try:
        scan_form(plan)
    except NotLinear as exc:
        return str(exc)
    return None
