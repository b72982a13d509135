"""The fused sequential kernels (generated per cell) match the reference backend, values and
every gradient, on the CPU under TRITON_INTERPRET=1 at tiny sizes, in float64."""

from __future__ import annotations

import inspect
import itertools
import random
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

import nas.kernels.fused as fused  # noqa: E402
from nas.compile import build_rnn, choose_backend  # noqa: E402
from nas.compile.plan import make_plan  # noqa: E402
from nas.kernels import codegen  # noqa: E402
from nas.space import load_space  # noqa: E402

SPACES = Path(__file__).resolve().parents[1] / "searchspaces"


@pytest.fixture(autouse=True)
def kernel_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("NAS_KERNEL_CACHE", str(tmp_path_factory.getbasetemp() / "kernels"))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    assert torch.isfinite(a).all()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def compare(graph, B=3, T=5, I=4, H=8, layers=1) -> tuple[float, float]:
    torch.manual_seed(0)
    ref = build_rnn(graph, I, H, layers, backend="reference").double()
    fast = build_rnn(graph, I, H, layers, backend="triton").double()
    assert type(fast.layers[0]).__name__ in ("FusedCellLayer", "ScanCellLayer")
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(B, T, I, dtype=torch.float64, requires_grad=True)
    st = ref.initial_state(B)
    st = tuple(torch.randn_like(s) for s in st) if isinstance(st, tuple) else (torch.randn_like(st),)
    st = tuple(s.requires_grad_() for s in st)
    arg = st if len(st) > 1 else st[0]
    o1, s1 = ref(x, arg)
    o2, s2 = fast(x, arg)
    if not torch.isfinite(o1).all():  # an unstable random cell overflows in both alike
        assert torch.equal(torch.isfinite(o1), torch.isfinite(o2))
        return 0.0, 0.0
    s1 = s1 if isinstance(s1, tuple) else (s1,)
    s2 = s2 if isinstance(s2, tuple) else (s2,)
    gy = torch.randn_like(o1)
    gs = [torch.randn_like(s) for s in s1]
    loss1 = (o1 * gy).sum() + sum((s * g).sum() for s, g in zip(s1, gs))
    loss2 = (o2 * gy).sum() + sum((s * g).sum() for s, g in zip(s2, gs))
    wrt1 = [x, *st, *ref.parameters()]
    wrt2 = [x, *st, *fast.parameters()]
    g1 = torch.autograd.grad(loss1, wrt1, allow_unused=True)
    g2 = torch.autograd.grad(loss2, wrt2, allow_unused=True)
    errs = []
    for a, b in zip(g2, g1):
        if b is None:  # a dead linear's weights: no gradient in the reference, zeros here
            assert a is None or not a.any()
            continue
        errs.append(rel(a, b) if b.norm() > 0 else a.abs().max().item())
    out_err = max([rel(o2, o1)] + [rel(a, b) for a, b in zip(s2, s1)])
    return out_err, max(errs, default=0.0)


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_classic_cells_match_reference(name: str) -> None:
    graph = load_space(SPACES / f"{name}.cell").instantiate({})
    assert choose_backend(graph, "auto") == "fused"
    out_err, grad_err = compare(graph, layers=2)
    assert out_err < 1e-12 and grad_err < 1e-12


def test_hidden_split_into_blocks_and_batch_into_programs(monkeypatch) -> None:
    """H = 8 in blocks of 4 (two hidden blocks, two K blocks), B = 3 in tiles of 2 rows."""
    monkeypatch.setattr(fused, "MIN_BLOCK", 2)
    monkeypatch.setattr(fused, "MAX_BLOCK_H", 4)
    for name in ("lstm", "gru"):
        graph = load_space(SPACES / f"{name}.cell").instantiate({})
        out_err, grad_err = compare(graph, B=3, T=4, I=5, H=7)
        assert out_err < 1e-12 and grad_err < 1e-12, name


