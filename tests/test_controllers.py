"""Search controllers: determinism, resumable state, any-order tells, constraints, dedup,
several objectives, options, and the REINFORCE gradient."""

from __future__ import annotations

import importlib.util
import json
import math
import random
from pathlib import Path

import pytest

from nas.controllers import CONTROLLERS, Outcome, controller_help, make_controller
from nas.controllers.constraints import Constraint, count_cell_params, step_depth
from nas.controllers.objectives import Objectives, crowding_distances, pareto_front, pareto_ranks
from nas.errors import UserError
from nas.space import SearchSpace, load_space

ROOT = Path(__file__).resolve().parents[1]
SPACES = ROOT / "searchspaces"
NAMES = ["random", "evolution", "rl", "tpe", "cmaes", "nsga2"]
HAVE_CMAES = importlib.util.find_spec("cmaes") is not None  # Optuna's CMA-ES needs the cmaes package
ALL = [n for n in NAMES if n != "cmaes" or HAVE_CMAES]  # the controllers that can run here
PARAMS = [n if n in ALL else pytest.param(n, marks=pytest.mark.skip(reason="pip install cmaes")) for n in NAMES]
SMALL_OPTS = {"evolution": {"population": 8, "sample_size": 3}, "rl": {"batch_size": 4, "hidden": 16},
              "tpe": {"n_startup_trials": 4}, "nsga2": {"population_size": 6}, "cmaes": {"popsize": 4},
              "random": {}}

# a small space with conditional decisions and cells of very different sizes
CONSTRAINED = """
space constrained
state h
choice act = {tanh, relu, sigmoid}
cell {
  a = one_of(linear(x, h), act(linear(x, one_of(h, linear(h)))), h)
  b = tanh(one_of(linear(a), a))
  h' = one_of(b, blend(sigmoid(linear(x, h)), h, b))
}
model { embed = 8; hidden = one_of(8, 16, 32); layers = one_of(1, 2) }
train { task = parity(length=8) }
"""


@pytest.fixture(scope="module")
def darts() -> SearchSpace:
    return load_space(SPACES / "darts_ptb.cell")


@pytest.fixture(scope="module")
def constrained() -> SearchSpace:
    return SearchSpace.from_text(CONSTRAINED, "constrained.cell")


def fake_objective(space: SearchSpace, a) -> float:
    """Deterministic, structured: counts choices equal to a fixed target, plus noise."""
    a = space.normalize(a)
    target = space.sample(random.Random(123))
    match = sum(a[k] == target[k] for k in a) / len(a)
    return 1.0 - match + random.Random(json.dumps(a, sort_keys=True)).random() * 0.01


def outcome(space, a, metrics=None) -> Outcome:
    v = fake_objective(space, a)
    return Outcome("completed", v, "min", {"val_loss": v, **(metrics or {})})


def drive(ctl, space, rounds: int, batch: int = 3, rng: random.Random | None = None, leave_pending: int = 0):
    """Ask in batches, tell in a shuffled order, keep `leave_pending` asked but untold."""
    rng = rng or random.Random(0)
    asked, pending = [], []
    for _ in range(rounds):
        got = ctl.ask(batch)
        asked.extend(got)
        pending.extend(got)
        rng.shuffle(pending)
        while len(pending) > leave_pending:
            a = pending.pop()
            ctl.tell(a, outcome(space, a))
    return asked, pending


# ---- determinism and state ------------------------------------------------------------------------
@pytest.mark.parametrize("name", PARAMS)
def test_state_dict_round_trip_gives_identical_asks(name: str, darts: SearchSpace) -> None:
    ctl = make_controller(name, darts, seed=5, **SMALL_OPTS[name])
    _, pending = drive(ctl, darts, rounds=6, leave_pending=2)
    state = json.loads(json.dumps(ctl.state_dict()))  # must be JSON
    clone = make_controller(name, darts, seed=5, **SMALL_OPTS[name])
    clone.load_state_dict(state)
    # the same future: pending results told in the same order, then more asks and tells
    for c in (ctl, clone):
        for a in pending:
            c.tell(a, outcome(darts, a))
    a1, _ = drive(ctl, darts, rounds=4, rng=random.Random(9))
    a2, _ = drive(clone, darts, rounds=4, rng=random.Random(9))
    assert a1 == a2
    assert json.dumps(ctl.state_dict(), sort_keys=True) == json.dumps(clone.state_dict(), sort_keys=True)


