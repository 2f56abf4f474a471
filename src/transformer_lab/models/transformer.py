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
from transformer_lab.nn.kv_cache import AttentionCache, DecoderCache
from transformer_lab.nn.masks import causal_mask, check_mask, cross_attention_mask, decoder_self_mask, padding_mask
from transformer_lab.nn.positions import POSITION_ENCODINGS, build_position_encoding
from transformer_lab.nn.sparse import parse_pattern


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
    position: str = "sinusoidal"  # "sinusoidal" (paper), "learned"; inside self-attention "rotary", "alibi", "t5", "shaw"
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
    # Self-attention's long-sequence pattern (``nn.sparse.parse_pattern``: "window:64", "block:16,random:1",
    # "chunked:128"): the encoder's bidirectional, the decoder's causal; cross-attention sees every source
    # position. "full": every key.
    attention: str = "full"

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
        if self.attention != "full":
            parse_pattern(self.attention, causal=False, position=self.position)  # a bad spec or combination: named
            if not self.decoder_causal:
                raise ValueError("attention: a pattern makes the decoder's self-attention causal itself; it does not "
                                 "combine with decoder_causal=False")
            if parse_pattern(self.attention, causal=False).global_tokens:
                raise ValueError(f"attention: {self.attention!r}: Longformer's global tokens see every position, "
                                 "which the decoder's causal self-attention cannot; use window:W or block:B")

    def block(self, causal: bool = False) -> BlockConfig:
        """The encoder's layers' settings, or (``causal``) the decoder's: they differ in the pattern only."""
        p_attn = self.dropout if self.attention_dropout is None else self.attention_dropout
        return BlockConfig(
            self.d_model, self.n_heads, self.d_ff, self.dropout, p_attn,
            self.activation, self.norm_first, self.layer_norm_eps, self.attention_impl,
            residual=self.residual, tie_qk=self.tie_qk, norm=self.norm, attention_score=self.attention_score,
            pattern=parse_pattern(self.attention, causal=causal),
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
        block, causal_block = c.block(), c.block(causal=True)
        self.position = build_position_encoding(c.position, c.d_model, c.max_len, c.n_heads)
        # ALiBi and T5 see the decoder's past only: the decoder gets its own (T5: its own table, as in T5).
        tgt_position = build_position_encoding(c.position, c.d_model, c.max_len, c.n_heads, causal=True) \
            if self.position.directional else self.position
        src_token = TokenEmbedding(c.src_vocab_size, c.d_model, scale=c.scale_embeddings)
        tgt_token = src_token if c.share_embeddings else TokenEmbedding(c.tgt_vocab_size, c.d_model, c.scale_embeddings)
        self.src_embed = Embeddings(src_token, self.position, c.dropout)
        self.tgt_embed = Embeddings(tgt_token, tgt_position, c.dropout)
        # Only relative variants (rotary, ALiBi, T5, Shaw) are handed to the attention layers.
        inner_src = self.position if self.position.acts_in_attention else None
        inner_tgt = tgt_position if tgt_position.acts_in_attention else None
        self.encoder = Encoder(
            [EncoderLayer(block, inner_src) for _ in range(c.n_encoder_layers)], c.d_model, c.norm_first, c.layer_norm_eps
        )
        self.decoder = Decoder(
            [DecoderLayer(causal_block, inner_tgt) for _ in range(c.n_decoder_layers)], c.d_model, c.norm_first,
            c.layer_norm_eps
        )
        self.generator = Generator(c.d_model, c.tgt_vocab_size)
        self.reset_parameters()
        if c.share_embeddings:
            self.generator.proj.weight = tgt_token.weight  # tie after init: one tensor, three uses
        # Parameter-efficient tuning slots (``adapters`` fills them), as in BERT and GPT: the virtual
        # positions come first and the real tokens follow at P, P+1, ... A prefix: keys and values that
        # every encoder and decoder self-attention layer attends to first (its table's first
        # n_encoder_layers layers are the encoder's; the cross-attention has none: Li & Liang prefix the
        # encoder and the decoder). A soft prompt: vectors before the source's token embeddings (Lester et
        # al. prompt T5's encoder so); the memory then holds P + S positions, all visible to the decoder.
        self.prefix: nn.Module | None = None
        self.prompt: nn.Module | None = None

    def reset_parameters(self) -> None:
        """Xavier-uniform for every matrix (as the Annotated Transformer and nn.Transformer do);
        biases and LayerNorm keep PyTorch's defaults."""
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    @property
    def n_virtual(self) -> int:
        """Positions taken by a prefix or soft prompt before the real tokens (0 without one)."""
        return self.prefix.length if self.prefix is not None else self.prompt.length if self.prompt is not None else 0

    def check_inputs(self, src: Tensor | None = None, tgt: Tensor | None = None) -> None:
        """The ids' values, as ``encode``/``decode`` check them: a trainer calls this on its batch on the host
        (free there) and runs the step inside ``nn.checks.values_checked()``, where the model reads no value
        back from the device (lengths are checked by shape there)."""
        if src is not None:
            check_tokens(src, self.config.src_vocab_size, "src")
        if tgt is not None:
            check_tokens(tgt, self.config.tgt_vocab_size, "tgt")

    # --- the two halves -------------------------------------------------------------------------
    def encode(self, src: Tensor, src_mask: Tensor | None = None) -> Tensor:
        """Shapes: src (B, S) -> memory (B, S, D), or (B, P + S, D) after a soft prompt of P vectors.
        ``src_mask`` defaults to the key-padding mask."""
        check_tokens(src, self.config.src_vocab_size, "src")
        b, s = src.shape
        if src_mask is None:
            src_mask = padding_mask(src, self.config.pad_id)
        elif self.prefix is not None or self.prompt is not None:
            raise ValueError("src_mask: not supported with a prefix or prompt adapter (its padding mask is built)")
        check_mask(src_mask, b, self.config.n_heads, s, s, "src_mask")
        v = self.n_virtual
        limit = self.src_embed.position.max_len
        if v and limit is not None and v + s > limit:
            raise ValueError(f"src: {v} prefix or prompt positions + {s} tokens = {v + s} positions, but the position "
                             f"table holds max_len={limit}; shorten the input")
        self.src_embed.position.check_length(v + s)  # by shape: the positions' values are never read back
        pos = torch.arange(v, v + s, device=src.device)  # after a prefix or prompt, as if P tokens came first
        caches = None
        if self.prompt is not None:
            token = self.src_embed.token
            x = token(src)  # (B, S, D)
            prompt = self.prompt.embeddings().to(x.dtype) * token.factor  # table vectors, scaled as tokens are
            x = torch.cat([prompt.expand(b, -1, -1), x], dim=1)  # (B, P + S, D)
            pos = torch.arange(v + s, device=src.device)
            x = self.src_embed.add_positions(x, pos)
        else:
            x = self.src_embed(src, pos)  # (B, S, D)
        if v:
            src_mask = _visible_first(src_mask, v)  # (B, 1, 1, P + S): the virtual positions are always visible
        if self.prefix is not None:
            caches = self.prefix.caches(b)[: self.config.n_encoder_layers]
        return self.encoder(x, src_mask, pos, caches)

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
        pv = self.prompt.length if self.prompt is not None else 0  # the memory's prompt positions
        if memory.dim() != 3 or memory.shape[:2] != (src.size(0), pv + src.size(1)):
            raise ValueError(f"memory: expected (B, {'P + ' if pv else ''}S, D) matching src {tuple(src.shape)}"
                             f"{f' after a {pv}-vector prompt' if pv else ''}, got {tuple(memory.shape)}")
        check_tokens(tgt, self.config.tgt_vocab_size, "tgt")
        if tgt.size(0) != src.size(0):
            raise ValueError(f"tgt: batch size {tgt.size(0)} differs from src batch size {src.size(0)}")
        b, t = tgt.shape
        incremental = cache is not None
        dp = self.prefix.length if self.prefix is not None else 0  # prefix keys before the target's own
        if dp and (cache is None or cache.self_attn[0].length == 0):
            prefixed = self.prefix.caches(b)[self.config.n_encoder_layers:]
            if cache is None:  # teacher forcing: a cache that only serves this call
                cache = DecoderCache(prefixed, [AttentionCache(static=True) for _ in prefixed])
            else:
                for c, p in zip(cache.self_attn, prefixed):
                    c.k, c.v = p.k, p.v
            cache.virtual = dp
        offset = cache.length if incremental else 0  # target positions before tgt
        limit = self.tgt_embed.position.max_len
        if dp and limit is not None and dp + offset + t > limit:
            raise ValueError(f"tgt: {dp} prefix positions + {offset + t} tokens = {dp + offset + t} positions, but the "
                             f"position table holds max_len={limit}; shorten the output")
        self.tgt_embed.position.check_length(dp + offset + t)  # by shape
        positions = torch.arange(dp + offset, dp + offset + t, device=tgt.device)  # after the prefix's, as in encode
        x = self.tgt_embed(tgt, positions)  # (B, T, D)
        if tgt_mask is None and incremental:
            tgt_mask = causal_mask(t, tgt.device, dp + offset)  # a cache holds only the past: no future to hide anyway
        elif tgt_mask is None:
            # deviation (decoder_causal=False, the `causal-mask` experiment only): padding hidden, future not.
            # A long-sequence pattern holds causality itself: the padding only, (B, 1, 1, T), never (T, T).
            causal = self.config.decoder_causal and self.config.attention == "full"
            tgt_mask = decoder_self_mask(tgt, self.config.pad_id) if causal else padding_mask(tgt, self.config.pad_id)
        if dp and tgt_mask.size(-1) == offset + t:  # the prefix's keys are always visible
            tgt_mask = _visible_first(tgt_mask, dp)
        check_mask(tgt_mask, b, self.config.n_heads, t, dp + offset + t, "tgt_mask")
        cross_mask = _visible_first(cross_attention_mask(src, self.config.pad_id), pv)
        return self.decoder(x, memory, tgt_mask, cross_mask, positions, record_cross_attention, cache)

    def new_cache(self) -> DecoderCache:
        return DecoderCache.empty(self.config.n_decoder_layers)

    def forward(self, src: Tensor, tgt: Tensor, log_probs: bool = True) -> Tensor:
        """Teacher-forced log-probabilities (``log_probs=False``: the scores before the softmax, for a
        fused loss; through ``forward``, so a DDP wrapper sees the call). Shapes: src (B, S), tgt (B, T)
        -> (B, T, V)."""
        hidden = self.decode(self.encode(src), src, tgt)
        return self.generator(hidden) if log_probs else self.generator.proj(hidden)

    def logits(self, src: Tensor, tgt: Tensor) -> Tensor:
        """Teacher-forced scores before the softmax, for a fused loss. Shapes: -> (B, T, V)."""
        return self(src, tgt, log_probs=False)


def _visible_first(mask: Tensor, n: int) -> Tensor:
    """``mask`` with ``n`` always-visible keys before its own (a prefix's or prompt's). (..., K) -> (..., n + K)."""
    if not n:
        return mask
    return torch.cat([torch.ones(*mask.shape[:-1], n, dtype=mask.dtype, device=mask.device), mask], dim=-1)
