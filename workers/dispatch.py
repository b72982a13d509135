"""Dispatchers run trials and report what happens to them as events.

The driver submits `TrialSpec`s and calls `poll(handle)`; the dispatcher calls
`handle(event)` as trials start, report intermediate evaluations and finish. A `report`
event's handler may return False to stop (prune) that trial.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from .trial import TrialSpec, execute_trial, worker_identity


@dataclass
class Event:
    kind: str  # started | report | finished
    trial_id: int
    step: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    result: Any = None  # TrialResult for finished
    host: str | None = None
    gpu: str | None = None
    attempt: int = 1
    pid: int | None = None  # the worker process (started events of out-of-process dispatchers)
    node: str | None = None  # the Ray node id, where there is one


Handler = Callable[[Event], "bool | None"]


class Dispatcher(ABC):
    @property
    @abstractmethod
    def capacity(self) -> int:
        """How many trials can run at once."""

    @property
    @abstractmethod
    def in_flight(self) -> int:
        """Trials submitted and not yet finished."""

    @abstractmethod
    def submit(self, spec: TrialSpec) -> None: ...

    @abstractmethod
    def poll(self, handle: Handler, timeout: float | None = None) -> None:
        """Deliver events until at least one trial finishes (or timeout)."""

    def cancel_all(self) -> list[int]:
        """Stop what runs; return the trial ids that did not finish."""
        return []

    def shutdown(self) -> None:
        pass

    def describe(self) -> str:
        """Where trials run, for the progress display."""
        return type(self).__name__


class LocalDispatcher(Dispatcher):
    """Runs trials one after another in this process (tests, laptops, debugging)."""

    def __init__(self) -> None:
        self.queue: deque[TrialSpec] = deque()

    @property
    def capacity(self) -> int:
        return 1

    @property
    def in_flight(self) -> int:
        return len(self.queue)

    def submit(self, spec: TrialSpec) -> None:
        self.queue.append(spec)

    def poll(self, handle: Handler, timeout: float | None = None) -> None:
        if not self.queue:
            return
        spec = self.queue[0]
        host, gpu = worker_identity()
        handle(Event("started", spec.trial_id, host=host, gpu=gpu, attempt=spec.attempt, pid=os.getpid()))

        def report(step: int, metrics: dict[str, float]):
            return handle(Event("report", spec.trial_id, step=step, metrics=dict(metrics)))

        result = execute_trial(spec, report)
        self.queue.popleft()
        handle(Event("finished", spec.trial_id, result=result, host=host, gpu=gpu, attempt=spec.attempt))

    def describe(self) -> str:
        return "this process, one trial at a time"

    def cancel_all(self) -> list[int]:
        ids = [s.trial_id for s in self.queue]
        self.queue.clear()
        return ids
