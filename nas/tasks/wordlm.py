"""Word-level language modelling on a folder in the Penn Treebank layout.

The folder holds `train.txt`, `valid.txt` and `test.txt`, one sentence per line. Lines
are split on whitespace and `<eos>` is appended to each. The vocabulary comes from
train.txt (plus `<unk>`); words of valid/test not in it become `<unk>`.
Metrics: `val_loss` (nats/word), `val_ppl`, and from the final evaluation on test.txt
`test_loss`, `test_ppl`.

Creating the task only checks that the files exist and are non-empty; reading them
happens on first use and is cached per process.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

from nas.tasks.base import TaskError, int_arg, path_arg
from nas.tasks.lm import LMTask, perplexity

SPLIT_FILES = {"train": "train.txt", "val": "valid.txt", "test": "test.txt"}
EOS = "<eos>"
UNK = "<unk>"


def _words(path: Path) -> list[str]:
    words: list[str] = []
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            words.extend(line.split())
            words.append(EOS)
    return words


@functools.lru_cache(maxsize=4)
def _load_corpus(folder: str, stamp: tuple[tuple[int, int], ...]) -> tuple[tuple[str, ...], dict[str, torch.Tensor]]:
    """(vocabulary in first-seen order, id streams per split). `stamp` keys the cache."""
    root = Path(folder)
    train_words = _words(root / SPLIT_FILES["train"])
    stoi: dict[str, int] = {}
    for w in train_words:
        if w not in stoi:
            stoi[w] = len(stoi)
    stoi.setdefault(UNK, len(stoi))
    unk = stoi[UNK]
    out: dict[str, torch.Tensor] = {"train": torch.tensor([stoi[w] for w in train_words], dtype=torch.long)}
    for split in ("val", "test"):
        out[split] = torch.tensor([stoi.get(w, unk) for w in _words(root / SPLIT_FILES[split])],
                                  dtype=torch.long)
    return tuple(stoi), out


class WordLMTask(LMTask):
    """Next-word prediction on a PTB-style folder."""

    name = "word_lm"
    metric_names = ("val_loss", "val_ppl", "test_loss", "test_ppl")

    def __init__(self, path: Any, seq_len: int | None = None):
        super().__init__(None if seq_len is None else int_arg(self.name, "seq_len", seq_len))
        self.path = path_arg(self.name, "path", path)
        if not self.path.is_dir():
            what = "is not a folder" if self.path.exists() else "does not exist"
            raise TaskError(f"task {self.name!r}: folder {str(self.path)!r} {what}",
                            hint="give a folder holding train.txt, valid.txt and test.txt")
        missing = [f for f in SPLIT_FILES.values() if not (self.path / f).is_file()]
        if missing:
            raise TaskError(f"task {self.name!r}: folder {str(self.path)!r} lacks {', '.join(missing)}",
                            hint="a word_lm folder needs train.txt, valid.txt and test.txt (PTB layout)")
        empty = [f for f in SPLIT_FILES.values() if (self.path / f).stat().st_size == 0]
        if empty:
            raise TaskError(f"task {self.name!r}: in folder {str(self.path)!r}, {', '.join(empty)} "
                            f"{'is' if len(empty) == 1 else 'are'} empty",
                            hint="each split file needs at least one sentence")
        self._splits: dict[str, torch.Tensor] | None = None
        self._vocab: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "seq_len": self.seq_len}

    def splits(self) -> dict[str, torch.Tensor]:
        if self._splits is None:
            stamp = tuple((st.st_size, st.st_mtime_ns)
                          for st in ((self.path / f).stat() for f in SPLIT_FILES.values()))
            self._vocab, self._splits = _load_corpus(str(self.path), stamp)
        return self._splits

    def loss_metrics(self, prefix: str, loss: float) -> dict[str, float]:
        return {f"{prefix}_loss": loss, f"{prefix}_ppl": perplexity(loss)}


def word_lm(path: Any, seq_len: int | None = None) -> WordLMTask:
    """Word LM on a PTB-layout folder; `seq_len` overrides the train block's BPTT length."""
    return WordLMTask(path, seq_len=seq_len)