@pytest.mark.parametrize("name,count", [("nasbench_nlp", 5), ("nasrl_ptb", 3)])
def test_random_cells_match_reference(name: str, count: int) -> None:
    space = load_space(SPACES / f"{name}.cell")
    rng = random.Random(7)
    done = tries = 0
    while done < count and tries < 200:
        tries += 1
        graph = space.instantiate(space.sample(rng))
        if choose_backend(graph, "auto") != "fused":
            continue
        out_err, grad_err = compare(graph, B=2, T=4, H=6, I=6)
        assert out_err < 1e-10 and grad_err < 1e-10, (graph.to_json(), out_err, grad_err)
        done += 1
    assert done == count


def test_every_op_and_its_gradient() -> None:
    """One hand-built cell that uses every elementwise op the kernels implement."""
    from nas.ir import CellGraph, Node

    ops = ["tanh", "sigmoid", "relu", "identity", "gelu", "leaky_relu", "silu", "softplus", "neg"]
    nodes = [Node("p", "linear", ("x", "h")), Node("q", "linear", ("h",)), Node("k", "const", value=0.5)]
    prev = []
    for i, op in enumerate(ops):
        nodes.append(Node(f"a{i}", op, ("p" if i % 2 else "q",)))
        prev.append(f"a{i}")
    nodes += [
        Node("m", "max", (prev[0], prev[1], prev[2])),
        Node("mm", "max", ("h", "h")),  # a tie everywhere: the gradient is split
        Node("b", "blend", (prev[1], "m", "c")),
        Node("s", "sub", ("b", prev[3])),
        Node("u", "mul", ("s", "k", prev[4])),
        Node("w", "mean", ("u", prev[5], prev[6], "mm")),
        Node("y", "add", ("w", prev[7], prev[8], "x")),
    ]
    graph = CellGraph(["h", "c"], nodes, {"h": "y", "c": "b"})
    assert choose_backend(graph, "triton") == "fused"
    out_err, grad_err = compare(graph, B=2, T=4, I=6, H=6)
    assert out_err < 1e-12 and grad_err < 1e-12


@pytest.mark.parametrize("space_name", ["darts_ptb", "enas_ptb"])
def test_chains_of_linears_run_fused_in_passes(space_name: str, monkeypatch) -> None:
    """DARTS/ENAS cells (a linear of a per-step node) run in several passes per step; with
    blocks of 4 columns every pass loops over two column blocks."""
    from nas.genotypes import darts_assignment

    space = load_space(SPACES / f"{space_name}.cell")
    graph = space.instantiate(darts_assignment(space))
    spec = codegen.make_spec(make_plan(graph))
    if space_name == "darts_ptb":  # DARTS V2: nodes at the same depth share a pass
        assert spec.passes == 5
    assert choose_backend(graph, "auto") == "fused"
    monkeypatch.setattr(fused, "MIN_BLOCK", 2)
    monkeypatch.setattr(fused, "MAX_BLOCK_H", 4)
    out_err, grad_err = compare(graph, B=3, T=4, I=5, H=7)
    assert out_err < 1e-12 and grad_err < 1e-12


@pytest.mark.parametrize("space_file", sorted(p.name for p in SPACES.glob("*.cell")))
def test_thirty_random_cells_of_every_shipped_space(space_file: str) -> None:
    """30 cells of each space (distinct ones; a fixed cell counts once) on backend='triton'
    (the scan or the fused kernel, whichever the cell gets) against the reference."""
    space = load_space(SPACES / space_file)
    rng = random.Random(11)
    seen: set[str] = set()
    for _ in range(30):
        a = space.sample(rng)
        graph = space.instantiate(a)
        key = graph.canonical_hash()
        if key in seen:
            continue
        seen.add(key)
        assert choose_backend(graph, "triton") in ("scan", "fused")
        out_err, grad_err = compare(graph, B=2, T=3, I=6, H=6)
        assert out_err < 1e-6 and grad_err < 1e-6, (space_file, graph.to_dsl(), out_err, grad_err)


