"""Tests of nas.storage (the results database). CPU only, fast.

Every back-end test runs on SQLite (a tmp_path file) and, when NAS_TEST_PG_URL
is set, on PostgreSQL too (a fresh database per test):

    export NAS_TEST_PG_URL=$(tests/pg_server.sh start)
"""

from __future__ import annotations

import importlib
import json
import math
import os
import sqlite3
import subprocess
import sys
import textwrap
import uuid
from datetime import timezone
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Until the project is pip-installed, `nas.storage` may not resolve: alias the
# `storage/` folder under that name (it only uses relative imports).
_SHIM = f"""
import sys, importlib
try:
    import nas.storage
except ImportError:
    sys.path.insert(0, {str(ROOT)!r})
    sys.modules["nas.storage"] = importlib.import_module("storage")
"""
exec(_SHIM)

import nas.storage as ns  # noqa: E402
from nas.storage import StorageError, Store  # noqa: E402

models = importlib.import_module(ns.__name__ + ".models")
engine_mod = importlib.import_module(ns.__name__ + ".engine")

import sqlalchemy as sa  # noqa: E402
from dbutil import PG_SKIP, PG_URL, throwaway_db_url  # noqa: E402



# ------------------------------------------------------------------ fixtures


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.skipif(not PG_URL, reason=PG_SKIP))])
def backend(request):
    return request.param


@pytest.fixture
def db_url(backend, tmp_path):
    """A URL of an empty database of the back end."""
    yield from throwaway_db_url(backend, tmp_path, "nas_test_")


@pytest.fixture
def store(db_url):
    s = Store.open(db_url)
    yield s
    s.close()


def _search(store, name="s1", **kw):
    args = dict(space_name="quickstart", space_text="cell {}", space_hash="sh", controller="random",
                controller_config={"n": 1}, task="parity(length=20)", seed=7,
                config={"budget": 10, "trials": 5})
    args.update(kw)
    return store.create_search(name, **args)


def _trial(store, search, arch_hash="a0", config_hash=None, **kw):
    aid = store.get_or_create_architecture(arch_hash, space_name="quickstart",
                                           ir_json={"hash": arch_hash}, dsl_text=f"cell {arch_hash}")
    return store.add_trial(search, architecture_id=aid, assignment={"op": 1},
                           hyperparameters={"lr": 0.01}, config_hash=config_hash or uuid.uuid4().hex, **kw)


def _done(store, search, objective, metrics=None, status="completed", **kw):
    t = _trial(store, search, **kw)
    store.start_trial(t.id, host="h", gpu=0, attempt=1)
    store.finish_trial(t.id, status=status, metrics=metrics or {"loss": objective}, objective=objective)
    return t.id


def _engine(url):
    return sa.create_engine(url, poolclass=sa.pool.NullPool)


# --------------------------------------------------------------- open/create


def test_open_creates_schema_at_head(db_url, backend):
    with Store.open(db_url) as st:
        assert st.dialect == backend
        assert st.list_searches() == []
    eng = _engine(db_url)
    with eng.connect() as c:
        tables = set(sa.inspect(c).get_table_names())
        assert {"search", "architecture", "trial", "trial_step", "controller_checkpoint",
                "alembic_version"} <= tables
        assert c.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all() == list(
            ns.head_revisions())
        if backend == "sqlite":
            assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    eng.dispose()


def test_migration_matches_models(db_url):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    Store.open(db_url).close()
    eng = _engine(db_url)
    with eng.connect() as c:
        mc = MigrationContext.configure(c, opts={"compare_type": True})
        diff = compare_metadata(mc, models.Base.metadata)
    eng.dispose()
    assert diff == []


def test_path_forms_and_env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NAS_DB", raising=False)
    with Store.open() as st:  # default: ./nas.db
        assert st.path == tmp_path / "nas.db"
    assert (tmp_path / "nas.db").exists()
    (tmp_path / "sub").mkdir()
    with Store.open("sub/x.db") as st:  # bare relative path
        assert st.path == tmp_path / "sub" / "x.db"
        assert st.url.startswith("sqlite:///")
    monkeypatch.setenv("NAS_DB", str(tmp_path / "env.db"))
    with Store.open() as st:
        assert st.path == tmp_path / "env.db"
    with Store.open(tmp_path / "pathlike.db") as st:
        assert st.path == tmp_path / "pathlike.db"


