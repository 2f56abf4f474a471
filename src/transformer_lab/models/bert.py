"""BERT: a bidirectional encoder pretrained by masked language modelling (Devlin et al. 2019).

    x_0 = LayerNorm(W_tok[tokens] + W_seg[segments] + W_pos[positions]), then dropout
    x_L = Encoder(x_0)              post-LN layers with exact (erf) GELU, key-padding mask only
    pooled = tanh(W_p x_L[:, 0])    the [CLS] vector, for sentence-level heads

Heads: MLM (dense + GELU + LayerNorm, then the output projection tied to W_tok plus a bias),
NSP (pooled -> IsNext/NotNext), sequence classification (dropout + linear on pooled, fine-tuning).
The encoder layers are ``nn.layers.EncoderLayer``: the same attention, FFN and norm modules as the
paper's encoder, built from a ``BlockConfig``.

Differences from the paper's encoder: no √d_model on the embeddings, a LayerNorm right after the
embedding sum, learned positions, segment embeddings, GELU, LayerNorm ε = 1e-12.

Shapes: B batch, S length, D width, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from transformer_lab.nn.dropout import Dropout
from transformer_lab.nn.embeddings import TokenEmbedding, check_tokens
from transformer_lab.nn.feedforward import ACTIVATIONS
from transformer_lab.nn.layers import BlockConfig, Encoder, EncoderLayer
from transformer_lab.nn.masks import padding_mask
from transformer_lab.nn.positions import POSITION_ENCODINGS, build_position_encoding
from transformer_lab.nn.sparse import parse_pattern


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    d_model: int = 768
    n_layers: int = 12
    n_heads: int = 12
    d_ff: int = 3072
    max_len: int = 512
    type_vocab_size: int = 2
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation: str = "gelu"
    eps: float = 1e-12
    pad_id: int = 0
    pretraining_heads: bool = False  # MLM + NSP heads
    nsp_head: bool = True  # with pretraining_heads: False = the MLM head alone (HF BertForMaskedLM; no NSP)
    n_labels: int = 0  # > 0: a sequence-classification head with this many classes
    attention_impl: str = "sdpa"
    position: str = "learned"  # "learned" (BERT), "sinusoidal"; inside self-attention "rotary", "alibi", "t5", "shaw"
    attention: str = "full"  # self-attention's pattern: "window:256,global:0" (Longformer), "block:64", ...

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_len", "type_vocab_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads: d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {self.activation!r}")
        if self.n_labels < 0:
            raise ValueError(f"n_labels: expected >= 0, got {self.n_labels}")
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name}: expected 0 <= p < 1, got {getattr(self, name)}")
        if self.position not in POSITION_ENCODINGS:
            raise ValueError(f"position: expected one of {sorted(POSITION_ENCODINGS)}, got {self.position!r}")
        parse_pattern(self.attention, causal=False, position=self.position)  # a bad spec or combination: named
        if not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(f"pad_id: {self.pad_id} is outside the vocabulary (size {self.vocab_size})")

    def block(self) -> BlockConfig:
        return BlockConfig(self.d_model, self.n_heads, self.d_ff, self.dropout, self.attention_dropout,
                           self.activation, norm_first=False, eps=self.eps, attention_impl=self.attention_impl,
                           pattern=parse_pattern(self.attention, causal=False))


class BertEmbeddings(nn.Module):
    """Token + segment + position, then LayerNorm and dropout. Shapes: (B, S) -> (B, S, D)."""

    def __init__(self, c: BertConfig):
        super().__init__()
        self.token = TokenEmbedding(c.vocab_size, c.d_model, scale=False)
        self.segment = nn.Embedding(c.type_vocab_size, c.d_model)
        self.position = build_position_encoding(c.position, c.d_model, c.max_len, c.n_heads)
        self.norm = nn.LayerNorm(c.d_model, eps=c.eps)
        self.dropout = Dropout(c.dropout)

    def forward(self, tokens: Tensor, segments: Tensor, positions: Tensor) -> Tensor:
        return self.add_to_vectors(self.token(tokens), segments, positions)

    def add_to_vectors(self, x: Tensor, segments: Tensor, positions: Tensor) -> Tensor:
        """Segment and position embeddings, LayerNorm and dropout on token vectors ``x`` (B, S, D)
        (looked up, or a soft prompt followed by looked-up ones)."""
        x = x + self.segment(segments)
        x = self.position.add_to_embeddings(x, positions)  # a no-op for rotary (it acts in attention)
        return self.dropout(self.norm(x))


class MLMHead(nn.Module):
    """Predicts the masked tokens: transform (dense, GELU, LayerNorm), then a linear map to the
    vocabulary whose weight is the input embedding table (tied) and whose bias is its own."""

    def __init__(self, c: BertConfig, token_weight: nn.Parameter):
        super().__init__()
        self.dense = nn.Linear(c.d_model, c.d_model)
        self.activation = c.activation
        self.norm = nn.LayerNorm(c.d_model, eps=c.eps)
        # A module, so a replaced Linear is used; built on the meta device (no random draw: its weight is
        # the tied table), with its own zero bias.
        self.decoder = nn.Linear(c.d_model, c.vocab_size, device="meta")
        self.decoder.weight = token_weight  # tied: the same Parameter as the input embedding table
        self.decoder.bias = nn.Parameter(torch.zeros(c.vocab_size))

    def forward(self, h: Tensor) -> Tensor:
        h = self.dense(h)
        h = F.gelu(h, approximate="tanh" if self.activation == "gelu_tanh" else "none")
        return self.decoder(self.norm(h))  # (..., V)


@dataclass
class BertOutput:
    hidden: Tensor  # (B, S, D) last layer
    pooled: Tensor  # (B, D)
    mlm_logits: Tensor | None = None  # (B, S, V) or (N, V) at the requested positions
    nsp_logits: Tensor | None = None  # (B, 2): index 0 = IsNext, 1 = NotNext (as HF)
    class_logits: Tensor | None = None  # (B, n_labels)


# A pytree node, so that DistributedDataParallel sees the tensors inside: with ``static_graph`` it routes a
# forward's output tensors through its backward hook, and an output it could not look into was one leaf, so
# after the first step the gradients were never all-reduced (each process trained its own copy).
torch.export.register_dataclass(BertOutput, serialized_type_name="transformer_lab.models.bert.BertOutput")


class Bert(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = c = config
        self.embed = BertEmbeddings(c)
        position = self.embed.position
        inner = position if position.acts_in_attention else None  # relative encodings act inside self-attention
        self.encoder = Encoder([EncoderLayer(c.block(), inner) for _ in range(c.n_layers)], c.d_model, norm_first=False)
        self.pooler = nn.Linear(c.d_model, c.d_model)
        self.mlm = MLMHead(c, self.embed.token.weight) if c.pretraining_heads else None
        self.nsp = nn.Linear(c.d_model, 2) if c.pretraining_heads and c.nsp_head else None
        self.classifier = nn.Sequential(Dropout(c.dropout), nn.Linear(c.d_model, c.n_labels)) if c.n_labels else None
        # Parameter-efficient tuning slots (``adapters`` fills them): a prefix, whose keys and values every
        # layer attends to first, or a soft prompt, vectors before the token embeddings. Either takes the
        # first ``n_virtual`` positions; ``hidden`` keeps the real tokens only, but ``pooled`` is then the
        # first virtual position's (a prompt's first vector comes before [CLS]; ``peft`` pools it too).
        self.prefix: nn.Module | None = None
        self.prompt: nn.Module | None = None
        self.reset_parameters()

    @property
    def n_virtual(self) -> int:
        """Positions taken by a prefix or soft prompt (0 without one)."""
        return self.prefix.length if self.prefix is not None else self.prompt.length if self.prompt is not None else 0

    def reset_parameters(self) -> None:
        """BERT's initialisation: N(0, 0.02) for weights and embeddings, zero biases, LayerNorm (1, 0)."""
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, 0.0, 0.02)
            elif "norm" in name and name.endswith("weight"):
                nn.init.ones_(p)
            else:
                nn.init.zeros_(p)

    def check_inputs(self, tokens: Tensor, segments: Tensor | None = None) -> None:
        """The ids' values, as ``forward`` checks them (on the host; see ``Transformer.check_inputs``)."""
        check_tokens(tokens, self.config.vocab_size)
        if segments is not None:
            check_tokens(segments, self.config.type_vocab_size, "segments")

    def forward(
        self,
        tokens: Tensor,
        segments: Tensor | None = None,
        attention_mask: Tensor | None = None,
        mlm_positions: Tensor | None = None,
    ) -> BertOutput:
        """tokens (B, S); segments (B, S) 0/1, default all 0; attention_mask (B, S) bool/0-1, True =
        real token, default ``tokens != pad_id``. ``mlm_positions``: compute MLM logits only there (the
        15%), returned as (N, V); otherwise for every position. Either a bool (B, S) mask, or the N
        positions' flat indices b * S + s (int64 (N,)): the indices gather without reading the mask's
        count back to the host (a boolean index is a device sync, and a graph break under compile)."""
        check_tokens(tokens, self.config.vocab_size)  # once per batch, at the model's boundary
        (b, s), v = tokens.shape, self.n_virtual
        if self.embed.position.max_len is not None and s + v > self.config.max_len:  # relative encodings: no limit
            raise ValueError(f"tokens: length {s}{f' + {v} prefix or prompt positions' if v else ''} exceeds the "
                             f"model's max_len={self.config.max_len} positions; truncate the input")
        if segments is None:
            segments = torch.zeros_like(tokens)
        elif segments.shape != tokens.shape:
            raise ValueError(f"segments: expected shape {tuple(tokens.shape)} like tokens, got {tuple(segments.shape)}")
        else:
            check_tokens(segments, self.config.type_vocab_size, "segments")
        if attention_mask is None:
            mask = padding_mask(tokens, self.config.pad_id)  # (B, 1, 1, S)
        elif attention_mask.shape != tokens.shape:
            raise ValueError(f"attention_mask: expected shape {tuple(tokens.shape)} like tokens, got {tuple(attention_mask.shape)}")
        else:
            mask = attention_mask.bool()[:, None, None, :]
        if not v:
            positions = torch.arange(s, device=tokens.device)
            hidden = self.encoder(self.embed(tokens, segments, positions), mask, positions)  # (B, S, D)
            pooled = torch.tanh(self.pooler(hidden[:, 0]))  # (B, D)
        else:
            mask = torch.cat([mask.new_ones(b, 1, 1, v), mask], dim=-1)  # (B, 1, 1, P + S): virtual ones are seen
            if self.prefix is not None:  # the prefix is P cached positions: tokens sit at P..P+S-1
                positions = torch.arange(v, v + s, device=tokens.device)
                x = self.embed(tokens, segments, positions)
                hidden = self.encoder(x, mask, positions, self.prefix.caches(b))  # (B, S, D)
                pooled_from = hidden
            else:  # the soft prompt is P input vectors before the tokens, in segment 0
                positions = torch.arange(v + s, device=tokens.device)
                x = torch.cat([self.prompt.embeddings().expand(b, -1, -1), self.embed.token(tokens)], dim=1)
                segments = torch.cat([segments.new_zeros(b, v), segments], dim=1)
                pooled_from = self.encoder(self.embed.add_to_vectors(x, segments, positions), mask, positions)
                hidden = pooled_from[:, v:]  # (B, S, D)
            pooled = torch.tanh(self.pooler(pooled_from[:, 0]))  # (B, D)
        out = BertOutput(hidden, pooled)
        if self.mlm is not None:
            out.mlm_logits = self.mlm(_select(hidden, mlm_positions))
        if self.nsp is not None:
            out.nsp_logits = self.nsp(pooled)
        if self.classifier is not None:
            out.class_logits = self.classifier(pooled)
        return out


