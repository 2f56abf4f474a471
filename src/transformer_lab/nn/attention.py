"""Scaled dot-product attention and multi-head attention ("Attention Is All You Need", §3.2).

    Attention(Q, K, V) = softmax(Q Kᵀ / √d_k + mask) V                                  (eq. 1)
    MultiHead(Q, K, V) = Concat(head_1, ..., head_h) W_O,
        head_i = Attention(Q W_Q^i, K W_K^i, V W_V^i)

Why divide by √d_k: for q, k with unit-variance components, q·k has variance d_k; unscaled, large
logits push the softmax into regions of vanishing gradient (§3.2.1, footnote 4).

Additive attention (Bahdanau et al. 2015), the alternative §3.2.1 compares against, is an option
(``score="additive"``): score(q, k) = vᵀ tanh(q + k) per head, on the same projected q and k. It
materialises a (B, H, T_q, T_k, Dh) tensor where the dot product needs (B, H, T_q, T_k): the
``dot-vs-additive`` experiment measures what that costs.

Two paths compute eq. 1: ``reference_attention`` writes it out and can return the weights;
``fast_attention`` calls ``F.scaled_dot_product_attention`` (fused kernels). A test holds them equal.

Masks: boolean, True = may attend, broadcastable to (B, H, T_q, T_k) (see ``masks``). A query whose
keys are all masked gets a zero output (and zero gradient), never NaN. ``masks.CAUSAL`` names the plain
causal mask without building it, so the fused path can run SDPA's causal kernel (FlashAttention on a GPU).

Shapes: B batch, H heads, T_q query length, T_k key length, D model width, Dh = D / H.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from transformer_lab.nn.dropout import dropout, uses_hashed_mask
from transformer_lab.nn.kv_cache import AttentionCache
from transformer_lab.nn.masks import CAUSAL, Causal, as_tensor, check_mask
from transformer_lab.nn.positions import PositionEncoding


SCORES = ("dot", "additive")


@dataclass
class AttentionResult:
    output: Tensor  # (B, H, T_q, Dh) for the functional form, (B, T_q, D) for the module
    weights: Tensor | None = None  # (B, H, T_q, T_k), before dropout; None unless asked for


def reference_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | Causal | None = None,
    bias: Tensor | None = None,
    dropout_p: float = 0.0,
    value_term: Callable[[Tensor], Tensor] | None = None,
) -> AttentionResult:
    """Eq. 1 written out. Shapes: q (B, H, T_q, Dh), k, v (B, H, T_k, Dh) -> (B, H, T_q, Dh)."""
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))  # (B, H, T_q, T_k)
    return attend_scores(scores, v, as_tensor(mask, q.size(-2), k.size(-2), q.device), bias, dropout_p, value_term)


def attend_scores(scores: Tensor, v: Tensor, mask: Tensor | None = None, bias: Tensor | None = None,
                  dropout_p: float = 0.0, value_term: Callable[[Tensor], Tensor] | None = None) -> AttentionResult:
    """The rest of eq. 1 after the scores (B, H, T_q, T_k), whatever computed them: bias, mask,
    softmax, dropout, the weighted sum of v, plus ``value_term(weights)`` (after dropout) when a
    position encoding adds to the values (Shaw's)."""
    if bias is not None:
        scores = scores + bias.to(scores.dtype)
    if mask is not None:
        # The dtype's lowest finite value, not -inf: a fully masked row then softmaxes to a
        # uniform row instead of NaN, and is zeroed just below.
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = scores.softmax(dim=-1)
    if mask is not None:
        weights = weights.masked_fill(~mask, 0.0)  # exact zeros; a fully masked row -> all zeros
    dropped = dropout(weights, dropout_p)
    out = dropped @ v
    return AttentionResult(out if value_term is None else out + value_term(dropped), weights)


def fast_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | Causal | None = None,
    bias: Tensor | None = None,
    dropout_p: float = 0.0,
) -> AttentionResult:
    """Eq. 1 on ``F.scaled_dot_product_attention``; same contract as ``reference_attention``. ``CAUSAL``
    (no bias, as many queries as keys) is SDPA's ``is_causal``: FlashAttention on a GPU. With
    dropout under torch.compile on a CPU, eq. 1 written out instead (inductor fuses it as well, and the
    dropout mask is then ``nn.dropout``'s hashed one, not a Philox draw per element)."""
    if dropout_p > 0 and uses_hashed_mask(q):
        return AttentionResult(reference_attention(q, k, v, mask, bias, dropout_p).output, None)
    if mask is CAUSAL:
        if bias is None and q.size(-2) == k.size(-2):  # the causal kernel: no mask tensor, no row without a key
            return AttentionResult(F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True), None)
        mask = Causal.materialize(q.size(-2), k.size(-2), q.device)  # (SDPA takes a mask or is_causal, not both)
    attn_mask, has_key = mask, None
    if mask is not None:
        has_key = mask.any(dim=-1, keepdim=True)  # (B|1, H|1, T_q, 1): rows that see at least one key
        if _guard_fully_masked_rows(has_key):
            # Fused kernels differ on a row with no key: some return NaN outputs, CUDA's fp16/bf16
            # kernels NaN gradients. Such a row gets every key (a finite softmax, never read) and a
            # zero output below, so no NaN reaches the output or the backward pass.
            attn_mask = mask | ~has_key
        else:
            has_key = None
    if bias is not None:
        # SDPA takes one mask: a float mask is added to the scores, so fold the bool mask in.
        attn_mask = bias if attn_mask is None else torch.where(attn_mask, bias, float("-inf"))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
    if has_key is not None:
        out = out.masked_fill(~has_key, 0.0)
    return AttentionResult(out, None)


