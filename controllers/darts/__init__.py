"""`darts`: differentiable architecture search (Liu et al. 2019) over any space file.

The controller itself is small: its options, alpha and the derived cell. The supernet
search is one long job (`nas.workers.darts_job`) that the driver runs before asking:
it trains the supernet (`supernet.py`) with the bilevel step (`bilevel.py`), and hands
back alpha, from which `derive.py` reads the discrete cell. `ask` then returns the derived
cell (and, for more trials, the next most probable cells), which the driver trains from
scratch as a normal trial. State: alpha, the derived assignment, and while the job runs
its latest checkpoint (supernet weights, alpha, optimiser states; base64 of torch.save),
so `nas search resume` continues the job where it stopped.
"""

from __future__ import annotations

import math
from typing import Any

from ...errors import UserError
from ...space import Assignment, SearchSpace
from ..base import Controller, Option, positive
from .derive import check_mixable, derive

SAMPLERS = ("softmax", "gumbel")
RESOURCES = ("params", "ops")


def _nonneg(v: Any) -> bool:
    return v >= 0


OPTIONS: dict[str, Option] = {
    "order": Option(1, "1: first-order DARTS; 2: second order (unrolled step, finite-difference Hessian-vector "
                    "product)", (int,), lambda v: v in (1, 2), "1 or 2"),
    "epochs": Option(None, "supernet passes over the training split (LM tasks; for synthetic tasks one epoch = "
                     "the space's train.steps); default: the space's step budget", (float,), positive,
                     "a positive number", nullable=True),
    "steps": Option(None, "supernet steps (overrides epochs)", (int,), positive, "a positive integer",
                    nullable=True),
    "sampler": Option("softmax", "softmax: DARTS's continuous mixture; gumbel: GDAS-style hard Gumbel-softmax "
                      "samples with straight-through gradients", (str,), lambda v: v in SAMPLERS,
                      " or ".join(SAMPLERS)),
    "tau_max": Option(10.0, "gumbel: initial temperature (annealed linearly)", (float,), positive, "> 0"),
    "tau_min": Option(0.1, "gumbel: final temperature", (float,), positive, "> 0"),
    "resource": Option("params", "RC-DARTS cost: params (linear weights) or ops (ops doing work per step)",
                       (str,), lambda v: v in RESOURCES, " or ".join(RESOURCES)),
    "resource_weight": Option(0.0, "lambda of the penalty lambda * E[cost] / cost_all added to alpha's loss "
                              "(0: off)", (float,), _nonneg, ">= 0"),
    "alpha_lr": Option(3e-3, "alpha's Adam learning rate (DARTS)", (float,), positive, "> 0"),
    "alpha_beta1": Option(0.9, "alpha's Adam beta1 (DARTS)", (float,), lambda v: 0 <= v < 1, "in [0, 1)"),
    "alpha_beta2": Option(0.999, "alpha's Adam beta2 (DARTS)", (float,), lambda v: 0 <= v < 1, "in [0, 1)"),
    "alpha_weight_decay": Option(1e-3, "alpha's weight decay (DARTS)", (float,), _nonneg, ">= 0"),
    "alpha_init": Option(1e-3, "alpha = alpha_init * randn at the start (DARTS)", (float,), _nonneg, ">= 0"),
    "w_optimizer": Option("sgd", "weights: sgd (DARTS: lr w_lr, weight decay w_weight_decay, no momentum) or "
                          "space (the space's optimizer and lr)", (str,), lambda v: v in ("sgd", "space"),
                          "sgd or space"),
    "w_lr": Option(20.0, "weights' SGD learning rate (DARTS)", (float,), positive, "> 0"),
    "w_weight_decay": Option(5e-7, "weights' weight decay (DARTS)", (float,), _nonneg, ">= 0"),
    "clip": Option(0.25, "weights' gradient-norm clip (DARTS)", (float,), _nonneg, ">= 0"),
    "xi": Option(None, "order 2: the virtual step's learning rate (default: the weights' learning rate)",
                 (float,), _nonneg, ">= 0", nullable=True),
    "batch_size": Option(None, "supernet batch size (default: the space's; DARTS PTB: 256)", (int,), positive,
                         "a positive integer", nullable=True),
    "seq_len": Option(None, "supernet BPTT length (default: the space's; DARTS PTB: 35)", (int,), positive,
                      "a positive integer", nullable=True),
    "hidden": Option(None, "supernet hidden size (default: the space's model.hidden)", (int,), positive,
                     "a positive integer", nullable=True),
    "embed": Option(None, "supernet embedding size (default: the space's model.embed)", (int,), positive,
                    "a positive integer", nullable=True),
    "warmup_steps": Option(0, "weight-only steps before alpha starts to move", (int,), _nonneg, ">= 0"),
    "log_every": Option(10, "steps between alpha-history records", (int,), positive, "a positive integer"),
    "checkpoint_every": Option(100, "steps between supernet checkpoints (resume point)", (int,), positive,
                               "a positive integer"),
}


