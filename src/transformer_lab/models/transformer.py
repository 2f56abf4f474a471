"""The encoder–decoder Transformer of "Attention Is All You Need" (Vaswani et al., 2017), Figure 1.

    memory = Encoder(Embed_src(src))                      (N layers: self-attn, FFN)
    h      = Decoder(Embed_tgt(tgt), memory)              (N layers: masked self-attn, cross-attn, FFN)
    out    = log_softmax(h W_outᵀ)                        (the generator)

Shapes: B batch, S source length, T target length, D = d_model, V vocabulary size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from transformer_lab.nn.attention import SCORES
from transformer_lab.nn.embeddings import Embeddings, TokenEmbedding, check_tokens
from transformer_lab.nn.feedforward import ACTIVATIONS
from transformer_lab.nn.layers import NORMS, BlockConfig, Decoder, DecoderLayer, Encoder, EncoderLayer
from transformer_lab.nn.kv_cache import DecoderCache
from transformer_lab.nn.masks import causal_mask, check_mask, cross_attention_mask, decoder_self_mask, padding_mask
from transformer_lab.nn.positions import POSITION_ENCODINGS, build_position_encoding


@dataclass
class TransformerConfig:
    """Defaults are the paper's base model (Table 3) with a shared 37,000-token vocabulary."""

    src_vocab_size: int = 37000
    tgt_vocab_size: int = 37000
    d_model: int = 512
    n_heads: int = 8
    d_ff: int = 2048
    n_encoder_layers: int = 6
    n_decoder_layers: int = 6
    dropout: float = 0.1  # P_drop: sub-layer outputs and embedding sums (§5.4)
    # deviation: dropout on the attention weights is not in the paper's §5.4; it is tensor2tensor's
    # (attention_dropout) and nn.Transformer's, and issue 2 asks for it. None = same as dropout.
    attention_dropout: float | None = None
    activation: str = "relu"
    norm_first: bool = False  # False: post-LN as in the paper
    position: str = "sinusoidal"  # "sinusoidal" (paper), "learned", or "rotary" (inside self-attention)
    max_len: int = 512
    share_embeddings: bool = True  # tie source, target and output embeddings (§3.4); needs one vocabulary
    pad_id: int = 0
    layer_norm_eps: float = 1e-5
    attention_impl: str = "sdpa"  # "sdpa" (fused) or "reference" (explicit softmax)
    # Variants the canon's experiments compare against the paper (the defaults are the paper's):
    scale_embeddings: bool = True  # × √d_model on the token embeddings (§3.4; `embedding-scale`)
    residual: bool = True  # residual connections around every sub-layer (`residual`)
    tie_qk: bool = False  # one matrix for W_Q and W_K in self-attention (`qk-weights`)
    decoder_causal: bool = True  # the decoder's look-ahead mask in training (`causal-mask`)
    norm: str = "layer"  # "batch" / "batch-masked": BatchNorm in place of LayerNorm (`layernorm`)
    attention_score: str = "dot"  # "additive": Bahdanau's vᵀ tanh(q + k) scores (`dot-vs-additive`)

    def __post_init__(self) -> None:
        for name in ("src_vocab_size", "tgt_vocab_size", "d_model", "n_heads", "d_ff", "max_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: expected a positive integer, got {getattr(self, name)}")
        for name in ("n_encoder_layers", "n_decoder_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected at least 1 layer, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"n_heads: d_model={self.d_model} must be divisible by n_heads={self.n_heads}"
            )
        for name in ("dropout", "attention_dropout"):
            p = getattr(self, name)
            if p is not None and not 0.0 <= p < 1.0:
                raise ValueError(f"{name}: expected a probability in [0, 1), got {p}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {self.activation!r}")
        if self.position not in POSITION_ENCODINGS:
            raise ValueError(f"position: expected one of {sorted(POSITION_ENCODINGS)}, got {self.position!r}")
        if self.norm not in NORMS:
            raise ValueError(f"norm: expected one of {NORMS}, got {self.norm!r}")
        if self.attention_score not in SCORES:
            raise ValueError(f"attention_score: expected one of {SCORES}, got {self.attention_score!r}")
        if self.attention_impl not in ("sdpa", "reference"):
            raise ValueError(f"attention_impl: expected 'sdpa' or 'reference', got {self.attention_impl!r}")
        if self.share_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            raise ValueError(
                f"share_embeddings: needs one vocabulary, but src_vocab_size={self.src_vocab_size} "
                f"!= tgt_vocab_size={self.tgt_vocab_size}"
            )
        if not 0 <= self.pad_id < min(self.src_vocab_size, self.tgt_vocab_size):
            raise ValueError(f"pad_id: expected an id inside both vocabularies, got {self.pad_id}")

    def block(self) -> BlockConfig:
        p_attn = self.dropout if self.attention_dropout is None else self.attention_dropout
        return BlockConfig(
            self.d_model, self.n_heads, self.d_ff, self.dropout, p_attn,
            self.activation, self.norm_first, self.layer_norm_eps, self.attention_impl,
            residual=self.residual, tie_qk=self.tie_qk, norm=self.norm, attention_score=self.attention_score,
        )


