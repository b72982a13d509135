"""Optuna samplers (TPE, CMA-ES, NSGA-II) through Optuna's ask-and-tell interface.

Each ask is one Optuna trial that suggests the space's decisions in order; a decision is
suggested only when it is active under the choices already made (conditional spaces), so
the study sees exactly the parameters that matter. Values told to Optuna are always "to
minimise" (a `max` objective is negated); several objectives make a multi-objective study
(TPE and NSGA-II; CMA-ES takes one).

Optuna's study lives in memory only: our database is the system of record. The state is
the log of everything done to the study (asks, tells, rejected proposals); loading it
rebuilds the study by replaying that log against an identically seeded sampler, which
reproduces the same trials and so the same future asks. Each replayed ask is checked
against the log; should a sampler ever draw differently (another Optuna version), the
replay falls back to fixing the logged parameters (same history, different random
stream) and warns.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from ..errors import UserError
from ..space import Assignment, SearchSpace
from .base import Controller, Option, Outcome, positive

log = logging.getLogger(__name__)

ORDINAL_KINDS = ("input", "int", "float", "value")
MAX_OPTUNA_TRIES = 4  # rejected Optuna proposals per ask before a uniform feasible sample


class _ReplayMismatch(Exception):
    pass


def _optuna():
    try:
        import optuna
    except ImportError as exc:  # pragma: no cover - optuna is a dependency
        raise UserError("the Optuna controllers need optuna", "pip install optuna") from exc
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _numeric(choices: tuple) -> bool:
    return all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in choices)


class OptunaController(Controller):
    """Base of the Optuna-backed controllers; subclasses make the sampler."""

    name = "optuna"
    MULTI = True  # whether the sampler takes several objectives

    def __init__(self, space: SearchSpace, seed: int = 0, **options: Any):
        super().__init__(space, seed, **options)
        if self.objectives.multi and not self.MULTI:
            raise UserError(f"controller '{self.name}' optimises one objective",
                            "use nsga2 or tpe for several objectives")
        self.optuna = _optuna()
        self.int_decisions = self._int_decisions()
        self.distributions = []
        for i, d in enumerate(space.decisions):
            if i in self.int_decisions:
                self.distributions.append(self.optuna.distributions.IntDistribution(0, d.size - 1))
            else:
                self.distributions.append(self.optuna.distributions.CategoricalDistribution(list(range(d.size))))
        self.log: list[list[Any]] = []
        self.asked = 0
        self.told = 0
        self._reset()

    # ---- subclass hooks -------------------------------------------------------------------
    def _int_decisions(self) -> set[int]:
        """Decisions suggested as integers (choice indices) rather than categories."""
        return set()

    def _sampler(self):  # pragma: no cover - abstract
        raise NotImplementedError

    # ---- the study ----------------------------------------------------------------------------
    def _reset(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sampler = self._sampler()
            self.study = self.optuna.create_study(directions=["minimize"] * self.objectives.count, sampler=sampler,
                                                  study_name=f"cellsearch-{self.name}")
        self.pending: dict[tuple[int, ...], list[int]] = {}
        self._lo: list[float] = []
        self._hi: list[float] = []
        self._known: dict[str, list[float]] = {}

    def _suggest(self, trial) -> Assignment:
        a: dict[str, int] = {}
        act: list[bool] = []
        for i, d in enumerate(self.space.decisions):
            on = d.parent is None or (act[d.parent[0]] and a[self.space.decisions[d.parent[0]].name] == d.parent[1])
            act.append(on)
            if not on:
                a[d.name] = 0
            elif i in self.int_decisions:
                a[d.name] = int(trial.suggest_int(d.name, 0, d.size - 1))
            else:
                a[d.name] = int(trial.suggest_categorical(d.name, list(range(d.size))))
        return self.space.normalize(a)

    def _params(self, a: Assignment) -> tuple[dict[str, int], dict[str, Any]]:
        act = self.space.active(a)
        params, dists = {}, {}
        for i, d in enumerate(self.space.decisions):
            if act[i]:
                params[d.name] = int(a[d.name])
                dists[d.name] = self.distributions[i]
        return params, dists

    # each op below changes the study and appends itself to the log; replay calls the same ops
    def _op_ask(self, logged: list[int] | None = None) -> tuple[int, Assignment]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trial = self.study.ask()
            a = self._suggest(trial)
        v = self.vec(a)
        if logged is not None and v != logged:
            raise _ReplayMismatch()
        self.log.append(["ask", v])
        self.pending.setdefault(tuple(v), []).append(trial.number)
        return trial.number, a

    def _op_enqueue(self, v: list[int]) -> tuple[int, Assignment]:
        a = self.unvec(v)
        params, _ = self._params(a)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.study.enqueue_trial(params)
            trial = self.study.ask()
            a = self._suggest(trial)
        self.log.append(["enq", self.vec(a)])
        self.pending.setdefault(tuple(self.vec(a)), []).append(trial.number)
        return trial.number, a

    def _finish(self, number: int, values: list[float] | None) -> None:
        for k, nums in list(self.pending.items()):
            if number in nums:
                nums.remove(number)
                if not nums:
                    del self.pending[k]
                break
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if values is None:
                self.study.tell(number, state=self.optuna.trial.TrialState.FAIL)
            else:
                self.study.tell(number, values=list(values))

    def _op_reject(self, number: int, values: list[float] | None) -> None:
        self._finish(number, values)
        self.log.append(["reject", number, values])

    def _observe(self, v: list[int], values: list[float] | None) -> None:
        if values is None:
            return
        self._lo = [min(a, b) for a, b in zip(self._lo, values)] if self._lo else list(values)
        self._hi = [max(a, b) for a, b in zip(self._hi, values)] if self._hi else list(values)
        if self.dedup:
            self._known[self.key(self.unvec(v))] = list(values)

    def _op_tell(self, number: int, values: list[float] | None) -> None:
        v = next((list(k) for k, nums in self.pending.items() if number in nums), None)
        self._finish(number, values)
        if v is not None:
            self._observe(v, values)
        self.log.append(["tell", number, values])

    def _penalty(self, a: Assignment) -> list[float] | None:
        """Values for a proposal that breaks a constraint: worse than everything seen, more
        so the larger the excess, so the sampler learns where the limit is (None: FAIL)."""
        if not self._hi:
            return None
        excess = self.constraint.violation(a)
        return [hi + (hi - lo + 1e-9) * (0.1 + excess) for lo, hi in zip(self._lo, self._hi)]

    def _op_add(self, v: list[int], values: list[float] | None) -> None:
        params, dists = self._params(self.unvec(v))
        TS = self.optuna.trial.TrialState
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trial = (self.optuna.trial.create_trial(state=TS.FAIL, params=params, distributions=dists)
                     if values is None else
                     self.optuna.trial.create_trial(values=list(values), params=params, distributions=dists))
            self.study.add_trial(trial)
        self._observe(list(v), values)
        self.log.append(["add", list(v), values])

    # ---- the interface --------------------------------------------------------------------------
    def ask(self, n: int = 1) -> list[Assignment]:
        out = []
        for _ in range(n):
            out.append(self._ask_one())
            self.asked += 1
        return out

    def _ask_one(self) -> Assignment:
        for _ in range(min(self.max_tries, MAX_OPTUNA_TRIES)):
            number, a = self._op_ask()
            if self.acceptable(a):
                return self.commit(a)
            if not self.constraint.ok(a):
                self._op_reject(number, self._penalty(a))
                # repair: the nearest feasible cell (single changes that shrink the excess)
                fixed = self.constraint.repair(a, self._fallback_rng, self.max_tries)
                if fixed is not None and self.acceptable(fixed):
                    self.commit(fixed)
                    return self._op_enqueue(self.vec(fixed))[1]
            else:  # a repeat (dedup): the value it got, if it is known yet
                self._op_reject(number, self._known.get(self.key(a)))
        a = self.draw(lambda: self.space.sample(self._fallback_rng))  # feasible (or a clear error)
        _, a2 = self._op_enqueue(self.vec(a))
        return a2

    def tell(self, assignment: Assignment, outcome: Outcome) -> None:
        self.told += 1
        vals = self.objectives.vector(outcome)
        values = None if vals is None else [float(x) for x in vals]
        v = self.vec(assignment)
        nums = self.pending.get(tuple(v))
        if nums:
            self._op_tell(nums[0], values)
        else:  # not asked by this study (e.g. a reused result): add it as a finished trial
            self._op_add(v, values)

    # ---- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"log": [list(e) for e in self.log], "asked": self.asked, "told": self.told, **self.base_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        events = state["log"]
        try:
            self._replay(events, exact=True)
        except _ReplayMismatch:
            warnings.warn(f"controller '{self.name}': replaying the Optuna study drew different parameters "
                          "(another Optuna version?); the study keeps its history, but future asks will differ "
                          "from an uninterrupted run", RuntimeWarning, stacklevel=2)
            self._replay(events, exact=False)
        self.asked = int(state["asked"])
        self.told = int(state["told"])
        self.load_base_state(state)

    def _replay(self, events: list[list[Any]], exact: bool) -> None:
        self._reset()
        self.log = []
        for e in events:
            kind = e[0]
            if kind == "ask":
                if exact:
                    self._op_ask(list(map(int, e[1])))
                else:
                    self._op_enqueue(list(map(int, e[1])))
                    self.log[-1][0] = "ask"
            elif kind == "enq":
                self._op_enqueue(list(map(int, e[1])))
            elif kind == "reject":
                self._op_reject(int(e[1]), e[2] if len(e) > 2 else None)
            elif kind == "tell":
                self._op_tell(int(e[1]), e[2])
            elif kind == "add":
                self._op_add(list(map(int, e[1])), e[2])
            else:
                raise ValueError(f"unknown event {kind!r} in the state of controller '{self.name}'")


class TPEController(OptunaController):
    name = "tpe"
    OPTIONS = {
        "n_startup_trials": Option(10, "random trials before TPE models the results", (int,), lambda v: v >= 0,
                                   "an integer >= 0"),
        "n_ei_candidates": Option(24, "candidates scored per suggestion", (int,), positive, "a positive integer"),
        "group": Option(True, "model conditional decisions in groups (multivariate TPE)", (bool,)),
        "constant_liar": Option(True, "treat running trials as bad (spreads parallel asks)", (bool,)),
    }

    def _sampler(self):
        import inspect

        o = self.options
        sig = inspect.signature(self.optuna.samplers.TPESampler).parameters
        kw: dict[str, Any] = {"seed": self.seed, "n_startup_trials": o["n_startup_trials"],
                              "n_ei_candidates": o["n_ei_candidates"], "constant_liar": o["constant_liar"]}
        major = int(self.optuna.__version__.split(".")[0])
        if "multivariate" in sig and major < 5:  # always multivariate from Optuna 5
            kw["multivariate"] = True
        if o["group"] and "group" in sig:
            kw["group"] = True
            if "multivariate" in sig and major < 5:
                kw["multivariate"] = True
        return self.optuna.samplers.TPESampler(**kw)


class CmaEsController(OptunaController):
    name = "cmaes"
    MULTI = False
    OPTIONS = {
        "encoding": Option("auto", "auto: CMA-ES over the ordinal decisions (inputs, numeric hyperparameters), "
                           "the others sampled independently; index: every decision as its choice index",
                           (str,), lambda v: v in ("auto", "index"), "auto or index"),
        "sigma0": Option(None, "initial step size (default: Optuna's)", (float,), positive, "a positive number",
                         nullable=True),
        "popsize": Option(None, "CMA-ES population size (default: Optuna's)", (int,), positive,
                          "a positive integer", nullable=True),
        "n_startup_trials": Option(1, "random trials before CMA-ES starts", (int,), lambda v: v >= 0,
                                   "an integer >= 0"),
        "independent": Option("tpe", "sampler of the decisions CMA-ES does not model: tpe or random", (str,),
                              lambda v: v in ("tpe", "random"), "tpe or random"),
    }

    def _int_decisions(self) -> set[int]:
        decs = self.space.decisions
        ordinal = {i for i, d in enumerate(decs)
                   if d.size > 1 and (d.kind == "input" or (d.kind in ORDINAL_KINDS and _numeric(d.choices)))}
        unconditional = {i for i in ordinal if decs[i].parent is None}
        if self.options["encoding"] == "index" or len(unconditional) < 2:
            if self.options["encoding"] == "auto":
                log.info("cmaes: fewer than 2 ordinal decisions; every decision is encoded as its choice index")
            return {i for i, d in enumerate(decs) if d.size > 1}
        return ordinal

    def _sampler(self):
        o = self.options
        S = self.optuna.samplers
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise UserError("controller 'cmaes' needs the cmaes package", "pip install cmaes") from None
        indep = (S.TPESampler(seed=self.seed + 1) if o["independent"] == "tpe" else S.RandomSampler(seed=self.seed + 1))
        kw: dict[str, Any] = {"seed": self.seed, "n_startup_trials": o["n_startup_trials"], "independent_sampler": indep,
                              "warn_independent_sampling": False, "with_margin": True}
        if o["sigma0"] is not None:
            kw["sigma0"] = o["sigma0"]
        if o["popsize"] is not None:
            kw["popsize"] = o["popsize"]
        return S.CmaEsSampler(**kw)


class NSGA2Controller(OptunaController):
    name = "nsga2"
    OPTIONS = {
        "population_size": Option(50, "NSGA-II population per generation", (int,), lambda v: v >= 2,
                                  "an integer >= 2"),
        "mutation_prob": Option(None, "per-decision mutation probability (default: 1/decisions)", (float,),
                                lambda v: 0 <= v <= 1, "a number in [0, 1]", nullable=True),
        "crossover_prob": Option(0.9, "crossover probability", (float,), lambda v: 0 <= v <= 1, "a number in [0, 1]"),
        "swapping_prob": Option(0.5, "uniform crossover swapping probability", (float,), lambda v: 0 <= v <= 1,
                                "a number in [0, 1]"),
    }

    def _sampler(self):
        o = self.options
        return self.optuna.samplers.NSGAIISampler(population_size=o["population_size"], mutation_prob=o["mutation_prob"],
                                                  crossover_prob=o["crossover_prob"],
                                                  swapping_prob=o["swapping_prob"], seed=self.seed)