def test_generated_source_is_cached_and_names_no_node(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("NAS_KERNEL_CACHE", str(tmp_path))
    graph = load_space(SPACES / "lstm.cell").instantiate({})
    spec = codegen.make_spec(make_plan(graph))
    assert "c_next" not in spec.source and "h_next" not in spec.source  # node ids became v0, v1, ...
    mod = codegen.load(spec)
    files = list(tmp_path.rglob("*.py"))
    assert len(files) == 1 and files[0].name.startswith(graph.canonical_hash())
    assert files[0].parent.name.startswith("triton-")
    assert codegen.load(spec) is mod


def test_auto_falls_back_where_triton_cannot_run(monkeypatch) -> None:
    graph = load_space(SPACES / "lstm.cell").instantiate({})
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # a CPU tensor without the interpreter
    x = torch.randn(2, 4, 3)
    out, _ = build_rnn(graph, 3, 4, backend="auto")(x)
    assert out.shape == (2, 4, 4)
    with pytest.raises(RuntimeError, match="need a CUDA device"):
        build_rnn(graph, 3, 4, backend="triton")(x)


def test_small_arguments_keep_fp32_accuracy() -> None:
    """tanh of a small argument and softplus of a very negative one, in float32: each element
    within 1e-5 relative of the float64 reference (the textbook (1-e)/(1+e) and log(1+e) lose
    all accuracy there: tanh(1e-4) off by 2e-4, softplus(-17) by 100%)."""
    from nas.ir import CellGraph, Node

    nodes = [Node("p", "linear", ("x", "h")), Node("small", "const", value=1e-3), Node("far", "const", value=-24.0),
             Node("s", "mul", ("p", "small")), Node("y", "tanh", ("s",)),
             Node("g", "sigmoid", ("p",)), Node("z", "mul", ("g", "far")), Node("c2", "softplus", ("z",))]
    graph = CellGraph(["h", "c"], nodes, {"h": "y", "c": "c2"})
    torch.manual_seed(0)
    ref = build_rnn(graph, 4, 8, 1, backend="reference").double()
    fast = build_rnn(graph, 4, 8, 1, backend="triton").float()
    fast.load_state_dict({k: v.float() for k, v in ref.state_dict().items()})
    x = torch.randn(3, 5, 4, dtype=torch.float64)
    (o1, (h1, c1)), (o2, (h2, c2)) = ref(x), fast(x.float())
    for a, b in ((o2, o1), (c2, c1)):
        worst = ((a.double() - b).abs() / b.abs().clamp_min(1e-300)).max().item()
        assert worst < 1e-5, worst


def _gpu_rule(monkeypatch, sms: int = 132):
    """choose_blocks as on a GPU with `sms` multiprocessors (the rule is plain arithmetic)."""
    props = type("Props", (), {"multi_processor_count": sms})()
    monkeypatch.setattr(fused, "interpreting", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: props)
    monkeypatch.delenv("NAS_FUSED_BLOCKS", raising=False)
    return lambda spec, B, H, dtype, kernel="fwd": fused.choose_blocks(spec, B, H, torch.device("cuda"), dtype,
                                                                       kernel=kernel)


@pytest.mark.parametrize("name", ["lstm", "darts_ptb"])
def test_block_rule_covers_every_column_and_row_within_the_chip(name: str, monkeypatch) -> None:
    """Every (B, H) of the rule: the programs' K slices cover H, the batch tiles cover B, and
    never more programs than the chip holds (one per SM)."""
    rule = _gpu_rule(monkeypatch)
    space = load_space(SPACES / f"{name}.cell")
    spec = codegen.make_spec(make_plan(space.instantiate(space.sample(random.Random(3)))))
    assert spec.passes == 1 if name == "lstm" else spec.passes > 2
    for dtype, kernel in itertools.product((torch.float32, torch.bfloat16), ("fwd", "bwd")):
        for B in (1, 5, 16, 64, 256, 3000):
            for H in (16, 100, 256, 512, 1024):
                b = rule(spec, B, H, dtype, kernel)
                assert b["KP"] * b["KS"] * b["NK"] * b["BLOCK_K"] >= H
                assert b["JPP"] * b["NPC"] * b["KC"] * b["BLOCK_H"] >= H
                assert b["NB"] * b["KP"] // b["KC"] * b["BLOCK_B"] >= B and b["KP"] * b["BLOCK_B"] >= 16, b
                assert (b["NPC"] == 1 and b["KP"] == 1) or b["NB"] * b["NPC"] * b["KP"] <= 132, b
                assert b["KP"] == 1 or (dtype == torch.float32 and (spec.passes == 1 or b["KC"] == 8)), b
    lstm = codegen.make_spec(make_plan(load_space(SPACES / "lstm.cell").instantiate({})))
    few_tiles = rule(lstm, 16, 256, torch.float32)  # one batch tile: K groups of 4 give 4x the programs
    assert (few_tiles["KP"], few_tiles["BLOCK_B"], few_tiles["NPC"]) == (4, 4, 16), few_tiles
    assert rule(lstm, 64, 512, torch.float32)["KP"] == 1  # already one program per SM without them


def test_block_override_is_checked(monkeypatch) -> None:
    rule = _gpu_rule(monkeypatch)
    spec = codegen.make_spec(make_plan(load_space(SPACES / "lstm.cell").instantiate({})))
    monkeypatch.setenv("NAS_FUSED_BLOCKS", "16,16,32,4,0,1,2")  # K groups of 2: each program sums half of K
    b = rule(spec, 64, 512, torch.float32)
    assert (b["BLOCK_B"], b["BLOCK_H"], b["KS"], b["KP"], b["NK"], b["JPP"]) == (16, 16, 1, 2, 8, 1)
    assert rule(spec, 3000, 512, torch.float32)["KP"] == 1  # more groups than SMs: one program per K
    monkeypatch.setenv("NAS_FUSED_BLOCKS", "16,16,16,4,0,1,8,8")  # K groups of 8 side by side over columns
    b = rule(spec, 64, 512, torch.float32)
    assert (b["KP"], b["KC"], b["NB"], b["NPC"], b["JPP"], b["NK"]) == (8, 8, 4, 4, 1, 4), b
    assert b["NB"] * b["NPC"] * b["KP"] <= 132 and b["NPC"] * b["JPP"] * b["KC"] * b["BLOCK_H"] >= 512
    for bad in ("16,16,32,4,0,1,3", "16,16,32,4,0,1,16", "16,16,8,4", "12,16,32,4", "16,16,32,4,0,3", "16,16,32",
                "a,b,c,d", "16,16,32,4,0,1,2,4", "16,16,32,4,0,1,4,3"):
        monkeypatch.setenv("NAS_FUSED_BLOCKS", bad)
        with pytest.raises(ValueError, match="NAS_FUSED_BLOCKS"):
            rule(spec, 64, 512, torch.float32)


@pytest.fixture
def concurrent_programs(monkeypatch):
    """Run each interpreted program in a thread of its own, so programs that wait for each other
    (the grid barrier, a K pair) run on the CPU: the multi-program logic (barrier epochs, which
    program writes what, the pair's exchange) is then checked against the reference in float64.
    Memory is sequentially consistent here, so this finds logic errors, not GPU memory-order ones."""
    import sys
    import threading
    import time

    from triton.runtime import interpreter as I

    needed = ("GridExecutor", "InterpreterBuilder", "interpreter_builder", "_patch_lang", "_implicit_cvt")
    if not all(hasattr(I, n) for n in needed):
        pytest.skip("this Triton's interpreter has another layout")
    local = threading.local()
    monkeypatch.setattr(I.InterpreterBuilder, "grid_idx", property(lambda self: getattr(local, "idx", None),
                                                                    lambda self, v: setattr(local, "idx", v)),
                        raising=False)

    def call(self, *args_dev, **kwargs):
        spec = inspect.getfullargspec(self.fn)
        kwargs = {k: v for k, v in kwargs.items() if k in spec.args or k in spec.kwonlyargs}
        args_hst, kwargs_hst = self._init_args_hst(args_dev, kwargs)
        scope = I._patch_lang(self.fn)
        try:
            args = inspect.getcallargs(self.fn, *args_hst, **kwargs_hst)
            args = {n: a if n in self.constexprs else I._implicit_cvt(a) for n, a in args.items()}
            grid = tuple(self.grid(args) if callable(self.grid) else self.grid)
            grid = grid + (1,) * (3 - len(grid))
            I.interpreter_builder.set_grid_dim(*grid)
            errors: list[BaseException] = []

            def program(x: int) -> None:
                try:
                    I.interpreter_builder.set_grid_idx(x, 0, 0)
                    self.fn(**args)
                except BaseException as exc:  # noqa: BLE001 - re-raised below
                    errors.append(exc)

            assert grid[1] == grid[2] == 1
            threads = [threading.Thread(target=program, args=(x,), daemon=True) for x in range(grid[0])]
            for th in threads:
                th.start()
            deadline = time.monotonic() + 300
            while any(th.is_alive() for th in threads) and not errors and time.monotonic() < deadline:
                threads[0].join(timeout=0.05)  # a program that failed leaves its peers waiting: stop at once
            if errors or any(th.is_alive() for th in threads):
                raise RuntimeError(f"a program failed or hung: {errors[:1]}")
        finally:
            scope.restore()
        self._restore_args_dev(args_dev, args_hst, kwargs, kwargs_hst)

    monkeypatch.setattr(I.GridExecutor, "__call__", call)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)  # waiting programs spin: hand the GIL over often
    yield monkeypatch
    sys.setswitchinterval(interval)


