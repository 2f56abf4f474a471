"""Token embeddings scaled by √d_model, plus position, then dropout (§3.4, §3.5, §5.4).

Why √d_model: the table is shared with the output projection, whose natural scale is small
(std ~ d^-1/2, as tensor2tensor initialises it); times √d_model, a token's vector has unit-order
components, the order of the sinusoids' (each sin/cos in [-1, 1], RMS 0.71). Under this model's Xavier
init the factor's effect depends on the vocabulary: with the demo's 50 symbols at d = 128 a scaled
token vector is about 1.5× a position vector's norm (`explain embedding-scale`), with 37,000 tokens at
d = 512 about 0.23× (RMS 0.165 per component): the sinusoids dominate at initialisation.

Shapes: tokens (B, T) int64 -> (B, T, D).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from transformer_lab.nn.checks import skip_value_checks
from transformer_lab.nn.dropout import Dropout
from transformer_lab.nn.positions import PositionEncoding


def check_token_shape(tokens: Tensor, name: str = "tokens") -> None:
    """ValueError unless ``tokens`` is a non-empty (B, T) integer tensor. Free: it reads shapes only."""
    if not isinstance(tokens, Tensor):
        raise ValueError(f"{name}: expected a LongTensor of shape (B, T), got {type(tokens).__name__}")
    if tokens.dim() != 2:
        raise ValueError(f"{name}: expected shape (B, T), got {tuple(tokens.shape)}")
    if tokens.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{name}: expected integer token ids (torch.long), got {tokens.dtype}")
    if tokens.size(0) == 0 or tokens.size(1) == 0:
        raise ValueError(f"{name}: empty batch, shape {tuple(tokens.shape)}; expected B >= 1 and T >= 1")


def check_tokens(tokens: Tensor, vocab_size: int, name: str = "tokens") -> None:
    """ValueError for a tensor that cannot be a batch of token ids (instead of an IndexError deep
    inside ``nn.Embedding``, or a device-side assert on CUDA).

    Models call this once per batch, at their boundary (``forward``, ``encode``, ``decode``), never
    inside a layer. Reading the ids' range back to the host is a device sync and would break a
    ``torch.compile`` graph, so while Dynamo traces, and inside ``nn.checks.values_checked()`` (the
    caller checked the batch on the host), only the shape is checked.
    """
    check_token_shape(tokens, name)
    if skip_value_checks():
        return
    lo, hi = torch.stack(torch.aminmax(tokens)).tolist()  # one read back, not two
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise ValueError(f"{name}: token id {bad} is out of range; expected 0 <= id < vocab_size={vocab_size}")


class TokenEmbedding(nn.Module):
    """Lookup table times √d_model (``scale=False``: the plain table, as BERT and GPT-2 use it).
    Shapes: (B, T) -> (B, T, D)."""

    def __init__(self, vocab_size: int, d_model: int, scale: bool = True):
        super().__init__()
        self.vocab_size, self.d_model = vocab_size, d_model
        self.factor = math.sqrt(d_model) if scale else 1.0
        self.weight = nn.Parameter(torch.empty(vocab_size, d_model))
        nn.init.normal_(self.weight)  # replaced by the model's init (Xavier; BERT and GPT: N(0, 0.02))

    def forward(self, tokens: Tensor) -> Tensor:
        x = nn.functional.embedding(tokens, self.weight)  # ids checked by the model, once per batch
        return x * self.factor if self.factor != 1.0 else x


class Embeddings(nn.Module):
    """Dropout(TokenEmbedding(tokens) + position), the input of either stack (§5.4: dropout on "the
    sums of the embeddings and the positional encodings")."""

    def __init__(self, token: TokenEmbedding, position: PositionEncoding, dropout: float):
        super().__init__()
        self.token = token
        self.position = position
        self.dropout = Dropout(dropout)

    def forward(self, tokens: Tensor, positions: Tensor | None = None) -> Tensor:
        x = self.token(tokens)  # (B, T, D)
        if positions is None:
            limit = self.position.max_len
            if limit is not None and tokens.size(1) > limit:  # checked by shape: no device sync
                raise ValueError(
                    f"positions: sequence of length {tokens.size(1)} needs position {tokens.size(1) - 1}, but the "
                    f"position table holds max_len={limit} positions (0..{limit - 1}); shorten the input or "
                    f"build the model with a larger max_len"
                )
            positions = torch.arange(tokens.size(1), device=tokens.device)  # (T,)
        return self.add_positions(x, positions)

    def add_positions(self, x: Tensor, positions: Tensor) -> Tensor:
        """Position, then dropout, on vectors already embedded (tokens, or a soft prompt before them)."""
        return self.dropout(self.position.add_to_embeddings(x, positions))
