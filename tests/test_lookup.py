"""The lookup evaluator: tables (CSV / JSON / Parquet) keyed by canonical hash or by
assignment, the synthetic objective that builds them, and `nas bench controllers`."""

from __future__ import annotations

import csv
import json
import math
import random
from pathlib import Path

import pytest

from nas.errors import UserError
from nas.search import Search, SearchOptions
from nas.space import load_space
from nas.storage import Store
from nas.workers import TrialSpec
from nas.workers.lookup import (LookupDispatcher, LookupTable, SyntheticObjective, SyntheticTable, build_table,
                                read_rows, write_rows)

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "searchspaces" / "quickstart.cell"
DARTS = ROOT / "searchspaces" / "darts_ptb.cell"


@pytest.fixture(scope="module")
def quick():
    return load_space(QUICK)


@pytest.fixture(scope="module")
def objective(quick):
    return SyntheticObjective.for_space(quick, seed=1)


def spec_of(space, a, trial_id: int = 1, extra: dict | None = None) -> TrialSpec:
    hp = space.hyperparameters(a)
    return TrialSpec(trial_id=trial_id, ir=space.instantiate(a).to_json(), model=hp.model.model_dump(),
                     train=hp.train.model_dump(), task={}, seed=0, extra=extra or {})


def run_spec(dispatcher: LookupDispatcher, spec: TrialSpec):
    events = []
    dispatcher.submit(spec)
    dispatcher.poll(events.append)
    assert [e.kind for e in events] == ["started", "finished"]
    return events[-1].result


@pytest.mark.parametrize("suffix", [".csv", ".json", ".jsonl", ".parquet"])
def test_lookup_returns_the_tables_values(suffix: str, quick, objective, tmp_path: Path) -> None:
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    path = build_table(quick, objective, tmp_path / f"t{suffix}")
    rows = read_rows(path)
    assert {"arch_hash", "train.lr", "val_loss", "params", "similarity"} <= set(rows[0])
    table = LookupTable.from_file(path)
    assert len(table) == len(rows)
    by_key = {(r["arch_hash"], float(r["train.lr"])): r for r in rows}
    d = LookupDispatcher(table)
    for a in quick.enumerate():
        r = run_spec(d, spec_of(quick, a))
        row = by_key[(quick.instantiate(a).canonical_hash(), quick.hyperparameters(a).train.lr)]
        assert r.status == "completed"
        assert r.objective == pytest.approx(float(row["val_loss"]), rel=0, abs=0)
        assert r.metrics["params"] == float(row["params"])
        assert r.primary_metric == "val_loss" and r.mode == "min"


def test_architecture_not_in_table_fails_that_trial_and_the_search_goes_on(quick, objective, tmp_path: Path) -> None:
    rng = random.Random(0)
    few = [quick.sample(rng) for _ in range(4)]
    path = build_table(quick, objective, tmp_path / "few.csv", assignments=few)
    store = Store.open(tmp_path / "nas.db")
    Search.create(store, QUICK, SearchOptions(trials=12, seed=0), name="s").run(dispatcher=LookupDispatcher(path))
    trials = store.trials("s")
    assert len(trials) == 12
    failed = [t for t in trials if t.status == "failed"]
    done = [t for t in trials if t.status == "completed"]
    assert failed and done
    for t in failed:
        assert t.error.startswith(f"architecture {t.architecture_hash}")
        assert t.error.endswith(f"not in table {path}")
    # the message names the hyperparameter key as well
    assert "(train.lr=" in failed[0].error
    print(failed[0].error)


def test_hyperparameter_columns_are_part_of_the_key(quick, objective, tmp_path: Path) -> None:
    a = quick.normalize({"train.lr": 0})
    b = {**a, "train.lr": 1}
    path = build_table(quick, objective, tmp_path / "t.csv", assignments=[a])
    d = LookupDispatcher(path)
    assert run_spec(d, spec_of(quick, a)).status == "completed"
    r = run_spec(d, spec_of(quick, b))
    assert r.status == "failed" and "train.lr=0.01" in r.error and "not in table" in r.error