class Generator(nn.Module):
    """Linear projection to the vocabulary, then log-softmax (§3.4). No bias: with tied weights
    the projection is the embedding table itself (as in tensor2tensor and fairseq).

    Shapes: (B, T, D) -> (B, T, V) log-probabilities.
    """

    def __init__(self, d_model: int, vocab_size: int):
        super().__init__()
        self.proj = nn.Linear(d_model, vocab_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.log_softmax(self.proj(x), dim=-1)


class Transformer(nn.Module):
    """Encoder–decoder with separate ``encode`` and ``decode`` (decoding reuses one memory)."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = c = config
        block = c.block()
        self.position = build_position_encoding(c.position, c.d_model, c.max_len, c.n_heads)
        src_token = TokenEmbedding(c.src_vocab_size, c.d_model, scale=c.scale_embeddings)
        tgt_token = src_token if c.share_embeddings else TokenEmbedding(c.tgt_vocab_size, c.d_model, c.scale_embeddings)
        self.src_embed = Embeddings(src_token, self.position, c.dropout)
        self.tgt_embed = Embeddings(tgt_token, self.position, c.dropout)
        # Only relative variants (rotary, ALiBi) are handed to the attention layers.
        inner = self.position if self.position.acts_in_attention else None
        self.encoder = Encoder(
            [EncoderLayer(block, inner) for _ in range(c.n_encoder_layers)], c.d_model, c.norm_first, c.layer_norm_eps
        )
        self.decoder = Decoder(
            [DecoderLayer(block, inner) for _ in range(c.n_decoder_layers)], c.d_model, c.norm_first, c.layer_norm_eps
        )
        self.generator = Generator(c.d_model, c.tgt_vocab_size)
        self.reset_parameters()
        if c.share_embeddings:
            self.generator.proj.weight = tgt_token.weight  # tie after init: one tensor, three uses

    def reset_parameters(self) -> None:
        """Xavier-uniform for every matrix (as the Annotated Transformer and nn.Transformer do);
        biases and LayerNorm keep PyTorch's defaults."""
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    # --- the two halves -------------------------------------------------------------------------
    def encode(self, src: Tensor, src_mask: Tensor | None = None) -> Tensor:
        """Shapes: src (B, S) -> memory (B, S, D). ``src_mask`` defaults to the key-padding mask."""
        check_tokens(src, self.config.src_vocab_size, "src")
        x = self.src_embed(src)  # (B, S, D)
        if src_mask is None:
            src_mask = padding_mask(src, self.config.pad_id)
        check_mask(src_mask, src.size(0), self.config.n_heads, src.size(1), src.size(1), "src_mask")
        pos = torch.arange(src.size(1), device=src.device)
        return self.encoder(x, src_mask, pos)

    def decode(
        self,
        memory: Tensor,
        src: Tensor,
        tgt: Tensor,
        tgt_mask: Tensor | None = None,
        record_cross_attention: bool = False,
        cache: DecoderCache | None = None,
    ) -> Tensor:
        """Shapes: memory (B, S, D), src (B, S) for its padding, tgt (B, T) -> hidden (B, T, D).

        With ``cache`` (incremental decoding), ``tgt`` holds only the new positions, which follow the
        ``cache.length`` cached ones; the target then has no padding (decoders feed real tokens).
        """
        if memory.dim() != 3 or memory.shape[:2] != src.shape:
            raise ValueError(f"memory: expected (B, S, D) matching src {tuple(src.shape)}, got {tuple(memory.shape)}")
        check_tokens(tgt, self.config.tgt_vocab_size, "tgt")
        offset = 0 if cache is None else cache.length
        positions = torch.arange(offset, offset + tgt.size(1), device=tgt.device)
        x = self.tgt_embed(tgt, positions)  # (B, T, D)
        if tgt.size(0) != src.size(0):
            raise ValueError(f"tgt: batch size {tgt.size(0)} differs from src batch size {src.size(0)}")
        b, t = tgt.shape
        if tgt_mask is None and cache is not None:
            tgt_mask = causal_mask(t, tgt.device, offset)  # a cache holds only the past: no future to hide anyway
        elif tgt_mask is None:
            # deviation (decoder_causal=False, the `causal-mask` experiment only): padding hidden, future not
            tgt_mask = decoder_self_mask(tgt, self.config.pad_id) if self.config.decoder_causal else padding_mask(
                tgt, self.config.pad_id)
        check_mask(tgt_mask, b, self.config.n_heads, t, offset + t, "tgt_mask")
        cross_mask = cross_attention_mask(src, self.config.pad_id)
        return self.decoder(x, memory, tgt_mask, cross_mask, positions, record_cross_attention, cache)

    def new_cache(self) -> DecoderCache:
        return DecoderCache.empty(self.config.n_decoder_layers)

    def forward(self, src: Tensor, tgt: Tensor) -> Tensor:
        """Teacher-forced log-probabilities. Shapes: src (B, S), tgt (B, T) -> (B, T, V)."""
        return self.generator(self.decode(self.encode(src), src, tgt))

    def logits(self, src: Tensor, tgt: Tensor) -> Tensor:
        """Teacher-forced scores before the softmax, for a fused loss. Shapes: -> (B, T, V)."""
        return self.generator.proj(self.decode(self.encode(src), src, tgt))
