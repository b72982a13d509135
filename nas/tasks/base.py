"""What every task gives the training loop, and the error a bad task spec raises.

A task owns its data (generation or corpus), its batching and its metrics; the
training loop (`nas.tasks.train`) owns the model, optimiser, budget and status. This
split lets one loop train every task and keeps tasks testable without a model.
"""

from __future__ import annotations

import difflib
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from nas.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    from nas.config import TrainConfig
    from nas.tasks.model import RecurrentModel

#: Target value for positions that carry no prediction (synthetic tasks, padding).
IGNORE_INDEX = -100


class TaskError(UserError, ValueError):
    """A task spec that cannot work: unknown name, bad argument, missing file.

    Subclasses `UserError` so the CLI reports it as an exit-2 error without a
    traceback, and `ValueError` so plain Python callers can catch it generically.
    """


@dataclass
class Batch:
    """One training batch.

    `y` holds `IGNORE_INDEX` where nothing is predicted. `dense` means every position
    is labelled (LM), so the loop can skip masking. `reset` asks the loop to start
    from a zero recurrent state (always for synthetic tasks; at each epoch start for LM).
    """

    x: torch.Tensor
    y: torch.Tensor
    tokens: int
    dense: bool
    reset: bool


class Task(ABC):
    """One thing a trial trains on.

    Subclasses set `name`, `carries_state` and `metric_names`, and implement
    `train_batches` and `evaluate`. Every task reports `val_loss` (mean cross-entropy
    in nats per prediction on its validation data), the default primary metric, so a
    search compares trials on one scale whatever the task.
    """

    name: str = "task"
    #: The metric a search optimises, and whether lower ("min") or higher is better.
    primary_metric: str = "val_loss"
    mode: Literal["min", "max"] = "min"
    #: LM tasks carry the recurrent state between consecutive batches (truncated BPTT).
    carries_state: bool = False
    #: Names of the task metrics the final evaluation returns.
    metric_names: tuple[str, ...] = ("val_loss",)

    def load(self) -> None:
        """Load data that creating the task deferred (corpora). Idempotent."""

    @property
    @abstractmethod
    def input_vocab(self) -> int:
        """Number of distinct input tokens (embedding rows)."""

    @property
    @abstractmethod
    def num_classes(self) -> int:
        """Number of output classes (decoder rows)."""

    def steps_per_epoch(self, train_cfg: TrainConfig) -> int | None:
        """Optimizer steps in one pass over the training data; None: infinite stream."""
        return None

    @abstractmethod
    def train_batches(self, train_cfg: TrainConfig, generator: torch.Generator,
                      device: torch.device) -> Iterator[Batch]:
        """An endless iterator of training batches, random only through `generator`."""

    def valid_batches(self, train_cfg: TrainConfig, generator: torch.Generator,
                      device: torch.device) -> Iterator[Batch]:
        """An endless iterator of batches from the validation data, shaped like training
        batches (bilevel searches such as DARTS fit architecture parameters on them)."""
        raise TaskError(f"task {self.name!r} provides no validation batches")

    @abstractmethod
    def evaluate(self, model: RecurrentModel, train_cfg: TrainConfig, device: torch.device,
                 final: bool) -> dict[str, float]:
        """Metrics of `model` (already in eval mode, under no_grad).

        `final=False`: a cheap intermediate evaluation on `train_cfg.eval_batches`
        batches (at least `val_loss`); `final=True`: the full set of `metric_names`.
        """

    def describe(self) -> dict[str, Any]:
        """The task and its arguments, for records and logs."""
        return {"name": self.name}

    def __repr__(self) -> str:
        d = self.describe()
        args = ", ".join(f"{k}={v!r}" for k, v in d.items() if k != "name")
        return f"{d['name']}({args})"


# -- argument checking helpers shared by the task constructors ------------------------

def did_you_mean(word: str, choices: Sequence[str]) -> str:
    """' (did you mean 'x'?)' or '' - appended to error messages."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def int_arg(task: str, name: str, value: Any, minimum: int = 1, maximum: int | None = None) -> int:
    """`value` as an int in [minimum, maximum], else a TaskError naming task and argument."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise TaskError(f"task {task!r}: argument {name!r} must be an integer, got {value!r}",
                            hint=f"write e.g. {task}({name}={max(minimum, 2)})")
    if value < minimum or (maximum is not None and value > maximum):
        rng = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise TaskError(f"task {task!r}: argument {name!r} must be {rng}, got {value}",
                        hint=f"choose a value {rng}")
    return value


def float_arg(task: str, name: str, value: Any, low: float, high: float) -> float:
    """`value` as a float strictly inside (low, high), else a TaskError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low < value < high:
        raise TaskError(f"task {task!r}: argument {name!r} must be a number strictly between "
                        f"{low} and {high}, got {value!r}", hint=f"e.g. {task}(..., {name}=0.9)")
    return float(value)


def bool_arg(task: str, name: str, value: Any) -> bool:
    """`value` as a bool (true/false only), else a TaskError."""
    if not isinstance(value, bool):
        raise TaskError(f"task {task!r}: argument {name!r} must be true or false, got {value!r}")
    return value


def path_arg(task: str, name: str, value: Any) -> Path:
    """An absolute path: `~` expanded, relative paths resolved against the current directory.

    Resolved now so that a later change of working directory cannot change the data.
    """
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise TaskError(f"task {task!r}: argument {name!r} must be a path string, got {value!r}",
                        hint=f'write e.g. {task}("data/input.txt")')
    return Path(os.path.expanduser(os.fspath(value))).resolve()
