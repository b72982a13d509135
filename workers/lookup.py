"""A lookup evaluator: trials are "run" by reading their metrics from a table.

This is how NAS benchmarks (NAS-Bench-NLP, NAS-Bench-101/201) are used to compare
search algorithms in seconds: every architecture was trained once, offline; a search
then looks its candidates up instead of training them.

A table is a CSV, JSON (a list of objects, `{"rows": [...]}`, or JSON lines) or
Parquet file with

* a key column: `arch_hash` (the canonical cell hash, `CellGraph.canonical_hash()`; a
  prefix of equal length for every row is accepted too) or `assignment` (the assignment
  as JSON text; needs trial specs that carry their assignment in `extra`);
* optional hyperparameter key columns `model.<key>` / `train.<key>`, matched against the
  trial's model / train settings (for spaces that search hyperparameters);
* metric columns (every other numeric column: `val_loss`, `params`, ...), and optionally
  `status` (completed | diverged | failed | pruned) and `error`.

`LookupDispatcher` answers each submitted trial at once (`poll` finishes one trial per
call, first in first out, or in a seeded random order to mimic asynchronous workers).
An architecture that is not in the table is a *failed* trial whose error says so
("architecture <hash> not in table FILE"); the search goes on.

`SyntheticObjective` / `SyntheticTable` / `build_table` make such tables from a
synthetic objective: a hidden target cell and a smooth, noisy similarity to it (a
Weisfeiler-Lehman subtree kernel over the cell graphs, so isomorphic cells score alike).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import random
from collections import Counter, deque
from pathlib import Path
from typing import Any, Iterable, Mapping, Protocol

from ..errors import UserError
from ..ir import INPUT, CellGraph
from ..ops import OPS
from ..tasks.result import STATUSES, TrialResult
from .dispatch import Dispatcher, Event, Handler
from .trial import TrialSpec

KEY_COLUMNS = ("arch_hash", "assignment")
HP_PREFIXES = ("model.", "train.")
SPECIAL = ("status", "error")
FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "jsonl", ".parquet": "parquet", ".pq": "parquet"}


class MetricSource(Protocol):
    """What a `LookupDispatcher` reads: metrics for a trial spec, or None."""

    name: str
    metric_names: tuple[str, ...]

    def lookup(self, spec: TrialSpec) -> tuple[dict[str, Any] | None, str]:
        """(row, description of the key). A row holds metrics and optionally status/error."""


# ---- reading and writing table files ----------------------------------------------------------
def _format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UserError(f"lookup table {path}: unknown format '{path.suffix}'",
                        f"use one of {', '.join(sorted(FORMATS))}")
    return fmt


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        raise UserError(f"lookup table {path} does not exist", "build one with nas.workers.lookup.build_table")
    if path.is_dir():
        raise UserError(f"lookup table {path} is a directory, not a file")
    fmt = _format(path)
    try:
        if fmt == "csv":
            with path.open(newline="", encoding="utf-8") as f:
                return [dict(r) for r in csv.DictReader(f)]
        if fmt == "jsonl":
            return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if fmt == "json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict) and isinstance(data.get("rows"), list):
                data = data["rows"]
            if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
                raise UserError(f"lookup table {path}: expected a JSON list of objects (or {{\"rows\": [...]}})")
            return data
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise UserError(f"lookup table {path}: reading Parquet needs pyarrow", "pip install pyarrow") from None
        return pq.read_table(path).to_pylist()
    except (json.JSONDecodeError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"lookup table {path} is not valid {fmt}: {exc}") from None
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - pyarrow's errors: a corrupt file is the user's
        raise UserError(f"lookup table {path} could not be read: {type(exc).__name__}: {exc}") from None


def write_rows(rows: list[dict[str, Any]], path: str | Path) -> Path:
    path = Path(path)
    fmt = _format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        cols: list[str] = []
        for r in rows:
            cols.extend(k for k in r if k not in cols)
        with path.open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            for r in rows:
                w.writerow({k: ("" if v is None else (repr(v) if isinstance(v, float) else v)) for k, v in r.items()})
    elif fmt == "json":
        path.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _num(v: Any) -> float | None:
    if v is None or isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    try:
        return float(str(v).strip())
    except ValueError:
        return None


def _norm_value(v: Any) -> Any:
    """Hyperparameter values compare as numbers when they are numbers, else as text."""
    n = _num(v)
    return n if n is not None else ("" if v is None else str(v))


def assignment_key(a: Mapping[str, Any]) -> str:
    return json.dumps({k: int(v) for k, v in a.items()}, sort_keys=True, separators=(",", ":"))


class LookupTable:
    """Metrics of trained architectures, read from a file and indexed by key."""

    def __init__(self, rows: list[dict[str, Any]], name: str = "<table>"):
        self.name = name
        if not rows:
            raise UserError(f"lookup table {name} has no rows")
        columns: list[str] = []
        for r in rows:
            columns.extend(k for k in r if k not in columns)
        self.columns = tuple(columns)
        keys = [k for k in KEY_COLUMNS if k in columns]
        if not keys:
            raise UserError(f"lookup table {name} has no key column",
                            f"it needs a column 'arch_hash' (canonical cell hash) or 'assignment' (JSON); "
                            f"columns: {', '.join(columns)}")
        self.key_column = keys[0]
        self.hp_columns = tuple(c for c in columns if c.startswith(HP_PREFIXES))
        metric_cols = [c for c in columns if c not in KEY_COLUMNS and c not in SPECIAL and c not in self.hp_columns]
        self.metric_names = tuple(c for c in metric_cols if any(_num(r.get(c)) is not None for r in rows))
        self.index: dict[tuple, dict[str, Any]] = {}
        lengths = set()
        for i, r in enumerate(rows):
            raw = r.get(self.key_column)
            if raw is None or str(raw).strip() == "":
                raise UserError(f"lookup table {name}: row {i + 1} has an empty {self.key_column}")
            if self.key_column == "assignment":
                try:
                    obj = json.loads(raw) if isinstance(raw, str) else raw
                    key = assignment_key(obj)
                except (json.JSONDecodeError, TypeError, ValueError, AttributeError):
                    raise UserError(f"lookup table {name}: row {i + 1}: assignment {raw!r} is not a JSON object "
                                    "of decision -> choice index") from None
            else:
                key = str(raw).strip().lower()
                lengths.add(len(key))
            status = str(r.get("status") or "completed").strip()
            if status not in STATUSES:
                raise UserError(f"lookup table {name}: row {i + 1}: status {status!r} is not one of "
                                f"{', '.join(STATUSES)}")
            row = {"status": status, "error": r.get("error") or None,
                   "metrics": {m: v for m in self.metric_names if (v := _num(r.get(m))) is not None}}
            self.index[(key,) + tuple(_norm_value(r.get(c)) for c in self.hp_columns)] = row
        self.hash_len = lengths.pop() if len(lengths) == 1 else None

    @classmethod
    def from_file(cls, path: str | Path) -> "LookupTable":
        return cls(read_rows(path), name=str(path))

    def __len__(self) -> int:
        return len(self.index)

    def key_of(self, spec: TrialSpec) -> tuple[tuple, str]:
        hp = tuple(_norm_value(_hp_value(spec, c)) for c in self.hp_columns)
        hp_text = ", ".join(f"{c}={v}" for c, v in zip(self.hp_columns, hp))
        if self.key_column == "assignment":
            a = spec.extra.get("assignment") if spec.extra else None
            if a is None:
                raise UserError(f"lookup table {self.name} is keyed by assignment, but the trials carry none",
                                "key the table by arch_hash (the canonical cell hash) instead")
            key = assignment_key(a)
            desc = f"assignment {key}"
        else:
            key = CellGraph.from_json(spec.ir).canonical_hash()
            if self.hash_len is not None and self.hash_len < len(key):
                key = key[: self.hash_len]
            desc = f"architecture {key}"
        return (key,) + hp, desc + (f" ({hp_text})" if hp_text else "")

    def lookup(self, spec: TrialSpec) -> tuple[dict[str, Any] | None, str]:
        k, desc = self.key_of(spec)
        return self.index.get(k), desc


def _hp_value(spec: TrialSpec, column: str) -> Any:
    block, _, key = column.partition(".")
    return (spec.model if block == "model" else spec.train).get(key)


# ---- the dispatcher -------------------------------------------------------------------------------
class LookupDispatcher(Dispatcher):
    """Runs trials by table lookup, instantly; `capacity` trials "run" at once."""

    def __init__(self, table: MetricSource | LookupTable | str | Path, metric: str | None = None, mode: str = "min",
                 capacity: int = 1, order: str = "fifo", seed: int = 0):
        if isinstance(table, (str, Path)):
            table = LookupTable.from_file(table)
        self.table = table
        names = tuple(table.metric_names)
        if metric is None:
            metric = "val_loss" if "val_loss" in names or not names else names[0]
        if names and metric not in names:
            raise UserError(f"lookup table {table.name} has no metric column '{metric}'",
                            f"its metrics: {', '.join(names)}")
        if mode not in ("min", "max"):
            raise UserError(f"lookup mode must be min or max, got {mode!r}")
        if capacity < 1:
            raise UserError(f"lookup capacity must be >= 1, got {capacity}")
        if order not in ("fifo", "random"):
            raise UserError(f"lookup order must be fifo or random, got {order!r}")
        self.metric, self.mode, self._capacity, self.order = metric, mode, capacity, order
        self.rng = random.Random(seed)
        self.queue: deque[TrialSpec] = deque()
        self.looked_up = 0

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def in_flight(self) -> int:
        return len(self.queue)

    def submit(self, spec: TrialSpec) -> None:
        self.queue.append(spec)

    def describe(self) -> str:
        return f"lookup table {self.table.name} (metric {self.metric}, {self._capacity} at a time, no training)"

    def result(self, spec: TrialSpec) -> TrialResult:
        """The trial's result from the table (failed when it is not there)."""
        self.looked_up += 1
        try:
            row, desc = self.table.lookup(spec)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - a broken spec fails this trial, not the search
            return TrialResult(status="failed", error=f"{type(exc).__name__}: {exc}", primary_metric=self.metric,
                               mode=self.mode)
        if row is None:
            return TrialResult(status="failed", error=f"{desc} not in table {self.table.name}",
                               primary_metric=self.metric, mode=self.mode)
        metrics = dict(row["metrics"])
        status = row.get("status", "completed")
        if status == "completed" and not math.isfinite(metrics.get(self.metric, math.nan)):
            status = "failed"
            row = {**row, "error": row.get("error") or f"{desc}: no value of {self.metric} in table {self.table.name}"}
        return TrialResult(status=status, metrics=metrics if status in ("completed", "pruned") else
                           {k: v for k, v in metrics.items() if k not in (self.metric,)},
                           error=row.get("error"), primary_metric=self.metric, mode=self.mode)

    def poll(self, handle: Handler, timeout: float | None = None) -> None:
        if not self.queue:
            return
        if self.order == "random" and len(self.queue) > 1:
            i = self.rng.randrange(len(self.queue))
            self.queue.rotate(-i)
        spec = self.queue.popleft()
        handle(Event("started", spec.trial_id, host="lookup", attempt=spec.attempt))
        handle(Event("finished", spec.trial_id, result=self.result(spec), host="lookup", attempt=spec.attempt))

    def cancel_all(self) -> list[int]:
        ids = [s.trial_id for s in self.queue]
        self.queue.clear()
        return ids


