"""The settings a space file's `model { }` and `train { }` blocks may set.

Pydantic models with `extra="forbid"`, so a misspelt key in a space file is caught
before any trial starts, and every trial's full recipe is explicit and recorded.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class TaskSpec(BaseModel):
    """A task named in a space file, e.g. `char_lm("data/input.txt", seq_len=128)`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = Field(default_factory=dict)

    def __str__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{self.name}({', '.join(parts)})"


class ModelConfig(BaseModel):
    """The network around the cell: embedding -> N cell layers -> decoder."""

    model_config = ConfigDict(extra="forbid")

    embed: int = Field(64, ge=1, le=65536, description="embedding size (LM tasks) / input projection size")
    hidden: int = Field(64, ge=1, le=65536, description="hidden size of every state")
    layers: int = Field(1, ge=1, le=16, description="stacked cell layers")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout between cell layers")
    dropout_embed: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the embedding output")
    dropout_out: float = Field(0.0, ge=0.0, lt=1.0, description="dropout before the decoder")
    tie_weights: bool = Field(False, description="tie decoder and embedding weights (needs embed == hidden)")


class TrainConfig(BaseModel):
    """The training recipe of one trial."""

    model_config = ConfigDict(extra="forbid")

    steps: int | None = Field(None, ge=1, description="optimizer steps budget")
    epochs: float | None = Field(None, gt=0, description="passes over the training split (LM tasks)")
    seconds: float | None = Field(None, gt=0, description="wall-clock budget per trial")
    batch_size: int = Field(32, ge=1, le=65536)
    seq_len: int = Field(64, ge=1, le=1_000_000, description="truncated-BPTT length (LM tasks)")
    lr: float = Field(1e-3, gt=0)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    momentum: float = Field(0.0, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    clip: float = Field(1.0, ge=0.0, description="gradient-norm clipping (0 = off)")
    lr_decay: float = Field(1.0, gt=0.0, le=1.0, description="lr factor when validation stops improving")
    diverge_factor: float = Field(100.0, ge=0.0, description="diverged if the training loss exceeds this "
                                  "times the first step's loss (0 = only NaN/inf)")
    eval_every: int = Field(100, ge=1, description="steps between intermediate evaluations")
    eval_batches: int = Field(10, ge=1, description="batches per intermediate evaluation")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    backend: str = Field("reference", description="cell compiler backend: reference | triton | auto")
    matmul_precision: Literal["highest", "high"] = Field(
        "highest", description="fp32 matmuls: highest = strict fp32 (torch's default); high = tf32 on GPUs "
        "with tensor cores, in cuBLAS and in the fused kernels (DARTS V2 forward+backward at (64, 512, 512) "
        "on an H200: 52 vs 73 ms)")


# The task names nas.tasks provides (checked there by a test); listed here so a space file
# can be validated without importing the training code.
KNOWN_TASKS = ("parity", "sum_mod", "copy", "recall", "char_lm", "word_lm")

MODEL_KEYS = tuple(ModelConfig.model_fields)
TRAIN_KEYS = tuple(TrainConfig.model_fields) + ("task",)
