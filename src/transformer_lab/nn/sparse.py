"""Attention patterns for long sequences: which keys each query may see, each pattern with a readable
dense-masked reference and an efficient implementation whose memory grows as O(n·w), not O(n²).

* ``full``: every key (the paper's); the reference.
* ``window``: keys within ``window`` positions of the query, on both sides (bidirectional: 2w + 1
  keys; Longformer's ``attention_window`` is 2w) or before it (causal: w + 1 keys, as Mistral's
  sliding window). ``global_tokens`` (Longformer, bidirectional): those positions see every key, and
  every query sees them; one past a sequence's length is no token of it (a short text has none there).
* ``block``: BigBird's block-sparse pattern: the sequence in blocks of ``block`` positions; each query
  block sees its own block and its neighbours, the first ``global_blocks`` blocks (which see every
  key), and ``random_blocks`` other blocks drawn with ``seed``.
* ``chunked``: exact full attention, queries in chunks of ``chunk``: one chunk's scores (chunk × n) at
  a time instead of n × n; under autograd each chunk is recomputed in the backward pass
  (checkpointing), so training keeps that bound too.

Efficient forms: ``window`` cuts the queries into blocks of w and gives each block the keys it can see
(its span of keys, a strided view, then one batched SDPA over the blocks: scores of n × 3w);
``block`` gathers each query block's key blocks the same way. Both pad the sequence to whole blocks,
and a padded or fully masked query row gets zeros, as in ``attention.fast_attention``. Long no-gradient
window calls run on PyTorch's FlexAttention instead (``attend``'s ``backend``; ALiBi and T5 as its
``score_mod``), measured faster there; it has no backward on CPU, so training always takes the SDPA path.

Inputs: q, k, v (B, H, n, Dh) of one sequence (self-attention, keys at the queries' positions);
``keep`` (B, n) bool, True = a real token (key padding), or None. Window and block sizes larger than
the sequence are clamped to it (the pattern is then full attention, or as close as its shape allows).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention.flex_attention import create_block_mask, flex_attention
from torch.utils.checkpoint import checkpoint

from transformer_lab.nn.attention import fast_attention, reference_attention
from transformer_lab.nn.positions import POSITION_ENCODINGS

KINDS = ("full", "window", "block", "chunked")


@dataclass(frozen=True)
class Pattern:
    kind: str = "full"
    causal: bool = False
    window: int = 256  # window: keys on each side (causal: before)
    global_tokens: tuple[int, ...] = field(default_factory=tuple)  # window: positions with full attention
    block: int = 64  # block: positions per block
    global_blocks: int = 1  # block: leading blocks with full attention
    random_blocks: int = 1  # block: random key blocks per query block
    seed: int = 0  # block: the random blocks' draw
    chunk: int = 1024  # chunked: queries per chunk

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"pattern: expected one of {KINDS}, got {self.kind!r}")
        for name in ("window", "block", "chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected a positive size, got {getattr(self, name)}")
        if self.global_blocks < 0 or self.random_blocks < 0:
            raise ValueError("global_blocks, random_blocks: expected counts >= 0")
        if any(t < 0 for t in self.global_tokens):
            raise ValueError(f"global_tokens: positions from 0, got {list(self.global_tokens)}")
        if self.global_tokens and (self.kind != "window" or self.causal):
            raise ValueError("global_tokens: Longformer's global attention is for a bidirectional window pattern; "
                             f"got kind={self.kind!r}, causal={self.causal}")

    def attend(self, q: Tensor, k: Tensor, v: Tensor, keep: Tensor | None = None, bias: "Bias | None" = None,
               dropout_p: float = 0.0, backend: str = "auto", score_mod: Callable | None = None) -> Tensor:
        """``attend`` with this pattern (what ``MultiHeadAttention`` calls)."""
        return attend(q, k, v, self, keep, bias, dropout_p, backend, score_mod)

    def reference(self, q: Tensor, k: Tensor, v: Tensor, keep: Tensor | None = None, bias: "Bias | None" = None,
                  dropout_p: float = 0.0) -> Tensor:
        """``reference`` with this pattern."""
        return reference(q, k, v, self, keep, bias, dropout_p)

    # --- which keys: the dense mask, for the reference, the tests and cached decoding -------------
    def dense_mask(self, n: int, device: torch.device | str = "cpu") -> Tensor:
        """(n, n) bool, True = query i may see key j."""
        return self.rows(torch.arange(n, device=device), n)

    def rows(self, queries: Tensor, n: int) -> Tensor:
        """The mask rows of the query slots ``queries`` (T_q,) over keys 0..n-1: (T_q, n) bool. What a
        decoding step with a K/V cache uses (its one query at slot n - 1)."""
        device = queries.device
        i = queries[:, None]
        j = torch.arange(n, device=device)[None, :]
        if self.kind in ("full", "chunked"):
            allowed = torch.ones(len(queries), n, dtype=torch.bool, device=device)
        elif self.kind == "window":
            allowed = _in_window(i, j, self.window, self.causal, self.global_flags(n, device))
        else:
            b = min(self.block, n)
            allowed = self.block_matrix(n, device)[i // b, j // b]
        if self.causal:
            allowed = allowed & (j <= i)
        return allowed

    def global_flags(self, n: int, device: torch.device | str = "cpu") -> Tensor | None:
        """Window: (n,) bool, True at the global tokens; None without any."""
        if not self.global_tokens:
            return None
        g = _tokens_within(self.global_tokens, n, device)
        return torch.zeros(n, dtype=torch.bool, device=device).index_fill_(0, g, True)

    def block_matrix(self, n: int, device: torch.device | str = "cpu") -> Tensor:
        """Block-sparse: (nb, nb) bool, True = query block a sees key block b (before causality)."""
        ids = block_index(n, min(self.block, n), self.global_blocks, self.random_blocks, self.seed, self.causal).to(device)
        nb = ids.size(0)
        blocks = torch.zeros(nb, nb, dtype=torch.bool, device=device)
        valid = ids >= 0
        blocks[torch.arange(nb, device=device)[:, None].expand_as(ids)[valid], ids[valid]] = True
        blocks[: min(self.global_blocks, nb)] = True  # global query blocks see everything
        return blocks


def parse_pattern(spec: str, causal: bool = False, position: str | None = None) -> Pattern | None:
    """A pattern from its command-line spelling (None for "full"): ``window:256``,
    ``window:256,global:0`` (global positions joined by +, e.g. ``global:0+511``), ``block:64``
    with ``random:R``, ``global:G`` (blocks) and ``seed:S``, ``chunked:1024``. ``position``: the model's
    encoding, refused if it needs the attention weights (Shaw's), which the patterns never form."""
    kind, _, rest = spec.strip().partition(":")
    if kind == "full" and not rest:
        return None
    sizes = {"window": "window", "block": "block", "chunked": "chunk"}
    if kind not in sizes or not rest:
        raise ValueError(f"attention: expected full, window:W, block:B or chunked:C (with options), got {spec!r}")
    first, *options = rest.split(",")
    fields: dict = {"kind": kind, "causal": causal}
    try:
        fields[sizes[kind]] = int(first)
        for opt in options:
            key, _, value = opt.partition(":")
            if kind == "window" and key == "global":
                fields["global_tokens"] = tuple(int(x) for x in value.split("+"))
            elif kind == "block" and key in ("random", "global", "seed"):
                fields[{"random": "random_blocks", "global": "global_blocks", "seed": "seed"}[key]] = int(value)
            else:
                raise ValueError
    except ValueError:
        raise ValueError(f"attention: cannot read {spec!r}; e.g. window:256, window:256,global:0, "
                         "block:64,random:1,global:1, chunked:1024") from None
    pattern = Pattern(**fields)
    if position in POSITION_ENCODINGS and POSITION_ENCODINGS[position].needs_weights:
        raise ValueError(f"attention: {spec!r} with position {position!r}: its value term needs the attention weights, "
                         "which the efficient patterns never form")
    return pattern


def padding_changes_rows(spec: str) -> bool:
    """Whether a right-padded row of a bidirectional stack under the pattern ``spec`` computes other than
    it would alone: BigBird's random blocks are drawn among the padded length's blocks (the window, the
    neighbouring and global blocks, and chunks do not move)."""
    pattern = parse_pattern(spec)
    return pattern is not None and pattern.kind == "block" and pattern.random_blocks > 0


def _in_window(i: Tensor, j: Tensor, w: int, causal: bool, glob: Tensor | None) -> Tensor:
    """The window rule, elementwise: query slot i may see key slot j (index tensors that broadcast, or
    FlexAttention's per-element indices). Global slots see and are seen by every slot."""
    ok = ((i - j) <= w) & ((j <= i) if causal else ((j - i) <= w))
    return ok if glob is None else ok | glob[i] | glob[j]


def _tokens_within(tokens: tuple[int, ...], n: int, device: torch.device | str) -> Tensor:
    """The global positions a sequence of ``n`` holds, as an index tensor (a position past its end, as a
    trained ``global:0+60`` on a 20-token text, is no token of it: as its padding would be)."""
    return torch.tensor(sorted({t for t in tokens if t < n}), dtype=torch.long, device=device)


@functools.lru_cache(maxsize=64)  # a cached decoding step asks for it in every layer: drawn once per shape
def block_index(n: int, b: int, global_blocks: int, random_blocks: int, seed: int, causal: bool = False) -> Tensor:
    """BigBird's key blocks for each query block: (n_blocks, K) block ids, -1 for "none" (an edge,
    or a block already chosen). K = 3 neighbours + global + random. Random blocks are drawn without
    repeats from the blocks not already chosen (causal: from the earlier ones), one seeded draw."""
    nb = math.ceil(n / b)
    g = torch.Generator().manual_seed(seed)
    rows = []
    for qb in range(nb):
        chosen = [qb - 1, qb] if causal else [qb - 1, qb, qb + 1]
        chosen += list(range(min(global_blocks, nb)))
        picked = {c for c in chosen if 0 <= c < nb}
        pool = [c for c in range(qb if causal else nb) if c not in picked]
        extra = [pool[i] for i in torch.randperm(len(pool), generator=g)[:random_blocks].tolist()] if pool else []
        row, seen = [], set()
        for c in chosen + extra:
            ok = 0 <= c < nb and c not in seen
            row.append(c if ok else -1)
            seen.add(c)
        row += [-1] * ((3 if not causal else 2) + global_blocks + random_blocks - len(row))
        rows.append(row)
    return torch.tensor(rows, dtype=torch.long)


# --- the readable path ------------------------------------------------------------------------------
Bias = Callable[[Tensor, Tensor], Tensor]  # (query slots, key slots) -> score bias, see ``attend``


def reference(q: Tensor, k: Tensor, v: Tensor, pattern: Pattern, keep: Tensor | None = None,
              bias: Bias | None = None, dropout_p: float = 0.0) -> Tensor:
    """Explicit softmax under the pattern's dense (n, n) mask: O(n²) memory, every rule visible."""
    n = q.size(-2)
    mask = pattern.dense_mask(n, q.device)[None, None]  # (1, 1, n, n)
    if keep is not None:
        mask = mask & keep[:, None, None, :]
    slots = torch.arange(n, device=q.device)
    return reference_attention(q, k, v, mask, None if bias is None else bias(slots, slots), dropout_p).output


# --- the efficient paths ----------------------------------------------------------------------------
def attend(q: Tensor, k: Tensor, v: Tensor, pattern: Pattern, keep: Tensor | None = None,
           bias: Bias | None = None, dropout_p: float = 0.0, backend: str = "auto",
           score_mod: Callable | None = None) -> Tensor:
    """The pattern's efficient implementation; equals ``reference`` (see the module docstring).
    ``bias(query_slots, key_slots)``: a relative-position score bias (ALiBi, T5) for the slots asked:
    (T_q,), (T_k,) -> (1|B, H, T_q, T_k), or one row of slots per block, (g, c), (g, s) -> (g, H, c, s);
    slots outside 0..n-1 (padding) may be asked, and are masked. ``dropout_p``: on the attention weights
    (training). ``backend``: "sdpa" (groups of blocks on SDPA), "flex" (PyTorch's FlexAttention, compiled,
    the window as a block mask; window patterns without gradient or key padding, a bias only given also as
    ``score_mod``, FlexAttention's elementwise form of it), or "auto": flex where it
    can run and the sequence is at least ``FLEX_MIN_N`` long (it measured 2.5x the SDPA path's forward at
    16k on this CPU, after a compile of 4-9 s per length), else sdpa."""
    if backend not in ("auto", "sdpa", "flex"):
        raise ValueError(f"backend: expected auto, sdpa or flex, got {backend!r}")
    if q.dim() != 4 or q.shape != k.shape or k.shape != v.shape:
        raise ValueError(f"q, k, v: expected three (B, H, n, Dh) tensors of one shape, got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if keep is not None and keep.shape != (q.size(0), q.size(2)):
        raise ValueError(f"keep: expected (B, n) = {(q.size(0), q.size(2))}, got {tuple(keep.shape)}")
    # Window patterns only: torch 2.13's inductor emits C++ that does not compile for the block-sparse
    # mask (a captured block table indexed by i // size) on CPU.
    flex_ok = (pattern.kind == "window" and keep is None and (bias is None or score_mod is not None) and dropout_p == 0.0
               and not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)))
    if backend == "flex" and not flex_ok:
        raise ValueError("backend: flex runs window patterns without key padding, bias, dropout or gradients "
                         "(FlexAttention has no backward on CPU; the block-sparse mask does not compile there)")
    if flex_ok and (backend == "flex" or (backend == "auto" and q.size(2) >= FLEX_MIN_N and _flex_room(
            _flex_key(q, pattern, score_mod)))):
        return _flex(q, k, v, pattern, score_mod)
    if pattern.kind == "full":
        return _full(q, k, v, pattern.causal, keep, 0, bias, dropout_p=dropout_p)
    if pattern.kind == "chunked":
        return _chunked(q, k, v, pattern, keep, bias, dropout_p)
    if pattern.kind == "window":
        return _window(q, k, v, pattern, keep, bias, dropout_p)
    return _block_sparse(q, k, v, pattern, keep, bias, dropout_p)