@pytest.mark.parametrize("name", PARAMS)
def test_same_seed_same_asks_other_seed_other_asks(name: str, darts: SearchSpace) -> None:
    runs = [drive(make_controller(name, darts, seed=s, **SMALL_OPTS[name]), darts, rounds=5)[0] for s in (1, 1, 2)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


@pytest.mark.parametrize("name", PARAMS)
def test_tells_in_shuffled_order_and_conditional_decisions(name: str, constrained: SearchSpace) -> None:
    ctl = make_controller(name, constrained, seed=0, **SMALL_OPTS[name])
    got = ctl.ask(12)
    assert len(got) == 12
    for a in got:
        assert constrained.validate_assignment(a) == a  # complete and normalized (inactive decisions 0)
    random.Random(4).shuffle(got)
    for a in got[:-1]:
        ctl.tell(a, outcome(constrained, a))
    ctl.tell(got[-1], Outcome("failed", None))  # failures are told too
    ctl.tell(constrained.sample(random.Random(3)), outcome(constrained, constrained.sample(random.Random(3))))
    more = ctl.ask(5)  # an unknown assignment told above is fine as well
    assert len(more) == 5
    json.dumps(ctl.state_dict())


def test_failed_diverged_and_missing_objectives_are_tolerated(darts: SearchSpace) -> None:
    for name in ALL:
        ctl = make_controller(name, darts, seed=0, **SMALL_OPTS[name])
        for i, a in enumerate(ctl.ask(8)):
            o = [Outcome("diverged", None), Outcome("completed", math.nan), Outcome("pruned", 3.0),
                 outcome(darts, a)][i % 4]
            ctl.tell(a, o)
        assert len(ctl.ask(2)) == 2


# ---- constraints ------------------------------------------------------------------------------------
def test_param_counter_matches_build_rnn(constrained: SearchSpace, darts: SearchSpace) -> None:
    torch = pytest.importorskip("torch")
    del torch
    from nas.compile import build_rnn

    cases = [(constrained, a) for a in constrained.enumerate()[::7]]
    rng = random.Random(0)
    cases += [(darts, darts.sample(rng)) for _ in range(3)]
    nb = load_space(SPACES / "nasbench_nlp.cell")
    cases += [(nb, nb.sample(rng)) for _ in range(3)]
    for space in (load_space(SPACES / "lstm.cell"), load_space(SPACES / "mingru.cell")):
        cases += [(space, a) for a in space.enumerate()]
    for space, a in cases:
        graph = space.instantiate(a)
        model = space.hyperparameters(a).model
        rnn = build_rnn(graph, model.embed, model.hidden, model.layers)
        assert count_cell_params(graph, model) == sum(p.numel() for p in rnn.parameters()), (space.name, a)
    # embed != hidden and two layers are counted too
    a = {"a.op": 0, "a.op2": 0, "a.act": 0, "b.op": 0, "h'.op": 1, "model.hidden": 1, "model.layers": 1}
    g, m = constrained.instantiate(a), constrained.hyperparameters(a).model
    assert (m.embed, m.hidden, m.layers) == (8, 16, 2)
    assert count_cell_params(g, m) == sum(p.numel() for p in build_rnn(g, 8, 16, 2).parameters())


def test_step_depth_is_the_sequential_path(darts: SearchSpace) -> None:
    lstm = load_space(SPACES / "lstm.cell")
    g = lstm.instantiate(lstm.normalize({}))
    assert 2 <= step_depth(g) <= g.num_ops()
    chain = darts.instantiate({**darts.normalize({}), **{f"p_{i}.in": i - 1 for i in range(2, 9)}})
    flat = darts.instantiate(darts.normalize({}))  # every node reads n0
    assert step_depth(chain) > step_depth(flat)


@pytest.mark.parametrize("name", PARAMS)
def test_constraint_never_violated_over_1000_asks(name: str, constrained: SearchSpace) -> None:
    limit = 1000  # about half of the space is feasible
    check = Constraint(constrained)
    sizes = {json.dumps(a): check.measure(a)["params"] for a in constrained.enumerate()}
    assert 0.2 < sum(v <= limit for v in sizes.values()) / len(sizes) < 0.8
    ctl = make_controller(name, constrained, seed=1, max_params=limit, **SMALL_OPTS[name])
    asked = 0
    while asked < 1000:
        batch = ctl.ask(20)
        asked += len(batch)
        for a in batch:
            p = sizes[json.dumps(constrained.normalize(a))]
            assert p <= limit, (name, a, p)
            # the objective rewards big cells: every controller is pushed against the limit
            ctl.tell(a, Outcome("completed", -p + random.Random(asked).random(), "min", {"params": p}))


def test_latency_proxies_and_unmeetable_constraint(constrained: SearchSpace) -> None:
    check = Constraint(constrained)
    ctl = make_controller("evolution", constrained, seed=0, max_ops=4, max_depth=3)
    for a in ctl.ask(50):
        m = check.measure(a)
        assert m["ops"] <= 4 and m["depth"] <= 3
    ctl = make_controller("random", constrained, seed=0, max_params=1, max_tries=20)
    ctl.ask(1)  # a cell without linears has 0 parameters: found by the repair search
    darts = load_space(SPACES / "darts_ptb.cell")
    ctl = make_controller("tpe", darts, seed=0, max_params=10, max_tries=20)
    with pytest.raises(UserError, match=r"params <= 10 \(smallest seen: \d+\)"):
        ctl.ask(1)


# ---- dedup ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", PARAMS)
def test_dedup_avoids_repeated_architectures(name: str) -> None:
    space = load_space(SPACES / "quickstart.cell")
    ctl = make_controller(name, space, seed=0, dedup=True, **SMALL_OPTS[name])
    distinct = len({ctl.key(a) for a in space.enumerate()})
    seen = []
    while len(seen) < distinct:
        for a in ctl.ask(2):
            seen.append(ctl.key(a))
            ctl.tell(a, outcome(space, a))
    assert len(set(seen[:distinct])) == distinct, "a repeat before the space was exhausted"
    assert len(ctl.ask(3)) == 3  # exhausted: repeats, not an error


# ---- several objectives ----------------------------------------------------------------------------------
def test_pareto_tools() -> None:
    pts = [(1, 5), (2, 2), (5, 1), (3, 3), (4, 4), (6, 6)]
    assert pareto_ranks(pts) == [0, 0, 0, 1, 2, 3]
    assert pareto_front(pts) == [0, 1, 2]
    d = crowding_distances(pts[:3])
    assert d[0] == d[2] == math.inf and 0 < d[1] < math.inf
    obj = Objectives.parse("val_loss:min, tokens_per_s:max")
    o = Outcome("completed", 1.0, "min", {"val_loss": 1.0, "tokens_per_s": 10.0})
    assert obj.vector(o) == (1.0, -10.0)
    assert obj.vector(Outcome("completed", 1.0, "min", {"val_loss": 1.0})) is None
    assert Objectives.parse(None).vector(Outcome("completed", 2.0, "max")) == (-2.0,)
    with pytest.raises(UserError, match="name:min or name:max"):
        Objectives.parse("val_loss:lowest")


@pytest.mark.parametrize("name", ["random", "evolution", "rl", "tpe", "nsga2"])
def test_several_objectives(name: str, constrained: SearchSpace) -> None:
    check = Constraint(constrained)
    ctl = make_controller(name, constrained, seed=0, objectives="val_loss:min,params:min", **SMALL_OPTS[name])
    front = []
    for _ in range(10):
        for a in ctl.ask(4):
            p = check.measure(a)["params"]
            o = outcome(constrained, a, {"params": p})
            front.append((o.objective, p))
            ctl.tell(a, o)
    assert len(pareto_front(front)) >= 1
    json.dumps(ctl.state_dict())


def test_evolution_tournament_prefers_the_pareto_front(constrained: SearchSpace) -> None:
    ctl = make_controller("evolution", constrained, seed=0, population=4, sample_size=4,
                          objectives="a:min,b:min")
    pop = constrained.enumerate()[:4]
    vals = [(3, 3), (1, 4), (4, 1), (5, 5)]
    for a, (x, y) in zip(pop, vals):
        ctl.tell(a, Outcome("completed", x, "min", {"a": x, "b": y}))
    parents = {tuple(ctl._parent()) for _ in range(20)}
    assert parents <= {tuple(constrained.encode(pop[1])), tuple(constrained.encode(pop[2]))}


def test_cmaes_takes_one_objective(darts: SearchSpace) -> None:
    with pytest.raises(UserError, match="one objective"):
        make_controller("cmaes", darts, objectives="val_loss:min,params:min")


def test_regularized_evolution_ages_out_the_oldest(constrained: SearchSpace) -> None:
    ctl = make_controller("evolution", constrained, seed=0, population=3, sample_size=2)
    asked = ctl.ask(5)
    for i, a in enumerate(asked):
        ctl.tell(a, Outcome("completed", float(i)))  # the best (0.0) is the oldest
    assert [v for _, v in ctl.population] == [[2.0], [3.0], [4.0]]
    child = ctl.ask(1)[0]
    parents = [ctl.unvec(v) for v, _ in ctl.population]
    assert any(sum(child[k] != p[k] for k in child) >= 1 for p in parents)


# ---- REINFORCE ---------------------------------------------------------------------------------------------
TOY = """
space toy
state h
choice f = {tanh, relu, sigmoid}
choice g = {identity, tanh}
cell {
  h' = g(f(linear(x, h)))
}
"""


def test_reinforce_gradient_moves_probability_to_the_rewarded_choice() -> None:
    space = SearchSpace.from_text(TOY, "toy.cell")
    names = [d.name for d in space.decisions]
    assert len(names) == 2
    ctl = make_controller("rl", space, seed=0, batch_size=4, lr=0.05, entropy_weight=0.0)
    good = {names[0]: 1, names[1]: 0}
    before = ctl.probabilities(good)
    for _ in range(15):
        for a in ctl.ask(4):
            ctl.tell(a, Outcome("completed", 0.0 if a == good else 1.0))
    after = ctl.probabilities(good)
    assert ctl.updates >= 10
    assert after[0][1] > before[0][1] + 0.2
    assert after[1][0] > before[1][0] + 0.2
    assert after[0][1] * after[1][0] > 0.6


def test_reinforce_single_step_direction() -> None:
    """One update with a positive advantage on one sample raises that sample's probability."""
    space = SearchSpace.from_text(TOY, "toy.cell")
    ctl = make_controller("rl", space, seed=1, batch_size=2, lr=0.01, normalize=False, entropy_weight=0.0)
    a = space.normalize({space.decisions[0].name: 0, space.decisions[1].name: 1})
    b = space.normalize({space.decisions[0].name: 2, space.decisions[1].name: 0})

    def p(x):
        pr = ctl.probabilities(x)
        return pr[0][x[space.decisions[0].name]] * pr[1][x[space.decisions[1].name]]

    pa, pb = p(a), p(b)
    ctl.tell(b, Outcome("completed", 1.0))  # baseline starts at the first reward
    ctl.tell(a, Outcome("completed", 0.0))  # better: positive advantage
    assert ctl.updates == 1
    assert p(a) > pa and p(b) < pb


def test_reinforce_reward_expression_and_options(darts: SearchSpace) -> None:
    ctl = make_controller("rl", darts, seed=0, reward="80/val_ppl")
    assert ctl.reward(Outcome("completed", 4.0, "min", {"val_ppl": 40.0})) == pytest.approx(2.0)
    ctl = make_controller("rl", darts, seed=0)
    assert ctl.reward(Outcome("completed", 4.0, "min")) == -4.0
    assert ctl.reward(Outcome("completed", 4.0, "max")) == 4.0
    assert ctl.reward(Outcome("failed", None)) is None
    with pytest.raises(UserError, match="only numbers"):
        make_controller("rl", darts, reward="__import__('os')")
    with pytest.raises(UserError, match="not an expression"):
        make_controller("rl", darts, reward="80/")
    # temperature / tanh clipping bound the logits: probabilities stay inside the clip
    ctl = make_controller("rl", darts, seed=0, tanh_constant=0.5)
    for row in ctl.probabilities():
        if row:
            assert max(row) / min(row) <= math.exp(1.0) + 1e-6


# ---- options ----------------------------------------------------------------------------------------------
def test_unknown_options_and_values_are_user_errors(darts: SearchSpace) -> None:
    with pytest.raises(UserError) as e:
        make_controller("evolution", darts, populaton=10)
    assert "populaton" in e.value.message and "population" in e.value.hint
    with pytest.raises(UserError, match="must be"):
        make_controller("evolution", darts, population="many")
    with pytest.raises(UserError, match="integer >= 2"):
        make_controller("evolution", darts, population=1)
    with pytest.raises(UserError, match="unknown controller"):
        make_controller("evolve", darts)
    ctl = make_controller("evolution", darts, population="12", dedup="true")  # text from a CLI is fine
    assert ctl.population_size == 12 and ctl.dedup is True
    text = controller_help()
    for name in NAMES:
        assert f"{name}:" in text
    assert list(CONTROLLERS)[:6] == NAMES


def test_search_block_sets_defaults_and_the_command_line_wins() -> None:
    text = CONSTRAINED + "\nsearch { population = 7; sample_size = 2; n_startup_trials = 3; max_params = 900 }\n"
    space = SearchSpace.from_text(text, "s.cell")
    ctl = make_controller("evolution", space, seed=0)
    assert (ctl.population_size, ctl.sample_size, ctl.options["max_params"]) == (7, 2, 900)
    ctl = make_controller("evolution", space, seed=0, population=9)
    assert ctl.population_size == 9
    ctl = make_controller("tpe", space, seed=0)  # population is evolution's: ignored here
    assert ctl.options["n_startup_trials"] == 3
    bad = SearchSpace.from_text(CONSTRAINED + "\nsearch { populaton = 7 }\n", "bad.cell")
    with pytest.raises(UserError, match="populaton") as e:
        make_controller("evolution", bad)
    assert "population" in (e.value.hint or "")


_RESUME_SCRIPT = r"""
import json, random, sys
sys.path.insert(0, sys.argv[2])
from nas.space import SearchSpace
from nas.controllers import make_controller
import test_controllers as T
space = SearchSpace.from_text(T.CONSTRAINED, "constrained.cell")
out = {}
for name, data in json.loads(open(sys.argv[1]).read()).items():
    ctl = make_controller(name, space, seed=3, max_params=1500, dedup=True, **T.SMALL_OPTS[name])
    ctl.load_state_dict(data["state"])
    out[name] = T.drive(ctl, space, rounds=3, rng=random.Random(2))[0]
print(json.dumps(out))
"""


def test_state_resumes_in_another_process(constrained: SearchSpace, tmp_path: Path) -> None:
    """A resumed search runs in a new process (another hash seed): same future asks."""
    import os
    import subprocess
    import sys

    data, expected = {}, {}
    for name in ALL:
        ctl = make_controller(name, constrained, seed=3, max_params=1500, dedup=True, **SMALL_OPTS[name])
        drive(ctl, constrained, rounds=8, leave_pending=1)
        data[name] = {"state": ctl.state_dict()}
        expected[name] = drive(ctl, constrained, rounds=3, rng=random.Random(2))[0]
    path = tmp_path / "states.json"
    path.write_text(json.dumps(data))
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    r = subprocess.run([sys.executable, "-c", _RESUME_SCRIPT, str(path), str(Path(__file__).parent)],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    for name in ALL:
        assert got[name] == expected[name], name
