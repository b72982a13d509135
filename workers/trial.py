"""What a worker does with one trial: rebuild the cell from its IR, compile it, train it.

A `TrialSpec` is plain data (JSON-able), so any dispatcher (in-process, Ray) can ship it.
"""

from __future__ import annotations

import os
import socket
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from ..config import ModelConfig, TaskSpec, TrainConfig
from ..ir import CellGraph

Report = Callable[[int, dict[str, float]], "bool | None"]


@dataclass(frozen=True)
class TrialSpec:
    trial_id: int
    ir: dict[str, Any]
    model: dict[str, Any]
    train: dict[str, Any]
    task: dict[str, Any]
    seed: int
    attempt: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def worker_identity() -> tuple[str, str | None]:
    """(host, gpu) of the current process, for the trial record."""
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES") or None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = f"{gpu or torch.cuda.current_device()}:{torch.cuda.get_device_name()}"
    except Exception:  # noqa: BLE001 - identity is best effort
        pass
    return socket.gethostname(), gpu


def execute_trial(spec: TrialSpec, report: Report | None = None):
    """Train one trial; never raises for a bad cell (see nas.tasks.train_trial)."""
    from ..compile import build_rnn
    from ..tasks import TrialResult, make_task, train_trial

    try:
        graph = CellGraph.from_json(spec.ir)
        model_cfg = ModelConfig(**spec.model)
        train_cfg = TrainConfig(**spec.train)
        task = make_task(TaskSpec(**spec.task))
    except Exception as exc:  # noqa: BLE001 - a broken spec fails this trial, not the search
        return TrialResult(status="failed", error=f"{type(exc).__name__}: {exc}")

    def factory(input_size: int, hidden_size: int, num_layers: int, dropout: float):
        return build_rnn(graph, input_size, hidden_size, num_layers, dropout, batch_first=True,
                         backend=train_cfg.backend)

    return train_trial(task, factory, model_cfg, train_cfg, seed=spec.seed, device=train_cfg.device, report=report)
