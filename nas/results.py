"""Query the results database: the Python API behind `nas results`.

    import nas.results
    r = nas.results.open("runs/nas.db")        # or a postgresql+psycopg:// URL; $NAS_DB by default
    r.searches()                                # one row per search: counts, best objective
    r.trials(search="s1", status="completed", where={"val_loss<": 0.7})
    r.top("val_acc", k=5)                       # mode: max for acc-like names, else min
    r.pareto("params", "val_loss")              # the non-dominated trials, by x
    r.curve("s1#3")                             # learning curve of trial 3 of search s1
    r.compare(["s1", "s2"])                     # per search: best, median, time to best, ...
    r.cell("f773d6a4")                          # the CellGraph of an architecture (hash prefix)
    r.export("trials.parquet")                  # csv | json | parquet
    r.plot_best("best.png"); r.plot_curves("curves.png", k=5)

Every query returns a pandas ``DataFrame`` (pandas is imported only then), or a
list of plain dicts with ``as_records=True`` (no pandas needed). Opening never
creates or migrates the database: an older schema is refused with the command to
run (``nas db upgrade``). Mistakes (unknown search, metric, status, space or
trial; a malformed filter) raise :class:`nas.errors.UserError` with a hint.

A trial row has the fixed columns of :data:`TRIAL_COLUMNS` (``trial`` is the
index within its search, ``arch`` the canonical hash, ``elapsed_s`` the seconds
from the search's creation to the trial's end), then one column per metric
(nested metrics as dotted names, ``val.ppl``; a metric whose name is taken by a
fixed column is ``metrics.<name>``, e.g. ``metrics.wall_time_s``), then one per
hyperparameter as ``hp.<name>``. A metric or filter name is any of these
columns.
"""

from __future__ import annotations

import builtins
import csv
import difflib
import json
import math
import os
import re
import statistics
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from .errors import UserError
from .storage import (
    TRIAL_STATUSES,
    ArchitectureRecord,
    SchemaVersionError,
    SearchRecord,
    StorageError,
    Store,
    TrialRecord,
    mask_url,
)

TRIAL_COLUMNS = (
    "id", "search", "trial", "status", "arch", "space", "controller", "objective", "wall_time_s",
    "elapsed_s", "created_at", "started_at", "finished_at", "host", "gpu", "attempt", "budget",
    "diverged_step", "reused_from", "config_hash", "error", "assignment",
)
NUMERIC_COLUMNS = ("objective", "wall_time_s", "elapsed_s", "trial", "id", "attempt", "budget", "diverged_step")
EXPORT_FORMATS = ("csv", "json", "parquet")
PLOT_FORMATS = ("png", "svg", "pdf")
TABLES = ("trials", "searches", "curves")

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "<=": lambda a, b: a <= b, ">=": lambda a, b: a >= b, "!=": lambda a, b: a != b,
    "==": lambda a, b: a == b, "<": lambda a, b: a < b, ">": lambda a, b: a > b, "=": lambda a, b: a == b,
}
_WHERE_RE = re.compile(r"^\s*([^<>=!\s][^<>=!]*?)\s*(<=|>=|!=|==|<|>|=)\s*(.*?)\s*$")
_TRIAL_ID_RE = re.compile(r"^trial:(\d+)$")
_SEARCH_INDEX_RE = re.compile(r"^(.+)#(\d+)$")
_HEX_RE = re.compile(r"^[0-9a-fA-F]{4,}$")
REF_HINT = ("name an architecture by a prefix of its hash (4+ hex digits, see `nas results list`), "
            "or a trial as trial:ID or SEARCH#INDEX")


def default_mode(metric: str) -> str:
    """``max`` for accuracy-like metric names (``acc`` in the name), else ``min``."""
    return "max" if "acc" in metric.lower() else "min"


def open(db: str | os.PathLike[str] | None = None) -> "Results":  # noqa: A001 (nas.results.open)
    """Open the results database read-only (``None``: ``$NAS_DB`` or ``./nas.db``).

    Never creates, migrates or writes anything. UserError for a missing file, a
    malformed URL, a file that is not a database, or a schema other than this
    cellsearch's (older: run ``nas db upgrade``; newer: upgrade cellsearch).
    """
    try:
        store = Store.open(db, create=False, upgrade=False)
    except SchemaVersionError as e:
        if e.older:
            cmd = "nas db upgrade" + (f" --db {_shell_quote(mask_url(os.fspath(db)))}" if db is not None else "")
            raise UserError(e.message, f"run `{cmd}` to migrate it (back up the file first); "
                                       "`nas results` only reads and never migrates") from None
        raise UserError(e.message, e.hint) from None
    except StorageError as e:
        raise UserError(e.message, e.hint) from None
    return Results(store)


def _shell_quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


# ------------------------------------------------------------------------------- helpers


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return None if math.isnan(v) else v


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if not isinstance(d, dict):
        return out
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _seconds(a: datetime | None, b: datetime | None) -> float | None:
    if a is None or b is None:
        return None
    return (b - a).total_seconds()


def _jsonable(v: Any) -> Any:
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, bytes):
        return v.hex()
    return v


