"""Data-free tasks that train on a CPU in seconds and test length generalisation.

Every task has a length parameter L (sequence length, or number of pairs for
`recall`). Training examples have lengths drawn uniformly from [1, L] *per example*;
a batch is right-padded to the longest possible length with a PAD token. The cells
are causal, so padding after an example's last target cannot change its predictions.
Evaluation uses fixed lengths L, 2L and 4L (metric suffixes none / `_2x` / `_4x`).

Generation is vectorised and driven only by a `torch.Generator` on the CPU, so the same
seed gives the same data on any device. Validation sets come from a fixed seed that
does not depend on the trial seed, so all trials of a search score on the same examples.

Metrics (final evaluation): `val_loss`, `val_acc`, `val_seq_acc` at L, and
`loss_2x`, `acc_2x`, `seq_acc_2x`, `loss_4x`, `acc_4x`, `seq_acc_4x`. `*_acc` is the
fraction of target positions predicted right; `*seq_acc` the fraction of examples with
every target right (equal to `*_acc` for one-target tasks). Intermediate evaluations
report `val_loss`, `val_acc`, `val_seq_acc` on the first `eval_batches * batch_size`
examples of the length-L set.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch

from nas.config import TrainConfig
from nas.tasks.base import IGNORE_INDEX, Batch, Task, bool_arg, int_arg
from nas.tasks.model import RecurrentModel

#: Examples per evaluation length in the final evaluation (and the cap of intermediate ones).
FINAL_EVAL_EXAMPLES = 1024
#: Examples per forward pass during evaluation.
EVAL_CHUNK = 512
#: Seed of the validation sets, shared by all trials.
VAL_SEED = 0x5EED
#: Evaluation length multipliers and their metric suffixes.
EVAL_SCALES: tuple[tuple[int, str], ...] = ((1, ""), (2, "_2x"), (4, "_4x"))

SYNTHETIC_METRICS = ("val_loss", "val_acc", "val_seq_acc", "loss_2x", "acc_2x", "seq_acc_2x",
                     "loss_4x", "acc_4x", "seq_acc_4x")


def _lengths(n: int, length: int, fixed: bool, gen: torch.Generator) -> torch.Tensor:
    """Per-example lengths: all `length` if fixed, else uniform in [1, length]."""
    if fixed:
        return torch.full((n,), length, dtype=torch.long)
    return torch.randint(1, length + 1, (n,), generator=gen)


class SyntheticTask(Task):
    """Shared batching and evaluation; subclasses implement `generate`."""

    carries_state = False
    metric_names = SYNTHETIC_METRICS

    def __init__(self) -> None:
        self._val_cache: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def length(self) -> int:
        """The training length parameter L."""
        raise NotImplementedError

    def generate(self, n: int, length: int, fixed: bool,
                 gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """`n` examples -> inputs (n, T) and targets (n, T) with IGNORE_INDEX padding."""
        raise NotImplementedError

    def train_batches(self, train_cfg: TrainConfig, generator: torch.Generator,
                      device: torch.device) -> Iterator[Batch]:
        while True:
            x, y = self.generate(train_cfg.batch_size, self.length, False, generator)
            yield Batch(x.to(device), y.to(device), tokens=x.numel(), dense=False, reset=True)

    def valid_batches(self, train_cfg: TrainConfig, generator: torch.Generator,
                      device: torch.device) -> Iterator[Batch]:
        """Random batches (drawn with `generator`) of the fixed length-L validation set."""
        x, y = self._val_set(1, device)
        while True:
            idx = torch.randint(0, len(x), (min(train_cfg.batch_size, len(x)),), generator=generator)
            idx = idx.to(x.device)
            xb, yb = x[idx], y[idx]
            yield Batch(xb, yb, tokens=xb.numel(), dense=False, reset=True)

    def _val_set(self, scale: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (scale, str(device))
        if key not in self._val_cache:
            gen = torch.Generator().manual_seed(VAL_SEED + scale)
            x, y = self.generate(FINAL_EVAL_EXAMPLES, self.length * scale, True, gen)
            self._val_cache[key] = (x.to(device), y.to(device))
        return self._val_cache[key]

    def evaluate(self, model: RecurrentModel, train_cfg: TrainConfig, device: torch.device,
                 final: bool) -> dict[str, float]:
        out: dict[str, float] = {}
        scales = EVAL_SCALES if final else EVAL_SCALES[:1]
        for scale, suffix in scales:
            x, y = self._val_set(scale, device)
            if not final:
                n = min(len(x), train_cfg.eval_batches * train_cfg.batch_size)
                x, y = x[:n], y[:n]
            loss, acc, seq_acc = _score(model, x, y)
            if suffix:
                out.update({f"loss{suffix}": loss, f"acc{suffix}": acc, f"seq_acc{suffix}": seq_acc})
            else:
                out.update({"val_loss": loss, "val_acc": acc, "val_seq_acc": seq_acc})
        return out


def _score(model: RecurrentModel, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, float]:
    """Mean loss, per-target accuracy and per-sequence accuracy of `model` on (x, y)."""
    loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.long, device=x.device)
    seq_correct = torch.zeros((), dtype=torch.long, device=x.device)
    targets = 0
    for i in range(0, len(x), EVAL_CHUNK):
        xb, yb = x[i:i + EVAL_CHUNK], y[i:i + EVAL_CHUNK]
        feats, _ = model(xb)
        mask = yb != IGNORE_INDEX
        logits = model.decode(feats[mask]).float()
        tgt = yb[mask]
        loss_sum += torch.nn.functional.cross_entropy(logits, tgt, reduction="sum").double()
        hit = logits.argmax(-1) == tgt
        correct += hit.sum()
        wrong = torch.zeros_like(yb, dtype=torch.bool)
        wrong[mask] = ~hit
        seq_correct += (~wrong.any(dim=1)).sum()
        targets += int(mask.sum())
    n = len(x)
    return (float(loss_sum) / max(targets, 1), float(correct) / max(targets, 1),
            float(seq_correct) / max(n, 1))


class ParityTask(SyntheticTask):
    """Bits in, parity out: at the last bit (default) or at every bit (`running=True`).

    Tokens: 0, 1, PAD=2. Classes: 2.
    """

    name = "parity"

    def __init__(self, length: int = 20, running: bool = False):
        super().__init__()
        self._length = int_arg(self.name, "length", length)
        self.running = bool_arg(self.name, "running", running)

    @property
    def length(self) -> int:
        return self._length

    @property
    def input_vocab(self) -> int:
        return 3

    @property
    def num_classes(self) -> int:
        return 2

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "length": self._length, "running": self.running}

    def generate(self, n, length, fixed, gen):
        return _prefix_mod_task(n, length, fixed, gen, symbols=2, k=2, running=self.running)


class SumModTask(SyntheticTask):
    """Digits in [0, `digits`) in, their sum modulo `k` out (at the end, or running).

    Tokens: the digits, PAD=digits. Classes: k.
    """

    name = "sum_mod"

    def __init__(self, k: int = 5, length: int = 20, digits: int = 10, running: bool = False):
        super().__init__()
        self.k = int_arg(self.name, "k", k, minimum=2)
        self._length = int_arg(self.name, "length", length)
        self.digits = int_arg(self.name, "digits", digits, minimum=2)
        self.running = bool_arg(self.name, "running", running)

    @property
    def length(self) -> int:
        return self._length

    @property
    def input_vocab(self) -> int:
        return self.digits + 1

    @property
    def num_classes(self) -> int:
        return self.k

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "k": self.k, "length": self._length, "digits": self.digits,
                "running": self.running}

    def generate(self, n, length, fixed, gen):
        return _prefix_mod_task(n, length, fixed, gen, symbols=self.digits, k=self.k,
                                running=self.running)


def _prefix_mod_task(n: int, length: int, fixed: bool, gen: torch.Generator, symbols: int,
                     k: int, running: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Symbols in [0, symbols) -> (prefix sum mod k) at the last position or every position."""
    lens = _lengths(n, length, fixed, gen)
    sym = torch.randint(0, symbols, (n, length), generator=gen)
    valid = torch.arange(length)[None, :] < lens[:, None]
    sym = sym * valid
    x = torch.where(valid, sym, torch.full_like(sym, symbols))
    prefix = sym.cumsum(dim=1) % k
    if running:
        y = torch.where(valid, prefix, torch.full_like(prefix, IGNORE_INDEX))
    else:
        y = torch.full_like(prefix, IGNORE_INDEX)
        rows = torch.arange(n)
        y[rows, lens - 1] = prefix[rows, lens - 1]
    return x, y