def test_assignment_keys_and_short_hashes(quick, objective, tmp_path: Path) -> None:
    all_a = quick.enumerate()
    path = build_table(quick, objective, tmp_path / "a.json", assignments=all_a, key="assignment")
    d = LookupDispatcher(path)
    a = all_a[5]
    r = run_spec(d, spec_of(quick, a, extra={"assignment": a}))
    assert r.status == "completed"
    assert r.metrics["val_loss"] == objective.metrics(quick.instantiate(a), *_hp(quick, a))["val_loss"]
    with pytest.raises(UserError, match="keyed by assignment"):
        run_spec(d, spec_of(quick, a))
    rows = [{"arch_hash": r["arch_hash"][:12], "train.lr": r["train.lr"], "val_loss": r["val_loss"]}
            for r in read_rows(build_table(quick, objective, tmp_path / "h.csv"))]
    short = write_rows(rows, tmp_path / "short.csv")
    assert run_spec(LookupDispatcher(short), spec_of(quick, a)).status == "completed"


def _hp(space, a):
    hp = space.hyperparameters(a)
    return hp.model.model_dump(), hp.train.model_dump()


def test_bad_tables_are_clear_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        LookupTable.from_file(tmp_path / "nope.csv")
    (tmp_path / "t.txt").write_text("x")
    with pytest.raises(UserError, match="unknown format"):
        LookupTable.from_file(tmp_path / "t.txt")
    p = tmp_path / "nokey.csv"
    p.write_text("cell,val_loss\na,1.0\n")
    with pytest.raises(UserError, match="no key column") as e:
        LookupTable.from_file(p)
    assert "arch_hash" in e.value.hint
    p = tmp_path / "nometric.csv"
    p.write_text("arch_hash,params\nabc,10\n")
    with pytest.raises(UserError, match="no metric column 'val_loss'") as e:
        LookupDispatcher(p, metric="val_loss")
    assert "params" in e.value.hint
    p = tmp_path / "empty.csv"
    p.write_text("arch_hash,val_loss\n")
    with pytest.raises(UserError, match="no rows"):
        LookupTable.from_file(p)
    p = tmp_path / "status.csv"
    p.write_text("arch_hash,val_loss,status\nabc,1.0,exploded\n")
    with pytest.raises(UserError, match="status 'exploded'"):
        LookupTable.from_file(p)
    p = tmp_path / "bad.json"
    p.write_text("{not json")
    with pytest.raises(UserError, match="not valid json"):
        LookupTable.from_file(p)
    p = tmp_path / "assign.csv"
    p.write_text("assignment,val_loss\nnot-json,1.0\n")
    with pytest.raises(UserError, match="row 1"):
        LookupTable.from_file(p)


def test_status_column_and_missing_values(quick, tmp_path: Path) -> None:
    a, b = quick.enumerate()[:2]
    ha, hb = (quick.instantiate(x).canonical_hash() for x in (a, b))
    if ha == hb:
        b = quick.enumerate()[-1]
        hb = quick.instantiate(b).canonical_hash()
    p = tmp_path / "s.csv"
    with p.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arch_hash", "val_loss", "status", "error"])
        w.writerow([ha, "", "diverged", "loss was NaN at step 7"])
        w.writerow([hb, "", "completed", ""])
    d = LookupDispatcher(p)
    r = run_spec(d, spec_of(quick, a))
    assert r.status == "diverged" and r.error == "loss was NaN at step 7" and r.objective is None
    r = run_spec(d, spec_of(quick, b))
    assert r.status == "failed" and "no value of val_loss" in r.error


