"""Greedy decoding for the encoder-decoder: encode once, then pick the arg-max token step by step.

(No KV cache yet: each step re-runs the decoder over the prefix, O(T²) work; correct and simple.)
"""

from __future__ import annotations

import torch
from torch import Tensor

from transformer_lab.models.transformer import Transformer


@torch.no_grad()
def greedy_decode(model: Transformer, src: Tensor, max_len: int, bos_id: int, eos_id: int) -> Tensor:
    """Shapes: src (B, S) -> (B, T_out) ids, without <s>; after </s> a row holds padding."""
    if max_len < 1:
        raise ValueError(f"max_len: expected >= 1, got {max_len}")
    pad = model.config.pad_id
    memory = model.encode(src)  # (B, S, D), computed once
    ys = torch.full((src.size(0), 1), bos_id, dtype=torch.long, device=src.device)
    done = torch.zeros(src.size(0), dtype=torch.bool, device=src.device)
    for _ in range(max_len):
        logp = model.generator(model.decode(memory, src, ys)[:, -1])  # (B, V)
        nxt = logp.argmax(dim=-1).masked_fill(done, pad)
        ys = torch.cat([ys, nxt[:, None]], dim=1)
        done |= nxt == eos_id
        if bool(done.all()):
            break
    return ys[:, 1:]