def test_in_memory_sqlite():
    with Store.open("sqlite://") as st:
        s = _search(st)
        _done(st, s.id, 1.0)
        assert st.counts(s.id)["completed"] == 1


def test_reopen_existing(db_url):
    with Store.open(db_url) as st:
        s = _search(st)
        _done(st, s.name, 0.5)
    with Store.open(db_url, create=False, upgrade=False) as st:
        assert st.get_search("s1").id == s.id
        assert [t.objective for t in st.trials("s1")] == [0.5]


def test_open_missing_without_create(tmp_path):
    p = tmp_path / "missing.db"
    with pytest.raises(StorageError, match="no database at"):
        Store.open(str(p), create=False)
    assert not p.exists()


def test_open_empty_db_without_create(db_url):
    if db_url.startswith("sqlite"):
        Path(db_url[len("sqlite:///"):]).touch()
    with pytest.raises(StorageError, match="no cellsearch schema"):
        Store.open(db_url, create=False)


def _stamp(url, rev):
    eng = _engine(url)
    with eng.begin() as c:
        c.execute(sa.text("UPDATE alembic_version SET version_num = :r"), {"r": rev})
    eng.dispose()


def _dir_state(path: Path):
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in path.parent.iterdir()}


def test_newer_revision_refused_and_untouched(db_url, backend):
    Store.open(db_url).close()
    if backend == "sqlite":
        path = Path(db_url[len("sqlite:///"):])
        con = sqlite3.connect(path)
        con.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")
        con.commit()
        con.close()
        before = _dir_state(path)
    else:
        _stamp(db_url, "9999_from_the_future")
    with pytest.raises(StorageError) as ei:
        Store.open(db_url)
    msg = str(ei.value)
    assert "9999_from_the_future" in msg and "newer" in msg and "upgrade cellsearch" in msg
    assert ei.value.__cause__ is None  # no SQLAlchemy traceback chained
    if backend == "sqlite":
        assert _dir_state(path) == before
    eng = _engine(db_url)
    with eng.connect() as c:
        assert c.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == "9999_from_the_future"
    eng.dispose()


def test_older_revision_upgrade(db_url):
    from alembic import command

    with Store.open(db_url) as st:
        _search(st)
    command.downgrade(ns.alembic_config(db_url), "base")  # schema back to "before 0001"
    with pytest.raises(StorageError, match="upgrade=True"):
        Store.open(db_url, upgrade=False)
    with Store.open(db_url) as st:
        assert st.list_searches() == []
        _search(st)


def test_not_a_database(tmp_path):
    p = tmp_path / "notes.db"
    p.write_bytes(b"this is a text file, not SQLite\n" * 200)
    before = _dir_state(p)
    with pytest.raises(StorageError, match="not an SQLite database") as ei:
        Store.open(str(p))
    assert str(p) in str(ei.value)
    assert ei.value.__cause__ is None
    assert _dir_state(p) == before


def test_foreign_sqlite_database(tmp_path):
    p = tmp_path / "other.db"
    con = sqlite3.connect(p)
    con.execute("CREATE TABLE stuff (x)")
    con.commit()
    con.close()
    before = p.read_bytes()
    with pytest.raises(StorageError, match="not a cellsearch results database"):
        Store.open(str(p))
    assert p.read_bytes() == before


@pytest.mark.parametrize("url", [
    "sqlite:/one-slash.db",
    "postgresql+psycopg://user:secret@host:notaport/db",
    "foo://bar",
    "mysql://u@h/db",
    "postgresql:",
    "   ",
])
def test_malformed_urls(url, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StorageError) as ei:
        Store.open(url)
    assert ei.value.hint
    assert "secret" not in str(ei.value)
    assert list(tmp_path.iterdir()) == []


