"""Position encodings, and the interface every variant plugs into.

Attention is permutation-invariant, so order has to be injected. Two families exist:

* absolute encodings are added to the token embeddings once, at the bottom of the stack
  (the paper's sinusoids, §3.5; BERT/GPT's learned table);
* relative encodings act inside attention: rotary rotates q and k, ALiBi and T5 add a bias to
  the scores.

``PositionEncoding`` has one hook for each place, so a new variant overrides the hook it needs and
no layer changes: embeddings call ``add_to_embeddings``; self-attention calls ``rotate_qk`` and
``score_bias``. Positions are explicit integer tensors (not "0..T-1" implied), so a KV cache or
left-padded batch can pass the true positions.

Shapes: B batch, T length, D model width, H heads, Dh head width.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class PositionEncoding(nn.Module):
    """Base class: every hook defaults to "no position information here"."""

    max_len: int | None = None  # longest position the encoding can represent (None: unbounded)
    acts_in_attention: bool = False  # True for variants that override rotate_qk or score_bias

    def add_to_embeddings(self, x: Tensor, positions: Tensor) -> Tensor:
        """Shapes: x (B, T, D), positions (T,) or (B, T) -> (B, T, D)."""
        return x

    def rotate_qk(self, q: Tensor, k: Tensor, q_pos: Tensor, k_pos: Tensor) -> tuple[Tensor, Tensor]:
        """Shapes: q (B, H, T_q, Dh), k (B, H, T_k, Dh) -> same."""
        return q, k

    def score_bias(self, q_pos: Tensor, k_pos: Tensor) -> Tensor | None:
        """Additive bias to q·kᵀ/√d_k, broadcastable to (B, H, T_q, T_k); None for none."""
        return None

    def check_positions(self, positions: Tensor) -> None:
        """Values, so a host sync: skipped while torch.compile traces (callers check lengths by shape)."""
        if torch.compiler.is_compiling():
            return
        if self.max_len is not None and positions.numel() and int(positions.max()) >= self.max_len:
            raise ValueError(
                f"positions: sequence needs position {int(positions.max())}, but the position "
                f"table holds max_len={self.max_len} positions (0..{self.max_len - 1}); "
                f"shorten the input or build the model with a larger max_len"
            )
        if positions.numel() and int(positions.min()) < 0:
            raise ValueError(f"positions: expected non-negative positions, got {int(positions.min())}")


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


POSITION_ENCODINGS = {
    "sinusoidal": SinusoidalPositionEncoding,
    "learned": LearnedPositionEmbedding,
    "rotary": RotaryPositionEncoding,
}


def build_position_encoding(kind: str, d_model: int, max_len: int, n_heads: int = 1) -> PositionEncoding:
    if kind == "rotary":
        return RotaryPositionEncoding(d_model // n_heads)
    try:
        cls = POSITION_ENCODINGS[kind]
    except KeyError:
        raise ValueError(f"position: expected one of {sorted(POSITION_ENCODINGS)}, got {kind!r}") from None
    return cls(d_model, max_len)
