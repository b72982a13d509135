"""`nas results ...` and `nas.results` on a populated database built through the Store API.

CPU only, fast: the commands run in-process (`nas.cli.main.main` with a patched
argv), a few also as real subprocesses (exit code 2, no traceback).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

import nas.results as results
from nas.errors import UserError
from nas.genotypes import darts_assignment
from nas.space import load_space
from nas.storage import Store

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "searchspaces" / "quickstart.cell"
DARTS = ROOT / "searchspaces" / "darts_ptb.cell"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------ the database


@dataclass
class Expected:
    id: int
    search: str
    index: int
    status: str
    space: str
    arch: str
    metrics: dict | None
    objective: float | None
    reused_from: int | None = None
    curve_len: int = 0


def _status_for(i: int) -> str:
    return {3: "failed", 5: "diverged", 7: "pruned", 10: "running", 11: "pending"}.get(i, "completed")


def build_db(path: Path) -> list[Expected]:
    """Three searches (two controllers, two spaces) plus an empty one; every trial
    status; nested metrics; a metric named like a column (wall_time_s); learning
    curves; two reused results; the DARTS V2 cell."""
    quick, darts = load_space(QUICK), load_space(DARTS)
    rng = random.Random(1234)
    losses = iter(v / 1000.0 for v in rng.sample(range(300, 999), 60))
    out: list[Expected] = []
    with Store.open(path) as st:
        def arch(space, a):
            g = space.instantiate(a)
            h = g.canonical_hash()
            st.get_or_create_architecture(h, space_name=space.name, ir_json=g.to_json(),
                                          dsl_text=g.to_dsl(space.name))
            return h, st.get_architecture(h).id

        def run(search, space, i, a, status):
            h, aid = arch(space, a)
            hp = space.hyperparameters(a).flat()
            t = st.add_trial(search, architecture_id=aid, assignment=a, hyperparameters=hp,
                             config_hash=uuid.uuid4().hex, budget=1.0)
            metrics = objective = None
            curve_len = 0
            if status != "pending":
                st.start_trial(t.id, host=f"node{i % 2}", gpu=i % 4, attempt=1)
            if status in ("completed", "failed", "diverged", "pruned"):
                loss = next(losses)
                params = 1000 + (i * 7 % 5) * 500
                metrics = {"val_loss": loss, "val_acc": round(1 - loss / 2, 6), "params": params,
                           "val": {"ppl": math.exp(loss)}, "wall_time_s": 1.0 + i, "steps": 40}
                if status == "failed":
                    metrics, objective = None, None
                elif status == "diverged":
                    metrics = {"val_loss": None, "params": params}
                else:
                    objective = loss
                if status in ("completed", "pruned"):
                    steps = [(s, {"val_loss": loss + (40 - s) / 100.0, "train_loss": loss + (40 - s) / 90.0})
                             for s in (10, 20, 30, 40)]
                    st.record_steps(t.id, steps)
                    curve_len = len(steps)
                st.finish_trial(t.id, status=status, metrics=metrics, objective=objective,
                                error="RuntimeError: CUDA out of memory" if status == "failed" else None,
                                diverged_step=12 if status == "diverged" else None, wall_time_s=1.0 + i)
            out.append(Expected(t.id, t.search_name, t.trial_index, status, space.name, h, metrics, objective,
                                curve_len=curve_len))
            return t

        st.create_search("rand-a", space_name="quickstart", space_text=quick.text, space_hash=quick.text_hash,
                         controller="random", controller_config={}, task="parity(length=16)", seed=0,
                         config={"options": {"trials": 12}})
        st.create_search("evo-b", space_name="quickstart", space_text=quick.text, space_hash=quick.text_hash,
                         controller="evolution", controller_config={"population": 8}, task="parity(length=16)",
                         seed=1, config={"options": {"trials": 10}})
        st.create_search("darts-c", space_name="darts_ptb", space_text=darts.text, space_hash=darts.text_hash,
                         controller="random", task="char_lm", seed=2, config={"options": {"trials": 2}})
        st.create_search("empty-d", space_name="quickstart", controller="random", seed=3)
        for i in range(12):
            run("rand-a", quick, i, quick.sample(rng), _status_for(i))
        for i in range(8):
            run("evo-b", quick, i, quick.sample(rng), "failed" if i == 4 else "completed")
        for src in (out[0], out[1]):  # two results reused from rand-a
            src_rec = st.get_trial(src.id)
            t = st.add_trial("evo-b", architecture_id=src_rec.architecture_id, assignment=src_rec.assignment,
                             hyperparameters=src_rec.hyperparameters, config_hash=src_rec.config_hash,
                             reused_from_trial_id=src.id)
            out.append(Expected(t.id, "evo-b", t.trial_index, "completed", "quickstart", src.arch, src.metrics,
                                src.objective, reused_from=src.id))
        run("darts-c", darts, 0, darts_assignment(darts), "completed")
        run("darts-c", darts, 1, darts.sample(rng), "completed")
    return out


@pytest.fixture(scope="module")
def populated(tmp_path_factory):
    d = tmp_path_factory.mktemp("db")
    db = d / "nas.db"
    expected = build_db(db)
    return db, expected


def dir_state(db: Path) -> dict:
    """Names, bytes and mtimes of every file in the database's directory."""
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(db.parent.iterdir())}


