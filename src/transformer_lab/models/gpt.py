"""GPT: a decoder-only Transformer language model, GPT-2's design (Radford et al. 2019; GPT, 2018, was
post-LN).

    x_0 = W_e[tokens] + W_p[positions]                (learned positions, no √d scaling)
    x_l = Block_l(x_{l-1})  under a causal mask        (pre-LN: x + Attn(LN(x)), x + FFN(LN(x)))
    logits = LN_f(x_L) W_eᵀ                           (LM head tied to the token embeddings)

``position`` selects the encoding: "learned" (GPT-2, the default), "sinusoidal" (the paper's, added
to the embeddings), or one inside self-attention with no table added to the embeddings: "rotary",
"alibi", "t5" or "shaw" (``nn.positions``).

A GPT block is the encoder layer of ``nn.layers`` with ``norm_first=True`` and GELU (tanh form, as
GPT-2): self-attention plus FFN, no cross-attention; the causal mask is what makes it a decoder.
Nothing here re-implements attention, the FFN or the norms.

Positions are explicit, so a left-padded batch of prompts gives every real token the position it
would have alone (``positions_from_mask``), and a K/V cache continues where it stopped.

Shapes: B batch, T new tokens, T_k all keys (cached + new), V vocabulary, D width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from transformer_lab.nn.embeddings import Embeddings, TokenEmbedding, check_tokens
from transformer_lab.nn.feedforward import ACTIVATIONS
from transformer_lab.nn.kv_cache import AttentionCache
from transformer_lab.nn.layers import BlockConfig, Encoder, EncoderLayer
from transformer_lab.nn.masks import CAUSAL, causal_mask
from transformer_lab.nn.positions import POSITION_ENCODINGS, build_position_encoding
from transformer_lab.nn.sparse import parse_pattern


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 50257
    max_len: int = 1024  # context length (GPT-2's n_positions, nanoGPT's block_size)
    d_model: int = 768
    n_heads: int = 12
    n_layers: int = 12
    d_ff: int = 3072
    dropout: float = 0.1  # embeddings, residual branches
    attention_dropout: float = 0.1
    activation: str = "gelu_tanh"
    eps: float = 1e-5
    attention_impl: str = "sdpa"
    eos_id: int | None = None  # generation stops a row at this token (GPT-2: 50256 "<|endoftext|>")
    position: str = "learned"  # "learned" (GPT-2), "sinusoidal", "rotary", "alibi", "t5" or "shaw"
    # × √d_model on the token vectors, as the paper pairs them with its sinusoids (|PE| = 1 per pair);
    # GPT-2 adds its learned table to plain 0.02-std vectors, which unit sinusoids would swamp.
    scale_embeddings: bool = False
    # Self-attention's pattern (``nn.sparse.parse_pattern``): "full", "window:256", "block:64,random:1",
    # "chunked:1024" ...; causal, as every GPT layer is.
    attention: str = "full"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "max_len", "d_model", "n_heads", "n_layers", "d_ff"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads: d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name}: expected 0 <= p < 1, got {getattr(self, name)}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {self.activation!r}")
        if self.eos_id is not None and not 0 <= self.eos_id < self.vocab_size:
            raise ValueError(f"eos_id: {self.eos_id} is outside the vocabulary (size {self.vocab_size})")
        if self.position not in POSITION_ENCODINGS:
            raise ValueError(f"position: expected one of {sorted(POSITION_ENCODINGS)}, got {self.position!r}")
        parse_pattern(self.attention, causal=True, position=self.position)  # a bad spec or combination: named

    def block(self) -> BlockConfig:
        return BlockConfig(self.d_model, self.n_heads, self.d_ff, self.dropout, self.attention_dropout,
                           self.activation, norm_first=True, eps=self.eps, attention_impl=self.attention_impl,
                           pattern=parse_pattern(self.attention, causal=True))


def positions_from_mask(attention_mask: Tensor) -> Tensor:
    """Positions of a left-padded batch: each row's real tokens count 0, 1, 2, ... from its first
    real token; padding gets 0 (its keys are masked anyway). Shapes: (B, T) bool -> (B, T) long."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = c = config
        block = c.block()
        position = build_position_encoding(c.position, c.d_model, c.max_len, c.n_heads, causal=True)
        self.embed = Embeddings(TokenEmbedding(c.vocab_size, c.d_model, scale=c.scale_embeddings), position, c.dropout)
        inner = position if position.acts_in_attention else None  # relative encodings act inside self-attention
        self.blocks = Encoder([EncoderLayer(block, inner) for _ in range(c.n_layers)], c.d_model, norm_first=True,
                              eps=c.eps)
        # The LM head is a module (not F.linear on the table), so a replaced Linear (LoRA, INT8) is used.
        # Built on the meta device: its own weight is never used (tied below), so it draws no random
        # numbers and the same seed gives the same initial model as ever.
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False, device="meta")
        self.lm_head.weight = self.embed.token.weight  # tied: one (V, D) tensor, two uses
        # Parameter-efficient tuning slots (``adapters`` fills them): a prefix, whose keys and values every
        # layer attends to first, or a soft prompt, vectors before the token embeddings. Either takes the
        # first ``n_virtual`` positions; the caller's tokens, masks and logits never include them.
        self.prefix: nn.Module | None = None
        self.prompt: nn.Module | None = None
        self.reset_parameters()

    @property
    def n_virtual(self) -> int:
        """Positions taken by a prefix or soft prompt (0 without one)."""
        return self.prefix.length if self.prefix is not None else self.prompt.length if self.prompt is not None else 0

    @property
    def context(self) -> int:
        """Tokens the model can see at once: max_len less the virtual positions."""
        return self.config.max_len - self.n_virtual

    def reset_parameters(self) -> None:
        """GPT-2's initialisation: N(0, 0.02) everywhere, the residual projections (attention output
        and FFN output) scaled by 1/√(2·n_layers) so the residual stream's variance does not grow
        with depth; zero biases; LayerNorms at (1, 0)."""
        std = 0.02
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                scale = 1 / math.sqrt(2 * self.config.n_layers) if name.endswith(("w_o.weight", "w_2.weight")) else 1.0
                nn.init.normal_(p, 0.0, std * scale)
            elif "norm" in name:
                nn.init.ones_(p) if name.endswith("weight") else nn.init.zeros_(p)
            else:
                nn.init.zeros_(p)

    def check_inputs(self, tokens: Tensor) -> None:
        """The ids' values, as ``forward`` checks them (on the host; see ``Transformer.check_inputs``)."""
        check_tokens(tokens, self.config.vocab_size)

    def forward_segment(self, tokens: Tensor, memory: list[Tensor] | None, mem_len: int) -> tuple[Tensor, list[Tensor]]:
        """Transformer-XL's segment recurrence (Dai et al. 2019, §3.2): every layer attends to its own
        inputs of the previous segment(s), ``memory`` (one (B, M, D) tensor per layer, no gradient
        through it), before the segment's tokens, causally within the segment. Returns the logits (B, T, V)
        and the next memory: the last ``mem_len`` positions of [memory; this segment's layer inputs],
        detached. Positions are relative to the memory's first (0..M+T-1), so the encoding must be a
        relative one (rotary, ALiBi, T5, Shaw); Transformer-XL's own relative scheme (sinusoids of i - j
        with two learned biases) is not built: these take its place. Equals full causal attention over
        [previous segment; segment] when mem_len covers the previous segment (tested)."""
        check_tokens(tokens, self.config.vocab_size)
        if self.config.attention != "full":
            raise ValueError(f"memory: a segment attends to all of [memory; segment] under a causal mask; not with "
                             f"this model's attention pattern {self.config.attention!r}")
        if self.embed.position.max_len is not None:
            raise ValueError(f"memory: segment recurrence needs a relative position encoding (rotary, alibi, t5, shaw); "
                             f"this model's is {self.config.position!r}, whose positions would not carry across segments")
        if self.prefix is not None or self.prompt is not None:
            raise ValueError("memory: not with a prefix or prompt adapter")
        if mem_len < 1:
            raise ValueError(f"mem_len: expected >= 1 positions to keep, got {mem_len}")
        b, t = tokens.shape
        if memory is not None and (len(memory) != self.config.n_layers or memory[0].size(0) != b):
            raise ValueError(f"memory: expected {self.config.n_layers} tensors of (B={b}, M, {self.config.d_model}), "
                             f"got {len(memory)} of {tuple(memory[0].shape)}")
        m = 0 if memory is None else memory[0].size(1)
        positions = torch.arange(m, m + t, device=tokens.device)
        x = self.embed(tokens, positions)
        mask = causal_mask(t, tokens.device, offset=m)  # (1, 1, T, M + T): the memory is all past
        new_memory = []
        for i, layer in enumerate(self.blocks.layers):
            past = None if memory is None else memory[i]
            new_memory.append((x if past is None else torch.cat([past, x], dim=1))[:, -mem_len:].detach())
            x = layer(x, mask, positions, memory=past)
        return self.lm_head(self.blocks.norm(x)), new_memory

    def new_cache(self) -> list[AttentionCache]:
        return [AttentionCache() for _ in range(self.config.n_layers)]

    def forward(
        self,
        tokens: Tensor,
        attention_mask: Tensor | None = None,
        positions: Tensor | None = None,
        cache: list[AttentionCache] | None = None,
        last_only: bool = False,
    ) -> Tensor:
        """Next-token logits at every position (``last_only``: at the last one, (B, 1, V); what
        generation needs, and the (T, D) x (D, V) head is most of a small model's work).
        Shapes: tokens (B, T) -> (B, T, V).

        ``attention_mask`` (B, T_k) bool, True = real token, covers the cached tokens and the new
        ones (left padding); None means no padding. ``positions`` (B, T) or (T,) default to
        ``positions_from_mask`` (or 0..T-1 after the cache's length).
        """
        check_tokens(tokens, self.config.vocab_size)  # once per batch, at the model's boundary
        b, t = tokens.shape
        v = self.n_virtual
        if self.prefix is not None and (cache is None or cache[0].length == 0):
            prefixed = self.prefix.caches(b)  # each layer's cache starts with the prefix keys and values
            if cache is not None:
                for c, p in zip(cache, prefixed):
                    c.k, c.v = p.k, p.v
            cache = prefixed if cache is None else cache
        past = cache[0].length if cache is not None else 0  # cached positions, virtual ones included
        prompt = self.prompt is not None and past == 0  # a soft prompt goes in with the first tokens
        n_new = t + v if prompt else t  # new positions
        past_tokens = past - v if past else 0
        if attention_mask is not None:
            if attention_mask.dim() != 2 or attention_mask.shape != (b, past_tokens + t):
                raise ValueError(
                    f"attention_mask: expected (B={b}, T_k={past_tokens + t}) covering cached and new tokens, "
                    f"got {tuple(attention_mask.shape)}"
                )
            if v:  # the virtual positions are always visible
                attention_mask = torch.cat([attention_mask.new_ones(b, v), attention_mask], dim=1)
        if positions is None:
            if attention_mask is not None:
                positions = positions_from_mask(attention_mask)[:, past:]
            else:
                positions = torch.arange(past, past + n_new, device=tokens.device)
        elif v:
            positions = positions + v
            if prompt:
                virtual = torch.arange(v, device=tokens.device)
                positions = torch.cat([virtual.expand(*positions.shape[:-1], v), positions], dim=-1)
        limit = self.embed.position.max_len  # None for relative encodings: they run past the training length
        if limit is not None and past + n_new > limit:
            raise ValueError(
                f"tokens: {past} cached + {n_new} new = {past + n_new} positions"
                f"{f' ({v} of them a prefix or prompt)' if v else ''}, but the model's context is "
                f"max_len={self.config.max_len}; shorten the input"
            )
        mask = None  # one new token without padding sees every key: no mask at all (the fastest kernel)
        if self.config.attention != "full" and cache is None:
            # a long-sequence pattern holds causality itself: only the padding, (B, 1, 1, T), never (T, T)
            mask = None if attention_mask is None else attention_mask[:, None, None, :].bool()
        elif n_new > 1 or attention_mask is not None:
            # Named when it is the plain one (no padding, nothing cached): the fused kernel's is_causal
            mask = CAUSAL if attention_mask is None and not past else causal_mask(n_new, tokens.device, offset=past)
            if attention_mask is not None:
                mask = mask & attention_mask[:, None, None, :].bool()  # (B, 1, T, T_k)
        if prompt:
            x = self.embed.token(tokens)  # (B, T, D)
            x = torch.cat([self.prompt.embeddings().to(x.dtype).expand(b, -1, -1), x], dim=1)  # (B, P + T, D)
            x = self.embed.add_positions(x, positions)
        else:
            x = self.embed(tokens, positions)  # (B, T, D)
        x = self.blocks(x, mask, positions, cache)
        if prompt:
            x = x[:, v:]  # the prompt's own outputs predict nothing
        if last_only:
            x = x[:, -1:]
        return self.lm_head(x)  # (B, T, V)
