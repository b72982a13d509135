"""The DARTS supernet search as one job: train the supernet, move alpha, report, checkpoint.

`run_darts_job(spec, checkpoint)` is a generator of plain-data events, so the same code
runs in the driver's process (`--dispatcher local`) and as a Ray streaming task on a GPU
worker (`submit_darts_job`):

* `{"kind": "started", host, gpu}`
* `{"kind": "history", step, metrics}`: every `log_every` steps; losses, temperature and
  softmax(alpha) as `alpha/<decision>/<choice>` (the driver stores them as trial steps)
* `{"kind": "checkpoint", step, blob}`: base64 of torch.save of the supernet weights,
  alpha, both optimiser states and the RNG state; resuming from it continues exactly
  (the data iterators are replayed to the step, which on CPU gives identical results)
* `{"kind": "done", probs, metrics}`: softmax(alpha) per decision and the job's metrics
  (`supernet_val_loss`, `search_time_s`, the device it ran on)

Each step is DARTS's: one alpha step on a validation batch (first or second order, plus
the RC-DARTS penalty), then one weight step on a training batch.
"""

from __future__ import annotations

import base64
import io
import math
import os
import time
from typing import Any, Iterator

import torch

from ..config import ModelConfig, TaskSpec, TrainConfig
from ..controllers.darts.bilevel import Architect
from ..controllers.darts.resource import make_penalty
from ..controllers.darts.supernet import ArchParams, SupernetRNN
from ..space import SearchSpace
from ..tasks import RecurrentModel, make_task, resolve_device
from ..tasks.model import detach_state
from ..tasks.train import batch_loss, matmul_precision
from .trial import worker_identity


def job_budget(task, train_cfg: TrainConfig, options: dict[str, Any]) -> int:
    """Supernet steps: `steps`, else `epochs` passes (LM) or epochs x train.steps (synthetic),
    else the space's own step budget."""
    if options.get("steps"):
        return int(options["steps"])
    spe = task.steps_per_epoch(train_cfg)
    if options.get("epochs"):
        per = spe if spe is not None else (train_cfg.steps or 200)
        return max(1, math.ceil(float(options["epochs"]) * per))
    if train_cfg.steps:
        return int(train_cfg.steps)
    if train_cfg.epochs and spe is not None:
        return max(1, math.ceil(train_cfg.epochs * spe))
    return 200


def _b64(obj: Any) -> str:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return base64.b64encode(buf.getvalue()).decode()


def _unb64(text: str) -> Any:
    return torch.load(io.BytesIO(base64.b64decode(text)), map_location="cpu", weights_only=False)


def alpha_metrics(arch: ArchParams) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, p in arch.probs().items():
        d = arch.space.decision(name)
        for label, v in zip(d.choices, p):
            out[f"alpha/{name}/{label}"] = float(v)
    return out