FLEX_MIN_N = 2048  # "auto" takes FlexAttention for sequences at least this long (no-gradient calls)
# Each (length, pattern, bias) is compiled with static shapes: torch 2.13's inductor emits C++ that does
# not compile for FlexAttention with dynamic shapes on CPU (`cur_kvSplitSize2` undeclared), which Dynamo
# would switch to on a second length. Dynamo keeps 8 graphs per function; "auto" uses at most
# FLEX_MAX_GRAPHS of them and sends other shapes to the SDPA path.
FLEX_MAX_GRAPHS = 6
_FLEX_MASKS: dict[tuple, object] = {}  # (pattern, n, device) -> BlockMask: building one takes seconds at 16k
_FLEX_GRAPHS: set[tuple] = set()
_flex_attention = None  # torch.compile(flex_attention, dynamic=False), made on first use


def _flex_key(q: Tensor, p: Pattern, score_mod: Callable | None) -> tuple:
    return q.shape, q.dtype, str(q.device), p, None if score_mod is None else score_mod.__qualname__


def _flex_room(key: tuple) -> bool:
    return key in _FLEX_GRAPHS or len(_FLEX_GRAPHS) < FLEX_MAX_GRAPHS


def _mask_mod(p: Pattern, n: int, device: torch.device) -> Callable:
    """The window pattern as FlexAttention's mask_mod(b, h, i, j) -> bool."""
    w, glob = min(p.window, n - 1) if n > 1 else 1, p.global_flags(n, device)

    def window(b, h, i, j):
        return _in_window(i, j, w, p.causal, glob)
    return window


