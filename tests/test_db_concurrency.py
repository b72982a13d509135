"""A writer process commits 1000 trials (as the search driver does: architecture,
trial, start, learning curve, finish) while a reader process loops over the queries
`nas results` runs (nas.results). No "database is locked", no error, no lost row,
and the reader never sees the database go backwards.

SQLite always; PostgreSQL when NAS_TEST_PG_URL is set
(export NAS_TEST_PG_URL=$(bash tests/pg_server.sh start)).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from dbutil import PG_SKIP, PG_URL, throwaway_db_url

from nas.storage import Store

ROOT = Path(__file__).resolve().parents[1]
N_TRIALS = 1000


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.skipif(not PG_URL, reason=PG_SKIP))])
def db_url(request, tmp_path):
    yield from throwaway_db_url(request.param, tmp_path, "nas_conc_")


WRITER = textwrap.dedent("""
    import json, sys
    from nas.storage import Store
    url, n = sys.argv[1], int(sys.argv[2])
    st = Store.open(url)
    for i in range(n):
        aid = st.get_or_create_architecture(f"{i % 53:064x}", space_name="conc", ir_json={"i": i % 53},
                                            dsl_text=f"cell {i % 53}")
        t = st.add_trial("conc", architecture_id=aid, assignment={"i": i}, hyperparameters={"train.lr": 0.01},
                         config_hash=f"cfg-{i}")
        st.start_trial(t.id, host="w", gpu=i % 8, attempt=1)
        loss = ((i * 7919) % 1000) / 1000.0 + 0.001
        st.record_steps(t.id, [(10, {"val_loss": loss + 0.5}), (20, {"val_loss": loss})])
        status = "failed" if i % 97 == 0 else "completed"
        st.finish_trial(t.id, status=status, metrics=None if status == "failed" else
                        {"val_loss": loss, "params": 1000 + (i * 31) % 977, "val_acc": 1 - loss},
                        objective=None if status == "failed" else loss, error="boom" if status == "failed" else None)
    st.close()
    print(json.dumps({"written": n}))
""")

READER = textwrap.dedent("""
    import json, os, sys, time
    import nas.results as results
    url, done_file = sys.argv[1], sys.argv[2]
    loops = during = 0
    last_total = last_done = -1
    errors = []
    r = results.open(url)
    while True:
        finished = os.path.exists(done_file)
        try:
            rows = r.trials(search="conc", as_records=True)
            total = len(rows)
            done = sum(1 for x in rows if x["status"] in ("completed", "failed"))
            if total < last_total or done < last_done:
                errors.append(f"went back: {last_total}/{last_done} -> {total}/{done}")
            if sorted(x["trial"] for x in rows) != list(range(total)):
                errors.append(f"trial indices not 0..{total - 1}")
            last_total, last_done = total, done
            top = r.top("val_loss", k=10, search="conc", as_records=True)
            vals = [x["val_loss"] for x in top]
            if vals != sorted(vals):
                errors.append(f"unsorted top: {vals}")
            r.pareto("params", "val_loss", search="conc", as_records=True)
            r.compare(["conc"], as_records=True)
            r.searches(as_records=True)
            r.trials(search="conc", status="failed", where={"params>": 0}, as_records=True)
            if top:
                r.curve(top[0]["id"], as_records=True)
        except Exception as e:
            errors.append(f"{type(e).__name__}: {e}")
        loops += 1
        during += 0 if finished else 1
        time.sleep(0.02)  # poll like a watcher would, without starving the writer of CPU
        if finished:
            break
    r.close()
    print(json.dumps({"loops": loops, "during": during, "total": last_total, "done": last_done,
                      "errors": errors[:5]}))
""")


def _spawn(code: str, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_1000_trials_written_while_a_reader_queries(db_url, tmp_path):
    with Store.open(db_url) as st:
        st.create_search("conc", space_name="conc", controller="random", seed=0)
    done_file = tmp_path / "writer-done"
    t0 = time.monotonic()
    reader = _spawn(READER, db_url, done_file)
    writer = _spawn(WRITER, db_url, N_TRIALS)
    try:
        out, err = writer.communicate(timeout=240)
        assert writer.returncode == 0, err[-3000:]
        assert "locked" not in err.lower()
        assert json.loads(out) == {"written": N_TRIALS}
        done_file.touch()
        rout, rerr = reader.communicate(timeout=120)
    finally:
        for p in (writer, reader):
            if p.poll() is None:
                p.kill()
                p.communicate()
    elapsed = time.monotonic() - t0
    assert reader.returncode == 0, rerr[-3000:]
    assert "locked" not in rerr.lower()
    res = json.loads(rout)
    assert res["errors"] == []
    assert res["during"] >= 5, res  # the reader really ran alongside the writer
    assert res["total"] == N_TRIALS and res["done"] == N_TRIALS
    with Store.open(db_url) as st:
        trials = st.trials("conc")
        assert len(trials) == N_TRIALS
        assert sorted(t.trial_index for t in trials) == list(range(N_TRIALS))
        assert sorted(t.assignment["i"] for t in trials) == list(range(N_TRIALS))
        assert len({t.config_hash for t in trials}) == N_TRIALS
        assert st.counts("conc")["failed"] == len(range(0, N_TRIALS, 97))
        assert st.counts("conc")["completed"] == N_TRIALS - len(range(0, N_TRIALS, 97))
        curves = st.curves([t.id for t in trials])
        assert all(len(c) == 2 for c in curves.values())
        assert len({t.architecture_id for t in trials}) == 53
    print(f"{db_url.split(':')[0]}: {N_TRIALS} trials with a concurrent reader ({res['loops']} query loops) "
          f"in {elapsed:.1f} s")