class DartsJob:
    """The objects of one supernet search, built from a plain-data spec."""

    def __init__(self, spec: dict[str, Any]):
        self.spec = spec
        self.options = dict(spec["options"])
        o = self.options
        self.space = SearchSpace.from_text(spec["space_text"], spec.get("space_file", "<space>"))
        self.model_cfg = ModelConfig(**spec["model"])
        self.train_cfg = TrainConfig(**spec["train"])
        self.task = make_task(TaskSpec(**spec["task"]))
        self.task.load()
        self.device = resolve_device(spec.get("device") or "auto")
        self.seed = int(spec.get("seed", 0))
        torch.manual_seed(self.seed)
        self.arch = ArchParams(self.space, o["alpha_init"], self.seed).to(self.device)
        self.arch.sampler = o["sampler"]
        space, arch = self.space, self.arch

        def factory(i: int, h: int, layers: int, dropout: float):
            return SupernetRNN(space, arch, i, h, layers, dropout)

        self.model = RecurrentModel(self.task.input_vocab, self.task.num_classes, factory, self.model_cfg)
        self.model.to(self.device)
        weights = [p for p in self.model.parameters() if p.requires_grad]
        if o["w_optimizer"] == "sgd":
            self.w_opt: torch.optim.Optimizer = torch.optim.SGD(weights, lr=o["w_lr"],
                                                                weight_decay=o["w_weight_decay"])
            lr = o["w_lr"]
        else:
            from ..tasks.train import make_optimizer

            self.w_opt = make_optimizer(self.model, self.train_cfg)
            lr = self.train_cfg.lr
        penalty = None
        if o["resource_weight"] > 0:
            penalty = make_penalty(space, lambda: {i: torch.softmax(a, -1) for i, a in arch.logits().items()},
                                   o["resource"], o["resource_weight"], self.model_cfg.embed, self.model_cfg.hidden)
        self.architect = Architect(weights, arch.alpha, order=o["order"],
                                   xi=o["xi"] if o.get("xi") is not None else lr,
                                   w_weight_decay=o["w_weight_decay"] if o["w_optimizer"] == "sgd"
                                   else self.train_cfg.weight_decay,
                                   lr=o["alpha_lr"], betas=(o["alpha_beta1"], o["alpha_beta2"]),
                                   weight_decay=o["alpha_weight_decay"], penalty=penalty)
        self.clip = o["clip"] if o["w_optimizer"] == "sgd" else self.train_cfg.clip
        self.total = job_budget(self.task, self.train_cfg, o)
        self.step = 0
        self.t_state: Any = None  # recurrent states carried between batches (LM tasks)
        self.v_state: Any = None

    # ---- checkpoints ---------------------------------------------------------------------------
    def checkpoint(self) -> str:
        return _b64({"step": self.step, "model": self.model.state_dict(), "alpha": [a.detach().cpu() for a in
                                                                                    self.arch.alpha],
                     "w_opt": self.w_opt.state_dict(), "a_opt": self.architect.state_dict(),
                     "rng": torch.get_rng_state(), "t_state": self.t_state, "v_state": self.v_state,
                     "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None})

    def restore(self, blob: str) -> None:
        st = _unb64(blob)
        self.model.load_state_dict(st["model"])
        with torch.no_grad():
            for a, v in zip(self.arch.alpha, st["alpha"]):
                a.copy_(v.to(a.device))
        self.w_opt.load_state_dict(st["w_opt"])
        self.architect.load_state_dict(st["a_opt"])
        torch.set_rng_state(st["rng"])
        if st.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(st["cuda_rng"])
        self.step = int(st["step"])
        to = lambda s: None if s is None else (s.to(self.device) if isinstance(s, torch.Tensor)  # noqa: E731
                                                else type(s)(x.to(self.device) for x in s))
        self.t_state, self.v_state = to(st.get("t_state")), to(st.get("v_state"))

    # ---- the loop ----------------------------------------------------------------------------------
    def run(self, checkpoint: str | None = None) -> Iterator[dict[str, Any]]:
        o, task, cfg, dev = self.options, self.task, self.train_cfg, self.device
        host, gpu = worker_identity()
        yield {"kind": "started", "host": host, "gpu": gpu, "total": self.total, "device": str(dev)}
        if checkpoint:
            self.restore(checkpoint)
        g_train = torch.Generator().manual_seed((self.seed * 0x9E3779B1 + 0x5EED) % 2**63)
        g_valid = torch.Generator().manual_seed((self.seed * 0x9E3779B1 + 0x7A11D) % 2**63)
        train_it, valid_it = task.train_batches(cfg, g_train, dev), task.valid_batches(cfg, g_valid, dev)
        for _ in range(self.step):  # replay the data streams to the checkpoint (no compute)
            tb, vb = next(train_it), next(valid_it)
        carry = task.carries_state
        losses: list[float] = []
        vlosses: list[float] = []
        self.model.train()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        while self.step < self.total:
            tb, vb = next(train_it), next(valid_it)
            if tb.reset or not carry:
                self.t_state = None
            if vb.reset or not carry:
                self.v_state = None
            if o["sampler"] == "gumbel":
                frac = self.step / max(1, self.total - 1)
                self.arch.tau = o["tau_max"] - (o["tau_max"] - o["tau_min"]) * frac
            if self.step >= o["warmup_steps"]:
                holder: dict[str, Any] = {}

                def train_loss(tb=tb, s=self.t_state):
                    return batch_loss(self.model, tb, s)[0]

                def valid_loss(vb=vb, s=self.v_state, holder=holder):
                    loss, holder["state"] = batch_loss(self.model, vb, s)
                    return loss

                vlosses.append(self.architect.step(train_loss, valid_loss))
                self.v_state = detach_state(holder.get("state")) if carry else None
            loss, t_state = batch_loss(self.model, tb, self.t_state)
            self.w_opt.zero_grad(set_to_none=True)
            loss.backward()
            if self.clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
            self.w_opt.step()
            self.t_state = detach_state(t_state) if carry else None
            losses.append(float(loss.detach()))
            self.step += 1
            if not math.isfinite(losses[-1]):
                raise FloatingPointError(f"darts: the supernet's training loss is {losses[-1]} at step "
                                         f"{self.step}; lower w_lr (or use w_optimizer=space)")
            if self.step % o["log_every"] == 0 or self.step == self.total:
                m = {"train_loss": sum(losses) / len(losses), **alpha_metrics(self.arch)}
                if vlosses:
                    m["alpha_val_loss"] = sum(vlosses) / len(vlosses)
                if o["sampler"] == "gumbel":
                    m["tau"] = self.arch.tau
                losses, vlosses = [], []
                yield {"kind": "history", "step": self.step, "total": self.total, "metrics": m}
            if self.step % o["checkpoint_every"] == 0 and self.step < self.total:
                yield {"kind": "checkpoint", "step": self.step, "blob": self.checkpoint()}
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        elapsed = time.perf_counter() - t0
        self.model.eval()
        self.arch.sampler = "softmax"
        with torch.no_grad():
            ev = task.evaluate(self.model, cfg, dev, final=False)
        yield {"kind": "done", "step": self.step, "probs": self.arch.probs(),
               "metrics": {"supernet_val_loss": float(ev["val_loss"]), "search_time_s": elapsed,
                           "steps": float(self.step),
                           "supernet_params": float(sum(p.numel() for p in self.model.parameters()))},
               "device": str(dev), "gpu": gpu}


def run_darts_job(spec: dict[str, Any], checkpoint: str | None = None) -> Iterator[dict[str, Any]]:
    """The job's events (see the module docstring); raises on a broken spec or a diverged supernet."""
    cwd = spec.get("cwd")
    if cwd and os.path.isdir(cwd) and os.getcwd() != cwd:
        os.chdir(cwd)  # relative data paths mean what they meant to the driver
    job = DartsJob(spec)
    with matmul_precision(job.train_cfg.matmul_precision):  # as a trial's (nas.tasks.train)
        yield from job.run(checkpoint)


def submit_darts_job(spec: dict[str, Any], checkpoint: str | None, *, num_cpus: float, num_gpus: float):
    """Run the job as a Ray streaming task with these resources; returns its generator of event refs."""
    import ray

    @ray.remote(num_returns="streaming", max_retries=0)
    def _remote(spec, checkpoint):
        yield from run_darts_job(spec, checkpoint)

    gen = _remote.options(num_cpus=num_cpus, num_gpus=num_gpus, name="nas-darts-supernet").remote(spec, checkpoint)
    return gen
