"""Draw a cell (`nas.ir.CellGraph`) as a PNG, SVG or PDF picture with matplotlib.

No graphviz binary is needed: the layout is computed here. Nodes are placed in
layers, left to right, by their topological generation (networkx), so every edge
points rightwards; nodes within a layer are ordered by a few barycentre sweeps to
keep edges short. Constants sit just before their first consumer, and a next-state
node that nothing else reads sits in the last layer.

What the picture shows:

- every node of the graph *as stored* (dead nodes and identity ops included, dead
  ones greyed), one box per node: the op name, and the node's name under it unless
  it is a generated temporary (``t12``);
- the input ``x`` (green, square) and the previous value of each state (blue,
  square, ``h (t-1)``), apart from the ops;
- ops coloured by kind: ``linear`` (orange), activations (purple), elementwise
  (grey), reductions (yellow), constants (white);
- the node that becomes each next state with a thick red border and ``-> h'``;
- one arrow per edge of the multigraph (``mul(a, a)`` gives two arrows); the
  operands of non-commutative ops (``sub``, ``blend``) carry their position.

:func:`draw_cell` returns the numbers of boxes and arrows it drew, which equal
``graph.graph.number_of_nodes()`` / ``number_of_edges()`` (a test checks this on
the DARTS V2 cell: 66 nodes, 100 edges).
"""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import networkx as nx

from .ops import OPS

if TYPE_CHECKING:  # pragma: no cover
    from .ir import CellGraph

FORMATS = ("png", "svg", "pdf")

_KIND_COLOURS = {
    "x": "#b8e6b8",
    "state": "#b8d4f0",
    "linear": "#f8c98a",
    "activation": "#dcc6f0",
    "elementwise": "#e4e4e4",
    "reduce": "#f5e79e",
    "const": "#ffffff",
}
_TEMP_NAME = re.compile(r"^t\d+$")

# geometry in data units (one layer = 1.0 wide)
_LAYER_DX = 1.0
_ROW_DY = 0.62
_DUMMY_DY = 0.22
_BOX_W = 0.74
_BOX_H = 0.36
_INCH_PER_UNIT = 1.15


@dataclass(frozen=True)
class CellDrawing:
    """What :func:`draw_cell` drew."""

    path: Path | None
    nodes: int  # boxes drawn
    edges: int  # arrows drawn
    layers: int
    outputs: int  # next-state markers
    figure: Any = field(default=None, repr=False, compare=False)  # with out=None only


def _kind(graph: "CellGraph", nid: str) -> str:
    op = graph.nodes[nid].op
    if op == "input":
        return "x" if nid not in graph.states else "state"
    if op == "const":
        return "const"
    return OPS[op].kind if OPS[op].kind in _KIND_COLOURS else "elementwise"


@dataclass
class Layout:
    """Node centres, the layers (real nodes, left to right) and, for every edge
    ``(src, dst, k)`` (``k``: operand position) that spans several layers, the
    points it runs through (one per layer in between: the "dummy" nodes of a
    Sugiyama layout, which keep long edges out of the boxes)."""

    pos: dict[str, tuple[float, float]]
    layers: list[list[str]]
    routes: dict[tuple[str, str, int], list[tuple[float, float]]]


