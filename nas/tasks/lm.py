"""Batching and evaluation shared by the language-modelling tasks.

The classic truncated-BPTT layout: a token stream is cut into `streams` parallel rows
(the batch), read left to right in chunks of `seq_len`, and the recurrent state is
carried from one chunk to the next (detached by the training loop) and reset at the
start of every epoch.

Evaluation always uses `EVAL_STREAMS` rows, whatever the training batch size, so the
validation loss of trials with different batch sizes is measured the same way (the
chunk length only splits the work: the state is carried, so it does not change the
result). Intermediate evaluations read the first `eval_batches` chunks of the
validation split; the final one reads the whole split, capped at
`FINAL_EVAL_MAX_TOKENS` tokens so CPU runs stay fast (PTB's 74k/82k-token valid/test
and tinyshakespeare's 112k-char validation split fit entirely).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from nas.config import TrainConfig
from nas.tasks.base import Batch, Task, TaskError
from nas.tasks.model import RecurrentModel

#: Parallel rows used by every evaluation.
EVAL_STREAMS = 16
#: Tokens per split read by the final evaluation at most.
FINAL_EVAL_MAX_TOKENS = 262_144


def batchify(data: torch.Tensor, streams: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A 1-D token stream -> inputs and next-token targets, each (streams, length)."""
    streams = max(1, min(streams, len(data) - 1))
    length = (len(data) - 1) // streams
    n = streams * length
    return data[:n].view(streams, length), data[1:n + 1].view(streams, length)


class LMTask(Task):
    """A next-token task over `train`/`val` (and optionally `test`) token streams."""

    carries_state = True

    def __init__(self, seq_len: int | None = None):
        self.seq_len = seq_len
        self._eval_cache: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}

    # -- provided by subclasses -------------------------------------------------------
    def splits(self) -> dict[str, torch.Tensor]:
        """1-D int64 CPU token streams: 'train', 'val' and maybe 'test' (loads on first use)."""
        raise NotImplementedError

    def loss_metrics(self, prefix: str, loss: float) -> dict[str, float]:
        """Derived metrics of one split's mean loss, e.g. bpc or perplexity."""
        return {f"{prefix}_loss": loss}

    # -- Task -------------------------------------------------------------------------
    @property
    def vocab(self) -> tuple[str, ...]:
        """The tokens (characters or words), index = token id; set by `splits()`."""
        self.splits()
        return self._vocab

    @property
    def input_vocab(self) -> int:
        return len(self.vocab)

    @property
    def num_classes(self) -> int:
        return len(self.vocab)

    def load(self) -> None:
        self.splits()

    def _seq_len(self, train_cfg: TrainConfig) -> int:
        return self.seq_len or train_cfg.seq_len

    def _train_rows(self, train_cfg: TrainConfig) -> int:
        train = self.splits()["train"]
        if len(train) - 1 < train_cfg.batch_size:
            raise TaskError(
                f"task {self.name!r}: the training split has {len(train)} tokens, too few for "
                f"batch_size={train_cfg.batch_size}",
                hint="use a smaller batch_size or a larger corpus")
        return (len(train) - 1) // train_cfg.batch_size

    def steps_per_epoch(self, train_cfg: TrainConfig) -> int:
        return math.ceil(self._train_rows(train_cfg) / self._seq_len(train_cfg))

    def train_batches(self, train_cfg: TrainConfig, generator: torch.Generator,
                      device: torch.device) -> Iterator[Batch]:
        self._train_rows(train_cfg)
        x, y = batchify(self.splits()["train"], train_cfg.batch_size)
        yield from _chunks(x.to(device), y.to(device), self._seq_len(train_cfg))

    def valid_batches(self, train_cfg: TrainConfig, generator: torch.Generator,
                      device: torch.device) -> Iterator[Batch]:
        """The validation split in the training layout (batch_size rows, seq_len chunks)."""
        val = self.splits()["val"]
        x, y = batchify(val, min(train_cfg.batch_size, max(1, (len(val) - 1) // 2)))
        yield from _chunks(x.to(device), y.to(device), self._seq_len(train_cfg))

    def _eval_data(self, split: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (split, str(device))
        if key not in self._eval_cache:
            data = self.splits()[split][:FINAL_EVAL_MAX_TOKENS + 1]
            x, y = batchify(data, EVAL_STREAMS)
            self._eval_cache[key] = (x.to(device), y.to(device))
        return self._eval_cache[key]

    def _split_loss(self, model: RecurrentModel, split: str, seq_len: int, device: torch.device,
                    max_chunks: int | None) -> float:
        x, y = self._eval_data(split, device)
        state = None
        total = torch.zeros((), dtype=torch.float64, device=device)
        count = 0
        for n, i in enumerate(range(0, x.shape[1], seq_len)):
            if max_chunks is not None and n >= max_chunks:
                break
            feats, state = model(x[:, i:i + seq_len], state)
            logits = model.decode(feats).float()
            tgt = y[:, i:i + seq_len]
            total += torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), reduction="sum").double()
            count += tgt.numel()
        return float(total) / max(count, 1)

    def evaluate(self, model: RecurrentModel, train_cfg: TrainConfig, device: torch.device,
                 final: bool) -> dict[str, float]:
        s = self._seq_len(train_cfg)
        chunks = None if final else train_cfg.eval_batches
        out = self.loss_metrics("val", self._split_loss(model, "val", s, device, chunks))
        if final and "test" in self.splits():
            out.update(self.loss_metrics("test", self._split_loss(model, "test", s, device, None)))
        return out


def perplexity(loss: float) -> float:
    """exp(loss) without overflow errors."""
    return math.exp(min(loss, 700.0))


def _chunks(x: torch.Tensor, y: torch.Tensor, seq_len: int) -> Iterator[Batch]:
    """Endless BPTT chunks of batchified rows; the state resets at each pass's first chunk."""
    while True:
        for i in range(0, x.shape[1], seq_len):
            xb = x[:, i:i + seq_len]
            yield Batch(xb, y[:, i:i + seq_len], tokens=xb.numel(), dense=True, reset=(i == 0))
