"""`nas.draw`: cell pictures without graphviz."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from nas.draw import draw_cell, layout
from nas.genotypes import DARTS_V2, darts_assignment
from nas.space import load_space

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _darts_v2():
    space = load_space(ROOT / "searchspaces" / "darts_ptb.cell")
    return space.instantiate(darts_assignment(space))


def test_darts_v2_drawing_has_the_cells_nodes_and_edges(tmp_path):
    """The DARTS V2 cell as stored (searchspaces/darts_ptb.cell + DARTS_V2), counted from
    the paper's definition, not from the graph: inputs x, h; node 0 = two linears of
    [x, h], sigmoid, tanh, sub, mul, add; nodes 1..8 = two linears of s_j, sigmoid, f,
    sub, mul, add; the mean of s_1..s_8."""
    nodes = 2 + 7 + 8 * 7 + 1
    edges = (2 + 2 + 1 + 1 + 2 + 2 + 2) + 8 * (1 + 1 + 1 + 1 + 2 + 2 + 2) + 8
    assert (nodes, edges) == (66, 100)
    g = _darts_v2()
    png = draw_cell(g, tmp_path / "darts_v2.png", title="DARTS V2")
    assert (png.nodes, png.edges, png.outputs) == (nodes, edges, 1)
    assert (png.nodes, png.edges) == (g.graph.number_of_nodes(), g.graph.number_of_edges())
    data = (tmp_path / "darts_v2.png").read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 20_000
    svg = draw_cell(g, tmp_path / "darts_v2.svg")
    assert (svg.nodes, svg.edges) == (nodes, edges)
    assert b"<svg" in (tmp_path / "darts_v2.svg").read_bytes()[:2000]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["darts_v2.png", "darts_v2.svg"]


def test_darts_v2_layout_is_layered_left_to_right():
    g = _darts_v2()
    lay = layout(g)
    assert set(lay.pos) == set(g.nodes)
    assert sum(len(layer) for layer in lay.layers) == len(g.nodes)
    assert lay.layers[0][:2] == ["x", "h"]
    assert lay.layers[-1] == [g.outputs["h"]]  # the mean, alone at the right
    for nid, n in g.nodes.items():
        for k, src in enumerate(n.inputs):
            assert lay.pos[src][0] < lay.pos[nid][0]  # every edge points rightwards
            via = lay.routes.get((src, nid, k), [])
            xs = [lay.pos[src][0], *(p[0] for p in via), lay.pos[nid][0]]
            assert xs == sorted(xs) and len(set(xs)) == len(xs)  # one bend point per layer crossed
    # the mean reads the 8 DARTS nodes; activations are those of the genotype
    acts = [g.nodes[nid].op for nid in g.nodes if nid.startswith("t") and g.nodes[nid].op in
            ("tanh", "relu", "sigmoid", "identity") and g.nodes[g.nodes[nid].inputs[0]].id.startswith("g_")]
    assert acts == [f for f, _ in DARTS_V2]


@pytest.mark.parametrize("name", ["lstm", "gru", "quickstart", "nasbench_nlp", "mingru"])
def test_shipped_cells_draw(name, tmp_path):
    space = load_space(ROOT / "searchspaces" / f"{name}.cell")
    g = space.instantiate(space.sample(random.Random(0)))
    d = draw_cell(g, tmp_path / f"{name}.png")
    assert (d.nodes, d.edges) == (g.graph.number_of_nodes(), g.graph.number_of_edges())
    assert d.outputs == len(set(g.outputs.values()))
    assert (tmp_path / f"{name}.png").read_bytes()[:8] == PNG_MAGIC


def test_figure_without_file_and_bad_format(tmp_path):
    g = _darts_v2()
    d = draw_cell(g)
    assert d.path is None and d.figure is not None and d.nodes == 66
    with pytest.raises(ValueError, match="gif"):
        draw_cell(g, tmp_path / "x.gif")
    assert list(tmp_path.iterdir()) == []