def layout(graph: "CellGraph") -> Layout:
    """Layered left-to-right layout of the cell (see the module doc)."""
    g = nx.DiGraph()
    g.add_nodes_from(graph.nodes)
    g.add_edges_from((src, nid) for nid, n in graph.nodes.items() for src in n.inputs)
    layer: dict[str, int] = {}
    for i, gen in enumerate(nx.topological_generations(g)):
        for nid in gen:
            layer[nid] = i
    last = max(layer.values(), default=0)
    succ0 = {nid: list(g.successors(nid)) for nid in g}
    for nid, n in graph.nodes.items():  # constants just before their first consumer
        if n.op == "const" and succ0[nid]:
            layer[nid] = max(0, min(layer[c] for c in succ0[nid]) - 1)
    for nid in set(graph.outputs.values()):  # next-state nodes nothing reads: last layer
        if not succ0[nid] and graph.nodes[nid].op != "input":
            layer[nid] = last
    order = {nid: i for i, nid in enumerate(graph.nodes)}  # topological order of the IR

    # the proper layered graph: long edges broken by one dummy per layer crossed
    pred: dict[str, list[str]] = {nid: [] for nid in graph.nodes}
    succ: dict[str, list[str]] = {nid: [] for nid in graph.nodes}
    layer_of = dict(layer)
    chains: dict[tuple[str, str, int], list[str]] = {}
    for nid, n in graph.nodes.items():
        for k, src in enumerate(n.inputs):
            chain = []
            prev = src
            for li in range(layer[src] + 1, layer[nid]):
                d = f"\0d{len(layer_of)}"
                layer_of[d] = li
                order[d] = order[src] + 0.5  # type: ignore[assignment]
                pred[d], succ[d] = [prev], []
                succ[prev].append(d)
                chain.append(d)
                prev = d
            succ[prev].append(nid)
            pred[nid].append(prev)
            chains[(src, nid, k)] = chain
    layers: list[list[str]] = [[] for _ in range(last + 1)]
    for nid in sorted(layer_of, key=lambda n: (order[n], n)):
        layers[layer_of[nid]].append(nid)

    def rel(nid: str, where: dict[str, int]) -> float:
        return where[nid] / max(1, len(layers[layer_of[nid]]) - 1)

    where = {nid: i for lay in layers for i, nid in enumerate(lay)}
    for sweep in range(8):  # barycentre sweeps, alternately forwards and backwards
        forward = sweep % 2 == 0
        nbrs = pred if forward else succ
        for lay in (layers if forward else reversed(layers)):
            def key(nid: str) -> tuple[float, float]:
                ns = nbrs[nid]
                if not ns:
                    return (rel(nid, where), order[nid])
                return (sum(rel(m, where) for m in ns) / len(ns), order[nid])

            lay.sort(key=key)
            for i, nid in enumerate(lay):
                where[nid] = i
    if layers:  # sources: x first, then the states in their declared order
        head = [n for n in ("x", *graph.states) if n in layers[0]]
        layers[0] = head + [n for n in layers[0] if n not in head]

    pos: dict[str, tuple[float, float]] = {}
    for li, lay in enumerate(layers):
        heights = [(_ROW_DY if nid in graph.nodes else _DUMMY_DY) for nid in lay]
        total = sum(heights)
        y = total / 2.0
        for nid, h in zip(lay, heights):
            pos[nid] = (li * _LAYER_DX, y - h / 2.0)
            y -= h
    routes = {e: [pos[d] for d in chain] for e, chain in chains.items() if chain}
    real_layers = [[n for n in lay if n in graph.nodes] for lay in layers]
    return Layout({n: p for n, p in pos.items() if n in graph.nodes}, real_layers, routes)


def _boundary(c: tuple[float, float], d: tuple[float, float]) -> tuple[float, float]:
    """Where the ray from the box centre ``c`` in direction ``d`` leaves the box."""
    dx, dy = d
    tx = (_BOX_W / 2) / abs(dx) if dx else float("inf")
    ty = (_BOX_H / 2) / abs(dy) if dy else float("inf")
    t = min(tx, ty)
    return (c[0] + t * dx, c[1] + t * dy)


def _label(graph: "CellGraph", nid: str) -> tuple[str, str | None]:
    n = graph.nodes[nid]
    if n.op == "input":
        return (nid, None) if nid not in graph.states else (nid, "(t-1)")
    if n.op == "const":
        return (f"{n.value:g}", "const")
    return (n.op, None if _TEMP_NAME.match(nid) else nid)