def additive_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    v_score: Tensor,
    mask: Tensor | None = None,
    bias: Tensor | None = None,
    dropout_p: float = 0.0,
    value_term: Callable[[Tensor], Tensor] | None = None,
) -> AttentionResult:
    """Additive (Bahdanau) attention: scores_ij = v_scoreᵀ tanh(q_i + k_j), per head, then the same
    masked softmax as eq. 1. Shapes: q (B, H, T_q, Dh), k, v (B, H, T_k, Dh), v_score (H, Dh)."""
    hidden = torch.tanh(q.unsqueeze(-2) + k.unsqueeze(-3))  # (B, H, T_q, T_k, Dh): the cost of "additive"
    scores = (hidden * v_score[None, :, None, None, :]).sum(-1)  # (B, H, T_q, T_k)
    return attend_scores(scores, v, mask, bias, dropout_p, value_term)


def _guard_fully_masked_rows(has_key: Tensor) -> bool:
    """Whether ``fast_attention`` takes the fully-masked-row guard. On GPU, and while torch.compile
    traces, always (asking would be a device sync / a graph break). On CPU, only when some row has
    no key: the question is free there, and most masks (causal, right padding) have no such row
    (measured: the guard is 0.5 ms of a 12x64 GPT layer's step)."""
    if has_key.device.type != "cpu" or torch.compiler.is_compiling():
        return True
    return not bool(has_key.all())


def _cat_bias(*linears: nn.Linear) -> Tensor | None:
    return None if linears[0].bias is None else torch.cat([lin.bias for lin in linears])


