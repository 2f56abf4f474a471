"""Residual sub-layer connection, encoder and decoder layers and stacks (§3.1, Figure 1).

The same layers serve all three families: the encoder-decoder uses both; BERT is an ``Encoder``
(post-LN, GELU); GPT is an ``Encoder`` of pre-LN layers run under a causal mask with a K/V cache
(a decoder-only block has no cross-attention, so it is an encoder layer that cannot see ahead).

Post-LN (the paper): x = LayerNorm(x + Dropout(Sublayer(x))).
Pre-LN (option, Xiong et al. 2020): x = x + Dropout(Sublayer(LayerNorm(x))), and a final LayerNorm
closes each stack (otherwise its output would never be normalised). Pre-LN trains without warm-up
at depth; post-LN is what the paper, BERT and nn.Transformer's default use.

BatchNorm in place of LayerNorm (``norm="batch"`` / ``"batch-masked"``, the ``layernorm`` experiment's
variants, not the paper): ``TokenBatchNorm`` normalises each feature over every position of the batch,
padding included (what ``nn.BatchNorm1d`` on the tokens does), or over the real tokens only; at test
time it uses running statistics. A pre-LN stack's final norm stays a LayerNorm.

Shapes: B batch, S source length, T target length, D model width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from transformer_lab.nn.attention import MultiHeadAttention
from transformer_lab.nn.dropout import Dropout
from transformer_lab.nn.feedforward import PositionwiseFeedForward
from transformer_lab.nn.kv_cache import AttentionCache, DecoderCache
from transformer_lab.nn.masks import token_keep
from transformer_lab.nn.positions import PositionEncoding


NORMS = ("layer", "batch", "batch-masked")


class TokenBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the features of (B, T, D) tokens. Training: each feature's mean and variance over
    the batch's positions — all of them, padding included, or with ``masked`` only those ``keep`` marks
    real (padding positions then pass through unchanged) — and running averages for test time."""

    def __init__(self, d_model: int, eps: float = 1e-5, masked: bool = False):
        super().__init__(d_model, eps=eps)
        self.masked = masked

    def forward(self, x: Tensor, keep: Tensor | None = None) -> Tensor:
        flat = x.reshape(-1, x.size(-1))
        if not (self.masked and self.training and keep is not None):
            return super().forward(flat).view_as(x)
        rows = keep.expand(x.shape[:-1]).reshape(-1)
        out = flat.clone()
        out[rows] = super().forward(flat[rows])
        return out.view_as(x)


def make_norm(kind: str, d_model: int, eps: float) -> nn.Module:
    if kind not in NORMS:
        raise ValueError(f"norm: expected one of {NORMS}, got {kind!r}")
    return nn.LayerNorm(d_model, eps=eps) if kind == "layer" else TokenBatchNorm(d_model, eps, kind == "batch-masked")


@dataclass(frozen=True)
class BlockConfig:
    """What every encoder/decoder block needs; models build it from their own config."""

    d_model: int
    n_heads: int
    d_ff: int
    dropout: float = 0.1  # on sub-layer outputs
    attention_dropout: float = 0.1  # on the attention weights
    activation: str = "relu"
    norm_first: bool = False
    eps: float = 1e-5
    attention_impl: str = "sdpa"
    # Variants the canon's experiments compare against the paper (off = the paper):
    residual: bool = True  # False: no residual connection around the sub-layers (`residual`)
    tie_qk: bool = False  # True: self-attention uses one matrix for W_Q and W_K (`qk-weights`)
    norm: str = "layer"  # "batch" / "batch-masked": BatchNorm in place of LayerNorm (`layernorm`)
    attention_score: str = "dot"  # "additive": Bahdanau scores in every attention (`dot-vs-additive`)
    pattern: Any = None  # self-attention's long-sequence pattern (``nn.sparse.Pattern``); None: every key

    def attention(self, position: PositionEncoding | None, self_attention: bool = True) -> MultiHeadAttention:
        mha = MultiHeadAttention(
            self.d_model, self.n_heads, self.attention_dropout, impl=self.attention_impl,
            position=position.for_layer() if position is not None else None, score=self.attention_score,
            pattern=self.pattern if self_attention else None,
        )
        if self.tie_qk and self_attention:
            mha.w_k = mha.w_q  # one module, two roles: scores q_i·k_j become symmetric in i and j
        return mha

    def sublayer(self) -> "SublayerConnection":
        return SublayerConnection(self.d_model, self.dropout, self.norm_first, self.eps, self.residual, self.norm)


class SublayerConnection(nn.Module):
    """Residual + LayerNorm around one sub-layer, with dropout on the sub-layer's output (§5.4).
    ``residual=False`` drops the "x +" and ``norm="batch"`` swaps the LayerNorm for a BatchNorm
    (experiments' variants, not the paper). ``keep`` (B|1, T): the real tokens, for a masked BatchNorm."""

    def __init__(self, d_model: int, dropout: float, norm_first: bool, eps: float = 1e-5, residual: bool = True,
                 norm: str = "layer"):
        super().__init__()
        self.norm = make_norm(norm, d_model, eps)
        self.dropout = Dropout(dropout)
        self.norm_first = norm_first
        self.residual = residual

    def _norm(self, x: Tensor, keep: Tensor | None) -> Tensor:
        return self.norm(x, keep) if isinstance(self.norm, TokenBatchNorm) else self.norm(x)

    def normalised(self, x: Tensor) -> Tensor:
        """x as the sub-layer sees it: normalised first in pre-LN, as it is in post-LN."""
        return self._norm(x, None) if self.norm_first else x

    def forward(self, x: Tensor, sublayer: Callable[[Tensor], Tensor], keep: Tensor | None = None) -> Tensor:
        skip = x if self.residual else 0
        if self.norm_first:
            return skip + self.dropout(sublayer(self._norm(x, keep)))
        return self._norm(skip + self.dropout(sublayer(x)), keep)