class CopyTask(SyntheticTask):
    """Copy a sequence after a delimiter: `s1..sn DELIM BLANK*n` -> `s1..sn` on the blanks.

    Tokens: symbols [0, vocab), DELIM=vocab, BLANK=vocab+1, PAD=vocab+2. Classes: vocab.
    An example of length n spans 2n+1 positions.
    """

    name = "copy"

    def __init__(self, length: int = 10, vocab: int = 8):
        super().__init__()
        self._length = int_arg(self.name, "length", length)
        self.vocab = int_arg(self.name, "vocab", vocab, minimum=2)

    @property
    def length(self) -> int:
        return self._length

    @property
    def input_vocab(self) -> int:
        return self.vocab + 3

    @property
    def num_classes(self) -> int:
        return self.vocab

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "length": self._length, "vocab": self.vocab}

    def generate(self, n, length, fixed, gen):
        v = self.vocab
        lens = _lengths(n, length, fixed, gen)[:, None]
        sym = torch.randint(0, v, (n, length), generator=gen)
        pos = torch.arange(2 * length + 1)[None, :]
        src = sym.gather(1, pos.clamp(max=length - 1).expand(n, -1))
        tgt = sym.gather(1, (pos - lens - 1).clamp(0, length - 1))
        is_src = pos < lens
        is_out = (pos > lens) & (pos <= 2 * lens)
        x = torch.full(is_src.shape, v + 2, dtype=torch.long)      # PAD
        x = torch.where(is_src, src, x)
        x = torch.where(pos == lens, torch.full_like(x, v), x)      # DELIM
        x = torch.where(is_out, torch.full_like(x, v + 1), x)       # BLANK
        y = torch.where(is_out, tgt, torch.full_like(tgt, IGNORE_INDEX))
        return x, y