def test_unusable_paths(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(StorageError, match="is not a directory"):
        Store.open(str(f / "x.db"))
    with pytest.raises(StorageError, match="does not exist"):
        Store.open(str(tmp_path / "no" / "such" / "dir.db"))
    with pytest.raises(StorageError, match="is a directory"):
        Store.open(str(tmp_path))


def test_unreachable_postgres():
    with pytest.raises(StorageError, match="cannot use the PostgreSQL database") as ei:
        Store.open("postgresql+psycopg://nobody:pw@127.0.0.1:1/nas?connect_timeout=2")
    assert "pw" not in str(ei.value).replace("password", "")


def test_closed_store(tmp_path):
    st = Store.open(str(tmp_path / "c.db"))
    st.close()
    st.close()
    with pytest.raises(StorageError, match="closed"):
        st.list_searches()


def test_storage_imports_no_torch_ray_or_nas():
    code = _SHIM + textwrap.dedent("""
        import nas.storage, sys
        bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'ray')
               or (m.startswith('nas.') and not m.startswith('nas.storage'))]
        print(bad)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------- content


def test_search_lifecycle(store):
    s = _search(store)
    assert s.status == "created" and s.seed == 7 and s.config == {"budget": 10, "trials": 5}
    assert s.created_at.tzinfo is not None and s.created_at.utcoffset().total_seconds() == 0
    with pytest.raises(StorageError, match="already exists"):
        _search(store)
    _search(store, "s2", seed=2**62)
    assert [x.name for x in store.list_searches()] == ["s1", "s2"]
    assert store.get_search("s2").seed == 2**62
    assert store.get_search(s.id).name == "s1"
    assert store.get_search("nope") is None
    store.set_search_status("s1", "running")
    got = store.get_search("s1")
    assert got.status == "running" and got.updated_at >= s.updated_at
    with pytest.raises(StorageError, match="unknown search status"):
        store.set_search_status("s1", "bogus")
    with pytest.raises(StorageError, match="no search"):
        store.set_search_status("nope", "running")


def test_architecture_dedup(store):
    a = store.get_or_create_architecture("h1", space_name="q", ir_json={"nodes": [1, 2]}, dsl_text="cell")
    b = store.get_or_create_architecture("h1", space_name="other", ir_json={"x": 1})
    c = store.get_or_create_architecture("h2", ir_json=None)
    assert a == b != c
    rec = store.get_architecture("h1")
    assert rec.id == a and rec.ir_json == {"nodes": [1, 2]} and rec.space_name == "q"
    assert store.get_architecture(c).canonical_hash == "h2"
    assert store.get_architecture("h3") is None


def test_trial_lifecycle(store):
    s = _search(store)
    t0 = _trial(store, s.id, config_hash="c0", budget=0.5)
    t1 = _trial(store, "s1", arch_hash="a1")
    assert (t0.trial_index, t1.trial_index) == (0, 1)
    assert t0.status == "pending" and t0.budget == 0.5 and t0.architecture_hash == "a0"
    assert t0.dsl_text == "cell a0" and t0.search_name == "s1" and t0.assignment == {"op": 1}
    store.start_trial(t0.id, host="node1", gpu=3, attempt=1)
    r = store.get_trial(t0.id)
    assert (r.status, r.host, r.gpu, r.attempt) == ("running", "node1", "3", 1)
    assert r.started_at.tzinfo is not None
    store.finish_trial(t0.id, status="completed",
                       metrics={"loss": 0.25, "acc": 0.9, "bad": float("nan"), "curve": (1, 2)},
                       objective=0.25)
    r = store.get_trial(t0.id)
    assert r.status == "completed" and r.objective == 0.25
    assert r.metrics == {"loss": 0.25, "acc": 0.9, "bad": None, "curve": [1, 2]}
    assert r.finished_at >= r.started_at and r.wall_time_s is not None and r.wall_time_s >= 0
    store.start_trial(t1.id, host="node2", gpu=None, attempt=1)
    store.finish_trial(t1.id, status="diverged", metrics={"loss": float("inf")}, objective=float("nan"),
                       error="loss is nan", diverged_step=17, wall_time_s=1.5)
    r = store.get_trial(t1.id)
    assert r.objective is None and r.diverged_step == 17 and r.error == "loss is nan"
    assert r.wall_time_s == 1.5 and r.metrics == {"loss": None}
    # a retry clears the earlier attempt
    store.start_trial(t1.id, host="node3", gpu="cuda:1", attempt=2)
    r = store.get_trial(t1.id)
    assert (r.status, r.attempt, r.error, r.metrics, r.gpu) == ("running", 2, None, None, "cuda:1")
    with pytest.raises(StorageError, match="unknown final trial status"):
        store.finish_trial(t1.id, status="running", metrics={}, objective=None)
    with pytest.raises(StorageError, match="no trial"):
        store.start_trial(10**6, host="h", gpu=0, attempt=1)
    with pytest.raises(StorageError, match="no search"):
        _trial(store, "nope")
    assert [t.trial_index for t in store.trials("s1")] == [0, 1]
    assert [t.id for t in store.trials(status="running")] == [t1.id]
    assert [t.id for t in store.trials(s.id, status=["completed", "running"])] == [t0.id, t1.id]


def test_json_conversion(store):
    class Scalar:  # numpy-like
        def item(self):
            return 1.5

    class Weird:
        pass

    s = _search(store)
    t = _trial(store, s.id)
    store.finish_trial(t.id, status="completed", metrics={"x": Scalar(), 3: "int key"}, objective=Scalar())
    r = store.get_trial(t.id)
    assert r.metrics == {"x": 1.5, "3": "int key"} and r.objective == 1.5
    with pytest.raises(StorageError, match=r"\$\.w"):
        store.finish_trial(t.id, status="completed", metrics={"w": Weird()}, objective=1.0)


def test_find_result_and_reuse(store):
    s = _search(store)
    assert store.find_result("cfg") is None
    t = _trial(store, s.id, config_hash="cfg")
    assert store.find_result("cfg") is None  # pending is not a result
    store.start_trial(t.id, host="h", gpu=0, attempt=1)
    store.finish_trial(t.id, status="failed", metrics=None, objective=None, error="boom")
    assert store.find_result("cfg") is None
    store.start_trial(t.id, host="h", gpu=0, attempt=2)
    store.finish_trial(t.id, status="completed", metrics={"loss": 0.3}, objective=0.3)
    found = store.find_result("cfg")
    assert found.id == t.id and found.objective == 0.3
    s2 = _search(store, "s2")
    r = store.add_trial(s2.id, architecture_id=found.architecture_id, assignment={}, hyperparameters={},
                        config_hash="cfg", reused_from_trial_id=found.id)
    assert r.status == "completed" and r.objective == 0.3 and r.reused_from_trial_id == t.id
    assert r.wall_time_s == 0.0 and r.metrics == {"loss": 0.3}
    r2 = store.add_trial(s2.id, architecture_id=None, assignment={}, hyperparameters={},
                         config_hash="cfg", reused_from_trial_id=r.id)
    assert r2.reused_from_trial_id == t.id  # points at the original
    assert store.find_result("cfg").id == t.id
    other = _trial(store, s.id)
    with pytest.raises(StorageError, match="cannot reuse"):
        store.add_trial(s2.id, architecture_id=None, assignment={}, hyperparameters={},
                        config_hash="x", reused_from_trial_id=other.id)


def test_top_by_objective(store):
    s = _search(store)
    objs = [0.5, None, 0.1, float("nan"), 0.9, -1.0, 0.1, float("inf")]
    ids = [_done(store, s.id, o) for o in objs]
    _done(store, s.id, -100.0, status="failed")
    other = _search(store, "s2")
    _done(store, other.id, -50.0)

    def top(**kw):
        return [(t.objective, t.id) for t in store.top("s1", k=None, **kw)]

    expected_min = [(-1.0, ids[5]), (0.1, ids[2]), (0.1, ids[6]), (0.5, ids[0]), (0.9, ids[4]),
                    (math.inf, ids[7]), (None, ids[1]), (None, ids[3])]
    assert top() == expected_min
    expected_max = [(math.inf, ids[7]), (0.9, ids[4]), (0.5, ids[0]), (0.1, ids[2]), (0.1, ids[6]),
                    (-1.0, ids[5]), (None, ids[1]), (None, ids[3])]
    assert top(mode="max") == expected_max
    assert [t.id for t in store.top("s1", k=3)] == [ids[5], ids[2], ids[6]]
    assert [t.objective for t in store.top(k=2)] == [-50.0, -1.0]  # across searches
    assert [t.objective for t in store.top("s1", k=1, status=None)] == [-100.0]
    assert [t.objective for t in store.top("s1", k=1, status="failed")] == [-100.0]
    assert store.top("s1", k=0) == []
    with pytest.raises(StorageError, match="mode"):
        store.top("s1", mode="best")


def test_top_by_json_metric(store):
    s = _search(store)
    rows = [
        {"acc": 0.7, "val": {"ppl": 120.0}},
        {"acc": 0.9, "val": {"ppl": 80.0}},
        {"acc": None, "val": {"ppl": float("nan")}},
        {"val": {}},
        {"acc": 0.9, "val": {"ppl": 95.0}},
        {"acc": "high"},
        {"acc": True},
        {"acc": 0.1, "val": {"ppl": 300}},
    ]
    ids = [_done(store, s.id, float(i), metrics=m) for i, m in enumerate(rows)]
    acc_max = [t.id for t in store.top("s1", metric="acc", mode="max", k=None)]
    assert acc_max == [ids[1], ids[4], ids[0], ids[7], ids[2], ids[3], ids[5], ids[6]]
    acc_min = [t.id for t in store.top("s1", metric="acc", mode="min", k=3)]
    assert acc_min == [ids[7], ids[0], ids[1]]
    ppl = [t.id for t in store.top("s1", metric="val.ppl", mode="min", k=None)]
    assert ppl[:4] == [ids[1], ids[4], ids[0], ids[7]] and set(ppl[4:]) == {ids[2], ids[3], ids[5], ids[6]}
    assert ppl[4:] == sorted(ppl[4:])


def test_steps_round_trip(store):
    s = _search(store)
    t = _trial(store, s.id)
    store.start_trial(t.id, host="h", gpu=0, attempt=1)
    assert store.curve(t.id) == []
    store.record_steps(t.id, [(10, {"loss": 2.0}), (0, {"loss": 3.0})])
    store.record_steps(t.id, [(20, {"loss": 1.0, "lr": 0.1}), (10, {"loss": 1.9})])  # 10 replaced
    store.record_steps(t.id, [])
    assert store.curve(t.id) == [(0, {"loss": 3.0}), (10, {"loss": 1.9}), (20, {"loss": 1.0, "lr": 0.1})]
    many = [(i, {"loss": 1.0 / (i + 1)}) for i in range(100, 1300)]
    store.record_steps(t.id, many)
    c = store.curve(t.id)
    assert len(c) == 3 + 1200 and c[-1] == (1299, {"loss": 1.0 / 1300})
    with pytest.raises(StorageError, match="no trial"):
        store.record_steps(10**6, [(0, {})])
    store.start_trial(t.id, host="h", gpu=0, attempt=2)  # a new attempt starts a new curve
    assert store.curve(t.id) == []


def test_checkpoints(store):
    s = _search(store)
    assert store.latest_checkpoint(s.id) is None
    for n in (1, 2, 3):
        store.save_checkpoint(s.id, n, bytes([n]) * 1000 + b"\x00\xff")
    cp = store.latest_checkpoint("s1")
    assert cp.n_told == 3 and cp.state == b"\x03" * 1000 + b"\x00\xff" and cp.created_at.tzinfo
    store.save_checkpoint("s1", 4, b"four", keep=2)
    assert store.latest_checkpoint(s.id).state == b"four"
    eng = _engine(store._target.url.render_as_string(hide_password=False))
    with eng.connect() as c:
        assert c.execute(sa.text("SELECT n_told FROM controller_checkpoint ORDER BY id")).scalars().all() == [3, 4]
    eng.dispose()
    with pytest.raises(StorageError, match="bytes"):
        store.save_checkpoint(s.id, 5, "not bytes")


def test_counts_and_mark_running(store):
    s = _search(store)
    s2 = _search(store, "s2")
    ts = [_trial(store, s.id) for _ in range(5)]
    other = _trial(store, s2.id)
    for t in ts[:3] + [other]:
        store.start_trial(t.id, host="h", gpu=0, attempt=1)
    store.finish_trial(ts[0].id, status="completed", metrics={}, objective=1.0)
    assert store.counts(s.id) == {"pending": 2, "running": 2, "completed": 1, "failed": 0,
                                  "diverged": 0, "pruned": 0}
    assert store.mark_running_as(s.id) == 2
    c = store.counts("s1")
    assert c["running"] == 0 and c["failed"] == 2
    r = store.get_trial(ts[1].id)
    assert r.error and "interrupted" in r.error and r.finished_at is not None
    assert store.counts(s2.id)["running"] == 1  # other searches untouched
    assert store.mark_running_as(s2.id, status="pending", error=None) == 1
    assert store.counts(s2.id)["pending"] == 1
    assert sum(store.counts().values()) == 6
    with pytest.raises(StorageError):
        store.mark_running_as(s.id, status="running")


# ------------------------------------------------------------- concurrency

_WORKER = _SHIM + textwrap.dedent("""
    import json, sys, time, os
    from nas.storage import Store
    role, url, search, n, done_file, tag = sys.argv[1:7]
    n = int(n)
    st = Store.open(url)
    if role == "writer":
        for i in range(n):
            aid = st.get_or_create_architecture(f"arch{i % 37}", space_name="q", ir_json={"i": i % 37})
            t = st.add_trial(search, architecture_id=aid, assignment={"i": i, "w": tag},
                             hyperparameters={}, config_hash=f"{tag}-{i}")
            st.start_trial(t.id, host=tag, gpu=0, attempt=1)
            st.record_steps(t.id, [(s, {"loss": 1.0 / (s + 1)}) for s in range(3)])
            st.finish_trial(t.id, status="completed", metrics={"loss": (i * 7919) % 1000 / 1000.0},
                            objective=(i * 7919) % 1000 / 1000.0)
        print(json.dumps({"written": n}))
    else:
        loops, last, errors = 0, -1, []
        while True:
            finished = os.path.exists(done_file)
            try:
                top = st.top(search, k=10)
                objs = [t.objective for t in top]
                if objs != sorted(objs):
                    errors.append(f"unsorted top: {objs}")
                done = st.counts(search)["completed"]
                if done < last:
                    errors.append(f"completed count went back from {last} to {done}")
                last = done
            except Exception as e:
                errors.append(repr(e))
            loops += 1
            if finished:
                break
        print(json.dumps({"loops": loops, "last": last, "errors": errors[:5]}))
    st.close()
""")


def _spawn(*args):
    return subprocess.Popen([sys.executable, "-c", _WORKER, *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run_concurrent(db_url, tmp_path, writers):
    with Store.open(db_url) as st:
        _search(st, "conc")
    done_file = tmp_path / "writers-done"
    reader = _spawn("reader", db_url, "conc", 0, done_file, "r")
    procs = [_spawn("writer", db_url, "conc", n, done_file, f"w{j}") for j, n in enumerate(writers)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        assert "locked" not in err
        outs.append(json.loads(out))
    done_file.touch()
    out, err = reader.communicate(timeout=120)
    assert reader.returncode == 0, err[-3000:]
    res = json.loads(out)
    assert res["errors"] == []
    assert res["loops"] >= 5  # the reader really ran alongside the writers
    total = sum(writers)
    assert res["last"] == total
    with Store.open(db_url) as st:
        trials = st.trials("conc")
        assert len(trials) == total
        assert sorted(t.trial_index for t in trials) == list(range(total))
        assert all(t.status == "completed" for t in trials)
        assert len({t.config_hash for t in trials}) == total
        assert st.counts("conc")["completed"] == total
        assert all(len(st.curve(t.id)) == 3 for t in trials[:20])
        assert len({t.architecture_id for t in trials}) == 37
    return res


def test_writer_and_reader_processes(db_url, tmp_path):
    _run_concurrent(db_url, tmp_path, [300])


def test_two_writers_and_a_reader(db_url, tmp_path):
    _run_concurrent(db_url, tmp_path, [150, 150])