def draw_cell(
    graph: "CellGraph",
    out: str | os.PathLike[str] | None = None,
    *,
    title: str | None = None,
    fmt: str | None = None,
    dpi: int = 110,
):
    """Draw ``graph``; write it to ``out`` (format from ``fmt`` or the suffix:
    png, svg, pdf) if given. Returns a :class:`CellDrawing`; with ``out=None``
    the matplotlib ``Figure`` is in ``drawing.figure`` instead of a file.

    The file is written atomically (a temporary file renamed into place), so a
    failure never leaves a half-written picture. OSError if it cannot be written,
    ValueError for an unknown format.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch
    from matplotlib.path import Path as MplPath

    if out is not None:
        fmt = (fmt or Path(out).suffix.lstrip(".")).lower()
        if fmt not in FORMATS:
            raise ValueError(f"cannot draw a cell as {fmt or '(no suffix)'!r}; use one of {', '.join(FORMATS)}")
    lay = layout(graph)
    pos, layers = lay.pos, lay.layers
    ys = [y for _, y in pos.values()] + [y for pts in lay.routes.values() for _, y in pts]
    top, bottom = max(ys, default=0.0), min(ys, default=0.0)
    width_u = max(len(layers), 3) * _LAYER_DX + 0.6
    height_u = (top - bottom) + _BOX_H + 0.9
    fig_w = min(max(width_u * _INCH_PER_UNIT, 5.0), 120.0)
    fig_h = min(max(height_u * _INCH_PER_UNIT, 2.5), 60.0)
    fig = Figure(figsize=(fig_w, fig_h))
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_axis_off()
    xmin, xmax = -_BOX_W / 2 - 0.3, (len(layers) - 1) * _LAYER_DX + _BOX_W / 2 + 0.5
    ymax = top + _BOX_H / 2 + 0.55
    ymin = bottom - _BOX_H / 2 - 0.3
    ax.set_xlim(xmin, max(xmax, xmin + width_u))
    ax.set_ylim(ymin, ymax)

    live = graph.live_nodes()
    outputs: dict[str, list[str]] = {}
    for s in graph.states:
        outputs.setdefault(graph.outputs[s], []).append(s)

    n_boxes = 0
    for nid, (x, y) in pos.items():
        kind = _kind(graph, nid)
        is_out = nid in outputs
        dead = nid not in live
        box = FancyBboxPatch(
            (x - _BOX_W / 2, y - _BOX_H / 2), _BOX_W, _BOX_H,
            boxstyle="square,pad=0" if kind in ("x", "state") else "round,pad=0,rounding_size=0.08",
            facecolor="#f4f4f4" if dead else _KIND_COLOURS[kind],
            edgecolor="#c0392b" if is_out else ("#aaaaaa" if dead else "#444444"),
            linewidth=2.4 if is_out else 0.9, linestyle="--" if dead else "-", zorder=3,
        )
        ax.add_patch(box)
        n_boxes += 1
        main, sub = _label(graph, nid)
        colour = "#999999" if dead else "black"
        if sub:
            ax.text(x, y + 0.055, main, ha="center", va="center", fontsize=8, color=colour, zorder=4)
            ax.text(x, y - 0.095, sub, ha="center", va="center", fontsize=6, color="#555555", zorder=4)
        else:
            ax.text(x, y, main, ha="center", va="center", fontsize=8.5, color=colour, zorder=4,
                    fontweight="bold" if kind in ("x", "state") else "normal")
        if is_out:
            ax.text(x + _BOX_W / 2 + 0.04, y + _BOX_H / 2, "\u2192 " + ", ".join(f"{s}'" for s in outputs[nid]),
                    ha="left", va="bottom", fontsize=8, color="#c0392b", fontweight="bold", zorder=5)

    n_arrows = 0
    for nid, node in graph.nodes.items():
        seen: dict[str, int] = {}
        label_pos = len(node.inputs) > 1 and not OPS[node.op].commutative
        dead = nid not in live
        for k, src in enumerate(node.inputs):
            rep = seen.get(src, 0)
            seen[src] = rep + 1
            via = lay.routes.get((src, nid, k), [])
            pts = [pos[src], *via, pos[nid]]
            a = _boundary(pts[0], (pts[1][0] - pts[0][0], pts[1][1] - pts[0][1]))
            b = _boundary(pts[-1], (pts[-2][0] - pts[-1][0], pts[-2][1] - pts[-1][1]))
            colour = "#bbbbbb" if dead else "#555555"
            if via:
                verts = [a, *via, b]
                arrow = FancyArrowPatch(
                    path=MplPath(verts, [MplPath.MOVETO] + [MplPath.LINETO] * (len(verts) - 1)),
                    arrowstyle="-|>", mutation_scale=9, linewidth=0.8, color=colour, zorder=2,
                )
            else:
                arrow = FancyArrowPatch(
                    a, b, arrowstyle="-|>", mutation_scale=9, shrinkA=1, shrinkB=1,
                    connectionstyle=f"arc3,rad={0.3 * rep:.2f}", linewidth=0.8, color=colour, zorder=2,
                )
            ax.add_patch(arrow)
            n_arrows += 1
            if label_pos:
                p = via[-1] if via else a
                lx, ly = p[0] + 0.7 * (b[0] - p[0]), p[1] + 0.7 * (b[1] - p[1])
                ax.text(lx, ly + 0.03, str(k), fontsize=6, color="#1f5fa8", ha="center", va="bottom", zorder=5)

    used = {_kind(graph, nid) for nid in pos}
    names = {"x": "input x", "state": "state (t-1)", "linear": "linear", "activation": "activation",
             "elementwise": "elementwise", "reduce": "mean / reduce", "const": "constant"}
    handles = [Patch(facecolor=_KIND_COLOURS[k], edgecolor="#444444", label=names[k]) for k in names if k in used]
    handles.append(Patch(facecolor="white", edgecolor="#c0392b", linewidth=2.4, label="next state"))
    ax.legend(handles=handles, loc="upper right", ncol=len(handles), fontsize=7, frameon=False,
              borderaxespad=0.2, handlelength=1.2, columnspacing=1.0)
    if title:
        ax.text(xmin + 0.1, ymax - 0.12, title, ha="left", va="top", fontsize=10, fontweight="bold")

    if out is None:  # for notebooks: display(drawing.figure)
        return CellDrawing(None, n_boxes, n_arrows, len(layers), len(outputs), figure=fig)
    path = Path(out)
    save_figure(fig, path, fmt=fmt, dpi=dpi)
    return CellDrawing(path, n_boxes, n_arrows, len(layers), len(outputs))


def save_figure(fig, path: str | os.PathLike[str], *, fmt: str | None = None, dpi: int = 110) -> Path:
    """``fig.savefig`` to a temporary file next to ``path``, then rename it into place."""
    path = Path(path)
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"  # created by savefig, with the umask
    try:
        fig.savefig(tmp, format=fmt, dpi=dpi)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path
