"""Eager PyTorch implementations of the elementwise ops of `nas.ops` (the ground truth)."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def _sum(args: list[Tensor]) -> Tensor:
    out = args[0]
    for a in args[1:]:
        out = out + a
    return out


def _prod(args: list[Tensor]) -> Tensor:
    out = args[0]
    for a in args[1:]:
        out = out * a
    return out


def _max(args: list[Tensor]) -> Tensor:
    out = args[0]
    for a in args[1:]:
        out = torch.maximum(out, a)
    return out


ELEMENTWISE: dict[str, Callable[[list[Tensor]], Tensor]] = {
    "add": _sum,
    "mul": _prod,
    "sub": lambda a: a[0] - a[1],
    "neg": lambda a: -a[0],
    "blend": lambda a: a[0] * a[1] + (1 - a[0]) * a[2],
    "mean": lambda a: _sum(a) / len(a),
    "max": _max,
    "tanh": lambda a: torch.tanh(a[0]),
    "sigmoid": lambda a: torch.sigmoid(a[0]),
    "relu": lambda a: torch.relu(a[0]),
    "identity": lambda a: a[0],
    "gelu": lambda a: F.gelu(a[0]),
    "leaky_relu": lambda a: F.leaky_relu(a[0], 0.01),
    "silu": lambda a: F.silu(a[0]),
    "softplus": lambda a: F.softplus(a[0]),
}
