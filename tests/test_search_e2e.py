"""End to end: a real search trains real cells and records every trial in SQLite."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nas.search import Search, SearchInterrupted, SearchOptions
from nas.storage import Store
from nas.workers import LocalDispatcher

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "searchspaces" / "quickstart.cell"
DIVERGING = ROOT / "tests" / "data" / "spaces" / "diverging.cell"
TIMING = {"wall_time_s", "tokens_per_s", "peak_mem_mb"}
FAST = ["--steps", "60"]


def nas(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nas", *args], capture_output=True, text=True, cwd=cwd or ROOT,
                          timeout=600)


def test_six_trial_search_records_trials_curves_and_ranks(tmp_path: Path) -> None:
    db = tmp_path / "nas.db"
    r = nas("search", "run", str(QUICK), "--trials", "6", "--seed", "3", "--name", "six", "--db", str(db), *FAST)
    assert r.returncode == 0, r.stderr
    store = Store.open(db)
    trials = store.trials("six")
    assert len(trials) == 6
    assert {t.status for t in trials} == {"completed"}
    for t in trials:
        assert t.metrics["val_loss"] == pytest.approx(t.objective)
        assert {"val_acc", "params", "tokens_per_s", "wall_time_s", "acc_2x", "acc_4x"} <= set(t.metrics)
        assert t.architecture_hash and t.dsl_text and t.host
        curve = store.curve(t.id)
        assert [s for s, _ in curve] == [50, 60]  # eval_every = 50 from the space, final at 60
        assert "val_loss" in curve[0][1] and "train_loss" in curve[0][1]
    r = nas("results", "top", "--search", "six", "--k", "6", "--json", "--db", str(db))
    assert r.returncode == 0, r.stderr
    listed = json.loads(r.stdout)
    objectives = [row["objective"] for row in listed]
    assert objectives == sorted(objectives) and len(listed) == 6
    assert objectives[0] == min(t.objective for t in trials)
    r = nas("results", "top", "--search", "six", "--metric", "val_acc", "--db", str(db))
    assert r.returncode == 0 and "val_acc" in r.stdout


def _fingerprint(store: Store, name: str) -> list[tuple]:
    return [(t.trial_index, json.dumps(t.assignment, sort_keys=True), t.architecture_hash,
             tuple(sorted((k, v) for k, v in t.metrics.items() if k not in TIMING)))
            for t in sorted(store.trials(name), key=lambda t: t.trial_index)]


def test_same_seed_same_assignments_and_metrics(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "nas.db")
    opts = SearchOptions(trials=3, seed=11, train_overrides={"steps": 40})
    Search.create(store, QUICK, opts, name="a").run()
    Search.create(store, QUICK, opts, name="b").run()
    other = SearchOptions(trials=3, seed=12, train_overrides={"steps": 40})
    Search.create(store, QUICK, other, name="c").run()
    fa, fb, fc = (_fingerprint(store, n) for n in "abc")
    assert fa == fb
    assert [f[1] for f in fa] != [f[1] for f in fc]


def test_diverging_trials_are_recorded_and_the_search_goes_on(tmp_path: Path) -> None:
    db = tmp_path / "nas.db"
    r = nas("search", "run", str(DIVERGING), "--trials", "6", "--seed", "0", "--name", "div", "--db", str(db))
    assert r.returncode == 0, r.stderr
    trials = Store.open(db).trials("div")
    assert len(trials) == 6
    diverged = [t for t in trials if t.status == "diverged"]
    assert diverged and all(t.hyperparameters["train.lr"] == 1e30 for t in diverged)
    assert all(t.diverged_step is not None and t.objective is None for t in diverged)
    assert all(t.status == "completed" for t in trials if t.hyperparameters["train.lr"] != 1e30)


@pytest.mark.parametrize("make_folder", ["missing", "no_valid"])
def test_bad_task_folder_is_exit_2_before_any_trial(tmp_path: Path, make_folder: str) -> None:
    folder = tmp_path / "corpus"
    if make_folder == "no_valid":
        folder.mkdir()
        (folder / "train.txt").write_text("a b c\n")
        (folder / "test.txt").write_text("a b\n")
    db = tmp_path / "nas.db"
    Store.open(db).close()
    before = db.read_bytes()
    r = nas("search", "run", str(QUICK), "--trials", "2", "--db", str(db), "--task", f'word_lm("{folder}")')
    assert r.returncode == 2
    assert "Traceback" not in r.stderr + r.stdout
    assert str(folder) in r.stderr
    if make_folder == "no_valid":
        assert "valid.txt" in r.stderr
    assert Store.open(db).list_searches() == []
    del before


class _InterruptAfter(LocalDispatcher):
    """Raises KeyboardInterrupt (as Ctrl-C would) when the n-th trial starts."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n
        self.started = 0

    def poll(self, handle, timeout=None):
        self.started += 1
        if self.started > self.n:
            raise KeyboardInterrupt
        super().poll(handle, timeout)


def test_interrupt_then_resume_finishes_without_rerunning(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "nas.db")
    opts = SearchOptions(trials=5, seed=4, train_overrides={"steps": 30})
    search = Search.create(store, QUICK, opts, name="r")
    with pytest.raises(SearchInterrupted):
        search.run(dispatcher=_InterruptAfter(2))
    done_before = {t.id: t.finished_at for t in store.trials("r", status="completed")}
    assert len(done_before) == 2
    assert store.get_search("r").status == "stopped"
    Search.open(store, "r").run()
    trials = store.trials("r")
    completed = [t for t in trials if t.status == "completed"]
    assert len(completed) == 5 and len(trials) == 5
    for t in completed:  # the first two were not rerun
        if t.id in done_before:
            assert t.finished_at == done_before[t.id]
    # the resumed search asks exactly what an uninterrupted one asks
    Search.create(store, QUICK, opts, name="straight").run()
    assert [json.dumps(t.assignment, sort_keys=True) for t in sorted(trials, key=lambda t: t.trial_index)] == \
        [json.dumps(t.assignment, sort_keys=True) for t in sorted(store.trials("straight"), key=lambda t: t.trial_index)]


def test_unknown_search_and_metric_are_exit_2(tmp_path: Path) -> None:
    db = tmp_path / "nas.db"
    Store.open(db).close()
    r = nas("results", "top", "--search", "nope", "--db", str(db))
    assert r.returncode == 2 and "no search named 'nope'" in r.stderr
    r = nas("search", "resume", "nope", "--db", str(db))
    assert r.returncode == 2 and "Traceback" not in r.stderr
