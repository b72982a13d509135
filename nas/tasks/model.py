"""The network around a searched cell: embedding -> cell layers -> decoder.

The cell comes in through `rnn_factory`, so this module depends on no compiler
backend; any module with the `torch.nn.LSTM(batch_first=True)` calling convention
(`out, state = rnn(x, state)`) works, whatever shape its state has.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from nas.config import ModelConfig
from nas.tasks.base import TaskError

#: `rnn_factory(input_size, hidden_size, num_layers, dropout) -> nn.Module`
RNNFactory = Callable[[int, int, int, float], nn.Module]

#: A recurrent state: one tensor, a tuple/list of tensors (LSTM-like), or None.
State = Any


def detach_state(state: State) -> State:
    """Cut the autograd graph at a batch boundary (truncated BPTT), any state structure."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return state.detach()
    if isinstance(state, (tuple, list)):
        return type(state)(detach_state(s) for s in state)
    if isinstance(state, dict):
        return {k: detach_state(v) for k, v in state.items()}
    return state


def check_model_config(model_cfg: ModelConfig, input_vocab: int | None = None,
                       num_classes: int | None = None) -> None:
    """Raise TaskError if `model_cfg` cannot be built (weight tying constraints)."""
    if not model_cfg.tie_weights:
        return
    if model_cfg.embed != model_cfg.hidden:
        raise TaskError(
            f"tie_weights=true needs embed == hidden, got embed={model_cfg.embed}, "
            f"hidden={model_cfg.hidden}",
            hint="set embed and hidden to the same value, or tie_weights=false")
    if input_vocab is not None and num_classes is not None and input_vocab != num_classes:
        raise TaskError(
            f"tie_weights=true needs the input vocabulary ({input_vocab}) to equal the number of "
            f"output classes ({num_classes}); only language-modelling tasks have that",
            hint="set tie_weights=false for synthetic tasks")


class RecurrentModel(nn.Module):
    """Embedding -> dropout -> rnn (N layers, inter-layer dropout) -> dropout -> decoder.

    `forward` returns the dropped-out features, not logits, so the training loop can
    decode only the positions that carry a target (synthetic tasks predict at one
    position out of many).
    """

    def __init__(self, input_vocab: int, num_classes: int, rnn_factory: RNNFactory,
                 cfg: ModelConfig):
        super().__init__()
        check_model_config(cfg, input_vocab, num_classes)
        self.cfg = cfg
        self.embedding = nn.Embedding(input_vocab, cfg.embed)
        self.drop_embed = nn.Dropout(cfg.dropout_embed)
        # Dropout "between layers" means nothing with one layer (and nn.LSTM warns).
        between = cfg.dropout if cfg.layers > 1 else 0.0
        rnn = rnn_factory(cfg.embed, cfg.hidden, cfg.layers, between)
        if not isinstance(rnn, nn.Module):
            raise TypeError(f"rnn_factory must return an nn.Module, got {type(rnn).__name__}")
        self.rnn = rnn
        self.drop_out = nn.Dropout(cfg.dropout_out)
        self.decoder = nn.Linear(cfg.hidden, num_classes)
        # Small uniform embeddings (the PTB recipe): N(0, 1) rows make huge logits when tied.
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        if cfg.tie_weights:
            self.decoder.weight = self.embedding.weight

    def forward(self, x: torch.Tensor, state: State = None) -> tuple[torch.Tensor, State]:
        """Token ids (B, T) -> features (B, T, hidden) and the new state."""
        out, state = self.rnn(self.drop_embed(self.embedding(x)), state)
        if out.shape[-1] != self.cfg.hidden:
            raise RuntimeError(f"the rnn returned features of size {out.shape[-1]}, "
                               f"expected hidden={self.cfg.hidden}")
        return self.drop_out(out), state

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        """Features (..., hidden) -> logits (..., num_classes)."""
        return self.decoder(features)


def count_params(model: nn.Module) -> int:
    """Trainable parameters, shared (tied) tensors counted once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
