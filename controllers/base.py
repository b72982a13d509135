"""The one small interface every search controller implements, and what they share.

Controllers see only the space: they propose assignments (`ask`) and learn from outcomes
(`tell`), in any order, while other candidates still run. `state_dict` captures all
they need to continue a search exactly where it stopped (JSON-serialisable).

Shared by every controller (options common to all, see `COMMON_OPTIONS`):

* `objectives="val_loss:min,params:min"`: several objectives, compared by Pareto rank;
  without it the controller optimises the trial's primary metric (`Outcome.objective`).
* hard resource constraints `max_params` (cell-layer parameters, counted exactly from the
  cell and the model settings), `max_ops` (ops per step) and `max_depth` (ops on the
  longest path through one step, the latency proxy): no ask ever violates them.
* `dedup=true`: avoid asking an architecture (canonical cell hash plus hyperparameters)
  this controller has asked before; best effort within `max_tries` proposals.
"""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ..errors import UserError
from ..space import Assignment, SearchSpace
from .constraints import Constraint, arch_key
from .objectives import Objectives


@dataclass(frozen=True)
class Outcome:
    """What a controller is told about one evaluated assignment."""

    status: str  # completed | diverged | failed | pruned
    objective: float | None  # the primary metric, None when there is none
    mode: str = "min"  # whether a smaller objective is better
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def score(self) -> float:
        """Larger is better; -inf for trials without an objective."""
        if self.objective is None or not math.isfinite(self.objective):
            return -math.inf
        return -self.objective if self.mode == "min" else self.objective


# ---- options ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Option:
    """One controller setting: default, accepted types, a check and a help line."""

    default: Any
    help: str
    types: tuple[type, ...] = (int,)
    check: Callable[[Any], bool] | None = None
    expect: str = ""  # what `check` wants, for the error message
    nullable: bool = False

    def parse(self, controller: str, key: str, value: Any) -> Any:
        if value is None and (self.nullable or self.default is None):
            return None
        v = value
        if isinstance(v, str) and str not in self.types:  # "--controller-opt x=1" is parsed as JSON already
            v = _coerce_text(v, self.types)
        if bool in self.types and isinstance(v, str) and v.lower() in ("true", "false", "yes", "no", "1", "0"):
            v = v.lower() in ("true", "yes", "1")
        if float in self.types and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if int in self.types and float not in self.types and isinstance(v, float) and v.is_integer():
            v = int(v)  # max_params=1e6
        if not isinstance(v, self.types) or (isinstance(v, bool) and bool not in self.types):
            names = "/".join(t.__name__ for t in self.types)
            raise UserError(f"controller '{controller}': option {key}={value!r} must be {names}"
                            + (f" ({self.expect})" if self.expect else ""))
        if self.check is not None and not self.check(v):
            raise UserError(f"controller '{controller}': option {key}={value!r} must be {self.expect}")
        return v


def _coerce_text(text: str, types: tuple[type, ...]) -> Any:
    for t in types:
        if t is bool:
            continue
        try:
            return t(text)
        except (TypeError, ValueError):
            pass
    return text


def positive(v: Any) -> bool:
    return v > 0


COMMON_OPTIONS: dict[str, Option] = {
    "objectives": Option(None, "objectives as name:min|max, comma-separated (default: the trial's primary metric); "
                         "several are compared by Pareto rank", (str,), nullable=True),
    "max_params": Option(None, "hard limit on the cell layers' parameters (counted from the cell and model settings)",
                         (int,), positive, "a positive integer", nullable=True),
    "max_ops": Option(None, "hard limit on the cell's ops per step (a latency proxy)", (int,), positive,
                      "a positive integer", nullable=True),
    "max_depth": Option(None, "hard limit on the ops along the longest path through one step (latency proxy)",
                        (int,), positive, "a positive integer", nullable=True),
    "dedup": Option(False, "never ask an architecture (canonical cell + hyperparameters) asked before, "
                    "best effort within max_tries", (bool,)),
    "max_tries": Option(200, "proposals tried per ask to meet the constraints / dedup", (int,), positive,
                        "a positive integer"),
}


