"""Prefix tuning (Li & Liang 2021): trainable keys and values that every self-attention layer
attends to before the input, the model itself frozen.

Each layer l gets P keys and P values per head, as if P tokens had come before the input: they go
into the layer's K/V cache (``nn.kv_cache.AttentionCache``) before the real tokens' keys, so the
ordinary attention code (and the cache's growth during generation) does the rest. The real tokens
therefore sit at positions P, P+1, ... (as after P cached tokens; ``peft`` with ``transformers``
does the same).

Reparameterization (§4.3): optimising the P × (L·2·D) table directly is unstable, so during training
it is the output of an MLP, table = W_2 tanh(W_1 E) with E a (P, D) embedding; ``fold`` computes the
table once and drops the MLP, and a saved prefix is that table (``peft`` saves the same).

Shapes: P prefix length, L layers, H heads, Dh head width, D = H·Dh; keys, values (B, H, P, Dh).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from transformer_lab.nn.kv_cache import AttentionCache


class PrefixTuning(nn.Module):
    def __init__(self, n_layers: int, n_heads: int, d_head: int, length: int = 20, hidden: int | None = 512):
        super().__init__()
        if length < 1:
            raise ValueError(f"prefix length: expected >= 1, got {length}")
        if hidden is not None and hidden < 1:
            raise ValueError(f"prefix hidden: expected >= 1 (or None for no reparameterization), got {hidden}")
        self.n_layers, self.n_heads, self.d_head, self.length = n_layers, n_heads, d_head, length
        d, width = n_heads * d_head, n_layers * 2 * n_heads * d_head
        # N(0, 1) entries, as peft's nn.Embedding; through the MLP when reparameterized.
        self.embedding = nn.Embedding(length, d if hidden else width)
        self.transform = nn.Sequential(nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, width)) if hidden else None

    def table(self) -> Tensor:
        """(P, L·2·D): for layer l, columns [2l·D, (2l+1)·D) are its keys, the next D its values."""
        e = self.embedding.weight
        return e if self.transform is None else self.transform(e)

    @torch.no_grad()
    def fold(self) -> None:
        """Replace the MLP by the table it computes (what inference and a saved adapter need)."""
        if self.transform is not None:
            table = self.table()
            self.embedding = nn.Embedding(self.length, table.size(1), device=table.device, dtype=table.dtype)
            self.embedding.weight.copy_(table)
            self.transform = None

    def caches(self, batch: int) -> list[AttentionCache]:
        """One self-attention cache per layer, holding that layer's prefix keys and values."""
        t = self.table().view(self.length, 2 * self.n_layers, self.n_heads, self.d_head)  # (P, 2L, H, Dh)
        t = t.permute(1, 2, 0, 3)  # (2L, H, P, Dh)
        return [AttentionCache(k=t[2 * i].expand(batch, -1, -1, -1), v=t[2 * i + 1].expand(batch, -1, -1, -1))
                for i in range(self.n_layers)]  # (B, H, P, Dh) each

    def extra_repr(self) -> str:
        return f"length={self.length}, layers={self.n_layers}, reparameterized={self.transform is not None}"
