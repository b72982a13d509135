"""DARTS controller: supernet, bilevel step, derivation, RC-DARTS penalty, Gumbel sampler."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from nas.compile import build_rnn
from nas.controllers.darts.bilevel import Architect
from nas.controllers.darts.derive import derive
from nas.controllers.darts.resource import expected_cost, make_penalty
from nas.controllers.darts.supernet import ArchParams, SupernetRNN, copy_weights
from nas.errors import UserError
from nas.genotypes import DARTS_V2, darts_assignment
from nas.space import SearchSpace, load_space

SPACES = Path(__file__).resolve().parent.parent / "searchspaces"

TINY = """
space tiny
state h
choice act = {tanh, identity}
cell {
  c0, g0 = split(linear(x, h), 2)
  n0 = h + sigmoid(c0) * (tanh(g0) - h)
  p = one_of(n0, h)
  n1 = act(linear(p)) + one_of(0.5, 1.0) * p
  h' = one_of(n1, mean(n0, n1))
}
model { embed = 3; hidden = 3 }
train { task = parity(length=4); steps = 4; batch_size = 4 }
"""


def _supernet(space, I=3, H=3, layers=1, seed=0):
    torch.manual_seed(seed)
    arch = ArchParams(space, init_scale=0.5, seed=seed).double()
    return arch, SupernetRNN(space, arch, I, H, layers).double()


@pytest.mark.parametrize("name", ["darts_ptb", "enas_ptb", "quickstart", "nasrl_ptb"])
def test_one_hot_alpha_reproduces_the_discrete_cell(name):
    space = load_space(SPACES / f"{name}.cell")
    I, H = 4, 5
    arch, net = _supernet(space, I, H, layers=2)
    x = torch.randn(3, 6, I, dtype=torch.float64)
    samples = [space.sample(random.Random(s)) for s in range(4)]
    if name == "darts_ptb":
        samples.append(darts_assignment(space, DARTS_V2))
    for a in samples:
        cell = build_rnn(space.instantiate(a), I, H, 2).double()
        assert copy_weights(net, cell, a) > 0
        arch.set_one_hot(a)  # logits -inf except the choice: softmax is exactly one-hot
        out, st = net(x)
        ref, ref_st = cell(x)
        assert torch.allclose(out, ref, rtol=0, atol=1e-12), (out - ref).abs().max()
        net.stack_mixtures = True  # the GPU path: one stacked weighted sum per choice
        out1, _ = net(x)
        net.stack_mixtures = None
        assert torch.allclose(out1, ref, rtol=0, atol=1e-12)
        arch.fixed = a  # derived-cell mode: only the chosen alternatives run
        out2, _ = net(x)
        arch.fixed = None
        assert torch.allclose(out2, ref, rtol=0, atol=1e-12)


def test_alpha_gradients_match_finite_differences():
    space = SearchSpace.from_text(TINY)
    arch, net = _supernet(space)
    x = torch.randn(2, 4, 3, dtype=torch.float64)
    target = torch.randn(2, 4, 3, dtype=torch.float64)

    def loss():
        out, _ = net(x)
        return ((out - target) ** 2).sum()

    grads = torch.autograd.grad(loss(), list(arch.alpha))
    eps = 1e-6
    for p, g in zip(arch.alpha, grads):
        for k in range(p.numel()):
            with torch.no_grad():
                p[k] += eps
                up = float(loss())
                p[k] -= 2 * eps
                down = float(loss())
                p[k] += eps
            assert abs((up - down) / (2 * eps) - float(g[k])) < 1e-7 * max(1.0, abs(float(g[k])))


def test_alpha_gradients_darts_space():
    space = load_space(SPACES / "darts_ptb.cell")
    arch, net = _supernet(space, 2, 2)
    x = torch.randn(2, 3, 2, dtype=torch.float64)

    def f(*alphas):
        with torch.no_grad():
            for p, a in zip(arch.alpha, alphas):
                p.copy_(a)
        w = [torch.softmax(a, -1) for a in alphas]
        arch_w = dict(zip(arch.index, w))
        orig = arch.mixture
        arch.mixture = lambda: arch_w
        try:
            out, _ = net(x)
        finally:
            arch.mixture = orig
        return out.sum()

    inputs = tuple(p.detach().clone().requires_grad_(True) for p in arch.alpha)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6)


def test_derivation_picks_the_argmax():
    space = load_space(SPACES / "darts_ptb.cell")
    arch = ArchParams(space)
    v2 = darts_assignment(space, DARTS_V2)
    with torch.no_grad():
        for i, p in zip(arch.index, arch.alpha):
            p[v2[space.decisions[i].name]] += 1.0
    assert derive(space, arch.probs()) == v2
    probs = {"n1.act": [0.1, 0.2, 0.6, 0.1], "p_3.in": [0.2, 0.5, 0.3]}
    a = derive(space, probs)
    assert a["n1.act"] == 2 and a["p_3.in"] == 1
    assert a["p_2.in"] == 0  # no alpha (and a tie at the first choice): the first listed


def test_derivation_is_normalized_for_nested_decisions():
    space = load_space(SPACES / "quickstart.cell")
    names = [d.name for d in space.decisions]
    probs = {n: [1.0] + [0.0] * (space.decision(n).size - 1) for n in names if space.decision(n).kind != "value"}
    a = derive(space, probs)
    assert a == space.normalize(a)


def test_no_mixable_decision_is_a_user_error():
    space = load_space(SPACES / "lstm.cell")
    with pytest.raises(UserError, match="nothing to mix"):
        ArchParams(space)


def test_second_order_step_matches_autograd_through_the_unrolled_step():
    torch.manual_seed(0)
    n, m = 5, 3
    A = torch.randn(n, n, dtype=torch.float64)
    B = torch.randn(m, n, dtype=torch.float64)
    w = torch.nn.Parameter(torch.randn(n, dtype=torch.float64))
    alpha = torch.nn.Parameter(torch.randn(m, dtype=torch.float64))

    def l_train(w_, a_):
        return (torch.softmax(a_, 0) * torch.tanh(B @ w_)).sum() + 0.1 * (A @ w_).pow(2).sum() * a_.sigmoid().sum()

    def l_val(w_, a_):
        return ((B @ torch.sin(w_)) * a_).pow(2).sum() + (w_ * torch.exp(a_).sum()).pow(2).sum() * 0.01

    xi, wd = 0.05, 1e-3
    arc = Architect([w], [alpha], order=2, xi=xi, w_weight_decay=wd)
    got, _ = arc.unrolled_gradient(lambda: l_train(w, alpha), lambda: l_val(w, alpha))
    # direct: differentiate L_val(w'(alpha), alpha) through the unrolled step
    a = alpha.detach().clone().requires_grad_(True)
    w0 = w.detach().clone().requires_grad_(True)
    gw = torch.autograd.grad(l_train(w0, a), w0, create_graph=True)[0]
    w1 = w0 - xi * (gw + wd * w0)
    want = torch.autograd.grad(l_val(w1, a), a)[0]
    assert torch.allclose(got[0], want, rtol=1e-5, atol=1e-8), (got[0], want)
    assert torch.equal(w.detach(), w0.detach())  # the weights are restored
    first = torch.autograd.grad(l_val(w, alpha), alpha)[0]
    assert not torch.allclose(first, want, rtol=1e-3)  # the second-order term matters on this toy


def test_resource_penalty_pushes_alpha_to_cheaper_ops():
    space = SearchSpace.from_text(TINY)
    arch = ArchParams(space, init_scale=0.0)
    pen = make_penalty(space, lambda: {i: torch.softmax(a, -1) for i, a in arch.logits().items()}, "ops", 1.0, 3, 3)
    arc = Architect([], arch.alpha, penalty=pen, lr=0.1)
    act = space.decision("n1.act")
    d = arch.index.index(space.decisions.index(act))
    before = torch.softmax(arch.alpha[d].detach(), -1)[act.choices.index("identity")]
    c0 = float(pen().detach())
    for _ in range(20):  # no task loss: only the penalty moves alpha
        arc.step(lambda: torch.zeros(()), lambda: torch.zeros((), requires_grad=True))
    after = torch.softmax(arch.alpha[d].detach(), -1)[act.choices.index("identity")]
    assert after > before + 0.1 and float(pen().detach()) < c0


def test_expected_params_of_alternatives():
    text = """