# ---- JSON-able random state -------------------------------------------------------------
def rng_state_to_json(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def rng_state_from_json(data: list) -> tuple:
    version, internal, gauss = data
    return (version, tuple(internal), gauss)


class Controller(ABC):
    """Base class: option parsing, objectives, constraints and dedup shared by all."""

    name: str = "base"
    OPTIONS: dict[str, Option] = {}

    def __init__(self, space: SearchSpace, seed: int = 0, **options: Any):
        self.space = space
        self.seed = int(seed)
        self.options = self.parse_options(options)
        opts = self.options
        self.objectives = Objectives.parse(opts.get("objectives"), self.name)
        self.constraint = Constraint(space, max_params=opts.get("max_params"), max_ops=opts.get("max_ops"),
                                     max_depth=opts.get("max_depth"))
        self.dedup = bool(opts.get("dedup", False))
        self.max_tries = int(opts.get("max_tries", 200))
        self._seen: set[str] = set()
        self._fallback_rng = random.Random(f"{self.name}-fallback-{self.seed}")

    # ---- options -----------------------------------------------------------------------
    @classmethod
    def all_options(cls) -> dict[str, Option]:
        return {**cls.OPTIONS, **COMMON_OPTIONS}

    @classmethod
    def parse_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        known = cls.all_options()
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise UserError(f"controller '{cls.name}' has no option(s) {', '.join(unknown)}",
                            f"its options: {', '.join(known)}")
        out = {k: o.default for k, o in known.items()}
        for k, v in options.items():
            out[k] = known[k].parse(cls.name, k, v)
        return out

    # ---- the interface -------------------------------------------------------------------
    @abstractmethod
    def ask(self, n: int = 1) -> list[Assignment]:
        """Propose n assignments to evaluate next."""

    def tell(self, assignment: Assignment, outcome: Outcome) -> None:
        """Learn from one finished evaluation (default: nothing to learn)."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state; `load_state_dict` of it continues identically."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    # ---- shared machinery ------------------------------------------------------------------
    def key(self, a: Mapping[str, int]) -> str:
        """Identity of what an assignment trains: canonical cell hash + hyperparameters."""
        return arch_key(self.space, a)

    def acceptable(self, a: Mapping[str, int], extra_seen: set[str] | None = None) -> bool:
        if not self.constraint.ok(a):
            return False
        if self.dedup:
            k = self.key(a)
            if k in self._seen or (extra_seen is not None and k in extra_seen):
                return False
        return True

    def commit(self, a: Mapping[str, int]) -> Assignment:
        """Record an assignment as asked (for dedup) and return it normalized."""
        a = self.space.normalize(a)
        if self.dedup:
            self._seen.add(self.key(a))
        return a

    def draw(self, propose: Callable[[], Assignment]) -> Assignment:
        """Up to `max_tries` proposals until one meets the constraints (and is new, with
        dedup); then uniform samples; with dedup, a repeat if nothing new is feasible.
        Never returns an assignment that violates a constraint."""
        if not self.constraint.active and not self.dedup:
            return self.commit(propose())
        feasible_repeat = None
        for _ in range(self.max_tries):
            a = propose()
            if self.acceptable(a):
                return self.commit(a)
            if not self.constraint.ok(a):
                self.on_infeasible(a)
            elif feasible_repeat is None and self.dedup:
                feasible_repeat = a
        for _ in range(self.max_tries):
            a = self.space.sample(self._fallback_rng)
            if self.acceptable(a):
                return self.commit(a)
            if feasible_repeat is None and self.constraint.ok(a):
                feasible_repeat = a
        if feasible_repeat is not None:  # dedup is best effort: the space may be exhausted
            return self.commit(feasible_repeat)
        a = self.constraint.search_feasible(self._fallback_rng, self.max_tries)
        if a is not None:
            return self.commit(a)
        raise UserError(self.constraint.unmet_message(self.max_tries * 3),
                        "raise the limit (--controller-opt max_params=...) or make the space's cells smaller")

    def on_infeasible(self, a: Assignment) -> None:
        """A proposal of this controller broke a constraint (a hook to learn from it)."""

    def base_state(self) -> dict[str, Any]:
        return {"seen": sorted(self._seen), "fallback_rng": rng_state_to_json(self._fallback_rng.getstate())}

    def load_base_state(self, state: Mapping[str, Any]) -> None:
        self._seen = set(state.get("seen", []))
        if "fallback_rng" in state:
            self._fallback_rng.setstate(rng_state_from_json(state["fallback_rng"]))

    # ---- assignments as vectors -----------------------------------------------------------------
    def vec(self, a: Mapping[str, int]) -> list[int]:
        return self.space.encode(a)

    def unvec(self, v: list[int]) -> Assignment:
        return self.space.normalize({d.name: int(x) for d, x in zip(self.space.decisions, v)})
