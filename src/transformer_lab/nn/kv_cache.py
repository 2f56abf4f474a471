"""Key/value caches for incremental decoding.

At decoding step t the decoder needs keys and values of every earlier position; recomputing them
makes generating T tokens O(T²) in projections. A cache keeps each attention layer's K and V
(already split into heads and, for rotary, rotated):

* self-attention: grows by the new positions every step;
* cross-attention: the encoder output's K and V, computed once on the first step (``static``).

Beam search reorders the rows (each surviving beam continues some earlier beam): ``reorder``.
Shapes: k, v (B, H, T_cached, Dh).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class AttentionCache:
    static: bool = False  # True: K/V of a fixed sequence (cross-attention), set once
    k: Tensor | None = None
    v: Tensor | None = None
    pos: Tensor | None = None  # the cached keys' positions, (T_cached,) or (B, T_cached); None: 0, 1, 2, ...

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.size(2)

    def append(self, k: Tensor, v: Tensor, pos: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Store the new positions' K/V (and, for encodings that bias by distance, their positions)
        and return all of them."""
        if self.static:
            if self.k is None:
                self.k, self.v = k, v
            return self.k, self.v
        if pos is not None:
            self.pos = pos if self.k is None else _cat_positions(self.positions(k.device), pos)
        if self.k is not None:
            k = torch.cat([self.k, k], dim=2)  # (B, H, T_cached + T_new, Dh)
            v = torch.cat([self.v, v], dim=2)
        self.k, self.v = k, v
        return k, v

    def positions(self, device: torch.device) -> Tensor:
        """Every cached key's position: as recorded, or 0, 1, 2, ... (keys placed without positions,
        e.g. a prefix's, come first)."""
        return self.pos if self.pos is not None else torch.arange(self.length, device=device)

    def reorder(self, index: Tensor) -> None:
        if self.k is not None:
            self.k, self.v = self.k.index_select(0, index), self.v.index_select(0, index)
        if self.pos is not None and self.pos.dim() == 2:
            self.pos = self.pos.index_select(0, index)


def _cat_positions(old: Tensor, new: Tensor) -> Tensor:
    """Positions along the last dimension; a shared (T,) row is repeated for each sequence of a (B, T) one."""
    if old.dim() != new.dim():
        b = max(old.size(0) if old.dim() == 2 else 1, new.size(0) if new.dim() == 2 else 1)
        old, new = old.expand(b, -1) if old.dim() == 1 else old, new.expand(b, -1) if new.dim() == 1 else new
    return torch.cat([old, new], dim=-1)


@dataclass
class DecoderCache:
    """One self-attention and one cross-attention cache per decoder layer. ``virtual``: keys in each
    self-attention cache that are no decoded position (a prefix-tuning prefix, placed there first)."""

    self_attn: list[AttentionCache] = field(default_factory=list)
    cross_attn: list[AttentionCache] = field(default_factory=list)
    virtual: int = 0

    @classmethod
    def empty(cls, n_layers: int) -> "DecoderCache":
        return cls([AttentionCache() for _ in range(n_layers)], [AttentionCache(static=True) for _ in range(n_layers)])

    @property
    def length(self) -> int:
        """Positions decoded so far (a prefix's keys not counted)."""
        return self.self_attn[0].length - self.virtual if self.self_attn else 0

    def reorder(self, index: Tensor) -> None:
        for c in (*self.self_attn, *self.cross_attn):
            c.reorder(index)


class StaticKVCache:
    """Keys and values in buffers allocated once (a fixed number of slots, L), for decoding
    whose every step has the same shapes: one compiled graph (a CUDA graph on a GPU) serves them all.

    ``slots`` (T_new,) says where the next ``append`` writes; it returns the whole buffers, so attention
    reads every slot and the caller's mask hides those not written yet (and left padding). Decoding
    updates ``slots`` in place between steps, so a compiled step sees the same tensor every time.
    Shapes: k, v (B, H, L, Dh).
    """

    static = False  # (an attention layer's test for a cross-attention cache)

    def __init__(self, batch: int, n_heads: int, slots: int, d_head: int, dtype: torch.dtype, device: torch.device):
        self.k = torch.zeros(batch, n_heads, slots, d_head, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.slots = torch.zeros(1, dtype=torch.long, device=device)
        if device.type == "cuda":  # CUDA graphs replay fixed addresses: these buffers never move
            torch._dynamo.mark_static_address(self.k)
            torch._dynamo.mark_static_address(self.v)

    def append(self, k: Tensor, v: Tensor, pos: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if pos is not None:
            raise ValueError("a static K/V cache keeps no key positions: encodings that bias scores by "
                             "distance (ALiBi, T5, Shaw) decode with the growing cache")
        self.k.index_copy_(2, self.slots, k.to(self.k.dtype))
        self.v.index_copy_(2, self.slots, v.to(self.v.dtype))
        return self.k, self.v
