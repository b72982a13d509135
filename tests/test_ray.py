"""Searches dispatched to Ray (a local Ray with 2 CPUs): throughput path, faults, pruning, CLI.

Every fault test checks the database afterwards: nothing lost (each asked trial is in a
final state) and nothing duplicated (trial indices 0..n-1 once each).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from nas.controllers.base import Controller  # noqa: E402
from nas.search import Search, SearchOptions  # noqa: E402
from nas.storage import Store  # noqa: E402
from nas.workers import RayDispatcher  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "searchspaces" / "quickstart.cell"
FAULTS = ROOT / "tests" / "data" / "spaces" / "faults.cell"
FIDELITY = ROOT / "tests" / "data" / "spaces" / "fidelity.cell"
TERMINAL = {"completed", "failed", "diverged", "pruned"}


@pytest.fixture(scope="module")
def ray_address():
    """One local Ray (2 CPUs) for this module; shut down at its end."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def assert_consistent(store: Store, name: str, n: int) -> list:
    trials = store.trials(name)
    assert sorted(t.trial_index for t in trials) == list(range(n)), "a trial was lost or duplicated"
    assert all(t.status in TERMINAL for t in trials), [(t.trial_index, t.status) for t in trials]
    assert all(t.finished_at is not None for t in trials)
    return trials


class Scripted(Controller):
    """Asks the assignments of a fixed plan, in order (cycling)."""

    name = "scripted"

    def __init__(self, space, plan):
        super().__init__(space, seed=0)
        self.plan, self.i = plan, 0

    def ask(self, n=1):
        out = [dict(self.plan[(self.i + k) % len(self.plan)]) for k in range(n)]
        self.i += n
        return out

    def state_dict(self):
        return {"i": self.i}

    def load_state_dict(self, state):
        self.i = state["i"]


class Hooked(RayDispatcher):
    """A RayDispatcher that lets a test act on events before the driver sees them."""

    def __init__(self, hook, **kw):
        super().__init__(**kw)
        self.hook = hook

    def poll(self, handle, timeout=None):
        def h(ev):
            self.hook(self, ev)
            return handle(ev)

        return super().poll(h, timeout)


def test_twelve_trial_random_search_completes_through_ray(ray_address, tmp_path):
    store = Store.open(tmp_path / "nas.db")
    search = Search.create(store, QUICK, SearchOptions(trials=12, seed=1, train_overrides={"steps": 20}), name="r12")
    d = RayDispatcher(max_retries=1)
    assert d.capacity == 2
    progress = search.run(dispatcher=d)
    assert progress.completed == 12 and progress.done == 12
    trials = assert_consistent(store, "r12", 12)
    assert {t.status for t in trials} == {"completed"}
    assert all(t.host and t.attempt == 1 and t.started_at and t.objective is not None for t in trials)
    assert all(store.curve(t.id) for t in trials)
    assert store.get_search("r12").status == "completed"
    assert ray.is_initialized()  # a Ray the dispatcher did not start is left running


def test_a_started_message_after_its_result_does_not_reopen_the_trial(ray_address, tmp_path):
    """A trial can end between the driver's read of the message channel and its sweep of
    finished tasks, so its "started" message arrives after its result was recorded (seen in
    CI under load: a failed trial back to 'running', its error cleared). Such a message is
    dropped; a trial whose result came first is still recorded as started (host, attempt)."""
    d = RayDispatcher(noop=True)
    seen = []
    d._deliver([("started", 10**6, 1, {"host": "h", "gpu": None})], seen.append)  # no such flight (any more)
    assert seen == []
    store = Store.open(tmp_path / "nas.db")
    search = Search.create(store, QUICK, SearchOptions(trials=40, seed=3), name="instant")
    search.run(dispatcher=d)  # noop trials end at once: the race's window, many times over
    trials = assert_consistent(store, "instant", 40)
    assert {t.status for t in trials} == {"completed"}
    assert all(t.host and t.started_at and t.attempt == 1 for t in trials)


