"""Prompt tuning (Lester et al. 2021): P trainable "soft prompt" vectors placed before the input's
token embeddings; the model itself stays frozen.

The vectors live in the token-embedding space and are added to like tokens: position and segment
embeddings follow (the prompt takes positions 0..P-1, segment 0; the real tokens move to P, P+1, ...,
as ``peft`` does it with ``transformers``). §3 of the paper: initialising them from the embeddings of
real vocabulary words trains better than random vectors; ``from_vocab`` samples words,
``from_text`` repeats a text's tokens ("Classify the sentiment: ...") up to length P.

Shapes: P prompt length, D model width; ``embeddings()`` (P, D).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SoftPrompt(nn.Module):
    def __init__(self, init: Tensor):
        super().__init__()
        if init.dim() != 2 or init.size(0) < 1:
            raise ValueError(f"prompt init: expected (P >= 1, D) vectors, got {tuple(init.shape)}")
        self.embedding = nn.Embedding(init.size(0), init.size(1))
        with torch.no_grad():
            self.embedding.weight.copy_(init)

    @property
    def length(self) -> int:
        return self.embedding.num_embeddings

    @classmethod
    def from_vocab(cls, token_table: Tensor, length: int, generator: torch.Generator | None = None) -> "SoftPrompt":
        """Embeddings of ``length`` tokens drawn uniformly from the vocabulary (``token_table`` (V, D))."""
        if length < 1:
            raise ValueError(f"prompt length: expected >= 1, got {length}")
        ids = torch.randint(0, token_table.size(0), (length,), generator=generator)
        return cls(token_table.detach()[ids.to(token_table.device)].float().clone())

    @classmethod
    def from_text(cls, token_table: Tensor, ids: list[int], length: int) -> "SoftPrompt":
        """Embeddings of a text's token ids, repeated or cut to ``length`` (peft's TEXT init)."""
        if length < 1:
            raise ValueError(f"prompt length: expected >= 1, got {length}")
        if not ids:
            raise ValueError("prompt text: the text has no tokens")
        bad = [i for i in ids if not 0 <= i < token_table.size(0)]
        if bad:
            raise ValueError(f"prompt text: token ids {bad[:5]} are outside the vocabulary (size {token_table.size(0)})")
        reps = -(-length // len(ids))
        chosen = torch.tensor((ids * reps)[:length], device=token_table.device)
        return cls(token_table.detach()[chosen].float().clone())

    def embeddings(self) -> Tensor:
        return self.embedding.weight  # (P, D)

    def extra_repr(self) -> str:
        return f"length={self.length}"