def _select(hidden: Tensor, positions: Tensor | None) -> Tensor:
    """hidden (B, S, D) at ``positions`` (a bool (B, S) mask, or flat indices (N,)) -> (N, D); all when None."""
    if positions is None:
        return hidden
    if positions.dtype == torch.bool:
        if positions.shape != hidden.shape[:2]:
            raise ValueError(f"mlm_positions: expected a mask of shape {tuple(hidden.shape[:2])}, got {tuple(positions.shape)}")
        return hidden[positions]
    if positions.dim() != 1 or positions.is_floating_point():
        raise ValueError(f"mlm_positions: expected a bool (B, S) mask or int64 flat indices (N,), got "
                         f"{positions.dtype} {tuple(positions.shape)}")
    return hidden.flatten(0, 1).index_select(0, positions)


def mean_pool(hidden: Tensor, attention_mask: Tensor, normalize: bool = True) -> Tensor:
    """Sentence embedding as sentence-transformers computes it for all-MiniLM-L6-v2: the mean of the
    last hidden states over real tokens ([CLS] and [SEP] included), then L2-normalised.
    Shapes: hidden (B, S, D), attention_mask (B, S) -> (B, D)."""
    m = attention_mask.to(hidden.dtype)[..., None]  # (B, S, 1)
    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return F.normalize(pooled, p=2, dim=-1) if normalize else pooled
