"""Character-level language modelling on any UTF-8 text file.

The first `split` fraction of the characters trains, the rest validates. The
vocabulary comes from the whole file, so validation never meets an unknown character.
Metrics: `val_loss` (nats/char) and `val_bpc` (bits/char = val_loss / ln 2).

Creating the task only checks the file (exists, non-empty, looks like text); the
corpus is read on first use and cached per process, keyed by path, size and mtime.
"""

from __future__ import annotations

import codecs
import functools
import math
from pathlib import Path
from typing import Any

import torch

from nas.tasks.base import TaskError, float_arg, int_arg, path_arg
from nas.tasks.lm import LMTask

#: Bytes read up front to decide whether a file is text.
SNIFF_BYTES = 65536


def check_text_file(task: str, path: Path) -> None:
    """TaskError naming `path` if it is missing, empty, a folder or binary."""
    if not path.exists():
        raise TaskError(f"task {task!r}: text file {str(path)!r} does not exist",
                        hint="check the path (relative paths are resolved against the current directory)")
    if not path.is_file():
        raise TaskError(f"task {task!r}: {str(path)!r} is not a file", hint="give a text file")
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(SNIFF_BYTES)
    except OSError as e:
        raise TaskError(f"task {task!r}: cannot read {str(path)!r}: {e.strerror or e}") from e
    if size == 0:
        raise TaskError(f"task {task!r}: text file {str(path)!r} is empty", hint="give a non-empty text file")
    if b"\x00" in head or not _utf8_prefix(head):
        raise TaskError(f"task {task!r}: {str(path)!r} looks binary, not UTF-8 text",
                        hint="give a plain UTF-8 text file")


def _utf8_prefix(data: bytes) -> bool:
    """Whether `data` is a prefix of valid UTF-8 (a character cut at the end is allowed)."""
    try:
        codecs.getincrementaldecoder("utf-8")().decode(data, final=False)
    except UnicodeDecodeError:
        return False
    return True


@functools.lru_cache(maxsize=8)
def _load_chars(path: str, size: int, mtime_ns: int) -> tuple[tuple[str, ...], torch.Tensor]:
    """(vocabulary sorted by code point, int64 ids of every character)."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise TaskError(f"task 'char_lm': {path!r} is not valid UTF-8 text (byte {e.start})",
                        hint="give a plain UTF-8 text file") from e
    codes = torch.frombuffer(bytearray(text.encode("utf-32-le")), dtype=torch.int32).long()
    vocab_codes = torch.unique(codes)  # sorted
    ids = torch.searchsorted(vocab_codes, codes)
    return tuple(chr(int(c)) for c in vocab_codes), ids


class CharLMTask(LMTask):
    """Next-character prediction on one text file."""

    name = "char_lm"
    metric_names = ("val_loss", "val_bpc")

    def __init__(self, path: Any, split: float = 0.9, seq_len: int | None = None):
        super().__init__(None if seq_len is None else int_arg(self.name, "seq_len", seq_len))
        self.path = path_arg(self.name, "path", path)
        self.split = float_arg(self.name, "split", split, 0.0, 1.0)
        check_text_file(self.name, self.path)
        self._splits: dict[str, torch.Tensor] | None = None
        self._vocab: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "split": self.split, "seq_len": self.seq_len}

    def splits(self) -> dict[str, torch.Tensor]:
        if self._splits is None:
            st = self.path.stat()
            self._vocab, ids = _load_chars(str(self.path), st.st_size, st.st_mtime_ns)
            n_train = int(len(ids) * self.split)
            train, val = ids[:n_train], ids[n_train:]
            if len(train) < 2 or len(val) < 2:
                raise TaskError(
                    f"task {self.name!r}: {str(self.path)!r} has {len(ids)} characters; split={self.split} "
                    f"leaves {len(train)} for training and {len(val)} for validation (need >= 2 each)",
                    hint="use a longer file or another split")
            self._splits = {"train": train, "val": val}
        return self._splits

    def loss_metrics(self, prefix: str, loss: float) -> dict[str, float]:
        return {f"{prefix}_loss": loss, f"{prefix}_bpc": loss / math.log(2)}


def char_lm(path: Any, split: float = 0.9, seq_len: int | None = None) -> CharLMTask:
    """Character LM on a text file; `seq_len` overrides the train block's BPTT length."""
    return CharLMTask(path, split=split, seq_len=seq_len)