def _flex(q: Tensor, k: Tensor, v: Tensor, p: Pattern, score_mod: Callable | None = None) -> Tensor:
    global _flex_attention
    n = q.size(2)
    key = (p, n, str(q.device))
    if key not in _FLEX_MASKS:
        if len(_FLEX_MASKS) >= 8:
            _FLEX_MASKS.pop(next(iter(_FLEX_MASKS)))
        _FLEX_MASKS[key] = create_block_mask(_mask_mod(p, n, q.device), None, None, n, n, device=q.device)
    if _flex_attention is None:
        _flex_attention = torch.compile(flex_attention, dynamic=False)
    _FLEX_GRAPHS.add(_flex_key(q, p, score_mod))
    return _flex_attention(q, k, v, score_mod=score_mod, block_mask=_FLEX_MASKS[key])


def _block_bias(bias: Bias | None, q_slots: Tensor, k_slots: Tensor) -> Tensor | None:
    """bias for one row of slots per block, laid out as the blocks' scores: (1, H, g, c, s)."""
    return None if bias is None else bias(q_slots, k_slots).transpose(0, 1)[None]


def _full(q: Tensor, k: Tensor, v: Tensor, causal: bool, keep: Tensor | None, offset: int = 0,
          bias: Bias | None = None, queries: Tensor | None = None, dropout_p: float = 0.0) -> Tensor:
    """Queries (slots offset..offset + T_q - 1, or ``queries``) against every key, causal or not, in
    one SDPA call."""
    slots = torch.arange(offset, offset + q.size(2), device=q.device) if queries is None else queries
    b = None if bias is None else bias(slots, torch.arange(k.size(2), device=q.device))
    if keep is None and not causal and b is None:
        return fast_attention(q, k, v, dropout_p=dropout_p).output  # (under CPU compile: the hashed mask)
    mask = None
    if causal:
        mask = (torch.arange(k.size(2), device=q.device)[None, :] <= slots[:, None])[None, None]
    if keep is not None:
        pad = keep[:, None, None, :]
        mask = pad if mask is None else mask & pad
    return fast_attention(q, k, v, mask, bias=b, dropout_p=dropout_p).output