class EncoderLayer(nn.Module):
    """Self-attention, then the FFN, each in a SublayerConnection. Shapes: (B, S, D) -> (B, S, D)."""

    def __init__(self, cfg: BlockConfig, position: PositionEncoding | None = None):
        super().__init__()
        self.self_attn = cfg.attention(position)
        self.ffn = PositionwiseFeedForward(cfg.d_model, cfg.d_ff, cfg.activation)
        self.sublayers = nn.ModuleList(cfg.sublayer() for _ in range(2))

    def forward(self, x: Tensor, mask: Tensor | None, pos: Tensor | None = None,
                cache: AttentionCache | None = None, memory: Tensor | None = None) -> Tensor:
        """``cache``: a growing K/V cache, when the layer serves a decoder-only model (GPT). ``memory``
        (B, M, D): this layer's inputs of the previous segment (Transformer-XL), attended to before
        x's own positions; ``pos`` then holds x's positions M..M+T-1 and the keys are at 0..M+T-1."""
        keep = token_keep(mask, x.size(1)) if self.training else None  # for a masked BatchNorm only

        def attend(h: Tensor) -> Tensor:
            if memory is None:
                return self.self_attn(h, h, mask, pos, pos, cache=cache).output
            kv = torch.cat([self.sublayers[0].normalised(memory), h], dim=1)  # as h was: normed in pre-LN
            k_pos = None if pos is None else torch.arange(kv.size(1), device=h.device)
            return self.self_attn(h, kv, mask, pos, k_pos).output

        x = self.sublayers[0](x, attend, keep)
        return self.sublayers[1](x, self.ffn, keep)


class DecoderLayer(nn.Module):
    """Masked self-attention, cross-attention over the encoder output ("memory"), then the FFN.

    Shapes: x (B, T, D), memory (B, S, D) -> (B, T, D).
    """

    def __init__(self, cfg: BlockConfig, position: PositionEncoding | None = None):
        super().__init__()
        self.self_attn = cfg.attention(position)
        # Relative encodings describe offsets within one sequence; cross-attention gets none.
        self.cross_attn = cfg.attention(None, self_attention=False)
        self.ffn = PositionwiseFeedForward(cfg.d_model, cfg.d_ff, cfg.activation)
        self.sublayers = nn.ModuleList(cfg.sublayer() for _ in range(3))
        self.cross_weights: Tensor | None = None  # (B, H, T, S), filled when record_cross_attention

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        self_mask: Tensor | None,
        cross_mask: Tensor | None,
        pos: Tensor | None = None,
        record_cross_attention: bool = False,
        self_cache: AttentionCache | None = None,
        cross_cache: AttentionCache | None = None,
    ) -> Tensor:
        keep = token_keep(self_mask, x.size(1)) if self.training else None  # for a masked BatchNorm only
        x = self.sublayers[0](x, lambda h: self.self_attn(h, h, self_mask, pos, pos, cache=self_cache).output, keep)

        def cross(h: Tensor) -> Tensor:
            res = self.cross_attn(h, memory, cross_mask, need_weights=record_cross_attention, cache=cross_cache)
            self.cross_weights = res.weights
            return res.output

        x = self.sublayers[1](x, cross, keep)
        return self.sublayers[2](x, self.ffn, keep)


class Encoder(nn.Module):
    """N encoder layers; a final LayerNorm only in pre-LN (see module docstring)."""

    def __init__(self, layers: list[EncoderLayer], d_model: int, norm_first: bool, eps: float = 1e-5):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = nn.LayerNorm(d_model, eps=eps) if norm_first else nn.Identity()

    def forward(self, x: Tensor, mask: Tensor | None, pos: Tensor | None = None,
                caches: list[AttentionCache] | None = None) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x, mask, pos, caches[i] if caches is not None else None)
        return self.norm(x)


class Decoder(nn.Module):
    """N decoder layers; a final LayerNorm only in pre-LN."""

    def __init__(self, layers: list[DecoderLayer], d_model: int, norm_first: bool, eps: float = 1e-5):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = nn.LayerNorm(d_model, eps=eps) if norm_first else nn.Identity()

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        self_mask: Tensor | None,
        cross_mask: Tensor | None,
        pos: Tensor | None = None,
        record_cross_attention: bool = False,
        cache: DecoderCache | None = None,
    ) -> Tensor:
        for i, layer in enumerate(self.layers):
            caches = (cache.self_attn[i], cache.cross_attn[i]) if cache is not None else (None, None)
            x = layer(x, memory, self_mask, cross_mask, pos, record_cross_attention, *caches)
        return self.norm(x)


def set_dropout(model: nn.Module, p: float) -> nn.Module:
    """Every dropout in ``model`` at rate ``p``: the ``nn.Dropout`` modules (embeddings, residual
    branches, FFN, heads) and attention's dropout on its weights (``MultiHeadAttention.dropout``, a
    rate). ``train --dropout 0`` uses it: the model's config keeps its own rates (a training setting,
    like the learning rate)."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout: expected 0 <= p < 1, got {p}")
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = p
        elif isinstance(getattr(m, "dropout", None), float):
            m.dropout = p
    return model
