"""The training loop of one trial: budget, optimiser, evaluations, status.

`train_trial` never raises for a bad trial: NaN/inf (or a training loss that grows past
`train_cfg.diverge_factor` times the first step's) -> status "diverged", any other
exception -> "failed" with the traceback in `error`, `report(...) is False` ->
"pruned". Only BaseExceptions that are not Exceptions (KeyboardInterrupt, SystemExit)
propagate, so a search can be interrupted.

Budget: `train_cfg.steps`, `train_cfg.epochs` (LM tasks only; ignored with a warning
for synthetic ones, which have no epochs) and `train_cfg.seconds`; with several, the
first reached stops training; with none, `DEFAULT_STEPS` steps. The seconds budget
counts training and intermediate evaluations, not the final evaluation, and makes the
step count (hence the metrics) depend on machine speed.

Determinism: the global torch and Python RNGs are seeded from `seed` inside a forked
RNG state (the caller's RNG state is left untouched) and data come from a
`torch.Generator` seeded from `seed`, so on CPU the same seed gives identical task
metrics. On CUDA some kernels are not deterministic.

Resource metrics: `peak_mem_mb` is CUDA peak allocated memory on CUDA; on CPU it is the
growth of the process's max RSS during the trial (0 when the process had already
peaked higher, so a lower bound). `tokens_per_s` counts input positions of training
batches (padding included) per second of training steps (evaluations excluded).
"""

from __future__ import annotations

import contextlib
import math
import random
import resource
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from nas.config import ModelConfig, TrainConfig
from nas.tasks.base import Task
from nas.tasks.model import RecurrentModel, RNNFactory, count_params, detach_state
from nas.tasks.result import TrialResult

#: Steps trained when the train config sets no budget at all.
DEFAULT_STEPS = 200

Report = Callable[[int, dict[str, float]], "bool | None"]


def resolve_device(device: str | torch.device) -> torch.device:
    """'auto' -> cuda if available else cpu; anything else as torch.device parses it."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {str(device)!r} requested but CUDA is not available")
    return dev


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """adam / adamw / sgd (with momentum) from the train config."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; expected adam, adamw or sgd")


def _max_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch and Python RNGs for the trial; restore the caller's states after."""
    py_state = random.getstate()
    cuda_devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda_devices):
            torch.manual_seed(seed)
            random.seed(seed)
            yield
    finally:
        random.setstate(py_state)