@pytest.mark.parametrize("kp", [1, 4])
@pytest.mark.parametrize("cell", ["lstm", "darts_v2", "darts_ptb", "enas_ptb", "nasbench_nlp"])
def test_programs_that_split_columns_and_k_match_reference(cell: str, kp: int, concurrent_programs) -> None:
    """Batch tiles x two column blocks per tile (the grid barrier in use), and with kp = 4 each
    block's K split across a K group of 4 programs over a tile of 8 rows (the group's
    reduce-scatter, two of its parts of K empty; groups of 2 run in the two tests below):
    6-8 concurrent programs, float64, against the reference (values and every gradient)."""
    from nas.genotypes import darts_assignment

    name = "darts_ptb" if cell == "darts_v2" else cell
    space = load_space(SPACES / f"{name}.cell")
    if cell == "darts_v2":
        graph = space.instantiate(darts_assignment(space))
    else:
        rng = random.Random(11)
        graph = next(g for g in (space.instantiate(space.sample(rng)) for _ in range(200))
                     if choose_backend(g, "auto") == "fused")
    B, H = 5, 8
    blocks = dict(BLOCK_B=2, BLOCK_H=4, BLOCK_K=4, JPP=1, NK=-(-H // (4 * kp)), NPC=2, KS=1, KP=kp, KC=1,
                  NB=-(-B // (2 * kp)), num_warps=4)
    concurrent_programs.setattr(fused, "choose_blocks", lambda *a, **k: dict(blocks))
    out_err, grad_err = compare(graph, B=B, T=3, I=5, H=H)
    assert out_err < 1e-12 and grad_err < 1e-12, (cell, kp, out_err, grad_err)


@pytest.mark.parametrize("layout", ["two blocks per program", "K slices"])
@pytest.mark.parametrize("cell", ["lstm", "darts_v2"])
def test_k_groups_with_several_blocks_or_k_slices(cell: str, layout: str, concurrent_programs) -> None:
    """K groups of 2 whose programs each own two column blocks (JPP = 2: the exchange runs once
    per block), or whose products run in 2 K slices (KS = 2, the matrix units' 3-D path, over the
    group's rows); float64 against the reference."""
    from nas.genotypes import darts_assignment

    space = load_space(SPACES / ("darts_ptb.cell" if cell == "darts_v2" else "lstm.cell"))
    graph = space.instantiate(darts_assignment(space) if cell == "darts_v2" else {})
    if layout == "K slices":
        H, blocks = 8, dict(BLOCK_B=2, BLOCK_H=4, BLOCK_K=4, JPP=1, NK=1, NPC=2, KS=2, KP=2, KC=1, NB=2, num_warps=4)
    else:
        H, blocks = 8, dict(BLOCK_B=2, BLOCK_H=4, BLOCK_K=4, JPP=2, NK=1, NPC=1, KS=1, KP=2, KC=1, NB=2, num_warps=4)
    concurrent_programs.setattr(fused, "choose_blocks", lambda *a, **k: dict(blocks))
    out_err, grad_err = compare(graph, B=7, T=3, I=5, H=H)
    assert out_err < 1e-12 and grad_err < 1e-12, (cell, layout, out_err, grad_err)


def _cell_graph(cell: str, keep=lambda g: True):
    """DARTS V2, the LSTM, or the first random cell of the named space (seed 11) that runs fused
    and passes `keep`."""
    from nas.genotypes import darts_assignment

    space = load_space(SPACES / f"{'darts_ptb' if cell == 'darts_v2' else cell}.cell")
    if cell == "darts_v2":
        return space.instantiate(darts_assignment(space))
    if cell == "lstm":
        return space.instantiate({})
    rng = random.Random(11)
    return next(g for g in (space.instantiate(space.sample(rng)) for _ in range(200))
                if choose_backend(g, "auto") == "fused" and keep(g))


@pytest.mark.parametrize("cell,kp,kc,jpp,ks,H", [("darts_v2", 4, 2, 1, 1, 8), ("darts_v2", 2, 2, 2, 1, 16),
                                                 ("lstm", 4, 4, 1, 1, 16), ("lstm", 2, 2, 1, 2, 16),
                                                 ("nasbench_nlp", 2, 2, 1, 1, 16)])
def test_k_groups_over_columns_match_reference(cell: str, kp: int, kc: int, jpp: int, ks: int, H: int,
                                               concurrent_programs) -> None:
    """K groups whose product tile lies over columns (KC > 1: KC column blocks side by side,
    KP // KC row blocks): each program sums one KP-th of K over the whole tile, then finishes
    its own block; also with two column groups per program (JPP = 2) and with K slices (KS = 2,
    the 3-D path); float64 with concurrent programs against the reference."""
    graph = _cell_graph(cell)
    B, bh, bb, bk = 5, 4, 2, 4
    groups = -(-H // (kc * bh))
    blocks = dict(BLOCK_B=bb, BLOCK_H=bh, BLOCK_K=bk, JPP=jpp, NK=-(-H // (kp * ks * bk)), NPC=-(-groups // jpp),
                  KS=ks, KP=kp, KC=kc, NB=-(-B // (kp // kc * bb)), num_warps=4)
    concurrent_programs.setattr(fused, "choose_blocks", lambda *a, **k: dict(blocks))
    out_err, grad_err = compare(graph, B=B, T=3, I=5, H=H)
    assert out_err < 1e-12 and grad_err < 1e-12, (cell, blocks, out_err, grad_err)


@pytest.mark.parametrize("cell,stack_max", [("darts_v2", 2), ("darts_v2", 4), ("lstm", 4), ("nasbench_nlp", 2)])
def test_stacked_products_match_reference(cell: str, stack_max: int, monkeypatch) -> None:
    """The forward's products on the FMA path with K slices stack a source's linears in runs of
    up to STACK_MAX (pairs, fours and single leftovers: DARTS V2's six from one node are 2+2+2 or
    4+2), split back after the K-loop; here over three column blocks per program with H = 10 (a
    masked edge), float64 against the reference."""
    graph = _cell_graph(cell, keep=lambda g: codegen.make_spec(make_plan(g)).stacks())
    assert codegen.make_spec(make_plan(graph)).stacks()
    monkeypatch.setattr(codegen, "STACK_MAX", stack_max)
    B, H = 5, 10
    blocks = dict(BLOCK_B=4, BLOCK_H=4, BLOCK_K=4, JPP=3, NK=2, NPC=1, KS=2, KP=1, KC=1, NB=2, num_warps=4)
    monkeypatch.setattr(fused, "choose_blocks", lambda *a, **k: dict(blocks))
    out_err, grad_err = compare(graph, B=B, T=3, I=5, H=H)
    assert out_err < 1e-12 and grad_err < 1e-12, (cell, stack_max, out_err, grad_err)


def test_fp32_small_tiles_rule(monkeypatch) -> None:
    """Strict fp32 on 16x16 tiles: the backward in K groups of 8 over columns (8 warps from three
    passes up, else 4); the forward the same in cells of one or two passes without stacked
    products, else two K slices of 16 where its products stack; neither on the matrix units nor
    where the groups would not all be resident."""
    rule = _gpu_rule(monkeypatch)

    def bwd_rule(spec, B, H):
        return rule(spec, B, H, torch.float32, "bwd")

    def unstacked_within_two_passes(graph) -> bool:
        spec = codegen.make_spec(make_plan(graph))
        return spec.passes <= 2 and not spec.stacks()

    darts = codegen.make_spec(make_plan(_cell_graph("darts_v2")))
    lstm = codegen.make_spec(make_plan(_cell_graph("lstm")))
    plain = codegen.make_spec(make_plan(_cell_graph("nasbench_nlp", keep=unstacked_within_two_passes)))
    fwd = rule(darts, 64, 512, torch.float32)
    assert (fwd["KS"], fwd["BLOCK_K"], fwd["KP"], fwd["NK"]) == (2, 16, 1, 16), fwd
    groups = ("KP", "KC", "BLOCK_B", "BLOCK_H", "BLOCK_K", "NK", "num_warps")
    for spec, warps in ((darts, 8), (lstm, 4), (plain, 4)):
        bwd = bwd_rule(spec, 64, 512)
        assert tuple(bwd[k] for k in groups) == (8, 8, 16, 16, 16, 4, warps), bwd
        assert bwd["NB"] * bwd["NPC"] * bwd["KP"] == 128 and bwd["NPC"] * bwd["JPP"] * 8 * 16 >= 512, bwd
    assert tuple(rule(plain, 64, 512, torch.float32)[k] for k in groups) == (8, 8, 16, 16, 16, 4, 4)
    wide, lstm_fwd = rule(plain, 64, 1024, torch.float32), rule(lstm, 64, 512, torch.float32)
    assert wide["JPP"] * wide["NPC"] * 128 >= 1024
    assert lstm_fwd["KS"] == 2 and lstm_fwd["KP"] == 1
    assert rule(lstm, 16, 256, torch.float32)["KS"] == 1  # K groups there (KP 4 over 4-row tiles, KC 1)
    assert bwd_rule(plain, 64, 256)["KC"] == 1  # H < 512: too few columns for 8 groups of 16 x 128
    assert bwd_rule(plain, 160, 512)["KC"] == 1  # 10 batch tiles x 8 groups: more than 132 programs
    assert rule(darts, 64, 512, torch.bfloat16)["BLOCK_K"] == 32  # the matrix units keep their rule
    assert rule(plain, 64, 512, torch.bfloat16)["KP"] == 1


def test_stack_runs_follow_the_cells_size(monkeypatch) -> None:
    """Runs of 4 of a source's linears per stacked product tile in small cells (the LSTM's four
    gates in one tile), pairs in large ones (DARTS V2's forward spills with fours); STACK_MAX pins
    it, and the generated source follows."""
    darts = codegen.make_spec(make_plan(_cell_graph("darts_v2")))
    lstm_plan = make_plan(_cell_graph("lstm"))
    lstm = codegen.make_spec(lstm_plan)
    assert (codegen.stack_max(lstm), codegen.stack_max(darts)) == (4, 2)
    assert "sq4 // (KC * BLOCK_H) == 3" in lstm.source and "sq4 // (KC * BLOCK_H)" not in darts.source
    monkeypatch.setattr(codegen, "STACK_MAX", 2)
    assert codegen.stack_max(lstm) == 2
    assert "sq4 // (KC * BLOCK_H)" not in codegen.make_spec(lstm_plan).source