space alt
state h
cell { h' = one_of(tanh(linear(x, h)), h) }
model { embed = 2; hidden = 3 }
"""
    space = SearchSpace.from_text(text)
    d = space.decisions.index(space.decision("h'.op"))
    full = expected_cost(space, None, "params", 2, 3)
    assert full == 2 * 3 + 3 * 3 + 3
    w = {d: torch.tensor([0.25, 0.75], requires_grad=True)}
    c = expected_cost(space, w, "params", 2, 3)
    assert abs(float(c.detach()) - 0.25 * full) < 1e-9
    c.backward()
    assert w[d].grad[0] > 0 and w[d].grad[1] == 0


def test_gumbel_sampler_is_hard_one_hot_with_straight_through_gradients():
    space = load_space(SPACES / "darts_ptb.cell")
    arch = ArchParams(space, init_scale=0.1)
    arch.sampler, arch.tau = "gumbel", 1.0
    torch.manual_seed(0)
    net = SupernetRNN(space, arch, 3, 3)
    w = arch.mixture()
    for v in w.values():
        assert sorted(v.detach().tolist()).count(1.0) == 1 and float(v.detach().sum()) == 1.0
    out, _ = net(torch.randn(2, 3, 3))
    out.pow(2).sum().backward()
    g = arch.alpha[arch.index.index(space.decisions.index(space.decision("n1.act")))].grad
    assert g is not None and (g != 0).sum() > 1  # every logit gets a gradient, not just the sampled one


# ---- the search: driver, database, resume, command line ------------------------------------------
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

from nas.search import Search, SearchInterrupted, SearchOptions  # noqa: E402
from nas.storage import Store  # noqa: E402
from nas.workers import LocalDispatcher  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
QUICK_OPTS = {"steps": 12, "log_every": 2, "checkpoint_every": 4, "w_optimizer": "space", "order": 2}


def _options(**extra):
    return SearchOptions(trials=1, controller="darts", controller_options={**QUICK_OPTS, **extra}, seed=1,
                         train_overrides={"steps": 5})


class _StopAfterCheckpoint:
    def __init__(self, search, at_step: int):
        self.search, self.at = search, at_step

    def __call__(self, p):
        job = self.search.controller.job
        if job is not None and job["step"] >= self.at:
            raise KeyboardInterrupt


def test_search_records_supernet_history_and_derived_trial(tmp_path):
    store = Store.open(tmp_path / "nas.db")
    s = Search.create(store, SPACES / "quickstart.cell", _options(), name="d")
    p = s.run(LocalDispatcher())
    trials = sorted(store.trials("d"), key=lambda t: t.trial_index)
    assert [t.status for t in trials] == ["completed", "completed"]
    sup, derived = trials
    assert sup.assignment is None and sup.objective is None and sup.hyperparameters["darts"] == "supernet"
    assert {"supernet_val_loss", "search_time_s"} <= set(sup.metrics)
    curve = store.curve(sup.id)
    assert [st for st, _ in curve] == [2, 4, 6, 8, 10, 12]
    assert any(k.startswith("alpha/h'.op/") for k in curve[-1][1])
    assert derived.assignment == s.controller.derived and derived.objective is not None
    assert derived.architecture_hash
    assert store.top("d", k=1)[0].id == derived.id
    files = p.artifacts
    cell = Path(files["derived cell"]).read_text()
    assert "space quickstart_darts" in cell and "parity(length=16)" in cell
    assert SearchSpace.from_text(cell).size == 1
    assert SearchSpace.from_text(cell).instantiate({}).canonical_hash() == derived.architecture_hash
    hist = json.loads(Path(files["alpha history"]).read_text())
    assert len(hist["history"]) == 6 and hist["derived"] == derived.assignment


def test_interrupted_supernet_job_resumes_from_its_checkpoint(tmp_path):
    store = Store.open(tmp_path / "nas.db")
    ref = Search.create(store, SPACES / "quickstart.cell", _options(), name="ref")
    ref.run(LocalDispatcher())
    s = Search.create(store, SPACES / "quickstart.cell", _options(), name="cut")
    with pytest.raises(SearchInterrupted):
        s.run(LocalDispatcher(), on_update=_StopAfterCheckpoint(s, 8))
    sup = store.trials("cut")[0]
    assert sup.status == "pending" and len(store.trials("cut")) == 1
    again = Search.open(store, "cut")
    assert again.controller.job["step"] == 8
    again.run(LocalDispatcher())
    got, want = again.controller.probs, ref.controller.probs
    assert got.keys() == want.keys()
    for k in got:  # the resumed job continues exactly where the interrupted one stopped
        assert got[k] == pytest.approx(want[k], abs=1e-6)
    sup = store.trials("cut")[0]
    assert sup.status == "completed" and [st for st, _ in store.curve(sup.id)] == [2, 4, 6, 8, 10, 12]
    assert [t.status for t in store.trials("cut")] == ["completed", "completed"]


def _nas(*args):
    return subprocess.run([sys.executable, "-m", "nas", *args], capture_output=True, text=True, cwd=ROOT, timeout=300)


@pytest.mark.parametrize("args, message", [
    (["--order", "3"], "--order 3"),
    (["--epochs", "0"], "--epochs 0"),
    (["--controller-opt", "ordr=2"], "has no option(s) ordr"),
])
def test_bad_darts_flags_are_user_errors(tmp_path, args, message):
    r = _nas("search", "run", str(SPACES / "quickstart.cell"), "--controller", "darts", "--dispatcher", "local",
             "--db", str(tmp_path / "x.db"), *args)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_cli_darts_search_and_controllers_listing(tmp_path):
    r = _nas("search", "run", str(SPACES / "quickstart.cell"), "-c", "darts", "--epochs", "0.001", "--steps", "4",
             "--controller-opt", "log_every=1", "--dispatcher", "local", "--name", "cli", "--db",
             str(tmp_path / "nas.db"))
    assert r.returncode == 0, r.stderr
    assert "derived cell:" in r.stdout and (tmp_path / "runs" / "cli" / "derived.cell").exists()
    r = _nas("search", "controllers", "darts")
    assert r.returncode == 0 and "order=1" in r.stdout and "resource_weight" in r.stdout
    r = _nas("search", "run", str(SPACES / "lstm.cell"), "-c", "darts", "--dispatcher", "local", "--db",
             str(tmp_path / "nas.db"))
    assert r.returncode == 2 and "nothing to mix" in r.stderr and "Traceback" not in r.stderr