# ------------------------------------------------------------------------ CLI helpers


@dataclass
class Run:
    code: int
    out: str
    err: str


def nas(*args: str) -> Run:
    """`nas ARGS` in-process (fast): exit code, stdout, stderr."""
    from nas.cli import main as cli

    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["nas", *map(str, args)]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            cli.main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = argv
    return Run(code, out.getvalue(), err.getvalue())


def nas_subprocess(*args: str) -> Run:
    r = subprocess.run([sys.executable, "-m", "nas", *map(str, args)], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    return Run(r.returncode, r.stdout, r.stderr)


def ok(*args: str) -> Run:
    r = nas(*args)
    assert r.code == 0, f"nas {' '.join(map(str, args))} -> {r.code}\n{r.err}\n{r.out}"
    return r


def js(*args: str):
    return json.loads(ok(*args, "--json").out)


def completed(expected, search=None):
    return [e for e in expected if e.status == "completed" and (search is None or e.search == search)]


# ---------------------------------------------------------------------------- Python API


def test_api_trials_filters_and_frames(populated):
    db, exp = populated
    with results.open(db) as r:
        df = r.trials()
        assert len(df) == len(exp)
        assert list(df.columns[:8]) == ["id", "search", "trial", "status", "arch", "space", "controller", "objective"]
        assert {"val_loss", "val_acc", "params", "val.ppl", "metrics.wall_time_s", "hp.train.lr"} <= set(df.columns)
        recs = r.trials(search="rand-a", status="completed", where={"val_loss<": 0.7}, as_records=True)
        want = {e.id for e in completed(exp, "rand-a") if e.metrics["val_loss"] < 0.7}
        assert {x["id"] for x in recs} == want and want
        # string filters, several statuses, a space
        recs = r.trials(status=["failed", "diverged"], where=["params>=1500"], as_records=True)
        assert {x["id"] for x in recs} == {e.id for e in exp if e.status in ("failed", "diverged")
                                            and e.metrics and e.metrics.get("params", 0) >= 1500}
        assert {x["search"] for x in r.trials(space="darts_ptb", as_records=True)} == {"darts-c"}
        srt = r.trials(sort="val_loss", descending=True, limit=3, as_records=True)
        vals = sorted((e.metrics["val_loss"] for e in exp if e.metrics and e.metrics.get("val_loss") is not None),
                      reverse=True)[:3]
        assert [x["val_loss"] for x in srt] == vals
        assert r.trials(where={"status": "pending"}, as_records=True)[0]["status"] == "pending"


def test_api_top_pareto_curve_compare(populated):
    db, exp = populated
    done = completed(exp)
    with results.open(db) as r:
        top = r.top("val_loss", k=5, as_records=True)
        assert [x["val_loss"] for x in top] == sorted(e.metrics["val_loss"] for e in done)[:5]
        top_acc = r.top("val_acc", k=3, as_records=True)  # acc-like: max by default
        assert [x["val_acc"] for x in top_acc] == sorted((e.metrics["val_acc"] for e in done), reverse=True)[:3]
        nested = r.top("val.ppl", k=1, as_records=True)[0]
        assert nested["val.ppl"] == pytest.approx(min(math.exp(e.metrics["val_loss"]) for e in done))
        assert len(r.top(k=2)) == 2  # a DataFrame

        front = r.pareto("params", "val_loss", as_records=True)
        pts = [(e.metrics["params"], e.metrics["val_loss"]) for e in done]
        nd = {p for p in pts if not any(q[0] <= p[0] and q[1] <= p[1] and q != p for q in pts)}
        assert {(x["params"], x["val_loss"]) for x in front} == nd
        assert [x["params"] for x in front] == sorted(x["params"] for x in front)
        front_max = r.pareto("params", "val_acc", as_records=True)  # acc maximised
        nd = {(e.metrics["params"], e.metrics["val_acc"]) for e in done
              if not any(q.metrics["params"] <= e.metrics["params"] and q.metrics["val_acc"] >= e.metrics["val_acc"]
                         and (q.metrics["params"], q.metrics["val_acc"]) != (e.metrics["params"], e.metrics["val_acc"])
                         for q in done)}
        assert {(x["params"], x["val_acc"]) for x in front_max} == nd

        first = next(e for e in completed(exp, "rand-a"))
        curve = r.curve(f"rand-a#{first.index}", as_records=True)
        assert [c["step"] for c in curve] == [10, 20, 30, 40]
        assert curve[-1]["val_loss"] == pytest.approx(first.metrics["val_loss"])
        assert r.curve(f"trial:{first.id}")["step"].tolist() == [10, 20, 30, 40]
        reused = next(e for e in exp if e.reused_from == first.id)
        assert len(r.curve(reused.id, as_records=True)) == 4  # the original's curve
        long = r.curves(search="rand-a", as_records=True)
        assert len(long) == sum(e.curve_len for e in exp if e.search == "rand-a")

        cmp = {c["search"]: c for c in r.compare(as_records=True)}
        assert set(cmp) == {"rand-a", "evo-b", "darts-c", "empty-d"}
        for name in ("rand-a", "evo-b"):
            vals = [e.objective for e in completed(exp, name)]
            c = cmp[name]
            assert c["best"] == min(vals) and c["median"] == pytest.approx(statistics.median(vals))
            assert c["trials"] == sum(1 for e in exp if e.search == name)
            assert c["completed"] == len(vals)
            best = min(completed(exp, name), key=lambda e: e.objective)
            assert c["best_trial"] == best.index and c["trials_to_best"] == best.index + 1
            assert c["time_to_best_s"] >= 0 and c["total_time_s"] >= c["time_to_best_s"]
        assert cmp["evo-b"]["controller"] == "evolution" and cmp["evo-b"]["reused"] == 2
        assert cmp["empty-d"]["trials"] == 0 and cmp["empty-d"]["best"] is None

        s = {x["search"]: x for x in r.searches(as_records=True)}
        assert s["rand-a"]["completed"] == 7 and s["rand-a"]["pending"] == 1 and s["rand-a"]["running"] == 1
        assert s["rand-a"]["best_objective"] == min(e.objective for e in completed(exp, "rand-a"))

        bsf = r.best_so_far("rand-a", as_records=True)
        assert [x["best"] for x in bsf] == [min(x["value"] for x in bsf[: i + 1]) for i in range(len(bsf))]


def test_api_architecture_and_cell(populated):
    db, exp = populated
    darts_v2 = next(e for e in exp if e.search == "darts-c" and e.index == 0)
    with results.open(db) as r:
        info = r.architecture(darts_v2.arch[:10])
        assert info["architecture"].canonical_hash == darts_v2.arch and info["trial"] is None
        assert [t.id for t in info["trials"]] == [darts_v2.id]
        assert "h' = mean(" in info["dsl"]
        g = r.cell("darts-c#0")
        assert g.canonical_hash() == darts_v2.arch
        shared = exp[0]  # rand-a#0 and its reuse in evo-b share the architecture
        info = r.architecture(f"trial:{shared.id}")
        assert info["trial"].id == shared.id and {t.id for t in info["trials"]} >= {shared.id}


def test_api_errors(populated):
    db, _ = populated
    with results.open(db) as r:
        with pytest.raises(UserError, match="no search named 'nope'") as ei:
            r.trials(search="nope")
        assert "rand-a" in ei.value.hint
        with pytest.raises(UserError, match="unknown metric 'val_los'") as ei:
            r.top("val_los")
        assert "did you mean 'val_loss'" in ei.value.hint
        with pytest.raises(UserError, match="unknown trial status"):
            r.trials(status="done")
        with pytest.raises(UserError, match="malformed filter"):
            r.trials(where=["val_loss"])
        with pytest.raises(UserError, match="needs a number"):
            r.trials(where=["val_loss<abc"])
        with pytest.raises(UserError, match="no search over a space named"):
            r.trials(space="nope")
        with pytest.raises(UserError, match="no architecture"):
            r.architecture("ffffffffff")
        with pytest.raises(UserError, match="has no trial #99"):
            r.curve("rand-a#99")
        with pytest.raises(UserError, match="neither"):
            r.architecture("not-a-ref")


# ------------------------------------------------------------------------------- CLI


def test_cli_list(populated):
    db, exp = populated
    rows = js("results", "list", "--db", db)
    assert len(rows) == len(exp) and {x["id"] for x in rows} == {e.id for e in exp}
    rows = js("results", "list", "--db", db, "--search", "rand-a", "--status", "completed,pruned",
              "--where", "val_loss<0.8", "--where", "params>=1000")
    want = {e.id for e in exp if e.search == "rand-a" and e.status in ("completed", "pruned")
            and e.metrics["val_loss"] < 0.8}
    assert {x["id"] for x in rows} == want
    rows = js("results", "list", "--db", db, "--space", "darts_ptb")
    assert {x["search_name"] for x in rows} == {"darts-c"}
    rows = js("results", "list", "--db", db, "--sort", "val_loss", "--limit", "4")
    assert [x["metrics"]["val_loss"] for x in rows] == sorted(
        e.metrics["val_loss"] for e in exp if e.metrics and e.metrics.get("val_loss") is not None)[:4]
    r = ok("results", "list", "--db", db, "--status", "failed", "--columns", "params")
    assert "CUDA out of memory" in r.out and "params" in r.out and "rand-a" in r.out
    r = ok("results", "list", "--db", db, "--limit", "3")
    assert "showing 3 of" in r.out


def test_cli_top_keeps_its_json(populated):
    db, exp = populated
    rows = js("results", "top", "--db", db, "--k", "4")
    assert [x["objective"] for x in rows] == sorted(e.objective for e in completed(exp))[:4]
    assert {"id", "search_name", "trial_index", "architecture_hash", "metrics", "objective"} <= set(rows[0])
    rows = js("results", "top", "--db", db, "-s", "evo-b", "-m", "val_acc", "-k", "2")
    assert [x["metrics"]["val_acc"] for x in rows] == sorted(
        (e.metrics["val_acc"] for e in completed(exp, "evo-b")), reverse=True)[:2]
    r = ok("results", "top", "--db", db, "--metric", "val_acc", "--where", "params<2000")
    assert "val_acc" in r.out and "top 10 by val_acc (max)" in r.out


def test_cli_show_prints_dsl_and_draws(populated, tmp_path):
    db, exp = populated
    darts_v2 = next(e for e in exp if e.search == "darts-c" and e.index == 0)
    r = ok("results", "show", darts_v2.arch[:8], "--db", db, "--out", tmp_path / "cell.png")
    assert "space darts_ptb" in r.out and "h' = mean(" in r.out and "66 nodes, 100 edges" in r.out
    assert (tmp_path / "cell.png").read_bytes()[:8] == PNG_MAGIC
    data = js("results", "show", "darts-c#0", "--db", db, "--out", tmp_path / "cell.svg")
    assert data["drawing"] == {"path": str(tmp_path / "cell.svg"), "nodes": 66, "edges": 100}
    assert data["trial"]["id"] == darts_v2.id and data["architecture"]["canonical_hash"] == darts_v2.arch
    assert b"<svg" in (tmp_path / "cell.svg").read_bytes()[:2000]
    failed = next(e for e in exp if e.status == "failed")
    r = ok("results", "show", f"trial:{failed.id}", "--db", db)
    assert "failed" in r.out and "CUDA out of memory" in r.out and "draw it with --out" in r.out


def test_cli_pareto(populated, tmp_path):
    db, exp = populated
    rows = js("results", "pareto", "--x", "params", "--y", "val_loss", "--db", db, "--plot", tmp_path / "p.png")
    done = completed(exp)
    pts = [(e.metrics["params"], e.metrics["val_loss"]) for e in done]
    nd = {p for p in pts if not any(q[0] <= p[0] and q[1] <= p[1] and q != p for q in pts)}
    assert {(x["metrics"]["params"], x["metrics"]["val_loss"]) for x in rows} == nd
    assert (tmp_path / "p.png").read_bytes()[:8] == PNG_MAGIC
    r = ok("results", "pareto", "--db", db, "--search", "rand-a")
    assert "Pareto front: params vs objective" in r.out


def test_cli_compare(populated):
    db, exp = populated
    rows = {x["search"]: x for x in js("results", "compare", "rand-a", "evo-b", "--db", db)}
    assert set(rows) == {"rand-a", "evo-b"}
    assert rows["rand-a"]["best"] == min(e.objective for e in completed(exp, "rand-a"))
    r = ok("results", "compare", "--db", db)
    for name in ("rand-a", "evo-b", "darts-c", "empty-d", "evolution"):
        assert name in r.out


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_cli_export_formats_read_back(populated, tmp_path, fmt):
    import pandas as pd

    db, exp = populated
    out = tmp_path / f"trials.{fmt}"
    r = ok("results", "export", "--db", db, "--out", out)
    assert f"{len(exp)} rows" in r.out
    if fmt == "csv":
        rows = list(csv.DictReader(out.open()))
        ids = [int(x["id"]) for x in rows]
        loss = {int(x["id"]): (float(x["val_loss"]) if x["val_loss"] else None) for x in rows}
    elif fmt == "json":
        rows = json.loads(out.read_text())
        ids = [x["id"] for x in rows]
        loss = {x["id"]: x["val_loss"] for x in rows}
        assert rows[0]["created_at"].endswith("+00:00")
    else:
        df = pd.read_parquet(out)
        ids = df["id"].tolist()
        loss = {i: (None if pd.isna(v) else v) for i, v in zip(df["id"], df["val_loss"])}
        assert str(df["created_at"].dtype).startswith("datetime64")
    assert sorted(ids) == sorted(e.id for e in exp)
    for e in exp:
        want = e.metrics.get("val_loss") if e.metrics else None
        assert loss[e.id] == (pytest.approx(want) if want is not None else None)
    # filtered, and the other tables
    out2 = tmp_path / f"curves.{fmt}"
    ok("results", "export", "--db", db, "--out", out2, "--table", "curves", "--search", "rand-a")
    n = {"csv": lambda: len(list(csv.DictReader(out2.open()))), "json": lambda: len(json.loads(out2.read_text())),
         "parquet": lambda: len(pd.read_parquet(out2))}[fmt]()
    assert n == sum(e.curve_len for e in exp if e.search == "rand-a")
    out3 = tmp_path / "searches.data"
    ok("results", "export", "--db", db, "--out", out3, "--format", fmt, "--table", "searches")
    assert out3.stat().st_size > 0


def test_cli_export_to_stdout(populated):
    db, exp = populated
    r = ok("results", "export", "--db", db, "--out", "-", "--status", "completed")
    rows = list(csv.DictReader(io.StringIO(r.out)))
    assert len(rows) == len(completed(exp))
    r = ok("results", "export", "--db", db, "--out", "-", "--format", "json", "--where", "val_loss<0.6")
    assert {x["id"] for x in json.loads(r.out)} == {
        e.id for e in exp if e.metrics and e.metrics.get("val_loss") is not None and e.metrics["val_loss"] < 0.6}


@pytest.mark.parametrize("kind,ext", [("best", "png"), ("curves", "png"), ("pareto", "png"), ("best", "svg")])
def test_cli_plot(populated, tmp_path, kind, ext):
    db, _ = populated
    out = tmp_path / f"{kind}.{ext}"
    r = ok("results", "plot", "--kind", kind, "--out", out, "--db", db, *(["--x", "params", "--y", "val_loss"]
                                                                          if kind == "pareto" else []))
    assert "wrote" in r.out
    data = out.read_bytes()
    assert len(data) > 5000
    assert data[:8] == PNG_MAGIC if ext == "png" else b"<svg" in data[:2000]
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary file left behind


def test_read_only_commands_leave_the_database_alone(populated, tmp_path):
    db, exp = populated
    before = dir_state(db)
    for args in (["results", "list"], ["results", "top", "--json"], ["results", "compare"],
                 ["results", "show", exp[0].arch[:8]], ["results", "pareto"], ["db", "current"],
                 ["results", "export", "--out", tmp_path / "x.json"],
                 ["results", "plot", "--out", tmp_path / "x.png"]):
        ok(*args, "--db", db)
    assert dir_state(db) == before


# --------------------------------------------------------------------------- bad input


def _bad(db: Path | None, args, message: str, state_of: Path | None = None):
    """Exit code 2, the message on stderr, no traceback, and the database untouched."""
    target = state_of or db
    before = dir_state(target) if target is not None and target.exists() else None
    r = nas(*args, *(["--db", db] if db is not None else []))
    assert r.code == 2, f"{args}: exit {r.code}\n{r.err}\n{r.out}"
    assert message in r.err, r.err
    assert "Traceback" not in r.err + r.out
    if before is not None:
        assert dir_state(target) == before
    return r


def test_bad_input_unknown_search_and_metric(populated, tmp_path):
    db, _ = populated
    for args in (["results", "list", "--search", "nope"], ["results", "top", "-s", "nope"],
                 ["results", "compare", "rand-a", "nope"], ["results", "show", "nope#0"],
                 ["results", "plot", "--out", tmp_path / "x.png", "-s", "nope"],
                 ["results", "export", "--out", tmp_path / "x.csv", "-s", "nope"]):
        r = _bad(db, args, "no search named 'nope'")
        assert "rand-a" in r.err  # the hint lists the searches
    for args in (["results", "top", "--metric", "nope"], ["results", "list", "--where", "nope<1"],
                 ["results", "list", "--sort", "nope"], ["results", "pareto", "--x", "nope"],
                 ["results", "compare", "--metric", "nope"], ["results", "list", "--columns", "nope"],
                 ["results", "plot", "--out", tmp_path / "x.png", "--metric", "nope"]):
        r = _bad(db, args, "unknown metric 'nope'")
        assert "val_loss" in r.err
    assert not list(tmp_path.iterdir())


def test_bad_input_values(populated, tmp_path):
    db, exp = populated
    _bad(db, ["results", "list", "--status", "done"], "unknown trial status 'done'")
    _bad(db, ["results", "list", "--space", "nope"], "no search over a space named 'nope'")
    _bad(db, ["results", "list", "--where", "val_loss"], "malformed filter")
    _bad(db, ["results", "list", "--where", "val_loss<low"], "needs a number")
    _bad(db, ["results", "top", "--mode", "best"], "--mode must be min or max")
    _bad(db, ["results", "show", "zz-top"], "neither an architecture hash prefix nor a trial")
    _bad(db, ["results", "show", "ffffffff"], "no architecture whose hash starts with")
    _bad(db, ["results", "show", "trial:999999"], "no trial with id 999999")
    _bad(db, ["results", "export", "--out", tmp_path / "x.xlsx"], "cannot write an export as 'xlsx'")
    _bad(db, ["results", "export", "--out", tmp_path / "x.csv", "--format", "xml"], "--format must be one of")
    _bad(db, ["results", "export", "--out", "-", "--format", "parquet"], "Parquet cannot go to stdout")
    _bad(db, ["results", "plot", "--out", tmp_path / "x.gif"], "cannot write a plot as 'gif'")
    _bad(db, ["results", "plot", "--out", tmp_path / "x.png", "--kind", "pie"], "--kind must be one of")
    _bad(db, ["results", "show", exp[0].arch[:8], "--out", tmp_path / "cell.jpg"], "cannot write a drawing as 'jpg'")
    assert not list(tmp_path.iterdir())


def test_bad_input_unwritable_output(populated, tmp_path):
    db, exp = populated
    afile = tmp_path / "afile"
    afile.write_text("x")
    _bad(db, ["results", "export", "--out", tmp_path / "no" / "dir" / "x.csv"], "does not exist")
    _bad(db, ["results", "export", "--out", afile / "x.csv"], "is not a directory")
    _bad(db, ["results", "export", "--out", tmp_path], "it is a directory")
    _bad(db, ["results", "plot", "--out", afile / "x.png"], "is not a directory")
    _bad(db, ["results", "pareto", "--plot", afile / "x.png"], "is not a directory")
    _bad(db, ["results", "show", exp[0].arch[:8], "--out", tmp_path / "no" / "cell.svg"], "does not exist")
    # a database path that cannot be created
    _bad(afile / "new.db", ["db", "upgrade"], "is not a directory", state_of=afile)
    _bad(tmp_path / "no" / "new.db", ["db", "upgrade"], "does not exist", state_of=afile)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


@pytest.mark.parametrize("url,message", [
    ("postgresql+psycopg://user:secret@host:notaport/db", "malformed database URL"),
    ("sqlite:/one-slash.db", "malformed database URL"),
    ("mysql://u@h/db", "unsupported database"),
    ("postgresql:", "malformed database URL"),
])
def test_bad_input_malformed_db_url(url, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for args in (["results", "list"], ["results", "top"], ["db", "upgrade"], ["db", "current"]):
        r = nas(*args, "--db", url)
        assert r.code == 2 and message in r.err and "hint:" in r.err, r.err
        assert "secret" not in r.err
    assert list(tmp_path.iterdir()) == []


def test_bad_input_not_a_database_missing_and_foreign(tmp_path):
    text = tmp_path / "notes.db"
    text.write_bytes(b"these are notes, not SQLite\n" * 100)
    for args in (["results", "list"], ["results", "compare"], ["db", "upgrade"], ["db", "current"]):
        _bad(text, args, "not an SQLite database")
    other = tmp_path / "other.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE stuff (x)")
    con.commit()
    con.close()
    _bad(other, ["results", "top"], "not a cellsearch results database")
    _bad(other, ["db", "upgrade"], "not a cellsearch results database")
    _bad(tmp_path / "missing.db", ["results", "list"], "no database at")
    _bad(tmp_path / "missing.db", ["db", "current"], "no database at")
    assert not (tmp_path / "missing.db").exists()


def test_bad_input_newer_schema(populated, tmp_path):
    db, _ = populated
    d = tmp_path / "future"
    d.mkdir()
    newer = d / "nas.db"
    shutil.copy(db, newer)
    con = sqlite3.connect(newer)
    con.execute("UPDATE alembic_version SET version_num = '0099_from_the_future'")
    con.commit()
    con.close()
    for args in (["results", "list"], ["results", "top", "--json"], ["db", "upgrade"], ["db", "current"],
                 ["results", "export", "--out", tmp_path / "x.csv"]):
        r = _bad(newer, args, "0099_from_the_future")
        assert "newer" in r.err and "upgrade cellsearch" in r.err


def test_bad_input_as_real_processes(populated, tmp_path):
    """The real `nas` entry point: exit 2, a one-line error and a hint, no traceback."""
    db, _ = populated
    before = dir_state(db)
    for args, message in ((["results", "top", "--metric", "nope"], "error: unknown metric 'nope'"),
                          (["results", "list", "--search", "nope"], "error: no search named 'nope'"),
                          (["results", "export", "--out", tmp_path / "no" / "x.csv"], "does not exist")):
        r = nas_subprocess(*args, "--db", db)
        assert r.code == 2 and message in r.err and "hint:" in r.err and "Traceback" not in r.err, r.err
    r = nas_subprocess("results", "list", "--db", "postgresql+psycopg://u:pw@h:bad/db")
    assert r.code == 2 and "malformed database URL" in r.err and "Traceback" not in r.err
    assert dir_state(db) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through directory permissions")
def test_bad_input_read_only_directory(populated, tmp_path):
    db, _ = populated
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        _bad(db, ["results", "export", "--out", ro / "x.csv"], "is not writable")
        _bad(db, ["results", "plot", "--out", ro / "x.png"], "is not writable")
        _bad(ro / "new.db", ["db", "upgrade"], "is not writable", state_of=None)
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o700)
