"""Multi-fidelity pruning with Ray Tune's scheduler implementations.

`Pruner` feeds our trials' intermediate evaluations to a Ray Tune `TrialScheduler`
through its public callbacks (`on_trial_add`, `on_trial_result`, `on_trial_complete`,
`on_trial_remove`) with lightweight trial objects, and turns its `STOP` into a pruned
trial. Every decision is Ray Tune's; this module only translates.

* `asha`: `ray.tune.schedulers.AsyncHyperBandScheduler` with one bracket (ASHA,
  Li et al. 2020).
* `hyperband`: the same class with Hyperband's full set of brackets
  (`floor(log_eta(max_t / grace_period)) + 1`, bracket s starting at
  `grace_period * eta**s`): asynchronous Hyperband as in the ASHA paper, section 3.3.
  Ray Tune's synchronous `HyperBandScheduler` is not used: it PAUSEs trials at each rung
  until the whole bracket has caught up, which needs trials that can checkpoint and
  resume (ours train start to finish in one process) and would hold a GPU idle while
  paused - or deadlock when a bracket is larger than the cluster's concurrency.

Time is the training step (`time_attr="step"`); `max_t` the trials' step budget. A
trial told to stop at or past `max_t` simply completes (Tune's `stop_last_trials`
would "stop" it there too - it has nothing left to train).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Iterator

SCHEDULERS = ("none", "asha", "hyperband")


@dataclass(eq=False)
class _TuneTrial:
    """What Ray Tune's scheduler reads of a trial: its id (and a status string)."""

    trial_id: str
    status: str = "RUNNING"
    is_saving: bool = False
    last: dict[str, Any] = field(default_factory=dict)


class Pruner:
    def __init__(self, kind: str, *, metric: str, mode: str, max_t: int, grace_period: int | None = None,
                 reduction_factor: float = 3.0, seed: int = 0):
        from ray.tune.schedulers import AsyncHyperBandScheduler

        if kind not in ("asha", "hyperband"):
            raise ValueError(f"unknown scheduler {kind!r}; expected one of {', '.join(SCHEDULERS)}")
        grace = int(grace_period or 1)
        max_t = int(max_t)
        if grace < 1 or grace > max_t:
            raise ValueError(f"grace period {grace} must be between 1 and the step budget {max_t}")
        if not reduction_factor > 1:
            raise ValueError(f"reduction factor must be > 1, got {reduction_factor}")
        brackets = 1
        if kind == "hyperband":
            brackets = int(math.floor(math.log(max_t / grace) / math.log(reduction_factor) + 1e-9)) + 1
        self.kind, self.metric, self.mode = kind, metric, mode
        self.max_t, self.grace_period, self.reduction_factor, self.brackets = max_t, grace, reduction_factor, brackets
        self.scheduler = AsyncHyperBandScheduler(time_attr="step", metric=metric, mode=mode, max_t=max_t,
                                                 grace_period=grace, reduction_factor=reduction_factor,
                                                 brackets=brackets)
        import numpy as np

        self._rng = np.random.RandomState(seed)  # bracket choice, without touching numpy's global RNG
        self._trials: dict[int, _TuneTrial] = {}
        self.stopped = 0

    def describe(self) -> str:
        return (f"{self.kind} (Ray Tune AsyncHyperBandScheduler: {self.brackets} bracket(s), grace {self.grace_period} "
                f"steps, eta {self.reduction_factor:g}, max {self.max_t} steps, {self.mode} {self.metric})")

    @contextlib.contextmanager
    def _own_rng(self) -> Iterator[None]:
        import numpy as np

        saved = np.random.get_state()
        np.random.set_state(self._rng.get_state())
        try:
            yield
        finally:
            self._rng.set_state(np.random.get_state())
            np.random.set_state(saved)

    def add(self, trial_id: int) -> None:
        if trial_id in self._trials:
            return  # a retry of a trial the scheduler already knows
        t = _TuneTrial(str(trial_id))
        with self._own_rng():
            self.scheduler.on_trial_add(None, t)
        self._trials[trial_id] = t

    def _result(self, step: int, metrics: dict[str, Any]) -> dict[str, Any] | None:
        v = metrics.get(self.metric)
        if v is None or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
            return None
        return {"step": int(step), self.metric: float(v)}

    def on_report(self, trial_id: int, step: int, metrics: dict[str, Any]) -> bool:
        """Whether the trial should go on after this intermediate evaluation."""
        from ray.tune.schedulers import TrialScheduler

        self.add(trial_id)
        t = self._trials[trial_id]
        result = self._result(step, metrics)
        if result is None:
            return True
        t.last = result
        action = self.scheduler.on_trial_result(None, t, result)
        if action == TrialScheduler.STOP and step < self.max_t:
            self.stopped += 1
            return False
        return True

    def on_finish(self, trial_id: int, status: str, final_step: int | None = None,
                  metrics: dict[str, Any] | None = None) -> None:
        t = self._trials.pop(trial_id, None)
        if t is None:
            return
        result = self._result(final_step, metrics or {}) if (status == "completed" and final_step) else None
        if result is not None:
            t.status = "TERMINATED"
            self.scheduler.on_trial_complete(None, t, result)
        else:
            t.status = "ERROR" if status in ("failed", "diverged") else "TERMINATED"
            self.scheduler.on_trial_remove(None, t)

    def replay(self, trial_id: int, curve: list[tuple[int, dict[str, Any]]], status: str,
               metrics: dict[str, Any] | None) -> None:
        """Rebuild the rungs from a finished trial's learning curve (resume)."""
        self.add(trial_id)
        t = self._trials[trial_id]
        last_step = None
        for step, m in curve:
            result = self._result(step, m or {})
            if result is not None:
                self.scheduler.on_trial_result(None, t, result)
                last_step = step
        self.on_finish(trial_id, status, last_step, (curve[-1][1] if curve else metrics) or {})


def make_pruner(kind: str, **kw: Any) -> Pruner | None:
    if kind in (None, "", "none"):
        return None
    return Pruner(kind, **kw)