def test_killed_worker_is_retried_then_failed_with_its_reason(ray_address, tmp_path):
    store = Store.open(tmp_path / "nas.db")
    search = Search.create(store, QUICK, SearchOptions(trials=4, seed=2, train_overrides={"steps": 120}), name="kill")
    first: dict[str, int] = {}
    pids: dict[int, int] = {}
    killed: list[tuple[int, int]] = []

    def hook(d, ev):
        if ev.kind == "started":
            pids[ev.trial_id] = ev.pid
            first.setdefault("always", ev.trial_id)  # the first trial dies on every attempt
            if ev.trial_id != first["always"]:
                first.setdefault("once", ev.trial_id)  # the second one on its first attempt only
        elif ev.kind == "report":
            if ev.trial_id == first.get("always") or (ev.trial_id == first.get("once") and ev.attempt == 1):
                killed.append((ev.trial_id, ev.attempt))
                os.kill(pids[ev.trial_id], signal.SIGKILL)

    search.run(dispatcher=Hooked(hook, max_retries=1))
    trials = {t.id: t for t in assert_consistent(store, "kill", 4)}
    always, once = trials[first["always"]], trials[first["once"]]
    assert always.status == "failed" and always.attempt == 2
    assert "WorkerCrashedError" in always.error and "--max-retries 1" in always.error
    assert once.status == "completed" and once.attempt == 2
    assert (first["always"], 1) in killed and (first["always"], 2) in killed
    assert sum(t.status == "completed" for t in trials.values()) == 3


def test_raising_diverging_and_memory_hungry_trials_are_recorded(ray_address, tmp_path):
    store = Store.open(tmp_path / "nas.db")
    search = Search.create(store, FAULTS, SearchOptions(trials=6), name="faults")
    ok = {"model.hidden": 0, "model.tie_weights": 0, "train.lr": 0}
    search.controller = Scripted(search.space, [ok, {**ok, "model.tie_weights": 1}, {**ok, "train.lr": 1},
                                                {**ok, "model.hidden": 1}, ok, ok])
    search.run(dispatcher=RayDispatcher(memory_per_trial=256 * 2**20, max_retries=1))
    trials = assert_consistent(store, "faults", 6)
    by = {t.trial_index: t for t in trials}
    assert by[1].status == "failed" and "tie_weights" in by[1].error and by[1].attempt == 1
    assert by[2].status == "diverged" and by[2].diverged_step is not None
    assert by[3].status == "failed" and by[3].error.startswith("out of memory (limit: --memory-per-trial 256M)")
    assert by[3].attempt == 1  # not retried: the trial failed, not its worker
    assert [by[i].status for i in (0, 4, 5)] == ["completed"] * 3


def _total_steps(store: Store, name: str) -> float:
    return sum(t.metrics["steps"] for t in store.trials(name))


def test_asha_prunes_poor_trials_and_trains_fewer_steps(ray_address, tmp_path):
    store = Store.open(tmp_path / "nas.db")
    base = dict(trials=12, seed=5)
    Search.create(store, FIDELITY, SearchOptions(**base), name="full").run(dispatcher=RayDispatcher())
    asha = SearchOptions(**base, scheduler="asha", scheduler_options={"grace_period": 30, "reduction_factor": 2})
    Search.create(store, FIDELITY, asha, name="asha").run(dispatcher=RayDispatcher())
    full = assert_consistent(store, "full", 12)
    pruned = [t for t in assert_consistent(store, "asha", 12) if t.status == "pruned"]
    assert {t.status for t in full} == {"completed"}
    assert pruned, "ASHA pruned nothing"
    assert all(t.metrics["steps"] in (30, 60) for t in pruned)  # stopped at a rung
    assert all(max(s for s, _ in store.curve(t.id)) in (30, 60) for t in pruned)
    assert _total_steps(store, "asha") < _total_steps(store, "full")
    # the pruned ones were poor: on average worse at the rung than the trials that went on
    useless = [t for t in pruned if t.hyperparameters["train.lr"] <= 1e-4]
    assert useless
    hb = SearchOptions(**base, scheduler="hyperband", scheduler_options={"grace_period": 20, "reduction_factor": 2})
    Search.create(store, FIDELITY, hb, name="hb").run(dispatcher=RayDispatcher())
    assert_consistent(store, "hb", 12)
    assert _total_steps(store, "hb") < _total_steps(store, "full")


