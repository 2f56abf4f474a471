"""Attention masks, all built here, with one convention.

Convention: a mask is a **boolean** tensor, ``True`` = this query may attend to this key,
broadcastable to ``(B, H, T_q, T_k)``. Masks are combined with logical AND, never by adding
large negative numbers (two such numbers summed overflow in fp16/bf16). Libraries that want the
other polarity (``torch.nn.Transformer``'s ``key_padding_mask``: True = ignore) get ``~mask`` at
their boundary, never inside this package.

Shapes: B batch, H heads, S source length, T target length, T_q / T_k query / key lengths.
"""

from __future__ import annotations

import torch
from torch import Tensor


def padding_mask(tokens: Tensor, pad_id: int) -> Tensor:
    """Key-padding mask: keys that are real tokens may be attended to.

    Shapes: tokens (B, T_k) -> mask (B, 1, 1, T_k).
    """
    if tokens.dim() != 2:
        raise ValueError(f"tokens: expected shape (B, T), got {tuple(tokens.shape)}")
    return (tokens != pad_id)[:, None, None, :]


class Causal:
    """The plain causal mask named, not built: query i sees keys 0..i, as many queries as keys, no padding.

    A model passes ``CAUSAL`` where it would pass ``causal_mask(T)``; the fused attention then asks
    ``F.scaled_dot_product_attention`` for ``is_causal=True`` with no mask tensor, which on a GPU is
    FlashAttention (a mask tensor rules it out) and skips the blocks above the diagonal. Everything that
    needs the tensor (the explicit path, a score bias, a pattern) builds it: ``materialize``."""

    def __repr__(self) -> str:
        return "CAUSAL"

    @staticmethod
    def materialize(t_q: int, t_k: int, device: torch.device | str | None = None) -> Tensor:
        """As ``causal_mask``: the last t_q of t_k positions. Shapes: -> (1, 1, T_q, T_k)."""
        return causal_mask(t_q, device, offset=t_k - t_q)


CAUSAL = Causal()


def as_tensor(mask: "Tensor | Causal | None", t_q: int, t_k: int, device: torch.device | str | None) -> Tensor | None:
    """``mask`` as a tensor (or None): ``CAUSAL`` built for T_q queries over T_k keys, anything else as it is."""
    return Causal.materialize(t_q, t_k, device) if mask is CAUSAL else mask


def causal_mask(t: int, device: torch.device | str | None = None, offset: int = 0) -> Tensor:
    """Sequence (look-ahead) mask of the decoder, §3.2.3: position i attends to positions <= i.

    ``offset`` cached positions precede the ``t`` new ones (incremental decoding): new query i sits
    at position offset + i and sees keys 0..offset + i.
    Shapes: -> (1, 1, T, offset + T), True on and below the shifted diagonal.
    """
    if t <= 0:
        raise ValueError(f"t: expected a positive length, got {t}")
    if offset < 0:
        raise ValueError(f"offset: expected >= 0, got {offset}")
    return torch.ones(t, offset + t, dtype=torch.bool, device=device).tril(diagonal=offset)[None, None]


def combine_masks(*masks: Tensor | None) -> Tensor | None:
    """Logical AND of boolean masks (None = no constraint); shapes broadcast."""
    out: Tensor | None = None
    for m in masks:
        if m is None:
            continue
        if m.dtype != torch.bool:
            raise ValueError(f"mask: expected dtype torch.bool, got {m.dtype}")
        out = m if out is None else out & m
    return out


def decoder_self_mask(tgt: Tensor, pad_id: int) -> Tensor:
    """Decoder self-attention: causal AND target key padding. Shapes: (B, T) -> (B, 1, T, T)."""
    return combine_masks(padding_mask(tgt, pad_id), causal_mask(tgt.size(1), tgt.device))


def cross_attention_mask(src: Tensor, pad_id: int) -> Tensor:
    """Decoder queries over encoder keys: only source padding is hidden. (B, S) -> (B, 1, 1, S)."""
    return padding_mask(src, pad_id)


def token_keep(mask: Tensor | None, t: int) -> Tensor | None:
    """Which of ``t`` positions are real tokens, read off their self-attention mask: a key-padding mask
    (B, 1, 1, T) gives its row; a square (B|1, 1, T, T) mask its diagonal (a real token sees itself).
    None when the mask says nothing per position (None, or a cached step's (.., 1, T_k) mask).
    Shapes: -> (B|1, T) bool."""
    if mask is None or mask is CAUSAL or mask.size(-1) != t:  # (CAUSAL: no padding, every position real)
        return None
    if mask.size(-2) == 1:
        return mask[:, 0, 0, :]
    if mask.size(-2) == t:
        return mask[:, 0].diagonal(dim1=-2, dim2=-1)
    return None


def check_mask(mask: Tensor, batch: int, heads: int, t_q: int, t_k: int, name: str = "mask") -> None:
    """Raise ValueError unless ``mask`` is boolean and broadcastable to (B, H, T_q, T_k).

    A silent broadcast of a wrong-shaped mask (say (B, T) read as (T_q, T_k)) is the classic
    attention bug, so only 4-D masks whose every dimension is 1 or the exact size pass.
    """
    if not isinstance(mask, Tensor):
        raise ValueError(f"{name}: expected a boolean tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise ValueError(f"{name}: expected dtype torch.bool (True = may attend), got {mask.dtype}")
    expected = (batch, heads, t_q, t_k)
    ok = mask.dim() == 4 and all(m in (1, e) for m, e in zip(mask.shape, expected))
    if not ok:
        raise ValueError(
            f"{name}: shape {tuple(mask.shape)} is not broadcastable to (B, H, T_q, T_k) = "
            f"{expected}; expected 4 dimensions, each 1 or the full size"
        )