class RecallTask(SyntheticTask):
    """Associative recall: `k1 v1 .. kn vn QUERY kq` -> the value bound to kq.

    Keys are distinct while n <= vocab (the classic task); beyond that (only in the
    2x/4x evaluations of a large `pairs`) keys repeat and the answer is the value bound
    *most recently* to the query key - a rule consistent with the distinct-key case.
    Tokens: keys [0, vocab), values [vocab, 2*vocab), QUERY=2*vocab, PAD=2*vocab+1.
    Classes: vocab (the value index). n pairs span 2n+2 positions.
    """

    name = "recall"

    def __init__(self, pairs: int = 8, vocab: int = 16):
        super().__init__()
        self.pairs = int_arg(self.name, "pairs", pairs)
        self.vocab = int_arg(self.name, "vocab", vocab, minimum=2)

    @property
    def length(self) -> int:
        return self.pairs

    @property
    def input_vocab(self) -> int:
        return 2 * self.vocab + 2

    @property
    def num_classes(self) -> int:
        return self.vocab

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "pairs": self.pairs, "vocab": self.vocab}

    def generate(self, n, length, fixed, gen):
        v = self.vocab
        lens = _lengths(n, length, fixed, gen)
        reps = math.ceil(length / v)
        # Concatenated random permutations: the first min(n, vocab) keys are distinct.
        keys = torch.rand(n, reps, v, generator=gen).argsort(dim=-1).reshape(n, reps * v)[:, :length]
        values = torch.randint(0, v, (n, length), generator=gen)
        rows = torch.arange(n)
        qi = (torch.rand(n, generator=gen) * lens).long().clamp(max=length - 1)
        q = keys[rows, qi]
        idx = torch.arange(length)[None, :]
        match = (keys == q[:, None]) & (idx < lens[:, None])
        last = (match.long() * (idx + 1)).argmax(dim=1)
        answer = values[rows, last]

        kv = torch.stack([keys, values + v], dim=2).reshape(n, 2 * length)
        pos = torch.arange(2 * length + 2)[None, :]
        end = 2 * lens[:, None]
        x = kv.gather(1, pos.clamp(max=2 * length - 1).expand(n, -1))
        x = torch.where(pos < end, x, torch.full_like(x, 2 * v + 1))   # PAD
        x = torch.where(pos == end, torch.full_like(x, 2 * v), x)       # QUERY
        x = torch.where(pos == end + 1, q[:, None].expand_as(x), x)
        y = torch.full_like(x, IGNORE_INDEX)
        y[rows, 2 * lens + 1] = answer
        return x, y


def parity(length: int = 20, running: bool = False) -> ParityTask:
    """Parity of a bit sequence (at the end, or running parity at every step)."""
    return ParityTask(length=length, running=running)


def sum_mod(k: int = 5, length: int = 20, digits: int = 10, running: bool = False) -> SumModTask:
    """Sum of decimal digits modulo k."""
    return SumModTask(k=k, length=length, digits=digits, running=running)


def copy(length: int = 10, vocab: int = 8) -> CopyTask:
    """Reproduce a sequence after a delimiter."""
    return CopyTask(length=length, vocab=vocab)


def recall(pairs: int = 8, vocab: int = 16) -> RecallTask:
    """Associative recall of the value bound to a query key."""
    return RecallTask(pairs=pairs, vocab=vocab)