def _frame(rows: list[dict[str, Any]], columns: Sequence[str] | None = None):
    try:
        import pandas as pd
    except ImportError:
        raise UserError("pandas is not installed", "pip install 'cellsearch[plots]', or pass as_records=True") from None
    if columns is None:
        columns = _columns(rows)
    return pd.DataFrame.from_records(rows, columns=list(columns))


def _columns(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """Union of the keys, in order of first appearance (fixed columns first)."""
    seen: dict[str, None] = {}
    for r in rows:
        for k in r:
            seen.setdefault(k, None)
    return list(seen)


def parse_where(where: Mapping[str, Any] | Iterable[str] | str | None) -> list[tuple[str, str, Any]]:
    """Filters as ``(name, op, value)``: from ``{"val_loss<": 1.5, "status": "completed"}``
    or ``["val_loss<1.5", "params<=2e4"]``. Ops: < <= > >= == = !=."""
    if where is None:
        return []
    out: list[tuple[str, str, Any]] = []
    if isinstance(where, Mapping):
        for key, value in where.items():
            m = re.match(r"^\s*(.+?)\s*(<=|>=|!=|==|<|>|=)?\s*$", str(key))
            assert m
            name, op = m.group(1), m.group(2) or "=="
            out.append(_check_cond(name, op, value, f"{key}: {value!r}"))
        return out
    items = [where] if isinstance(where, str) else list(where)
    for item in items:
        m = _WHERE_RE.match(str(item))
        if not m or not m.group(3):
            raise UserError(f"malformed filter {item!r}", "write NAME OP VALUE, e.g. 'val_loss<1.5' "
                            "(OP is one of < <= > >= = == !=; quote it for the shell)")
        name, op, raw = m.groups()
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out.append(_check_cond(name, op, value, str(item)))
    return out


def _check_cond(name: str, op: str, value: Any, text: str) -> tuple[str, str, Any]:
    if op in ("<", "<=", ">", ">=") and _num(value) is None:
        raise UserError(f"filter {text!r}: {op} needs a number, got {value!r}")
    return (name.strip(), "==" if op == "=" else op, value)


def _match(row: Mapping[str, Any], cond: tuple[str, str, Any]) -> bool:
    name, op, value = cond
    v = row.get(name)
    if op in ("==", "!="):
        a, b = _num(v), _num(value)
        same = (a == b) if (a is not None and b is not None) else (v == value or str(v) == str(value))
        return same if op == "==" else (v is not None and not same)
    a = _num(v)
    return a is not None and _OPS[op](a, float(value))


def _check_out(path: str | os.PathLike[str], allowed: Sequence[str], what: str,
               fmt: str | None = None) -> tuple[Path, str]:
    """Validate an output file path (before any query): its format and its directory."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise UserError(f"cannot write {what} to {p}: it is a directory", "give a file name")
    fmt = (fmt or p.suffix.lstrip(".")).lower()
    if fmt == "pq":
        fmt = "parquet"
    if fmt not in allowed:
        raise UserError(f"cannot write {what} as {fmt or 'a file without a suffix'!r} ({p})",
                        f"use a file ending in {', '.join('.' + a for a in allowed)}"
                        + (" or pass --format" if what == "an export" else ""))
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.exists():
        raise UserError(f"cannot write {what} to {p}: directory {parent} does not exist",
                        "create the directory first or choose another path")
    if not parent.is_dir():
        raise UserError(f"cannot write {what} to {p}: {parent} is not a directory", "choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {what} to {p}: directory {parent} is not writable",
                        "choose a writable location")
    return p, fmt


def _atomic_write(path: Path, write: Callable[[Path], None], what: str) -> Path:
    """``write(tmp)`` then rename into place: a failure leaves no partial file."""
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"  # created by write(), with the umask
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except OSError as e:
        _unlink(tmp)
        raise UserError(f"cannot write {what} to {path}: {e.strerror or e}", "choose a writable location") from None
    except BaseException:
        _unlink(tmp)
        raise
    return path


def _unlink(p: str | Path) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass


def _figure(**kw):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError("matplotlib is not installed", "pip install 'cellsearch[plots]'") from None
    return Figure(**kw)


@dataclass
class TrialRow:
    """A trial as stored (``record``) and as a flat row (``row``, see the module doc)."""

    record: TrialRecord
    row: dict[str, Any]


_Trial = TrialRow


# ------------------------------------------------------------------------------- Results


class Results:
    """Read-only queries over a results database (see the module doc)."""

    def __init__(self, store: Store):
        self.store = store
        self._searches: dict[int, SearchRecord] | None = None

    # -- lifecycle --------------------------------------------------------------------
    @property
    def url(self) -> str:
        return self.store.url

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "Results":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Results({self.url!r})"

    # -- resolution -------------------------------------------------------------------
    def _search_map(self) -> dict[int, SearchRecord]:
        if self._searches is None:
            self._searches = {s.id: s for s in self.store.list_searches()}
        return self._searches

    def _search_names(self, search: str | int | Iterable[str | int] | None) -> list[str] | None:
        """Validated search names (UserError with the known names for an unknown one)."""
        if search is None:
            return None
        items = [search] if isinstance(search, (str, int)) else list(search)
        if not items:
            return None
        by_name = {s.name: s for s in self._search_map().values()}
        out = []
        for x in items:
            if isinstance(x, int) and not isinstance(x, bool) and x in self._search_map():
                out.append(self._search_map()[x].name)
                continue
            if x in by_name:
                out.append(str(x))
                continue
            self._searches = None  # maybe created since; look again
            by_name = {s.name: s for s in self._search_map().values()}
            if x in by_name:
                out.append(str(x))
                continue
            names = list(by_name)
            close = difflib.get_close_matches(str(x), names, n=1)
            hint = (f"did you mean '{close[0]}'? " if close else "") + (
                f"searches: {', '.join(names[-10:])}" if names else "the database has no searches")
            raise UserError(f"no search named '{x}' in {self.url}", hint)
        return out

    def _spaces(self, space: str | Iterable[str] | None) -> list[str] | None:
        if space is None:
            return None
        items = [space] if isinstance(space, str) else list(space)
        if not items:
            return None
        known = self.store.space_names()
        for x in items:
            if x not in known:
                close = difflib.get_close_matches(x, known, n=1)
                raise UserError(f"no search over a space named '{x}' in {self.url}",
                                (f"did you mean '{close[0]}'? " if close else "")
                                + (f"spaces: {', '.join(known)}" if known else "the database has no searches"))
        return items

    @staticmethod
    def _statuses(status: str | Iterable[str] | None) -> list[str] | None:
        if status is None:
            return None
        items = [status] if isinstance(status, str) else list(status)
        items = [s.strip() for x in items for s in str(x).split(",") if s.strip()]
        for s in items:
            if s not in TRIAL_STATUSES:
                raise UserError(f"unknown trial status '{s}'", f"statuses: {', '.join(TRIAL_STATUSES)}")
        return items or None

    def _row(self, t: TrialRecord) -> dict[str, Any]:
        s = self._search_map().get(t.search_id)
        if s is None:
            self._searches = None
            s = self._search_map()[t.search_id]
        row: dict[str, Any] = {
            "id": t.id, "search": t.search_name, "trial": t.trial_index, "status": t.status,
            "arch": t.architecture_hash, "space": s.space_name, "controller": s.controller,
            "objective": t.objective, "wall_time_s": t.wall_time_s,
            "elapsed_s": _seconds(s.created_at, t.finished_at), "created_at": t.created_at,
            "started_at": t.started_at, "finished_at": t.finished_at, "host": t.host, "gpu": t.gpu,
            "attempt": t.attempt, "budget": t.budget, "diverged_step": t.diverged_step,
            "reused_from": t.reused_from_trial_id, "config_hash": t.config_hash, "error": t.error,
            "assignment": json.dumps(t.assignment, sort_keys=True) if t.assignment is not None else None,
        }
        for k, v in _flatten(t.metrics).items():
            row[f"metrics.{k}" if k in row else k] = v
        for k, v in _flatten(t.hyperparameters).items():
            row[f"hp.{k}"] = v
        return row

    def _check_names(self, names: Iterable[str], scope: list[_Trial], search: list[str] | None,
                     space: list[str] | None, what: str = "metric") -> None:
        """UserError for a column/metric name no trial in scope has."""
        names = [n for n in names if n not in TRIAL_COLUMNS]
        if not names:
            return
        known: set[str] = set()
        for t in scope:
            known.update(t.row)
        missing = [n for n in names if n not in known]
        if not missing:
            return
        stored = self.store.metric_names(search, space=space)
        every = known | set(stored) | {f"metrics.{k}" for k in stored}
        every |= {f"hp.{k}" for t in scope for k in _flatten(t.record.hyperparameters)}
        missing = [n for n in missing if n not in every]
        if not missing or not stored:
            return  # no metrics recorded yet: no way to tell, and nothing to report
        metrics = sorted({k for k in every if not k.startswith("hp.") and k not in TRIAL_COLUMNS})
        name = missing[0]
        close = difflib.get_close_matches(name, sorted(every | set(TRIAL_COLUMNS)), n=1)
        raise UserError(f"unknown {what} '{name}'",
                        (f"did you mean '{close[0]}'? " if close else "")
                        + f"metrics: objective, {', '.join(metrics[:30])}"
                        + (" ..." if len(metrics) > 30 else "")
                        + "; hyperparameters as hp.NAME")

    def _select(self, search=None, status=None, space=None, where=None,
                need: Iterable[str] = ()) -> list[_Trial]:
        names = self._search_names(search)
        statuses = self._statuses(status)
        spaces = self._spaces(space)
        conds = parse_where(where)
        recs = self.store.trials(names, statuses, space=spaces)
        scope = [_Trial(r, self._row(r)) for r in recs]
        self._check_names([c[0] for c in conds] + [n for n in need if n], scope, names, spaces)
        return [t for t in scope if all(_match(t.row, c) for c in conds)]

    @staticmethod
    def _sort(items: list[_Trial], metric: str, mode: str) -> list[_Trial]:
        if mode not in ("min", "max"):
            raise UserError(f"mode must be min or max, got {mode!r}")
        sign = 1.0 if mode == "min" else -1.0

        def key(t: _Trial) -> tuple:
            v = _num(t.row.get(metric))
            return (1, 0.0, t.record.id) if v is None else (0, sign * v, t.record.id)

        return sorted(items, key=key)

    def _out(self, rows: list[dict[str, Any]], as_records: bool, columns: Sequence[str] | None = None):
        return rows if as_records else _frame(rows, columns)

    def resolve_trial(self, ref: int | str) -> TrialRecord:
        """A trial by id (int), ``trial:ID`` or ``SEARCH#INDEX``."""
        if isinstance(ref, int) and not isinstance(ref, bool):
            t = self.store.get_trial(ref)
            if t is None:
                raise UserError(f"no trial with id {ref} in {self.url}", REF_HINT)
            return t
        text = str(ref).strip()
        m = _TRIAL_ID_RE.match(text)
        if m:
            return self.resolve_trial(int(m.group(1)))
        m = _SEARCH_INDEX_RE.match(text)
        if m:
            name = self._search_names(m.group(1))[0]  # type: ignore[index]
            t = self.store.trial_at(name, int(m.group(2)))
            if t is None:
                n = sum(self.store.counts(name).values())
                raise UserError(f"search '{name}' has no trial #{m.group(2)}",
                                f"its trials are #0 to #{n - 1}" if n else "it has no trials yet")
            return t
        if text.isdigit():
            return self.resolve_trial(int(text))
        raise UserError(f"{ref!r} is not a trial", "name a trial as trial:ID, SEARCH#INDEX or its id")

    def resolve(self, ref: str) -> tuple[ArchitectureRecord, TrialRecord | None]:
        """An architecture by hash prefix, or the architecture of a trial
        (``trial:ID``, ``SEARCH#INDEX``); with the trial when one was named."""
        text = str(ref).strip()
        if _TRIAL_ID_RE.match(text) or _SEARCH_INDEX_RE.match(text):
            t = self.resolve_trial(text)
            if t.architecture_id is None:
                hp = t.hyperparameters if isinstance(t.hyperparameters, dict) else {}
                if t.assignment is None and "darts" in hp:  # see nas.supernet_phase
                    raise UserError(f"trial {text} is a darts search's supernet job, a mixture of every cell "
                                    "rather than one architecture",
                                    "its derived cell is the search's next trial; the alpha history is in "
                                    "runs/<search>/alpha.json beside the database (and this trial's steps)")
                raise UserError(f"trial {text} has no architecture recorded")
            arch = self.store.get_architecture(t.architecture_id)
            assert arch is not None
            return arch, t
        if not _HEX_RE.match(text):
            raise UserError(f"{ref!r} is neither an architecture hash prefix nor a trial", REF_HINT)
        found = self.store.find_architectures(text.lower(), limit=6)
        if not found:
            raise UserError(f"no architecture whose hash starts with '{text}' in {self.url}", REF_HINT)
        if len(found) > 1:
            shown = ", ".join(a.canonical_hash[:16] for a in found[:5])
            raise UserError(f"'{text}' matches {'more than 5' if len(found) > 5 else len(found)} architectures: "
                            f"{shown}", "give more digits of the hash")
        return found[0], None

    # -- queries ------------------------------------------------------------------------
    def searches(self, *, as_records: bool = False):
        """One row per search: its settings, trial counts per status and best objective."""
        self._searches = None
        counts = self.store.counts_by_search()
        rows = []
        for s in self._search_map().values():
            best = self.store.top(s.id, k=1)
            c = counts.get(s.id, {})
            rows.append({
                "search": s.name, "id": s.id, "space": s.space_name, "controller": s.controller,
                "task": s.task, "seed": s.seed, "status": s.status, "created_at": s.created_at,
                "updated_at": s.updated_at, "trials": sum(c.values()),
                **{st: c.get(st, 0) for st in TRIAL_STATUSES},
                "best_objective": best[0].objective if best else None,
                "best_trial": best[0].trial_index if best and best[0].objective is not None else None,
            })
        return self._out(rows, as_records)

    def trials(self, search=None, status=None, space=None, where=None, *, sort: str | None = None,
               descending: bool = False, limit: int | None = None, as_records: bool = False):
        """Trials with filters: ``search`` (name(s)), ``status`` (one or several),
        ``space`` (the search's space), ``where`` (``{"val_loss<": 1.5}`` or
        ``["val_loss<1.5"]``); sorted by ``sort`` (a column or metric; missing values
        last) or by search and index; at most ``limit`` rows."""
        items = self.select(search, status, space, where, sort=sort, descending=descending, limit=limit)
        return self._out([t.row for t in items], as_records)

    def select(self, search=None, status=None, space=None, where=None, *, sort: str | None = None,
               descending: bool = False, limit: int | None = None) -> list[TrialRow]:
        """Like :meth:`trials`, as :class:`TrialRow` objects (record and flat row)."""
        items = self._select(search, status, space, where, need=[sort] if sort else [])
        if sort:
            items = self._sort(items, sort, "max" if descending else "min")
        if limit is not None and limit > 0:
            items = items[:limit]
        return items

    def best(self, metric: str = "objective", k: int | None = 10, *, mode: str | None = None, search=None,
             status="completed", space=None, where=None) -> list[TrialRow]:
        """Like :meth:`top`, as :class:`TrialRow` objects."""
        return self._top(metric, k, mode=mode, search=search, status=status, space=space, where=where)

    def front(self, x: str = "params", y: str = "objective", modes: Sequence[str] | None = None, *,
              search=None, status="completed", space=None, where=None) -> list[TrialRow]:
        """Like :meth:`pareto`, as :class:`TrialRow` objects."""
        return self._pareto(x, y, modes, search, status, space, where)[0]

    def _top(self, metric: str = "objective", k: int | None = 10, *, mode: str | None = None, search=None,
             status="completed", space=None, where=None) -> list[_Trial]:
        mode = mode or default_mode(metric)
        items = self._select(search, status, space, where, need=[metric])
        items = self._sort(items, metric, mode)
        return items if k is None or k <= 0 else items[:k]

    def top(self, metric: str = "objective", k: int | None = 10, *, mode: str | None = None, search=None,
            status="completed", space=None, where=None, as_records: bool = False):
        """The ``k`` best trials by ``metric`` (completed ones unless ``status`` says
        otherwise); trials without a value come last."""
        items = self._top(metric, k, mode=mode, search=search, status=status, space=space, where=where)
        return self._out([t.row for t in items], as_records)

    def _pareto(self, x: str, y: str, modes: Sequence[str] | None, search=None, status="completed",
                space=None, where=None) -> tuple[list[_Trial], list[_Trial], tuple[str, str]]:
        mx, my = tuple(modes) if modes else (default_mode(x), default_mode(y))
        for m in (mx, my):
            if m not in ("min", "max"):
                raise UserError(f"mode must be min or max, got {m!r}")
        items = self._select(search, status, space, where, need=[x, y])
        pts = [t for t in items if _num(t.row.get(x)) is not None and _num(t.row.get(y)) is not None
               and math.isfinite(t.row[x]) and math.isfinite(t.row[y])]
        sx, sy = (1.0 if mx == "min" else -1.0), (1.0 if my == "min" else -1.0)
        order = sorted(pts, key=lambda t: (sx * t.row[x], sy * t.row[y], t.record.id))
        front_vals: set[tuple[float, float]] = set()
        best_y = math.inf
        for t in order:
            if sy * t.row[y] < best_y:
                best_y = sy * t.row[y]
                front_vals.add((t.row[x], t.row[y]))
        front = [t for t in order if (t.row[x], t.row[y]) in front_vals]
        return front, pts, (mx, my)

    def pareto(self, x: str = "params", y: str = "objective", modes: Sequence[str] | None = None, *,
               search=None, status="completed", space=None, where=None, as_records: bool = False):
        """The Pareto front over metrics ``x`` and ``y`` (``modes``: e.g. ("min", "min"),
        default by name): the trials no other trial beats in both, sorted by ``x``.
        Trials with equal (x, y) are all on the front."""
        front, _, _ = self._pareto(x, y, modes, search, status, space, where)
        return self._out([t.row for t in front], as_records)

    def curve(self, trial: int | str, *, as_records: bool = False):
        """The learning curve of a trial (id, ``trial:ID`` or ``SEARCH#INDEX``):
        one row per recorded step, ``step`` then the step's metrics. A trial that
        reused an earlier result has the curve of that (original) trial."""
        t = self.resolve_trial(trial)
        rows = [{"step": s, **_flatten(m)} for s, m in self.store.curve(t.reused_from_trial_id or t.id)]
        return self._out(rows, as_records, None if rows else ["step"])

    def curves(self, search=None, status=None, space=None, where=None, *, as_records: bool = False):
        """Learning curves of the selected trials, long format: ``trial_id, search,
        trial, step`` and the step's metrics."""
        items = self._select(search, status, space, where)
        curves = self.store.curves([t.record.id for t in items])
        rows = []
        for t in items:
            for step, m in curves[t.record.id]:
                rows.append({"trial_id": t.record.id, "search": t.record.search_name,
                             "trial": t.record.trial_index, "step": step, **_flatten(m)})
        return self._out(rows, as_records, None if rows else ["trial_id", "search", "trial", "step"])

    def best_so_far(self, search=None, metric: str = "objective", mode: str | None = None, *,
                    by: str = "trial", as_records: bool = False):
        """Per search, the best ``metric`` so far over its completed trials, in trial
        order (``by="trial"``) or in order of finishing time (``by="time"``):
        ``search, trial, elapsed_s, value, best``."""
        if by not in ("trial", "time"):
            raise UserError(f"by must be 'trial' or 'time', got {by!r}")
        mode = mode or default_mode(metric)
        if mode not in ("min", "max"):
            raise UserError(f"mode must be min or max, got {mode!r}")
        items = self._select(search, "completed", None, None, need=[metric])
        groups: dict[str, list[_Trial]] = {}
        for t in items:
            if _num(t.row.get(metric)) is not None:
                groups.setdefault(t.record.search_name, []).append(t)
        rows = []
        for name, ts in groups.items():
            if by == "time":
                ts = sorted(ts, key=lambda t: (t.row["elapsed_s"] if t.row["elapsed_s"] is not None
                                               else math.inf, t.record.trial_index))
            best: float | None = None
            for t in ts:
                v = float(t.row[metric])
                if best is None or (v < best if mode == "min" else v > best):
                    best = v
                rows.append({"search": name, "trial": t.record.trial_index, "elapsed_s": t.row["elapsed_s"],
                             "value": v, "best": best})
        return self._out(rows, as_records, None if rows else ["search", "trial", "elapsed_s", "value", "best"])

    def compare(self, searches=None, metric: str = "objective", mode: str | None = None, *,
                as_records: bool = False):
        """Per search: controller, space, trial counts, the best and median ``metric``
        over completed trials, the trial that reached the best, trials and seconds
        until then (from the search's creation), and the total time."""
        names = self._search_names(searches) or [s.name for s in self._search_map().values()]
        mode = mode or default_mode(metric)
        if mode not in ("min", "max"):
            raise UserError(f"mode must be min or max, got {mode!r}")
        items = self._select(names, None, None, None, need=[metric])
        by: dict[str, list[_Trial]] = {n: [] for n in names}
        for t in items:
            by[t.record.search_name].append(t)
        smap = {s.name: s for s in self._search_map().values()}
        rows = []
        for name in names:
            s, ts = smap[name], by[name]
            done = [t for t in ts if t.record.status == "completed"]
            vals = [(float(t.row[metric]), t) for t in done if _num(t.row.get(metric)) is not None]
            sign = 1.0 if mode == "min" else -1.0
            best_t = min(vals, key=lambda p: (sign * p[0], p[1].record.trial_index))[1] if vals else None
            ends = [t.row["elapsed_s"] for t in ts if t.row["elapsed_s"] is not None]
            rows.append({
                "search": name, "controller": s.controller, "space": s.space_name, "status": s.status,
                "trials": len(ts), **{st: sum(1 for t in ts if t.record.status == st) for st in TRIAL_STATUSES},
                "reused": sum(1 for t in ts if t.record.reused_from_trial_id is not None),
                "architectures": len({t.record.architecture_id for t in ts if t.record.architecture_id}),
                "metric": metric, "mode": mode,
                "best": best_t.row[metric] if best_t else None,
                "median": statistics.median(v for v, _ in vals) if vals else None,
                "best_trial": best_t.record.trial_index if best_t else None,
                "best_arch": best_t.record.architecture_hash if best_t else None,
                "trials_to_best": (sum(1 for t in ts if t.record.trial_index <= best_t.record.trial_index)
                                   if best_t else None),
                "time_to_best_s": best_t.row["elapsed_s"] if best_t else None,
                "total_time_s": max(ends) if ends else None,
                "train_time_s": sum(t.record.wall_time_s or 0.0 for t in ts),
            })
        return self._out(rows, as_records)

    def architecture(self, ref: str) -> dict[str, Any]:
        """An architecture (hash prefix, ``trial:ID`` or ``SEARCH#INDEX``): its record,
        DSL text, the trial named (if any) and every trial of it."""
        arch, trial = self.resolve(ref)
        return {"architecture": arch, "dsl": self._dsl(arch), "trial": trial,
                "trials": self.store.trials(architecture=arch.id)}

    def cell(self, ref: str):
        """The :class:`nas.ir.CellGraph` of an architecture (as stored)."""
        arch, _ = self.resolve(ref)
        return self._graph(arch)

    @staticmethod
    def _graph(arch: ArchitectureRecord):
        from .ir import CellGraph, GraphError

        if not arch.ir_json:
            raise UserError(f"architecture {arch.canonical_hash[:12]} has no cell IR stored", "nothing to draw")
        try:
            return CellGraph.from_json(arch.ir_json)
        except GraphError as e:
            raise UserError(f"architecture {arch.canonical_hash[:12]}: the stored cell IR is invalid: {e}") from None

    def _dsl(self, arch: ArchitectureRecord) -> str | None:
        if arch.dsl_text:
            return arch.dsl_text
        if arch.ir_json:
            try:
                return self._graph(arch).to_dsl(arch.space_name or "cell")
            except UserError:
                return None
        return None

    # -- files ----------------------------------------------------------------------------
    def export(self, out: str | os.PathLike[str], format: str | None = None, *, table: str = "trials",  # noqa: A002
               search=None, status=None, space=None, where=None, sort: str | None = None,
               descending: bool = False, limit: int | None = None) -> Path:
        """Write a table (``trials``, ``searches`` or ``curves``) as CSV, JSON (a list
        of objects, ISO dates) or Parquet, chosen by ``format`` or the suffix. The
        file appears whole or not at all."""
        if table not in TABLES:
            raise UserError(f"unknown table {table!r}", f"tables: {', '.join(TABLES)}")
        path, fmt = _check_out(out, EXPORT_FORMATS, "an export", format)
        rows = self._table(table, search, status, space, where, sort, descending, limit)
        return write_rows(rows, path, fmt)

    def rows(self, records: Iterable[TrialRecord]) -> list[TrialRow]:
        """Flat rows of trial records (e.g. ``Store.trials(...)``)."""
        return [TrialRow(t, self._row(t)) for t in records]

    def table(self, table: str = "trials", *, search=None, status=None, space=None, where=None,
              sort: str | None = None, descending: bool = False, limit: int | None = None) -> list[dict[str, Any]]:
        """The rows :meth:`export` writes (``trials``, ``searches`` or ``curves``), as dicts."""
        if table not in TABLES:
            raise UserError(f"unknown table {table!r}", f"tables: {', '.join(TABLES)}")
        return self._table(table, search, status, space, where, sort, descending, limit)

    def _table(self, table, search, status, space, where, sort, descending, limit) -> list[dict[str, Any]]:
        if table == "trials":
            return self.trials(search, status, space, where, sort=sort, descending=descending, limit=limit,
                               as_records=True)
        if table == "curves":
            return self.curves(search, status, space, where, as_records=True)
        rows = self.searches(as_records=True)
        names = self._search_names(search)
        return [r for r in rows if names is None or r["search"] in names]

    def draw(self, ref: str, out: str | os.PathLike[str], *, fmt: str | None = None):
        """Draw the cell of an architecture or trial to ``out`` (png, svg, pdf);
        returns a :class:`nas.draw.CellDrawing` (what was drawn: nodes, edges)."""
        from .draw import draw_cell

        path, fmt = _check_out(out, PLOT_FORMATS, "a drawing", fmt)
        arch, _ = self.resolve(ref)
        graph = self._graph(arch)
        title = f"{arch.space_name or 'cell'}  {arch.canonical_hash[:12]}  ({graph.num_ops()} ops)"
        _require_matplotlib()
        try:
            return draw_cell(graph, path, title=title, fmt=fmt)
        except OSError as e:
            raise UserError(f"cannot write a drawing to {path}: {e.strerror or e}", "choose a writable location") from None

    def plot_best(self, out: str | os.PathLike[str], searches=None, metric: str = "objective",
                  mode: str | None = None, *, fmt: str | None = None) -> Path:
        """Best-so-far ``metric`` versus trial index (left) and versus wall-clock
        minutes since the search began (right), one line per search."""
        path, fmt = _check_out(out, PLOT_FORMATS, "a plot", fmt)
        mode = mode or default_mode(metric)
        by_trial = self.best_so_far(searches, metric, mode, by="trial", as_records=True)
        by_time = self.best_so_far(searches, metric, mode, by="time", as_records=True)
        if not by_trial:
            raise UserError(f"no completed trial with a value of '{metric}' to plot", "run a search first, "
                            "or choose another --metric / --search")
        fig = _figure(figsize=(11, 4.2), layout="constrained")
        ax1, ax2 = fig.subplots(1, 2)
        names = list(dict.fromkeys(r["search"] for r in by_trial))
        for i, name in enumerate(names):
            colour = f"C{i % 10}"
            pts = [r for r in by_trial if r["search"] == name]
            ax1.scatter([r["trial"] for r in pts], [r["value"] for r in pts], s=10, alpha=0.35, color=colour)
            ax1.step([r["trial"] for r in pts], [r["best"] for r in pts], where="post", color=colour, label=name)
            pts = [r for r in by_time if r["search"] == name and r["elapsed_s"] is not None]
            xs = [r["elapsed_s"] / 60.0 for r in pts]
            ax2.scatter(xs, [r["value"] for r in pts], s=10, alpha=0.35, color=colour)
            ax2.step(xs, [r["best"] for r in pts], where="post", color=colour, label=name)
        ax1.set_xlabel("trial")
        ax2.set_xlabel("minutes since the search began")
        for ax in (ax1, ax2):
            ax.set_ylabel(f"best {metric} so far ({mode})")
            ax.grid(alpha=0.3)
        ax1.legend(fontsize=8)
        fig.suptitle(f"best {metric} so far")
        return _save(fig, path, fmt, "a plot")

    def plot_curves(self, out: str | os.PathLike[str], search=None, k: int = 5, metric: str = "objective",
                    mode: str | None = None, curve_metric: str | None = None, *, status="completed",
                    space=None, where=None, fmt: str | None = None) -> Path:
        """Learning curves (``curve_metric`` per step; default val_loss, or the first
        metric recorded) of the ``k`` best trials by ``metric``."""
        path, fmt = _check_out(out, PLOT_FORMATS, "a plot", fmt)
        ranked = self._top(metric, None, mode=mode, search=search, status=status, space=space, where=where)
        best, seen = [], set()
        for t in ranked:  # a reused result has no curve of its own: draw its original's, once
            src = t.record.reused_from_trial_id or t.record.id
            if src not in seen:
                seen.add(src)
                best.append((src, t))
            if len(best) == k:
                break
        curves = self.store.curves([src for src, _ in best])
        keys: dict[str, None] = {}
        for pts in curves.values():
            for _, m in pts:
                keys.update(dict.fromkeys(_flatten(m)))
        if not any(curves.values()):
            raise UserError("no learning curves recorded for the selected trials",
                            "curves are recorded as trials train (eval_every); choose other trials")
        if curve_metric is None:
            curve_metric = next((c for c in ("val_loss", "loss", "train_loss") if c in keys), next(iter(keys)))
        elif curve_metric not in keys:
            close = difflib.get_close_matches(curve_metric, list(keys), n=1)
            raise UserError(f"unknown curve metric '{curve_metric}'",
                            (f"did you mean '{close[0]}'? " if close else "") + f"recorded per step: {', '.join(keys)}")
        fig = _figure(figsize=(8, 4.8), layout="constrained")
        ax = fig.subplots()
        for i, (src, t) in enumerate(best):
            pts = [(s, _num(_flatten(m).get(curve_metric))) for s, m in curves[src]]
            pts = [(s, v) for s, v in pts if v is not None]
            if not pts:
                continue
            v = t.row.get(metric)
            label = (f"{t.record.search_name}#{t.record.trial_index} {(t.record.architecture_hash or '')[:8]}"
                     + (f" ({metric} {v:.4g})" if _num(v) is not None else ""))
            ax.plot([s for s, _ in pts], [v for _, v in pts], marker="o", markersize=3, color=f"C{i % 10}",
                    label=label)
        ax.set_xlabel("step")
        ax.set_ylabel(curve_metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax.set_title(f"learning curves of the top {len(best)} by {metric}")
        return _save(fig, path, fmt, "a plot")

    def plot_pareto(self, out: str | os.PathLike[str], x: str = "params", y: str = "objective",
                    modes: Sequence[str] | None = None, *, search=None, status="completed", space=None,
                    where=None, fmt: str | None = None) -> Path:
        """Every trial as a point (x, y) and the Pareto front as a step line."""
        path, fmt = _check_out(out, PLOT_FORMATS, "a plot", fmt)
        front, pts, (mx, my) = self._pareto(x, y, modes, search, status, space, where)
        if not pts:
            raise UserError(f"no trial has numeric values of both '{x}' and '{y}'")
        fig = _figure(figsize=(7, 5), layout="constrained")
        ax = fig.subplots()
        ax.scatter([t.row[x] for t in pts], [t.row[y] for t in pts], s=14, alpha=0.45, color="C0",
                   label=f"trials ({len(pts)})")
        fx, fy = [t.row[x] for t in front], [t.row[y] for t in front]
        ax.step(fx, fy, where="post", color="C3", linewidth=1.2)
        ax.scatter(fx, fy, s=28, color="C3", label=f"Pareto front ({len(front)})", zorder=3)
        xs = [t.row[x] for t in pts]
        if min(xs) > 0 and max(xs) / min(xs) > 100:
            ax.set_xscale("log")
        ax.set_xlabel(f"{x} ({mx})")
        ax.set_ylabel(f"{y} ({my})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        return _save(fig, path, fmt, "a plot")


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UserError("matplotlib is not installed", "pip install 'cellsearch[plots]'") from None


def _save(fig, path: Path, fmt: str, what: str) -> Path:
    return _atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=110), what)


def _cell(v: Any) -> Any:
    """A value for a flat file: dicts/lists as JSON text, datetimes as ISO text."""
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(_jsonable(v), sort_keys=True)
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def write_rows(rows: list[dict[str, Any]], path: Path, fmt: str) -> Path:
    """Write flat rows as csv / json / parquet (atomically)."""
    columns = _columns(rows)
    if fmt == "csv":
        def write(tmp: Path) -> None:
            with builtins.open(tmp, "w", newline="", encoding="utf-8") as f:
                w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
                w.writeheader()
                for r in rows:
                    w.writerow({k: ("" if (c := _cell(r.get(k))) is None else c) for k in columns})
    elif fmt == "json":
        def write(tmp: Path) -> None:
            with builtins.open(tmp, "w", encoding="utf-8") as f:
                json.dump([{k: _jsonable(r.get(k)) for k in columns} for r in rows], f, indent=1)
                f.write("\n")
    elif fmt == "parquet":
        try:
            import pandas as pd
            import pyarrow  # noqa: F401
        except ImportError:
            raise UserError("Parquet export needs pandas and pyarrow", "pip install 'cellsearch[plots]'") from None
        def native(v: Any) -> Any:
            if isinstance(v, (dict, list, tuple)):
                return json.dumps(_jsonable(v), sort_keys=True)
            if isinstance(v, float) and not math.isfinite(v):
                return None
            return v

        data = {k: [native(r.get(k)) for r in rows] for k in columns}
        for k, vals in data.items():  # one type per column: mixed ones become text
            kinds = {type(v) for v in vals if v is not None}
            if kinds == {bool} or kinds <= {int, float} or kinds == {str} or kinds == {datetime}:
                continue
            data[k] = [None if v is None else (v if isinstance(v, str) else json.dumps(v)) for v in vals]
        df = pd.DataFrame(data, columns=columns)

        def write(tmp: Path) -> None:
            df.to_parquet(tmp, index=False, engine="pyarrow")
    else:  # pragma: no cover (checked by _check_out)
        raise UserError(f"unknown export format {fmt!r}", f"formats: {', '.join(EXPORT_FORMATS)}")
    return _atomic_write(path, write, "an export")
