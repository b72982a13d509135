"""Schema migrations: a database written at the previous revision (0001_initial)
upgrades with its data intact, through `nas db upgrade` and through Store.open;
`nas results` refuses it (exit 2, the command to run) without touching it.

SQLite always; PostgreSQL too when NAS_TEST_PG_URL is set
(export NAS_TEST_PG_URL=$(bash tests/pg_server.sh start)).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from dbutil import PG_SKIP, PG_URL, throwaway_db_url
from alembic import command

import nas.results as results
from nas.errors import UserError
from nas.storage import SchemaVersionError, Store, alembic_config, head_revisions, schema_status


PREVIOUS = "0001_initial"
NEW_INDEXES = {("trial", "ix_trial_status"), ("trial", "ix_trial_reused_from_trial_id"),
               ("search", "ix_search_space_name")}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.skipif(not PG_URL, reason=PG_SKIP))])
def db_url(request, tmp_path):
    yield from throwaway_db_url(request.param, tmp_path, "nas_mig_")


# Revision 0001's tables as plain SQLAlchemy Core (independent of nas.storage.models).
_md = sa.MetaData()
T = {
    "search": sa.Table("search", _md, sa.Column("id", sa.Integer), sa.Column("name", sa.String),
                       sa.Column("space_name", sa.String), sa.Column("space_text", sa.Text),
                       sa.Column("space_hash", sa.String), sa.Column("controller", sa.String),
                       sa.Column("controller_config", sa.JSON), sa.Column("task", sa.Text),
                       sa.Column("seed", sa.BigInteger), sa.Column("status", sa.String),
                       sa.Column("created_at", sa.DateTime(timezone=True)),
                       sa.Column("updated_at", sa.DateTime(timezone=True)), sa.Column("config", sa.JSON)),
    "architecture": sa.Table("architecture", _md, sa.Column("id", sa.Integer), sa.Column("canonical_hash", sa.String),
                             sa.Column("space_name", sa.String), sa.Column("ir_json", sa.JSON),
                             sa.Column("dsl_text", sa.Text), sa.Column("created_at", sa.DateTime(timezone=True))),
    "trial": sa.Table("trial", _md, *[sa.Column(c, t) for c, t in [
        ("id", sa.Integer), ("search_id", sa.Integer), ("architecture_id", sa.Integer), ("trial_index", sa.Integer),
        ("assignment", sa.JSON), ("hyperparameters", sa.JSON), ("config_hash", sa.String), ("status", sa.String),
        ("metrics", sa.JSON), ("objective", sa.Float), ("error", sa.Text), ("diverged_step", sa.Integer),
        ("host", sa.String), ("gpu", sa.String), ("attempt", sa.Integer), ("budget", sa.Float),
        ("created_at", sa.DateTime(timezone=True)), ("started_at", sa.DateTime(timezone=True)),
        ("finished_at", sa.DateTime(timezone=True)), ("wall_time_s", sa.Float), ("reused_from_trial_id", sa.Integer)]]),
    "trial_step": sa.Table("trial_step", _md, sa.Column("trial_id", sa.Integer), sa.Column("step", sa.Integer),
                           sa.Column("metrics", sa.JSON)),
    "controller_checkpoint": sa.Table("controller_checkpoint", _md, sa.Column("id", sa.Integer),
                                      sa.Column("search_id", sa.Integer), sa.Column("n_told", sa.Integer),
                                      sa.Column("state", sa.LargeBinary),
                                      sa.Column("created_at", sa.DateTime(timezone=True))),
}


@dataclass
class Run:
    code: int
    out: str
    err: str


def nas(*args) -> Run:
    """`nas ARGS` in-process: exit code, stdout, stderr."""
    from nas.cli import main as cli

    out, err = io.StringIO(), io.StringIO()
    argv, sys.argv = sys.argv, ["nas", *map(str, args)]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            cli.main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = argv
    return Run(code, out.getvalue(), err.getvalue())


def make_previous_revision_db(url: str) -> None:
    """A database at revision 0001 with two searches, trials of every status, a reuse,
    learning curves and checkpoints, written by plain INSERTs."""
    command.upgrade(alembic_config(url), PREVIOUS)
    t0 = datetime(2025, 11, 1, 12, 0, tzinfo=timezone.utc)
    eng = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with eng.begin() as c:
        c.execute(T["search"].insert(), [
            {"id": 1, "name": "old-a", "space_name": "quickstart", "space_text": "space quickstart", "space_hash": "s1",
             "controller": "random", "controller_config": {}, "task": "parity(length=16)", "seed": 0,
             "status": "completed", "created_at": t0, "updated_at": t0, "config": {"options": {"trials": 6}}},
            {"id": 2, "name": "old-b", "space_name": "darts_ptb", "space_text": None, "space_hash": None,
             "controller": "evolution", "controller_config": {"population": 4}, "task": None, "seed": 7,
             "status": "stopped", "created_at": t0, "updated_at": t0, "config": None},
        ])
        c.execute(T["architecture"].insert(), [
            {"id": i, "canonical_hash": f"{i:02d}" + "ab" * 31, "space_name": "quickstart", "ir_json": {"n": i},
             "dsl_text": f"cell {i}", "created_at": t0} for i in (1, 2, 3)])
        statuses = ["completed", "completed", "failed", "diverged", "pruned", "running", "pending"]
        rows = []
        for i, st in enumerate(statuses):
            done = st in ("completed", "failed", "diverged", "pruned")
            rows.append({
                "id": i + 1, "search_id": 1, "architecture_id": 1 + i % 3, "trial_index": i,
                "assignment": {"op": i}, "hyperparameters": {"train.lr": 0.001 * (i + 1)}, "config_hash": f"c{i}",
                "status": st, "metrics": {"val_loss": 0.5 + i / 10, "params": 1000 * (i + 1)} if done else None,
                "objective": 0.5 + i / 10 if st == "completed" else None,
                "error": "boom" if st == "failed" else None, "diverged_step": 3 if st == "diverged" else None,
                "host": "node1" if st != "pending" else None, "gpu": "0" if st != "pending" else None,
                "attempt": 0 if st == "pending" else 1, "budget": 1.0, "created_at": t0 + timedelta(seconds=i),
                "started_at": t0 + timedelta(seconds=i) if st != "pending" else None,
                "finished_at": t0 + timedelta(seconds=i + 5) if done else None,
                "wall_time_s": 5.0 if done else None, "reused_from_trial_id": None})
        rows.append({**rows[0], "id": 8, "search_id": 2, "trial_index": 0, "reused_from_trial_id": 1,
                     "wall_time_s": 0.0})
        c.execute(T["trial"].insert(), rows)
        c.execute(T["trial_step"].insert(), [{"trial_id": 1, "step": s, "metrics": {"val_loss": 1.0 / (s + 1)}}
                                              for s in (10, 20, 30)])
        c.execute(T["controller_checkpoint"].insert(), [
            {"id": 1, "search_id": 1, "n_told": 3, "state": b"\x00\x01state", "created_at": t0},
            {"id": 2, "search_id": 2, "n_told": 1, "state": b"\xff" * 64, "created_at": t0}])
        if url.startswith("postgresql"):  # explicit ids: move the sequences past them
            for table in ("search", "architecture", "trial", "controller_checkpoint"):
                c.exec_driver_sql(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                  f"(SELECT max(id) FROM {table}))")
    eng.dispose()


def dump(url: str) -> dict:
    eng = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with eng.connect() as c:
        out = {name: [tuple(r) for r in c.execute(sa.select(t).order_by(*t.columns[:2]))] for name, t in T.items()}
    eng.dispose()
    return out


def indexes(url: str) -> set[tuple[str, str]]:
    eng = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with eng.connect() as c:
        insp = sa.inspect(c)
        out = {(t, ix["name"]) for t in ("trial", "search", "architecture") for ix in insp.get_indexes(t)}
    eng.dispose()
    return out


def revision(url: str) -> str:
    eng = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with eng.connect() as c:
        rev = c.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    eng.dispose()
    return rev


def file_state(url: str):
    if not url.startswith("sqlite:///"):
        return None
    p = Path(url[len("sqlite:///"):])
    return {q.name: hashlib.sha256(q.read_bytes()).hexdigest() for q in sorted(p.parent.iterdir())}


def test_previous_revision_is_the_one_before_head():
    assert head_revisions() == ("0002_query_indexes",)
    assert alembic_config().get_main_option("script_location")
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config())
    assert script.get_revision("0002_query_indexes").down_revision == PREVIOUS


def test_nas_db_upgrade_keeps_the_data(db_url):
    make_previous_revision_db(db_url)
    before, files = dump(db_url), file_state(db_url)
    assert not (NEW_INDEXES & indexes(db_url))
    assert schema_status(db_url).state == "old"

    # read-only commands refuse it, say what to run, and change nothing
    for args in (["results", "list"], ["results", "top", "--json"], ["results", "compare"]):
        r = nas(*args, "--db", db_url)
        assert r.code == 2, r.err
        assert f"schema revision {PREVIOUS}" in r.err and "nas db upgrade --db" in r.err
    with pytest.raises(UserError, match="schema revision") as ei:
        results.open(db_url)
    assert "nas db upgrade --db" in ei.value.hint
    with pytest.raises(SchemaVersionError) as ei:
        Store.open(db_url, upgrade=False)
    assert ei.value.older and ei.value.revisions == (PREVIOUS,)
    r = nas("db", "current", "--db", db_url)
    assert r.code == 0 and PREVIOUS in r.out and "run `nas db upgrade`" in r.out
    assert dump(db_url) == before and file_state(db_url) == files and revision(db_url) == PREVIOUS

    r = nas("db", "upgrade", "--db", db_url)
    assert r.code == 0, r.err
    assert f"upgraded {PREVIOUS} \u2192 0002_query_indexes" in r.out
    assert revision(db_url) == "0002_query_indexes"
    assert dump(db_url) == before
    assert NEW_INDEXES <= indexes(db_url)
    r = nas("db", "upgrade", "--db", db_url)
    assert r.code == 0 and "already at revision 0002_query_indexes" in r.out

    # the data reads back through the Store and the query layer
    with Store.open(db_url, create=False, upgrade=False) as st:
        trials = st.trials("old-a")
        assert [t.status for t in trials] == ["completed", "completed", "failed", "diverged", "pruned",
                                              "running", "pending"]
        assert trials[0].metrics == {"val_loss": 0.5, "params": 1000} and trials[2].error == "boom"
        assert st.curve(1) == [(10, {"val_loss": 1 / 11}), (20, {"val_loss": 1 / 21}), (30, {"val_loss": 1 / 31})]
        assert st.latest_checkpoint("old-b").state == b"\xff" * 64
        assert [t.id for t in st.reuses_of(1)] == [8]
        assert st.trials(status="pruned")[0].trial_index == 4
        # and it takes new writes
        t = st.add_trial("old-a", architecture_id=1, assignment={}, hyperparameters={}, config_hash="new")
        assert t.trial_index == 7
    with results.open(db_url) as r:
        assert [x["objective"] for x in r.top(k=3, as_records=True)] == [0.5, 0.5, 0.6]  # 0.5 twice: the reuse
        assert {x["search"] for x in r.trials(space="darts_ptb", as_records=True)} == {"old-b"}
        assert r.compare(as_records=True)[0]["best"] == 0.5


def test_store_open_upgrades_too(db_url):
    """`nas search run` opens with Store.open(upgrade=True): the same migration."""
    make_previous_revision_db(db_url)
    before = dump(db_url)
    with Store.open(db_url) as st:
        assert st.get_search("old-a").config == {"options": {"trials": 6}}
    assert revision(db_url) == "0002_query_indexes" and dump(db_url) == before


def test_downgrade_to_previous_and_back(db_url):
    Store.open(db_url).close()
    cfg = alembic_config(db_url)
    command.downgrade(cfg, PREVIOUS)
    assert revision(db_url) == PREVIOUS and not (NEW_INDEXES & indexes(db_url))
    command.upgrade(cfg, "head")
    assert NEW_INDEXES <= indexes(db_url)


def test_db_commands_on_new_databases(tmp_path):
    db = tmp_path / "fresh.db"
    r = nas("db", "upgrade", "--db", db, "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["created"] is True and json.loads(r.out)["to"] == "0002_query_indexes"
    r = nas("db", "current", "--db", db, "--json")
    assert json.loads(r.out)["up_to_date"] is True
    empty = tmp_path / "empty.db"
    empty.touch()
    r = nas("results", "list", "--db", empty)
    assert r.code == 2 and "no cellsearch schema" in r.err and "nas db upgrade" in r.err
    assert empty.read_bytes() == b""
