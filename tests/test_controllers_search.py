"""Every controller through the real search loop (`nas.search.Search`): in-process on the
quickstart space with real training, interrupted and resumed, and through the CLI."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from nas.search import Search, SearchInterrupted, SearchOptions
from nas.storage import Store
from nas.workers import LocalDispatcher
from nas.workers.lookup import LookupDispatcher, SyntheticObjective, build_table

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "searchspaces" / "quickstart.cell"
NAMES = ["random", "evolution", "rl", "tpe", "cmaes", "nsga2"]
HAVE_CMAES = importlib.util.find_spec("cmaes") is not None  # Optuna's CMA-ES needs the cmaes package
ALL = [n for n in NAMES if n != "cmaes" or HAVE_CMAES]  # the controllers that can run here
PARAMS = [n if n in ALL else pytest.param(n, marks=pytest.mark.skip(reason="pip install cmaes")) for n in NAMES]
SMALL = {"evolution": {"population": 2, "sample_size": 2}, "rl": {"batch_size": 2, "hidden": 16},
         "tpe": {"n_startup_trials": 2}, "cmaes": {"popsize": 3}, "nsga2": {"population_size": 2}, "random": {}}
FAST = {"steps": 20}


def assignments(store: Store, name: str) -> list[str]:
    return [json.dumps(t.assignment, sort_keys=True) for t in sorted(store.trials(name), key=lambda t: t.trial_index)]


@pytest.mark.parametrize("name", PARAMS)
def test_each_controller_runs_a_real_search(name: str, tmp_path: Path) -> None:
    store = Store.open(tmp_path / "nas.db")
    opts = SearchOptions(controller=name, trials=4, seed=1, train_overrides=FAST, controller_options=SMALL[name])
    progress = Search.create(store, QUICK, opts, name="s").run()
    trials = store.trials("s")
    assert len(trials) == 4 and progress.done == 4
    assert all(t.status == "completed" and t.objective is not None for t in trials)
    rec = store.get_search("s")
    assert rec.controller == name and rec.status == "completed"


class _InterruptAfter(LocalDispatcher):
    def __init__(self, n: int):
        super().__init__()
        self.n, self.started = n, 0

    def poll(self, handle, timeout=None):
        self.started += 1
        if self.started > self.n:
            raise KeyboardInterrupt
        super().poll(handle, timeout)


@pytest.mark.parametrize("name", ["evolution", "rl"])
def test_interrupted_search_resumes_with_the_same_asks(name: str, tmp_path: Path) -> None:
    store = Store.open(tmp_path / "nas.db")
    opts = SearchOptions(controller=name, trials=5, seed=2, train_overrides=FAST, controller_options=SMALL[name])
    with pytest.raises(SearchInterrupted):
        Search.create(store, QUICK, opts, name="r").run(dispatcher=_InterruptAfter(3))
    assert len(store.trials("r", status="completed")) == 3
    resumed = Search.open(store, "r")
    if name == "rl":
        assert resumed.controller.updates >= 1  # the trained policy came back from the checkpoint
    resumed.run()
    assert len(store.trials("r", status="completed")) == 5
    Search.create(store, QUICK, opts, name="straight").run()
    assert assignments(store, "r") == assignments(store, "straight")


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def test_each_controller_through_ray_with_asynchronous_asks(local_ray, tmp_path: Path) -> None:
    from nas.workers import RayDispatcher

    store = Store.open(tmp_path / "nas.db")
    for name in ALL:
        opts = SearchOptions(controller=name, trials=4, seed=3, train_overrides=FAST, controller_options=SMALL[name])
        d = RayDispatcher(max_retries=1)
        assert d.capacity == 2  # two trials in flight: asks while others run, tells in finishing order
        progress = Search.create(store, QUICK, opts, name=f"ray-{name}").run(dispatcher=d)
        assert progress.completed == 4, (name, progress.last_error)
        assert sorted(t.trial_index for t in store.trials(f"ray-{name}")) == [0, 1, 2, 3]


# ---- the same through a lookup table: many trials in seconds -------------------------------------------
class _InterruptingLookup(LookupDispatcher):
    def __init__(self, *args, stop_after: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.stop_after, self.polls = stop_after, 0

    def poll(self, handle, timeout=None):
        self.polls += 1
        if self.polls > self.stop_after:
            raise KeyboardInterrupt
        super().poll(handle, timeout)


@pytest.fixture(scope="module")
def quick_table(tmp_path_factory) -> Path:
    from nas.space import load_space

    space = load_space(QUICK)
    return build_table(space, SyntheticObjective.for_space(space, seed=3), tmp_path_factory.mktemp("t") / "q.csv")


@pytest.mark.parametrize("name", PARAMS)
def test_resume_through_lookup_gives_the_same_search(name: str, tmp_path: Path, quick_table: Path) -> None:
    store = Store.open(tmp_path / "nas.db")
    opts = SearchOptions(controller=name, trials=14, seed=7, controller_options=SMALL[name])
    with pytest.raises(SearchInterrupted):
        Search.create(store, QUICK, opts, name="r").run(
            dispatcher=_InterruptingLookup(quick_table, capacity=3, order="random", seed=1, stop_after=6))
    # the resumed run finishes trials in another order (a fresh dispatcher): compare against a
    # straight run that sees the same order of events
    Search.open(store, "r").run(dispatcher=LookupDispatcher(quick_table, capacity=3, order="random", seed=2))
    trials = store.trials("r")
    assert len([t for t in trials if t.status == "completed"]) >= 12
    assert {t.status for t in trials} <= {"completed", "failed"}
    for t in trials:
        if t.status == "failed":
            assert "interrupted" in (t.error or "")


@pytest.mark.parametrize("name", PARAMS)
def test_resume_is_exact_with_one_worker(name: str, tmp_path: Path, quick_table: Path) -> None:
    """One trial at a time: the interrupted and resumed search asks exactly what a straight one asks."""
    store = Store.open(tmp_path / "nas.db")
    opts = SearchOptions(controller=name, trials=12, seed=8, controller_options=SMALL[name])
    with pytest.raises(SearchInterrupted):
        Search.create(store, QUICK, opts, name="r").run(dispatcher=_InterruptingLookup(quick_table, stop_after=7))
    Search.open(store, "r").run(dispatcher=LookupDispatcher(quick_table))
    Search.create(store, QUICK, opts, name="straight").run(dispatcher=LookupDispatcher(quick_table))
    assert len(store.trials("r", status="completed")) == 12
    assert assignments(store, "r") == assignments(store, "straight")


def test_lookup_search_is_deterministic(tmp_path: Path, quick_table: Path) -> None:
    store = Store.open(tmp_path / "nas.db")
    for run in ("a", "b"):
        for name in ALL:
            opts = SearchOptions(controller=name, trials=10, seed=4, controller_options=SMALL[name])
            Search.create(store, QUICK, opts, name=f"{run}-{name}").run(
                dispatcher=LookupDispatcher(quick_table, capacity=3, order="random", seed=5))
    for name in ALL:
        assert assignments(store, f"a-{name}") == assignments(store, f"b-{name}")


# ---- the command line ------------------------------------------------------------------------------------
def nas(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nas", *args], capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_cli_runs_a_controller_with_options_and_rejects_bad_ones(tmp_path: Path) -> None:
    db = str(tmp_path / "nas.db")
    r = nas("search", "run", str(QUICK), "--controller", "evolution", "--controller-opt", "population=2",
            "--controller-opt", "sample_size=2", "--trials", "3", "--steps", "20", "--name", "cli", "--db", db,
            "--dispatcher", "local")
    assert r.returncode == 0, r.stderr
    assert len(Store.open(db).trials("cli")) == 3
    r = nas("search", "run", str(QUICK), "--controller", "evolution", "--controller-opt", "populaton=2",
            "--trials", "3", "--db", db)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "populaton" in r.stderr and "population" in r.stderr


def test_search_run_help_lists_the_controllers() -> None:
    from typer.testing import CliRunner

    from nas.cli.main import _register, app

    _register()
    r = CliRunner().invoke(app, ["search", "run", "--help"], terminal_width=200)
    assert r.exit_code == 0
    for name in NAMES:
        assert name in r.output