class MultiHeadAttention(nn.Module):
    """h parallel heads of width d_k = d_v = d_model / h, with learned W_Q, W_K, W_V, W_O (§3.2.2).

    Self-attention passes the same tensor as ``query`` and ``key_value``; cross-attention passes the
    decoder states as ``query`` and the encoder output (of another length) as ``key_value``.
    ``position`` is the model's position encoding, for variants that act inside attention
    (rotary, ALiBi); absolute encodings leave it a no-op.

    ``d_head`` (default d_model / h, the paper's) sets another head width: the projections then map
    D -> h·d_head and W_O maps h·d_head -> D (the ``head-dim`` experiment compares d_head = D).
    ``score="additive"`` replaces q·k/√d_k by Bahdanau's vᵀ tanh(q + k) (``additive_attention``).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        impl: str = "sdpa",
        position: PositionEncoding | None = None,
        d_head: int | None = None,
        score: str = "dot",
        pattern: Any = None,
    ):
        super().__init__()
        if d_head is None and (n_heads <= 0 or d_model % n_heads):
            raise ValueError(
                f"n_heads: d_model={d_model} must be divisible by n_heads={n_heads} "
                f"(each head gets d_model / n_heads dimensions)"
            )
        if n_heads <= 0 or (d_head is not None and d_head <= 0):
            raise ValueError(f"n_heads, d_head: expected positive sizes, got {n_heads}, {d_head}")
        if impl not in ("sdpa", "reference"):
            raise ValueError(f"impl: expected 'sdpa' or 'reference', got {impl!r}")
        if score not in SCORES:
            raise ValueError(f"score: expected one of {SCORES}, got {score!r}")
        self.d_model, self.n_heads = d_model, n_heads
        self.d_head = d_model // n_heads if d_head is None else d_head
        self.d_inner = n_heads * self.d_head  # = d_model with the paper's head width
        self.dropout, self.impl, self.position = dropout, impl, position
        self.w_q = nn.Linear(d_model, self.d_inner, bias=bias)
        self.w_k = nn.Linear(d_model, self.d_inner, bias=bias)
        self.w_v = nn.Linear(d_model, self.d_inner, bias=bias)
        self.w_o = nn.Linear(self.d_inner, d_model, bias=bias)
        self.score = score
        # A long-sequence pattern (``nn.sparse.Pattern``: window, block-sparse, chunked), or None for
        # every key. With one, a caller passes a key-padding mask (B|1, 1, 1, T_k) or none: the pattern
        # holds the rest (causality included).
        self.pattern = pattern
        if pattern is not None and position is not None and position.needs_weights:
            raise ValueError(f"pattern: {type(position).__name__} adds to the values through the attention weights, "
                             "which the efficient patterns never form; use another position encoding")
        if pattern is not None and score != "dot":
            raise ValueError(f"pattern: the long-sequence patterns score by dot product, got score={score!r}")
        if score == "additive":  # one scoring vector per head, at the scale of a Linear's init
            self.v_score = nn.Parameter(torch.empty(n_heads, self.d_head).uniform_(-1, 1) / math.sqrt(self.d_head))

    def _fused_projections(self, query: Tensor, key_value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The same three products as w_q, w_k, w_v, in fewer and larger GEMMs: one (D -> 3D) for
        self-attention, one (D -> D) plus one (D -> 2D) for cross-attention. Measured: about 5% of a
        base-model training step on CPU (``transformer-lab bench model``). Only for plain ``nn.Linear``
        projections (``_plain_projections``). Shapes: -> (B, T, H·Dh) each."""
        d = self.d_inner
        if key_value is query:
            w = torch.cat([self.w_q.weight, self.w_k.weight, self.w_v.weight])  # (3D, D)
            b = _cat_bias(self.w_q, self.w_k, self.w_v)
            return F.linear(query, w, b).split(d, dim=-1)
        w = torch.cat([self.w_k.weight, self.w_v.weight])  # (2D, D)
        k, v = F.linear(key_value, w, _cat_bias(self.w_k, self.w_v)).split(d, dim=-1)
        return self.w_q(query), k, v

    def _joint_projections(self, query: Tensor, key_value: Tensor) -> tuple[Tensor, Tensor, Tensor] | None:
        """Q, K, V from projections that run side by side as one product of their own (``joint``: a
        quantized Linear on fbgemm, whose packed weights are concatenated once and kept), or None."""
        joint = getattr(self.w_q, "joint", None)
        if joint is None or torch.compiler.is_compiling() or query.dtype != torch.float32 or query.device.type != "cpu":
            return None  # (fbgemm: fp32 on the CPU; anything else takes each layer's own forward)
        if key_value is query:
            product = joint(self.w_k, self.w_v)
            return None if product is None else product(query).split(self.d_inner, dim=-1)
        product = self.w_k.joint(self.w_v) if hasattr(self.w_k, "joint") else None
        return None if product is None else (self.w_q(query), *product(key_value).split(self.d_inner, dim=-1))

    def _plain_projections(self) -> bool:
        """Fusing reads the three weight matrices directly, which is only right for plain
        ``nn.Linear``: a replaced projection (LoRA, a quantized Linear) must run its own forward."""
        return type(self.w_q) is nn.Linear and type(self.w_k) is nn.Linear and type(self.w_v) is nn.Linear

    def _patterned(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, pos: Tensor | None, p: float) -> Tensor:
        """Self-attention under ``self.pattern``, from a key-padding mask; a distance bias (ALiBi, T5) is
        asked for the slots each block needs, read through the positions ``pos`` (T,)."""
        if mask is not None and mask.size(-2) != 1:
            raise ValueError(f"mask: with an attention pattern, a key-padding mask (B, 1, 1, T_k) or none (the pattern "
                             f"holds the rest), got {tuple(mask.shape)}")
        keep = None if mask is None else mask[:, 0, 0, :].expand(q.size(0), -1)
        bias = score_mod = None
        if pos is not None and self.position.biases_scores:
            last = pos.numel() - 1

            def bias(q_slots: Tensor, k_slots: Tensor) -> Tensor:
                return self.position.score_bias(pos[q_slots.clamp(0, last)], pos[k_slots.clamp(0, last)])

            score_mod = self.position.score_mod(pos)  # the same bias, elementwise, for FlexAttention
        if self.impl == "reference":
            return self.pattern.reference(q, k, v, keep, bias, p)
        return self.pattern.attend(q, k, v, keep, bias, p, score_mod=score_mod)

    def _split(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, self.d_head).transpose(1, 2)  # (B, H, T, Dh)

    def forward(
        self,
        query: Tensor,
        key_value: Tensor,
        mask: Tensor | None = None,
        q_pos: Tensor | None = None,
        k_pos: Tensor | None = None,
        need_weights: bool = False,
        cache: AttentionCache | None = None,
    ) -> AttentionResult:
        """Shapes: query (B, T_q, D), key_value (B, T_k, D), mask -> (B, H, T_q, T_k) broadcast.

        Returns output (B, T_q, D) and, with ``need_weights``, weights (B, H, T_q, T_k).
        With ``cache``, the keys are the cached ones followed by the new ones (T_k counts both);
        ``k_pos`` are the new keys' positions.
        """
        if query.dim() != 3 or query.size(-1) != self.d_model:
            raise ValueError(f"query: expected (B, T_q, {self.d_model}), got {tuple(query.shape)}")
        if key_value.dim() != 3 or key_value.size(-1) != self.d_model or key_value.size(0) != query.size(0):
            raise ValueError(
                f"key_value: expected (B={query.size(0)}, T_k, {self.d_model}), got {tuple(key_value.shape)}"
            )
        b, t_q, _ = query.shape
        positioned = self.position is not None and q_pos is not None and k_pos is not None
        use_reference = (need_weights or self.impl == "reference" or self.score == "additive"
                         or (positioned and self.position.needs_weights))
        if cache is not None and cache.static and cache.k is not None:
            # cross-attention after the first step: the encoder's K/V are cached
            q, k, v = self._split(self.w_q(query)), cache.k, cache.v
        else:
            # Fusing pays off only for many rows: its weight concatenation (3·D² floats) costs as much
            # as the products themselves when one token is decoded (measured: 6% of a GPT-2 step).
            # Under torch.compile the row count is symbolic: one path, so one graph serves all sizes.
            few_rows = b * t_q < 32 and not torch.compiler.is_compiling()
            joint = None if use_reference else self._joint_projections(query, key_value)
            if joint is not None:
                q, k, v = joint
            elif use_reference or few_rows or not self._plain_projections():
                q, k, v = self.w_q(query), self.w_k(key_value), self.w_v(key_value)
            else:
                q, k, v = self._fused_projections(query, key_value)
            q, k, v = self._split(q), self._split(k), self._split(v)  # (B, H, T, Dh)
            if positioned:
                q, k = self.position.rotate_qk(q, k, q_pos, k_pos)
            if cache is not None:
                # Keys' positions are kept only for encodings that bias by distance (rotary has rotated k already).
                track = positioned and self.position.biases_scores
                k, v = cache.append(k, v, k_pos if track else None)  # (B, H, T_cached + T_new, Dh)
                k_pos = cache.positions(k.device) if track else k_pos
        if mask is CAUSAL and (self.pattern is not None or self.score == "additive"):
            mask = Causal.materialize(t_q, k.size(2), q.device)  # (eq. 1's two paths take it by name)
        if mask is not None and mask is not CAUSAL:
            check_mask(mask, b, self.n_heads, t_q, k.size(2))
        p = self.dropout if self.training else 0.0
        if self.pattern is not None:
            if cache is None and not need_weights and key_value is query and (q_pos is None or q_pos.dim() == 1):
                out = self._patterned(q, k, v, mask, q_pos if positioned else None, p)
                return AttentionResult(self.w_o(out.transpose(1, 2).reshape(b, t_q, self.d_inner)), None)
            # cached decoding, a segment memory or weights asked for: the pattern's rows of the query slots
            # (the last T_q of the keys), as a dense mask
            rows = self.pattern.rows(torch.arange(k.size(2) - t_q, k.size(2), device=q.device), k.size(2))[None, None]
            mask = rows if mask is None else rows & mask
        bias = value_term = None
        if positioned:
            bias = self.position.score_bias(q_pos, k_pos, q)
            if self.position.needs_weights:
                def value_term(weights: Tensor) -> Tensor:
                    return self.position.value_term(weights, q_pos, k_pos)

        if self.score == "additive":
            res = additive_attention(q, k, v, self.v_score, mask=mask, bias=bias, dropout_p=p, value_term=value_term)
        elif use_reference:
            res = reference_attention(q, k, v, mask=mask, bias=bias, dropout_p=p, value_term=value_term)
        else:
            res = fast_attention(q, k, v, mask=mask, bias=bias, dropout_p=p)
        out = res.output.transpose(1, 2).reshape(b, t_q, self.d_inner)  # (B, T_q, H·Dh)
        return AttentionResult(self.w_o(out), res.weights if need_weights else None)