@contextlib.contextmanager
def matmul_precision(precision: str) -> Iterator[None]:
    """The trial's fp32 matmul precision (torch's global setting, which the fused kernels
    follow); the caller's is restored after, so in-process trials do not leak it."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


class _Diverged(Exception):
    def __init__(self, step: int):
        super().__init__(f"non-finite loss at step {step}")
        self.step = step


class _Trial:
    """The mutable state of one trial, so failures can still report progress."""

    def __init__(self, task: Task, rnn_factory: RNNFactory, model_cfg: ModelConfig,
                 train_cfg: TrainConfig, seed: int, device: torch.device, report: Report | None):
        self.task, self.rnn_factory = task, rnn_factory
        self.model_cfg, self.train_cfg = model_cfg, train_cfg
        self.seed, self.device, self.report = seed, device, report
        self.curve: list[tuple[int, dict[str, float]]] = []
        self.metrics: dict[str, float] = {}
        self.step = 0
        self.tokens = 0
        self.train_time = 0.0
        self.last_losses: list[float] = []

    def budget(self) -> tuple[int, float | None]:
        """(max steps, seconds or None)."""
        cfg = self.train_cfg
        limits = []
        if cfg.steps is not None:
            limits.append(cfg.steps)
        if cfg.epochs is not None:
            spe = self.task.steps_per_epoch(cfg)
            if spe is None:
                warnings.warn(f"task {self.task.name!r} has no epochs; train.epochs is ignored",
                              stacklevel=3)
            else:
                limits.append(max(1, math.ceil(cfg.epochs * spe)))
        if not limits and cfg.seconds is None:
            limits.append(DEFAULT_STEPS)
        return (min(limits) if limits else sys.maxsize), cfg.seconds

    def evaluate(self, model: RecurrentModel, final: bool) -> dict[str, float]:
        model.eval()
        try:
            with torch.no_grad():
                m = self.task.evaluate(model, self.train_cfg, self.device, final)
        finally:
            model.train()
        if not math.isfinite(m.get("val_loss", 0.0)):
            raise _Diverged(self.step)
        return m

    def run(self, t0: float) -> TrialResult:
        task, cfg, dev = self.task, self.train_cfg, self.device
        task.load()
        model = RecurrentModel(task.input_vocab, task.num_classes, self.rnn_factory, self.model_cfg).to(dev)
        self.metrics["params"] = float(count_params(model))
        opt = make_optimizer(model, cfg)
        max_steps, seconds = self.budget()
        deadline = None if seconds is None else t0 + seconds
        gen = torch.Generator().manual_seed((self.seed * 0x9E3779B1 + 0x5EED) % 2**63)
        batches = task.train_batches(cfg, gen, dev)
        best = math.inf
        first_loss: float | None = None
        since_eval: list[float] = []
        state = None
        model.train()
        while self.step < max_steps and (deadline is None or time.perf_counter() < deadline):
            batch = next(batches)
            ts = time.perf_counter()
            if batch.reset or not task.carries_state:
                state = None
            loss, state = batch_loss(model, batch, state)
            loss_value = loss.item()
            if first_loss is None:
                first_loss = loss_value
            if not math.isfinite(loss_value) or (
                    cfg.diverge_factor > 0 and loss_value > cfg.diverge_factor * max(first_loss, 1e-3)):
                raise _Diverged(self.step + 1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip > 0:
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
                if not math.isfinite(float(norm)):
                    raise _Diverged(self.step + 1)
            opt.step()
            state = detach_state(state) if task.carries_state else None
            self.step += 1
            self.tokens += batch.tokens
            self.train_time += time.perf_counter() - ts
            since_eval.append(loss_value)
            self.last_losses = since_eval

            if self.step % cfg.eval_every == 0:
                m = self.evaluate(model, final=False)
                entry = {**m, "train_loss": sum(since_eval) / len(since_eval),
                         "lr": opt.param_groups[0]["lr"]}
                since_eval = []
                self.curve.append((self.step, entry))
                if m["val_loss"] < best:
                    best = m["val_loss"]
                elif cfg.lr_decay < 1.0:
                    for g in opt.param_groups:
                        g["lr"] *= cfg.lr_decay
                if self.report is not None and self.report(self.step, dict(entry)) is False:
                    self.metrics.update(m)
                    self.metrics["train_loss"] = entry["train_loss"]
                    return self.result("pruned", t0)

        m = self.evaluate(model, final=True)
        self.metrics.update(m)
        if self.last_losses:
            self.metrics["train_loss"] = sum(self.last_losses) / len(self.last_losses)
        if since_eval or not self.curve:
            entry = dict(m)
            if since_eval:
                entry["train_loss"] = sum(since_eval) / len(since_eval)
            entry["lr"] = opt.param_groups[0]["lr"]
            self.curve.append((self.step, entry))
        return self.result("completed", t0)

    def result(self, status: str, t0: float, **extra) -> TrialResult:
        m = self.metrics
        m["steps"] = float(self.step)
        m["tokens_per_s"] = self.tokens / self.train_time if self.train_time > 0 else 0.0
        m["wall_time_s"] = time.perf_counter() - t0
        return TrialResult(status=status, metrics=m, curve=self.curve,  # type: ignore[arg-type]
                           primary_metric=self.task.primary_metric, mode=self.task.mode, **extra)


def batch_loss(model, batch, state):
    """Cross-entropy of one batch (every position for dense LM batches, else the labelled
    ones) and the carried state: the loss every trainer of a recurrent model uses."""
    feats, new_state = model(batch.x, state)
    if batch.dense:
        logits = model.decode(feats)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch.y.reshape(-1))
    else:
        mask = batch.y >= 0
        loss = F.cross_entropy(model.decode(feats[mask]).float(), batch.y[mask])
    return loss, new_state


def train_trial(task: Task, rnn_factory: RNNFactory, model_cfg: ModelConfig, train_cfg: TrainConfig,
                seed: int = 0, device: str = "cpu", report: Report | None = None) -> TrialResult:
    """Train one model around the cell `rnn_factory` builds on `task`; never raises for a bad trial.

    `report(step, metrics)` is called after every intermediate evaluation (every
    `train_cfg.eval_every` steps); returning False stops the trial as "pruned".
    `device` may be "auto" (cuda if available); `train_cfg.device` is not consulted -
    the caller (worker) decides where a trial runs.
    """
    t0 = time.perf_counter()
    trial: _Trial | None = None
    dev: torch.device | None = None
    rss0 = _max_rss_mb()
    try:
        dev = resolve_device(device)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        trial = _Trial(task, rnn_factory, model_cfg, train_cfg, seed, dev, report)
        with _seeded(seed, dev), matmul_precision(train_cfg.matmul_precision):
            try:
                result = trial.run(t0)
            except _Diverged as d:
                result = trial.result("diverged", t0, diverged_step=d.step)
    except Exception:
        result = TrialResult(status="failed", error=traceback.format_exc(),
                             primary_metric=task.primary_metric, mode=task.mode)
        if trial is not None:
            result = trial.result("failed", t0, error=result.error)
        else:
            result.metrics["wall_time_s"] = time.perf_counter() - t0
    if dev is not None and dev.type == "cuda":
        result.metrics["peak_mem_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    else:
        result.metrics["peak_mem_mb"] = max(0.0, _max_rss_mb() - rss0)
    return result