# ---- a synthetic objective and tables built from it ---------------------------------------------------
def _short(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def wl_features(graph: CellGraph, iterations: int) -> list[Counter]:
    """Weisfeiler-Lehman subtree labels of the compute nodes, one multiset per depth."""
    nodes = graph.nodes
    state_index = {s: i for i, s in enumerate(graph.states)}
    outs: dict[str, list[int]] = {}
    for s, nid in graph.outputs.items():
        outs.setdefault(nid, []).append(state_index[s])
    label: dict[str, str] = {}
    for nid, n in nodes.items():
        if n.op == "input":
            label[nid] = "x" if nid == INPUT else f"s{state_index[nid]}"
        elif n.op == "const":
            label[nid] = f"const{float(n.value)!r}"
        else:
            label[nid] = n.op + (f">{sorted(outs[nid])}" if nid in outs else "")
    compute = [nid for nid, n in nodes.items() if n.op not in ("input", "const")]
    feats = [Counter(label[nid] for nid in compute)]
    for _ in range(iterations):
        new = {}
        for nid, n in nodes.items():
            ins = [label[i] for i in n.inputs]
            if n.op in OPS and OPS[n.op].commutative:
                ins.sort()
            new[nid] = _short(label[nid] + "(" + ",".join(ins) + ")") if n.inputs else label[nid]
        label = new
        feats.append(Counter(label[nid] for nid in compute))
    return feats


def _jaccard(a: Counter, b: Counter) -> float:
    keys = set(a) | set(b)
    den = sum(max(a[k], b[k]) for k in keys)
    return sum(min(a[k], b[k]) for k in keys) / den if den else 1.0


class SyntheticObjective:
    """A hidden target cell and a smooth, noisy similarity to it.

    `similarity` is the mean over WL depths 0..`iterations` of the weighted Jaccard
    similarity of the label multisets (1 for a cell isomorphic to the target), blended
    with the fraction of hyperparameters equal to the target's (`hp_weight`) when the
    target sets some. The metrics: `val_loss = 1 - similarity + noise` (noise ~ N(0,
    `noise`), fixed per architecture by `seed`), `similarity`, and `params` (cell layers).
    """

    def __init__(self, target: CellGraph, target_hp: Mapping[str, Any] | None = None, iterations: int = 4,
                 noise: float = 0.01, seed: int = 0, hp_weight: float = 0.2):
        self.target = target
        self.target_hp = {k: _norm_value(v) for k, v in (target_hp or {}).items()}
        self.iterations = iterations
        self.noise = noise
        self.seed = seed
        self.hp_weight = hp_weight if self.target_hp else 0.0
        self._target_feats = wl_features(target, iterations)
        self.target_hash = target.canonical_hash()

    @classmethod
    def for_space(cls, space: Any, seed: int = 0, target: Mapping[str, int] | None = None,
                  **kwargs: Any) -> "SyntheticObjective":
        """A target drawn from `space` with `seed` (or the given assignment); its searched
        hyperparameters (model./train. keys of decisions) become part of the target."""
        a = space.normalize(target) if target is not None else space.sample(random.Random(f"target-{seed}"))
        hp = space.hyperparameters(a).flat()
        searched = {k for k in hp if k in _searched_hp_keys(space)}
        return cls(space.instantiate(a), {k: hp[k] for k in sorted(searched)}, seed=seed, **kwargs)

    def similarity(self, graph: CellGraph, hp: Mapping[str, Any] | None = None) -> float:
        feats = wl_features(graph, self.iterations)
        cell = sum(_jaccard(f, t) for f, t in zip(feats, self._target_feats)) / len(feats)
        if not self.target_hp:
            return cell
        hp = hp or {}
        match = sum(1 for k, v in self.target_hp.items() if _norm_value(hp.get(k)) == v) / len(self.target_hp)
        return (1 - self.hp_weight) * cell + self.hp_weight * match

    def metrics(self, graph: CellGraph, model: Mapping[str, Any] | None = None,
                train: Mapping[str, Any] | None = None) -> dict[str, float]:
        hp = {f"model.{k}": v for k, v in (model or {}).items()}
        hp.update({f"train.{k}": v for k, v in (train or {}).items()})
        hp_part = {k: hp.get(k) for k in self.target_hp}
        sim = self.similarity(graph, hp)
        key = f"{self.seed}:{graph.canonical_hash()}:{json.dumps(hp_part, sort_keys=True, default=str)}"
        noise = random.Random(_short(key)).gauss(0.0, self.noise) if self.noise > 0 else 0.0
        out = {"val_loss": 1.0 - sim + noise, "similarity": sim}
        if model is not None:
            from ..config import ModelConfig
            from ..controllers.constraints import count_cell_params

            out["params"] = float(count_cell_params(graph, ModelConfig(**model)))
        return out


def _searched_hp_keys(space: Any) -> set[str]:
    keys = set()
    for block in ("model", "train"):
        for k, v in space.program.settings.get(block, {}).items():
            if isinstance(v, tuple) and len(v) == 2 and v[0] == "decision":
                keys.add(f"{block}.{k}")
    return keys


class SyntheticTable:
    """A table computed on demand from a `SyntheticObjective` (every cell is "in" it):
    for spaces too large to tabulate (darts_ptb has 2.6e9 cells). Same interface as
    `LookupTable`, so searches run through the same `LookupDispatcher`."""

    metric_names = ("val_loss", "similarity", "params")

    def __init__(self, objective: SyntheticObjective, name: str = "<synthetic>"):
        self.objective = objective
        self.name = name

    def lookup(self, spec: TrialSpec) -> tuple[dict[str, Any] | None, str]:
        graph = CellGraph.from_json(spec.ir)
        return {"status": "completed", "error": None,
                "metrics": self.objective.metrics(graph, spec.model, spec.train)}, "architecture"


def build_table(space: Any, objective: SyntheticObjective, path: str | Path,
                assignments: Iterable[Mapping[str, int]] | None = None, key: str = "arch_hash") -> Path:
    """Write a lookup table of `objective` over `assignments` (default: every assignment
    of `space`, for small spaces) to `path` (.csv / .json / .jsonl / .parquet)."""
    if key not in KEY_COLUMNS:
        raise ValueError(f"key must be one of {KEY_COLUMNS}")
    if assignments is None:
        assignments = space.enumerate()
    hp_cols = sorted(_searched_hp_keys(space))
    rows: list[dict[str, Any]] = []
    seen: set[tuple] = set()
    for a in assignments:
        a = space.normalize(a)
        graph = space.instantiate(a)
        hp = space.hyperparameters(a)
        model, train = hp.model.model_dump(), hp.train.model_dump()
        flat = hp.flat()
        if key == "arch_hash":
            k = (graph.canonical_hash(),) + tuple(str(flat[c]) for c in hp_cols)
            row: dict[str, Any] = {"arch_hash": k[0], **{c: flat[c] for c in hp_cols}}
        else:
            k = (assignment_key(a),)
            row = {"assignment": k[0]}
        if k in seen:
            continue
        seen.add(k)
        row.update(objective.metrics(graph, model, train))
        rows.append(row)
    return write_rows(rows, path)