def test_dispatcher_capacity_and_random_finishing_order(quick, objective, tmp_path: Path) -> None:
    d = LookupDispatcher(build_table(quick, objective, tmp_path / "t.csv"), capacity=4, order="random", seed=3)
    assert d.capacity == 4
    for i, a in enumerate(quick.enumerate()[:4]):
        d.submit(spec_of(quick, a, trial_id=i))
    order = []
    while d.in_flight:
        d.poll(lambda e: order.append(e.trial_id) if e.kind == "finished" else None)
    assert sorted(order) == [0, 1, 2, 3] and order != [0, 1, 2, 3]


# ---- the synthetic objective --------------------------------------------------------------------------------
def test_synthetic_objective_is_smooth_and_isomorphism_invariant() -> None:
    space = load_space(DARTS)
    obj = SyntheticObjective.for_space(space, seed=0, noise=0.0)
    target = space.sample(random.Random("target-0"))
    assert obj.similarity(space.instantiate(target)) == pytest.approx(1.0)
    rng = random.Random(1)
    rand = [obj.similarity(space.instantiate(space.sample(rng))) for _ in range(100)]
    near = [obj.similarity(space.instantiate(space.mutate(target, rng))) for _ in range(50)]
    assert max(rand) < 0.95 and sum(near) / len(near) > sum(rand) / len(rand) + 0.15
    # nodes 2 and 3 both read node 1 and feed only the mean: swapping their activations
    # gives an isomorphic cell, with the same canonical hash and the same value
    base = {**space.normalize({}), "p_2.in": 1, "p_3.in": 1, "n2.act": 0, "n3.act": 1}
    swapped = {**base, "n2.act": 1, "n3.act": 0}
    g1, g2 = space.instantiate(base), space.instantiate(swapped)
    assert g1.canonical_hash() == g2.canonical_hash()
    noisy = SyntheticObjective.for_space(space, seed=0, noise=0.05)
    assert noisy.metrics(g1)["val_loss"] == noisy.metrics(g2)["val_loss"]
    assert noisy.metrics(g1)["val_loss"] != obj.metrics(g1)["val_loss"]
    table = SyntheticTable(noisy)
    r = LookupDispatcher(table).result(spec_of(space, base))
    assert r.status == "completed" and math.isfinite(r.objective) and r.metrics["params"] > 0


# ---- the benchmark ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("driver", ["search", "direct"])
def test_bench_runs_controllers_and_writes_table_and_plot(driver: str, tmp_path: Path) -> None:
    from nas.cli.bench_cmd import BenchConfig, markdown, run_benchmark, write_outputs

    cfg = BenchConfig(space=str(QUICK), controllers=("random", "evolution"), seeds=2, evaluations=12, workers=2,
                      driver=driver, checkpoints=(6, 12), controller_options={"evolution": {"population": 4}})
    result = run_benchmark(cfg, jobs=1)
    assert len(result["runs"]) == 4
    assert all(len(r["values"]) == 12 for r in result["runs"])
    files = write_outputs(result, tmp_path)
    text = files["table"].read_text()
    assert "| random |" in text and "| evolution |" in text and "best@12" in text
    assert markdown(result) == text
    if "plot" in files:
        assert files["plot"].stat().st_size > 1000


def test_bench_command(tmp_path: Path, quick, objective) -> None:
    from typer.testing import CliRunner

    import nas.cli.bench_cmd  # noqa: F401  (registers `nas bench`)
    from nas.cli.main import app

    table = build_table(quick, objective, tmp_path / "t.csv")
    r = CliRunner().invoke(app, ["bench", "controllers", str(QUICK), "--table", str(table), "--controllers",
                                 "random,tpe", "--seeds", "2", "--evaluations", "8", "--jobs", "1", "--driver",
                                 "direct", "--out", str(tmp_path / "out"), "--controller-opt",
                                 "tpe.n_startup_trials=3"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "out" / "controllers.md").exists()
    data = json.loads((tmp_path / "out" / "controllers.json").read_text())
    assert data["config"]["controller_options"] == {"tpe": {"n_startup_trials": 3}}