class Darts(Controller):
    """Differentiable search: a supernet job first, then the derived cell as a trial."""

    name = "darts"
    OPTIONS = OPTIONS
    needs_supernet = True  # the driver runs `nas.workers.darts_job` before the first ask

    def __init__(self, space: SearchSpace, seed: int = 0, **options: Any):
        super().__init__(space, seed, **options)
        check_mixable(space)
        o = self.options
        if o["sampler"] == "gumbel" and o["tau_min"] > o["tau_max"]:
            raise UserError(f"controller 'darts': tau_min={o['tau_min']} is above tau_max={o['tau_max']}")
        self.probs: dict[str, list[float]] | None = None
        self.derived: Assignment | None = None
        self.job: dict[str, Any] | None = None  # {"step": int, "blob": base64 checkpoint}
        self.asked = 0

    @property
    def supernet_done(self) -> bool:
        return self.probs is not None

    def finish(self, probs: dict[str, list[float]]) -> Assignment:
        """The job is done: keep alpha, derive the cell, drop the job checkpoint."""
        self.probs = {k: list(v) for k, v in probs.items()}
        self.derived = derive(self.space, self.probs)
        self.job = None
        return self.derived

    def ask(self, n: int = 1) -> list[Assignment]:
        if self.probs is None:
            raise RuntimeError("darts: the supernet search has not run yet (the driver runs it first)")
        ranked = self.ranked(self.asked + n)
        out = ranked[self.asked:self.asked + n]
        while len(out) < n:  # fewer distinct cells than asked: repeat the best
            out.append(ranked[0])
        self.asked += n
        return [self.commit(a) for a in out]

    def ranked(self, k: int) -> list[Assignment]:
        """The derived cell, then cells that change one decision, by the loss of log-probability."""
        assert self.probs is not None and self.derived is not None
        best = self.derived
        out, seen = [best], {self.key(best)}
        moves = []
        for name, p in self.probs.items():
            cur = best[name]
            for j, pj in enumerate(p):
                if j != cur and pj > 0:
                    moves.append((math.log(max(p[cur], 1e-300)) - math.log(pj), name, j))
        for _, name, j in sorted(moves):
            if len(out) >= k:
                break
            a = self.space.normalize({**best, name: j})
            if self.key(a) not in seen:
                seen.add(self.key(a))
                out.append(a)
        return out

    def set_job_checkpoint(self, step: int, blob: str) -> None:
        self.job = {"step": int(step), "blob": blob}

    def state_dict(self) -> dict[str, Any]:
        return {"probs": self.probs, "derived": self.derived, "job": self.job, "asked": self.asked,
                **self.base_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.probs = state.get("probs")
        self.derived = state.get("derived")
        self.job = state.get("job")
        self.asked = int(state.get("asked", 0))
        self.load_base_state(state)


__all__ = ["Darts", "OPTIONS"]
