"""Residual sub-layer connection, encoder and decoder layers and stacks (§3.1, Figure 1).

The same layers serve all three families: the encoder-decoder uses both; BERT is an ``Encoder``
(post-LN, GELU); GPT is an ``Encoder`` of pre-LN layers run under a causal mask with a K/V cache
(a decoder-only block has no cross-attention, so it is an encoder layer that cannot see ahead).

Post-LN (the paper): x = LayerNorm(x + Dropout(Sublayer(x))).
Pre-LN (option, Xiong et al. 2020): x = x + Dropout(Sublayer(LayerNorm(x))), and a final LayerNorm
closes each stack (otherwise its output would never be normalised). Pre-LN trains without warm-up
at depth; post-LN is what the paper, BERT and nn.Transformer's default use.

Shapes: B batch, S source length, T target length, D model width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import Tensor, nn

from transformer_lab.nn.attention import MultiHeadAttention
from transformer_lab.nn.feedforward import PositionwiseFeedForward
from transformer_lab.nn.kv_cache import AttentionCache, DecoderCache
from transformer_lab.nn.positions import PositionEncoding


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

    def attention(self, position: PositionEncoding | None, self_attention: bool = True) -> MultiHeadAttention:
        mha = MultiHeadAttention(
            self.d_model, self.n_heads, self.attention_dropout, impl=self.attention_impl, position=position
        )
        if self.tie_qk and self_attention:
            mha.w_k = mha.w_q  # one module, two roles: scores q_i·k_j become symmetric in i and j
        return mha

    def sublayer(self) -> "SublayerConnection":
        return SublayerConnection(self.d_model, self.dropout, self.norm_first, self.eps, self.residual)


class SublayerConnection(nn.Module):
    """Residual + LayerNorm around one sub-layer, with dropout on the sub-layer's output (§5.4).
    ``residual=False`` drops the "x +" (an experiment's variant, not the paper)."""

    def __init__(self, d_model: int, dropout: float, norm_first: bool, eps: float = 1e-5, residual: bool = True):
        super().__init__()
        self.norm = nn.LayerNorm(d_model, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.norm_first = norm_first
        self.residual = residual

    def forward(self, x: Tensor, sublayer: Callable[[Tensor], Tensor]) -> Tensor:
        skip = x if self.residual else 0
        if self.norm_first:
            return skip + self.dropout(sublayer(self.norm(x)))
        return self.norm(skip + self.dropout(sublayer(x)))


class EncoderLayer(nn.Module):
    """Self-attention, then the FFN, each in a SublayerConnection. Shapes: (B, S, D) -> (B, S, D)."""

    def __init__(self, cfg: BlockConfig, position: PositionEncoding | None = None):
        super().__init__()
        self.self_attn = cfg.attention(position)
        self.ffn = PositionwiseFeedForward(cfg.d_model, cfg.d_ff, cfg.activation)
        self.sublayers = nn.ModuleList(cfg.sublayer() for _ in range(2))

    def forward(self, x: Tensor, mask: Tensor | None, pos: Tensor | None = None,
                cache: AttentionCache | None = None) -> Tensor:
        """``cache``: a growing K/V cache, when the layer serves a decoder-only model (GPT)."""
        x = self.sublayers[0](x, lambda h: self.self_attn(h, h, mask, pos, pos, cache=cache).output)
        return self.sublayers[1](x, self.ffn)


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
        x = self.sublayers[0](x, lambda h: self.self_attn(h, h, self_mask, pos, pos, cache=self_cache).output)

        def cross(h: Tensor) -> Tensor:
            res = self.cross_attn(h, memory, cross_mask, need_weights=record_cross_attention, cache=cross_cache)
            self.cross_weights = res.weights
            return res.output

        x = self.sublayers[1](x, cross)
        return self.sublayers[2](x, self.ffn)


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