# --------------------------------------------------------------------------- the CLI


def nas(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nas", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300, **kw)


def _interruptible() -> None:
    # a job started in the background by a non-interactive shell inherits SIGINT ignored, and
    # Python then installs no KeyboardInterrupt handler: give the child the default, as a terminal would
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nas", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT, preexec_fn=_interruptible)


def wait_for(pred, timeout: float = 120.0, proc: subprocess.Popen | None = None):
    end = time.time() + timeout
    while time.time() < end:
        value = pred()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the search ended early ({proc.returncode}):\n{out}\n{err}")
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_driver_sigkill_then_resume_finishes_without_rerunning(ray_address, tmp_path):
    db = str(tmp_path / "nas.db")
    n = 8
    proc = spawn("search", "run", str(QUICK), "--trials", str(n), "--steps", "150", "--seed", "3", "--name", "k",
                 "--ray-address", ray_address, "--db", db)
    store = Store.open(db)

    def two_done():
        if store.get_search("k") is None:
            return None
        done = store.trials("k", status="completed")
        return done if len(done) >= 2 else None

    wait_for(two_done, proc=proc)
    st = nas("search", "status", "k", "--db", db)  # from another terminal, while it runs
    assert st.returncode == 0 and "(running)" in st.stdout and "completed" in st.stdout, st.stdout + st.stderr
    ls = nas("search", "list", "--db", db)
    assert ls.returncode == 0 and "k" in ls.stdout
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    before = {t.id: t.finished_at for t in store.trials("k") if t.status in TERMINAL}
    assert len(before) >= 2
    left = store.trials("k", status=("pending", "running"))
    assert left, "the driver was killed after every trial finished"
    r = nas("search", "resume", "k", "--ray-address", ray_address, "--db", db)
    assert r.returncode == 0, r.stdout + r.stderr
    trials = assert_consistent(store, "k", n)
    assert {t.status for t in trials} == {"completed"}
    for t in trials:
        if t.id in before:
            assert t.finished_at == before[t.id], f"trial {t.trial_index} was rerun"
    assert {t.id for t in left} <= {t.id for t in trials}
    assert all(t.attempt >= 2 for t in trials if t.id in {x.id for x in left if x.status == "running"})
    assert store.get_search("k").status == "completed"


def test_ctrl_c_cancels_marks_and_says_how_to_resume(ray_address, tmp_path):
    db = str(tmp_path / "nas.db")
    proc = spawn("search", "run", str(QUICK), "--trials", "6", "--steps", "150", "--name", "c",
                 "--ray-address", ray_address, "--db", db, "--max-concurrent", "2")
    store = Store.open(db)
    wait_for(lambda: store.get_search("c") is not None and len(store.trials("c", status="completed")) >= 1
             and len(store.trials("c", status="running")) >= 1, proc=proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert "nas search resume c" in out and "Traceback" not in out + err
    # the cancelled trials' workers are gone: the cluster has its CPUs back
    wait_for(lambda: ray.available_resources().get("CPU", 0.0) >= 2.0, timeout=20)
    trials = store.trials("c")
    assert not [t for t in trials if t.status == "running"]
    cancelled = [t for t in trials if t.status == "pending" and t.error and "Ctrl-C" in t.error]
    assert cancelled
    assert store.get_search("c").status == "stopped"
    r = nas("search", "resume", "c", "--ray-address", ray_address, "--db", db)
    assert r.returncode == 0, r.stdout + r.stderr
    assert {t.status for t in assert_consistent(store, "c", 6)} == {"completed"}


def test_time_budget_stops_cleanly(ray_address, tmp_path):
    db = str(tmp_path / "nas.db")
    r = nas("search", "run", str(QUICK), "--trials", "40", "--steps", "150", "--name", "tb", "--time-budget", "6s",
            "--ray-address", ray_address, "--db", db)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "time budget" in r.stdout and "nas search resume tb" in r.stdout
    store = Store.open(db)
    trials = store.trials("tb")
    assert 0 < len(trials) < 40
    assert not [t for t in trials if t.status == "running"]
    assert store.get_search("tb").status == "stopped"
    assert sorted(t.trial_index for t in trials) == list(range(len(trials)))


def test_bad_dispatch_flags_are_exit_2_before_anything_is_recorded(ray_address, tmp_path):
    db = str(tmp_path / "nas.db")
    for args, text in ((["--time-budget", "2x"], "--time-budget"), (["--memory-per-trial", "lots"], "--memory-per-trial"),
                       (["--scheduler", "fifo"], "--scheduler"),
                       (["--gpus-per-trial", "1", "--ray-address", ray_address], "no trial fits"),
                       (["--dispatcher", "local", "--gpus-per-trial", "0.5"], "need(s) Ray"),
                       (["--ray-address", "127.0.0.1:1"], "cannot reach the Ray cluster")):
        r = nas("search", "run", str(QUICK), "--trials", "2", "--db", db, *args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert text in r.stderr and "Traceback" not in r.stderr
    assert Store.open(db).list_searches() == []


def test_durations_and_sizes_parse():
    from nas.cli.search_cmd import parse_duration, parse_size

    assert parse_duration("90s") == 90 and parse_duration("15m") == 900 and parse_duration("2h") == 7200
    assert parse_duration("1h30m") == 5400 and parse_duration("45") == 45
    assert parse_size("512M") == 512 * 2**20 and parse_size("2G") == 2 * 2**30 and parse_size("1.5GiB") == 3 * 2**29


@pytest.mark.skipif(not os.environ.get("NAS_TEST_PG_URL"), reason="NAS_TEST_PG_URL is not set "
                    "(export NAS_TEST_PG_URL=$(bash tests/pg_server.sh start))")
def test_search_through_ray_into_postgresql(ray_address):
    import uuid

    url = os.environ["NAS_TEST_PG_URL"]
    name = f"pg-{uuid.uuid4().hex[:8]}"
    r = nas("search", "run", str(QUICK), "--trials", "4", "--steps", "20", "--name", name,
            "--ray-address", ray_address, "--db", url, "--scheduler", "asha")
    assert r.returncode == 0, r.stdout + r.stderr
    st = nas("search", "status", name, "--db", url)
    assert st.returncode == 0 and "done 4 of 4" in st.stdout, st.stdout + st.stderr
    assert_consistent(Store.open(url), name, 4)


def test_darts_supernet_job_runs_as_a_ray_task(ray_address, tmp_path) -> None:
    """`--controller darts` on Ray: the supernet job streams its history from a Ray task,
    then the derived cell trains as an ordinary trial; the same as in-process."""
    spaces = Path(__file__).resolve().parents[1] / "searchspaces"
    store = Store.open(tmp_path / "nas.db")
    opts = SearchOptions(trials=1, controller="darts", seed=1, train_overrides={"steps": 5},
                         controller_options={"steps": 6, "log_every": 2, "checkpoint_every": 3,
                                             "w_optimizer": "space"})
    search = Search.create(store, spaces / "quickstart.cell", opts, name="darts-ray")
    search.run(dispatcher=RayDispatcher(max_retries=1))
    sup, derived = sorted(store.trials("darts-ray"), key=lambda t: t.trial_index)
    assert sup.status == "completed" and sup.assignment is None and sup.host
    assert [st for st, _ in store.curve(sup.id)] == [2, 4, 6]
    assert derived.status == "completed" and derived.assignment == search.controller.derived