def _chunked(q: Tensor, k: Tensor, v: Tensor, p: Pattern, keep: Tensor | None, bias: Bias | None,
             dropout_p: float = 0.0) -> Tensor:
    outs = []
    for s in range(0, q.size(2), p.chunk):
        part = q[:, :, s:s + p.chunk]
        if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
            # (checkpoint replays the RNG state: a recomputed chunk drops the same weights)
            outs.append(checkpoint(_full, part, k, v, p.causal, keep, s, bias, None, dropout_p, use_reentrant=False))
        else:
            outs.append(_full(part, k, v, p.causal, keep, s, bias, None, dropout_p))
    return torch.cat(outs, dim=2)


def _blocks(x: Tensor, size: int) -> Tensor:
    """(B, H, n_pad, Dh) -> (B, H, n_pad / size, size, Dh)."""
    b, h, n, d = x.shape
    return x.view(b, h, n // size, size, d)


GROUP_BYTES = 32 * 2**20  # float32 scores per SDPA call: the working memory of the block patterns


def _grouped(qb: Tensor, keys: Callable[[slice], tuple[Tensor, Tensor, Tensor, Tensor | None]], span: int,
             dropout_p: float = 0.0) -> Tensor:
    """Attention over blocks, a group of blocks per SDPA call so that one call's scores stay under
    ``GROUP_BYTES`` whatever n: qb (B, H, nb, c, Dh); ``keys(blocks)`` gives those blocks' keys and
    values (B, H, g, span, Dh), mask (B|1, 1, g, c, span) and bias (1, H, g, c, span) or None. A query
    row with no key gets zeros (``fast_attention``'s guard). -> (B, H, nb, c, Dh)."""
    b, h, nb, c, d = qb.shape
    group = max(1, GROUP_BYTES // (b * h * c * span * 4))
    out = qb.new_empty(qb.shape)
    for s0 in range(0, nb, group):
        blocks = slice(s0, min(nb, s0 + group))
        kb, vb, mask, bias = keys(blocks)
        out[:, :, blocks] = fast_attention(qb[:, :, blocks], kb, vb, mask, bias, dropout_p).output
    return out


def _window(q: Tensor, k: Tensor, v: Tensor, p: Pattern, keep: Tensor | None, bias: Bias | None,
            dropout_p: float = 0.0) -> Tensor:
    b, h, n, d = q.shape
    w = min(p.window, n - 1) if n > 1 else 1
    c = w  # queries per block: each block then sees c + 2w keys (causal c + w)
    nb = math.ceil(n / c)
    n_pad = nb * c
    left, right = w, (0 if p.causal else w)
    span = c + left + right
    if keep is None:
        keep = torch.ones(b, n, dtype=torch.bool, device=q.device)
    # Keys padded by w on the left and w (plus the queries' padding) on the right; block i's keys are
    # the padded positions i·c .. i·c + span - 1, i.e. original positions i·c - w .. i·c + c - 1 + w.
    pad = (0, 0, left, n_pad - n + right)
    kw = F.pad(k, pad).unfold(2, span, c).transpose(-1, -2)  # (B, H, nb, span, Dh): a view
    vw = F.pad(v, pad).unfold(2, span, c).transpose(-1, -2)
    key_ok = F.pad(keep, (left, n_pad - n + right), value=False).unfold(1, span, c)  # (B, nb, span)
    a = torch.arange(c, device=q.device)[:, None]
    s_ = torch.arange(span, device=q.device)[None, :]
    band = (s_ >= a) & (s_ <= a + left + right)  # query i = start + a, key j = start - w + s: -right <= i - j <= w
    g = _tokens_within(p.global_tokens, n, q.device)

    def keys(blocks: slice) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        kb, vb = kw[:, :, blocks], vw[:, :, blocks]
        mask = band[None, None, None] & key_ok[:, None, blocks, None, :]  # (B, 1, g, c, span)
        starts = torch.arange(blocks.start, blocks.stop, device=q.device)[:, None] * c  # (g, 1)
        q_slots, k_slots = starts + a[:, 0], starts - left + s_[0]  # (g, c), (g, span)
        if len(g):  # every block also sees the global keys, unless the band already holds them
            shape = (b, h, kb.size(2), len(g), d)
            kb = torch.cat([kb, k[:, :, g][:, :, None].expand(shape)], dim=3)
            vb = torch.cat([vb, v[:, :, g][:, :, None].expand(shape)], dim=3)
            i = torch.arange(blocks.start, blocks.stop, device=q.device)[:, None, None] * c + a[None]  # (g, c, 1)
            outside = (i - g).abs() > w
            mask = torch.cat([mask, outside[None, None] & keep[:, None, None, None, g]], dim=-1)
            k_slots = torch.cat([k_slots, g.expand(k_slots.size(0), -1)], dim=1)
        return kb, vb, mask, _block_bias(bias, q_slots, k_slots)

    qb = _blocks(F.pad(q, (0, 0, 0, n_pad - n)), c)
    out = _grouped(qb, keys, span + len(g), dropout_p).reshape(b, h, n_pad, d)[:, :, :n]
    if len(g):
        out = out.clone()
        out[:, :, g] = _full(q[:, :, g], k, v, False, keep, bias=bias, queries=g, dropout_p=dropout_p)  # every key
    return out


def _block_sparse(q: Tensor, k: Tensor, v: Tensor, p: Pattern, keep: Tensor | None, bias: Bias | None,
                  dropout_p: float = 0.0) -> Tensor:
    b, h, n, d = q.shape
    size = min(p.block, n)
    ids = block_index(n, size, p.global_blocks, p.random_blocks, p.seed, p.causal).to(q.device)  # (nb, K)
    nb, kk = ids.shape
    n_pad = nb * size
    if keep is None:
        keep = torch.ones(b, n, dtype=torch.bool, device=q.device)
    pad = (0, 0, 0, n_pad - n)
    safe = ids.clamp(min=0)
    k_blocks, v_blocks = _blocks(F.pad(k, pad), size), _blocks(F.pad(v, pad), size)
    ok_blocks = F.pad(keep, (0, n_pad - n), value=False).view(b, nb, size)
    offsets = torch.arange(size, device=q.device)

    def keys(blocks: slice) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        chosen = safe[blocks]  # (g, K): each query block's key blocks, gathered for this group only
        kb, vb = k_blocks[:, :, chosen].flatten(3, 4), v_blocks[:, :, chosen].flatten(3, 4)  # (B, H, g, K·size, Dh)
        ok = (ok_blocks[:, chosen] & (ids[blocks] >= 0)[None, :, :, None]).flatten(2)  # (B, g, K·size)
        mask = ok[:, None, :, None, :].expand(b, 1, chosen.size(0), size, kk * size)
        i = torch.arange(blocks.start, blocks.stop, device=q.device)[:, None] * size + offsets  # (g, size)
        j = (chosen[:, :, None] * size + offsets).flatten(1)  # (g, K·size)
        if p.causal:
            mask = mask & (j[:, None, :] <= i[:, :, None])[None, None]
        return kb, vb, mask, _block_bias(bias, i, j)

    out = _grouped(_blocks(F.pad(q, pad), size), keys, kk * size, dropout_p).reshape(b, h, n_pad, d)[:, :, :n]
    rows = min(p.global_blocks, nb) * size
    if rows:  # global query blocks see every key
        out = out.clone()
        out[:, :, :rows] = _full(q[:, :, :rows], k, v, p.causal, keep, 0, bias, dropout_p=dropout_p)
    return out
