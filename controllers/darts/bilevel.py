"""DARTS's bilevel step: alpha on the validation loss, weights on the training loss.

First order: grad_alpha L_val(w, alpha). Second order (Liu et al. 2019, eq. 7-8): with the
virtual step w' = w - xi * (grad_w L_train(w, alpha) + wd * w),

    grad = grad_alpha L_val(w', alpha)
           - xi * (grad_alpha L_train(w+, alpha) - grad_alpha L_train(w-, alpha)) / (2 eps)

where w+- = w +- eps * grad_w' L_val(w', alpha) and eps = 0.01 / ||grad_w' L_val||: the
Hessian-vector product by central finite differences, so no second derivatives are needed.
The losses are closures over fixed batches; each call inside one step sees the same random
state (same dropout masks), so the differences measure alpha and w only.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn

Loss = Callable[[], Tensor]


class _SameRandom:
    """Every `with` block starts from the random state captured at construction."""

    def __init__(self) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None

    def __enter__(self):
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)
        return self

    def __exit__(self, *exc):
        return False


def _grads(loss: Tensor, params: Sequence[Tensor]) -> list[Tensor]:
    gs = torch.autograd.grad(loss, list(params), allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, gs)]


class Architect:
    """Owns alpha's optimiser (DARTS: Adam lr 3e-3, betas (0.9, 0.999), weight decay 1e-3)."""

    def __init__(self, weights: Sequence[nn.Parameter], alphas: Sequence[nn.Parameter], order: int = 1,
                 xi: float = 20.0, w_weight_decay: float = 5e-7, lr: float = 3e-3,
                 betas: tuple[float, float] = (0.9, 0.999), weight_decay: float = 1e-3,
                 penalty: Callable[[], Tensor] | None = None):
        if order not in (1, 2):
            raise ValueError(f"order must be 1 or 2, got {order}")
        self.weights = [p for p in weights if p.requires_grad]
        self.alphas = list(alphas)
        self.order, self.xi, self.w_wd = order, float(xi), float(w_weight_decay)
        self.penalty = penalty
        self.optimizer = torch.optim.Adam(self.alphas, lr=lr, betas=betas, weight_decay=weight_decay)

    def gradient(self, train_loss: Loss, valid_loss: Loss) -> tuple[list[Tensor], float]:
        """alpha's gradient (first or second order) and the validation loss it saw."""
        if self.order == 1:
            lv = valid_loss()
            g = _grads(lv, self.alphas)
        else:
            g, lv = self.unrolled_gradient(train_loss, valid_loss)
        if self.penalty is not None:
            pen = self.penalty()
            if pen.requires_grad:  # a cost that no decision changes has no gradient
                g = [a + b for a, b in zip(g, _grads(pen, self.alphas))]
        return g, float(lv.detach())

    def step(self, train_loss: Loss, valid_loss: Loss) -> float:
        g, lv = self.gradient(train_loss, valid_loss)
        self.optimizer.zero_grad(set_to_none=True)
        for a, ga in zip(self.alphas, g):
            a.grad = ga.detach()
        self.optimizer.step()
        return lv

    def unrolled_gradient(self, train_loss: Loss, valid_loss: Loss) -> tuple[list[Tensor], Tensor]:
        w, xi = self.weights, self.xi
        rng = _SameRandom()
        backup = [p.detach().clone() for p in w]
        try:
            with rng:
                gw = _grads(train_loss(), w)
            with torch.no_grad():  # w' = w - xi * (grad + wd * w)
                for p, b, g in zip(w, backup, gw):
                    p.copy_(b - xi * (g + self.w_wd * b))
            with rng:
                lv = valid_loss()
            g_all = _grads(lv, [*self.alphas, *w])
            g_alpha, g_wp = g_all[:len(self.alphas)], g_all[len(self.alphas):]
            norm = torch.sqrt(sum((g * g).sum() for g in g_wp))
            eps = 0.01 / max(float(norm), 1e-12)
            with torch.no_grad():
                for p, b, d in zip(w, backup, g_wp):
                    p.copy_(b + eps * d)
            with rng:
                gp = _grads(train_loss(), self.alphas)
            with torch.no_grad():
                for p, b, d in zip(w, backup, g_wp):
                    p.copy_(b - eps * d)
            with rng:
                gn = _grads(train_loss(), self.alphas)
        finally:
            with torch.no_grad():
                for p, b in zip(w, backup):
                    p.copy_(b)
        hv = [(a - b) / (2 * eps) for a, b in zip(gp, gn)]
        return [ga - xi * h for ga, h in zip(g_alpha, hv)], lv

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state)
