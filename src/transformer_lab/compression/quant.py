"""The integer grid of b-bit quantization, per tensor or per channel.

A real number x maps to an integer q on a grid of 2^b values and back:

    q  = clamp(round(x / s) + z, q_min, q_max)          quantize
    x̂  = s · (q - z)                                     dequantize

s (scale) is the grid's step and z (zero point) the integer that stands for 0.0, so 0 (padding,
ReLU's zeros) is represented exactly. A range [lo, hi] from calibration fixes them:

- affine (asymmetric), unsigned q in [0, 2^b - 1]: s = (hi - lo) / (2^b - 1), z = q_min - round(lo / s);
- symmetric, signed q in [-2^(b-1), 2^(b-1) - 1]: s = max(|lo|, hi) / ((q_max - q_min) / 2), z = 0.

The range is first widened to include 0 and s is kept >= the float32 epsilon (a constant tensor),
as ``torch.ao.quantization``'s observers do; with ``axis`` every slice along that dimension (an
output channel of a weight) gets its own s and z.

Shapes: ``lo``, ``hi`` () per tensor or (C,) per channel; x any shape with x.size(axis) == C.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

EPS = torch.finfo(torch.float32).eps


@dataclass(frozen=True)
class QParams:
    scale: Tensor  # () or (C,)
    zero_point: Tensor  # () or (C,), integers
    q_min: int
    q_max: int
    axis: int | None = None  # the channel dimension when per channel

    @property
    def bits(self) -> int:
        return (self.q_max - self.q_min + 1).bit_length() - 1

    def _shaped(self, t: Tensor, x: Tensor) -> Tensor:
        """Per-channel parameters broadcast along ``axis`` of ``x``."""
        if self.axis is None:
            return t
        shape = [1] * x.dim()
        shape[self.axis] = -1
        return t.view(shape)


def grid(bits: int, symmetric: bool) -> tuple[int, int]:
    """(q_min, q_max): signed for symmetric grids (int8: -128..127), unsigned otherwise (uint8: 0..255)."""
    if not 2 <= bits <= 16:
        raise ValueError(f"bits: expected 2..16, got {bits}")
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if symmetric else (0, 2 ** bits - 1)


def qparams_from_range(lo: Tensor, hi: Tensor, bits: int = 8, symmetric: bool = False,
                       axis: int | None = None) -> QParams:
    """Scale and zero point of the grid that covers [lo, hi] (widened to include 0)."""
    lo, hi = torch.as_tensor(lo, dtype=torch.float32), torch.as_tensor(hi, dtype=torch.float32)
    if lo.shape != hi.shape:
        raise ValueError(f"lo, hi: shapes {tuple(lo.shape)} and {tuple(hi.shape)} differ")
    if bool((lo > hi).any()):
        raise ValueError("lo, hi: lo > hi somewhere; is the range empty (no calibration data)?")
    if (axis is None) != (lo.dim() == 0):
        raise ValueError(f"axis: per-channel ranges need an axis and per-tensor ones none (lo has shape {tuple(lo.shape)})")
    q_min, q_max = grid(bits, symmetric)
    lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)  # 0 must be on the grid
    if symmetric:
        scale = torch.clamp(torch.maximum(-lo, hi) / ((q_max - q_min) / 2), min=EPS)
        zero_point = torch.zeros_like(scale, dtype=torch.int64)
    else:
        scale = torch.clamp((hi - lo) / (q_max - q_min), min=EPS)
        zero_point = torch.clamp(q_min - torch.round(lo / scale), q_min, q_max).to(torch.int64)
    return QParams(scale, zero_point, q_min, q_max, axis)


def quantize(x: Tensor, p: QParams) -> Tensor:
    """q = clamp(round(x / s) + z, q_min, q_max), as int64 (round half to even, as torch does)."""
    s, z = p._shaped(p.scale, x), p._shaped(p.zero_point, x)
    return torch.clamp(torch.round(x / s) + z, p.q_min, p.q_max).to(torch.int64)


def dequantize(q: Tensor, p: QParams) -> Tensor:
    """x̂ = s · (q - z), in float32."""
    s, z = p._shaped(p.scale, q), p._shaped(p.zero_point, q)
    return s * (q - z).to(torch.float32)


def fake_quantize(x: Tensor, p: QParams) -> Tensor:
    """x rounded to the grid and back to float: what the integer model computes with, in fp32."""
    return dequantize(quantize(x, p), p)
