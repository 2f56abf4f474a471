"""Position encodings, and the interface every variant plugs into.

Attention is permutation-invariant, so order has to be injected. Two families exist:

* absolute encodings are added to the token embeddings once, at the bottom of the stack
  (the paper's sinusoids, §3.5; BERT/GPT's learned table);
* relative encodings act inside attention: rotary rotates q and k; ALiBi and T5 add a bias to the
  scores that depends on the distance i - j only; Shaw et al. add learned distance vectors to the
  keys and to the values.

``PositionEncoding`` has one hook for each place, so a new variant overrides the hook it needs and
no layer changes: embeddings call ``add_to_embeddings``; self-attention calls ``rotate_qk``,
``score_bias`` and ``value_term``. Positions are explicit integer tensors (not "0..T-1" implied), so
a KV cache or left-padded batch can pass the true positions (a cache keeps its keys' positions).

Each model builds one encoding and hands it to every self-attention layer through ``for_layer``:
the same object (T5's bias is shared by the layers of a stack, as in T5), or one per layer (Shaw's
tables, as in the paper). ``directional`` encodings differ between a bidirectional stack (BERT, an
encoder: |i - j| matters both ways) and a causal one (GPT, a decoder): the encoder-decoder builds one
of each.

Shapes: B batch, T length, D model width, H heads, Dh head width.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from transformer_lab.nn.checks import skip_value_checks


class PositionEncoding(nn.Module):
    """Base class: every hook defaults to "no position information here"."""

    max_len: int | None = None  # longest position the encoding can represent (None: unbounded)
    acts_in_attention: bool = False  # True for variants that override rotate_qk, score_bias or value_term
    needs_weights: bool = False  # True: value_term reads the attention weights (the explicit softmax path)
    directional: bool = False  # True: a causal stack builds its own instance (``causal=True``)
    biases_scores: bool = False  # True for variants whose score_bias returns a bias (ALiBi, T5, Shaw)

    def add_to_embeddings(self, x: Tensor, positions: Tensor) -> Tensor:
        """Shapes: x (B, T, D), positions (T,) or (B, T) -> (B, T, D)."""
        return x

    def rotate_qk(self, q: Tensor, k: Tensor, q_pos: Tensor, k_pos: Tensor) -> tuple[Tensor, Tensor]:
        """Shapes: q (B, H, T_q, Dh), k (B, H, T_k, Dh) -> same."""
        return q, k

    def score_bias(self, q_pos: Tensor, k_pos: Tensor, q: Tensor | None = None) -> Tensor | None:
        """Additive bias to q·kᵀ/√d_k, broadcastable to (B, H, T_q, T_k); None for none. ``q`` (B, H,
        T_q, Dh): the queries, for a bias that depends on them (Shaw's)."""
        return None

    def value_term(self, weights: Tensor, q_pos: Tensor, k_pos: Tensor) -> Tensor | None:
        """Added to the attention output weights @ v: (B, H, T_q, T_k) -> (B, H, T_q, Dh); None for none."""
        return None

    def score_mod(self, positions: Tensor):
        """The same score bias as FlexAttention's score_mod(score, b, h, i, j) for sequence slots i, j at
        ``positions`` (T,); None where there is no such elementwise form (or no bias)."""
        return None

    def for_layer(self) -> "PositionEncoding":
        """The instance one attention layer uses: this one (shared), unless a variant has per-layer weights."""
        return self

    def check_positions(self, positions: Tensor) -> None:
        """Values, so a host sync: skipped while torch.compile traces and inside ``nn.checks.values_checked()``
        (callers check lengths by shape, ``check_length``)."""
        if skip_value_checks():
            return
        if not positions.numel():
            return
        lo, hi = torch.stack(torch.aminmax(positions)).tolist()  # one read back, not two
        if self.max_len is not None and hi >= self.max_len:
            self._too_long(hi)
        if lo < 0:
            raise ValueError(f"positions: expected non-negative positions, got {lo}")

    def check_length(self, n: int) -> None:
        """ValueError unless positions 0..n-1 fit the table (by shape: no host sync)."""
        if self.max_len is not None and n > self.max_len:
            self._too_long(n - 1)

    def _too_long(self, position: int) -> None:
        raise ValueError(
            f"positions: sequence needs position {position}, but the position table holds max_len={self.max_len} "
            f"positions (0..{self.max_len - 1}); shorten the input or build the model with a larger max_len"
        )


def sinusoid_table(max_len: int, d_model: int) -> Tensor:
    """The paper's table (§3.5): PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(same).

    Computed in float64 and returned in float32: in float32 the argument pos·ω_i already carries a
    rounding error of about pos·6e-8, which would break the exact linear relation between
    PE(pos + k) and PE(pos) that the sinusoids were chosen for.
    Shapes: -> (max_len, d_model).
    """
    if d_model % 2:
        raise ValueError(f"d_model: the sinusoidal table needs an even width, got {d_model}")
    pos = torch.arange(max_len, dtype=torch.float64)[:, None]  # (L, 1)
    omega = torch.exp(-math.log(10000.0) * torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    table = torch.empty(max_len, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * omega)
    table[:, 1::2] = torch.cos(pos * omega)
    return table.float()


class SinusoidalPositionEncoding(PositionEncoding):
    """Fixed sinusoids added to the embeddings; no parameters (a non-persistent buffer)."""

    def __init__(self, d_model: int, max_len: int = 5000):
        super().__init__()
        self.max_len = max_len
        self.register_buffer("table", sinusoid_table(max_len, d_model), persistent=False)

    def add_to_embeddings(self, x: Tensor, positions: Tensor) -> Tensor:
        self.check_positions(positions)
        return x + self.table[positions].to(x.dtype)


class LearnedPositionEmbedding(PositionEncoding):
    """A trained table of max_len vectors (BERT, GPT; the paper found it "nearly identical", §3.5)."""

    def __init__(self, d_model: int, max_len: int = 512):
        super().__init__()
        self.max_len = max_len
        self.embedding = nn.Embedding(max_len, d_model)

    def add_to_embeddings(self, x: Tensor, positions: Tensor) -> Tensor:
        self.check_positions(positions)
        return x + self.embedding(positions)


class RotaryPositionEncoding(PositionEncoding):
    """Rotary position embedding (Su et al. 2021, RoFormer): inside each head, the pair
    (x_2i, x_2i+1) of q and of k is rotated by the angle pos·θ_i, θ_i = 10000^(-2i/Dh), the
    frequencies of the paper's sinusoids. A rotation by m·θ against one by n·θ leaves
    q_m·k_n a function of m - n only: relative position, with no parameters and no length limit.
    Nothing is added to the embeddings.
    """

    acts_in_attention = True

    def __init__(self, d_head: int, base: float = 10000.0):
        super().__init__()
        if d_head % 2:
            raise ValueError(f"d_head: rotary needs an even head width, got {d_head}")
        self.d_head, self.base = d_head, base

    def _rotate(self, x: Tensor, pos: Tensor) -> Tensor:
        # Angles always in float32, whatever the model's dtype: in bf16, positions 256 and 257 are
        # the same number, and pos·θ loses whole radians.
        theta = self.base ** (-torch.arange(0, self.d_head, 2, dtype=torch.float32, device=x.device) / self.d_head)
        angles = pos.to(torch.float32)[..., None] * theta  # (T, Dh/2) or (B, T, Dh/2)
        if angles.dim() == 3:
            angles = angles[:, None]  # (B, 1, T, Dh/2): one position row per sequence
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        x_even, x_odd = x[..., 0::2], x[..., 1::2]  # (B, H, T, Dh/2) each
        out = torch.stack([x_even * cos - x_odd * sin, x_even * sin + x_odd * cos], dim=-1)
        return out.flatten(-2)  # (B, H, T, Dh), pairs interleaved back

    def rotate_qk(self, q: Tensor, k: Tensor, q_pos: Tensor, k_pos: Tensor) -> tuple[Tensor, Tensor]:
        return self._rotate(q, q_pos), self._rotate(k, k_pos)


def alibi_slopes(n_heads: int) -> Tensor:
    """ALiBi's head slopes (Press et al. 2022, §3): for n heads, a power of two, the geometric
    sequence m_h = 2^(-8h/n), h = 1..n (8 heads: 1/2, 1/4, ..., 1/256). Otherwise the paper's
    recipe: the slopes of the largest power of two below n, then every other slope of twice that
    power, until n. Shapes: -> (H,)."""
    def geometric(n: int) -> list[float]:
        return [2.0 ** (-8.0 * h / n) for h in range(1, n + 1)]

    if n_heads <= 0:
        raise ValueError(f"n_heads: expected a positive count, got {n_heads}")
    power = 2 ** int(math.floor(math.log2(n_heads)))
    slopes = geometric(power)
    if power < n_heads:
        slopes += geometric(2 * power)[0::2][: n_heads - power]
    return torch.tensor(slopes, dtype=torch.float32)


def _distance(q_pos: Tensor, k_pos: Tensor) -> Tensor:
    """i - j for every query position i and key position j: (T_q,), (T_k,) -> (1, 1, T_q, T_k), or
    (B, 1, T_q, T_k) when either holds one row of positions per sequence."""
    d = q_pos[..., :, None] - k_pos[..., None, :]
    return d[None, None] if d.dim() == 2 else d[:, None]


class ALiBi(PositionEncoding):
    """Attention with linear biases (Press et al. 2022): no embeddings; head h adds -m_h·(i - j) to the
    score of query i on key j (``alibi_slopes``). Causal: keys j > i are masked anyway. Bidirectional
    (an encoder or BERT; the paper defines only the causal form): -m_h·|i - j|, each direction alike.
    No parameters and no length limit: it was made to extrapolate past the training length."""

    acts_in_attention = True
    biases_scores = True
    directional = True

    def __init__(self, n_heads: int, causal: bool = True):
        super().__init__()
        self.causal = causal
        self.register_buffer("slopes", alibi_slopes(n_heads), persistent=False)

    def score_bias(self, q_pos: Tensor, k_pos: Tensor, q: Tensor | None = None) -> Tensor:
        d = _distance(q_pos, k_pos).to(self.slopes.dtype)
        d = d if self.causal else d.abs()
        return -self.slopes[:, None, None] * d  # (B|1, H, T_q, T_k)

    def score_mod(self, positions: Tensor):
        slopes, pos = self.slopes, positions

        def alibi(score, b, h, i, j):
            d = (pos[i] - pos[j]).to(score.dtype)
            return score - slopes[h] * (d if self.causal else d.abs())
        return alibi


def t5_bucket(relative: Tensor, bidirectional: bool, n_buckets: int = 32, max_distance: int = 128) -> Tensor:
    """T5's bucket of each relative position j - i (Raffel et al. 2020, §2.1; the T5 code's
    ``_relative_position_bucket``): half the buckets for each direction when bidirectional (keys after
    the query in the upper half), only the past when causal (a future key falls in bucket 0). Of each
    direction's b buckets, distances 0..b/2-1 get one bucket each; longer ones share the rest
    logarithmically up to ``max_distance``, and everything farther shares the last."""
    bucket = torch.zeros_like(relative)
    if bidirectional:
        n_buckets //= 2
        bucket = bucket + (relative > 0).long() * n_buckets
        distance = relative.abs()
    else:
        distance = (-relative).clamp(min=0)
    exact = n_buckets // 2
    log_ratio = torch.log(distance.float().clamp(min=1) / exact) / math.log(max_distance / exact)
    far = (exact + (log_ratio * (n_buckets - exact)).long()).clamp(max=n_buckets - 1)
    return bucket + torch.where(distance < exact, distance, far)


class T5RelativeBias(PositionEncoding):
    """T5's relative position bias: a learned scalar per head for each bucket of j - i (``t5_bucket``),
    added to the scores; one table shared by every layer of a stack. T5 itself does not divide q·k
    by √d_k (it folds the scale into the initialisation); here the bias is added after the division,
    as to any score."""

    acts_in_attention = True
    biases_scores = True
    directional = True

    def __init__(self, n_heads: int, causal: bool = False, n_buckets: int = 32, max_distance: int = 128):
        super().__init__()
        self.causal, self.n_buckets, self.max_distance = causal, n_buckets, max_distance
        self.bias = nn.Embedding(n_buckets, n_heads)

    def score_bias(self, q_pos: Tensor, k_pos: Tensor, q: Tensor | None = None) -> Tensor:
        buckets = t5_bucket(-_distance(q_pos, k_pos), not self.causal, self.n_buckets, self.max_distance)
        return self.bias(buckets[:, 0]).permute(0, 3, 1, 2)  # (B|1, T_q, T_k, H) -> (B|1, H, T_q, T_k)

    def score_mod(self, positions: Tensor):
        table, pos = self.bias.weight, positions

        def t5(score, b, h, i, j):
            bucket = t5_bucket(pos[j] - pos[i], not self.causal, self.n_buckets, self.max_distance)
            return score + table[bucket, h].to(score.dtype)
        return t5


class ShawRelativePosition(PositionEncoding):
    """Self-attention with relative position representations (Shaw et al. 2018): learned vectors
    a^K and a^V for each clipped distance clip(j - i, -k, k), shared by the heads, one pair of tables
    per layer, added to the keys and the values:

        e_ij = q_i · (k_j + a^K_ij) / √d_k          z_i = Σ_j α_ij (v_j + a^V_ij)

    The key term is a score bias (q_i · a^K over the 2k+1 distances, then gathered: O(T·k) products);
    the value term needs the weights α, so attention takes the explicit softmax path. Built once per
    model without tables; ``for_layer`` gives each layer its own."""

    acts_in_attention = True
    biases_scores = True
    needs_weights = True

    def __init__(self, d_head: int, clip: int = 16, tables: bool = False):
        super().__init__()
        if clip < 1:
            raise ValueError(f"clip: Shaw's largest distance k must be >= 1, got {clip}")
        self.d_head, self.clip = d_head, clip
        if tables:
            self.key = nn.Embedding(2 * clip + 1, d_head)
            self.value = nn.Embedding(2 * clip + 1, d_head)

    def for_layer(self) -> "ShawRelativePosition":
        return ShawRelativePosition(self.d_head, self.clip, tables=True)

    def _index(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        if not hasattr(self, "key"):
            raise RuntimeError("ShawRelativePosition: the model-level instance has no tables; use for_layer()")
        return (-_distance(q_pos, k_pos)).clamp(-self.clip, self.clip) + self.clip  # (B|1, 1, T_q, T_k)

    def score_bias(self, q_pos: Tensor, k_pos: Tensor, q: Tensor | None = None) -> Tensor:
        if q is None:
            raise ValueError("ShawRelativePosition.score_bias: needs the queries q")
        per_distance = q @ self.key.weight.to(q.dtype).T  # (B, H, T_q, 2k+1)
        index = self._index(q_pos, k_pos).expand(q.size(0), q.size(1), -1, -1)
        return per_distance.gather(-1, index) / math.sqrt(q.size(-1))  # (B, H, T_q, T_k)

    def value_term(self, weights: Tensor, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        index = self._index(q_pos, k_pos).expand_as(weights)
        per_distance = weights.new_zeros(*weights.shape[:-1], 2 * self.clip + 1).scatter_add_(-1, index, weights)
        return per_distance @ self.value.weight.to(weights.dtype)  # (B, H, T_q, Dh)


POSITION_ENCODINGS = {
    "sinusoidal": SinusoidalPositionEncoding,
    "learned": LearnedPositionEmbedding,
    "rotary": RotaryPositionEncoding,
    "alibi": ALiBi,
    "t5": T5RelativeBias,
    "shaw": ShawRelativePosition,
}


def build_position_encoding(kind: str, d_model: int, max_len: int, n_heads: int = 1,
                            causal: bool = False) -> PositionEncoding:
    """The encoding ``kind`` for a model of width d_model and n_heads heads; ``causal``: for a stack
    that cannot see ahead (GPT, a decoder), which only ``directional`` encodings tell apart."""
    if kind not in POSITION_ENCODINGS:
        raise ValueError(f"position: expected one of {sorted(POSITION_ENCODINGS)}, got {kind!r}")
    if kind == "rotary":
        return RotaryPositionEncoding(d_model // n_heads)
    if kind == "alibi":
        return ALiBi(n_heads, causal)
    if kind == "t5":
        return T5RelativeBias(n_heads, causal)
    if kind == "shaw":
        return ShawRelativePosition(d_model // n_heads)
    return POSITION_ENCODINGS[kind](d_model, max_len)
