"""Dropout (Srivastava et al. 2014; the paper's §5.4), with a mask the CPU compiler can fuse.

In eager mode this is ``F.dropout``: PyTorch's generator draws the mask. Under ``torch.compile`` on a
CPU the mask comes from a counter-based hash of each element's index and a per-call seed instead,
written in int32 tensor operations that inductor fuses into the surrounding loop and vectorises.
Why: inductor's own random numbers on a CPU run Philox once per element, unvectorised (measured on
this project's 2-core machine, a 4,000 x 256 tensor: 10.0 ms a dropout, against 6.3 ms for eager
``F.dropout`` and 0.59 ms for the hash), and dropout then cost the compiled Multi30k training step more
than compiling saved. On a GPU compiled dropout keeps inductor's Philox (vectorised there).

The hash is Chris Wellons' ``lowbias32`` (xor-shift-multiply, 32 bits), applied twice with the seed
mixed in between: hash(hash(index) ^ seed). The seed is one draw from PyTorch's generator per call,
so ``torch.manual_seed`` and a checkpoint's saved generator state reproduce the masks. An element is
kept when the hash's low 31 bits (uniform over [0, 2^31)) are at least round(p * 2^31): probability
1 - p to within 2^-31. Kept values are scaled by 1 / (1 - p), as in ``F.dropout``. The mask is an
int32 0/1 tensor, the comparison taken as a sign bit, never a boolean tensor: inductor's C++ stores
booleans an order of magnitude slower than floats or int32 (see nn/activations.py), and in a whole
model the compiled forward saves the masks for its backward (4 bytes an element where a boolean took
1). A test holds the keep rate, the scaling, the gradient and the independence of successive masks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _signed(c: int) -> int:
    """A 32-bit constant as the int32 with the same bits."""
    return c - (1 << 32) if c >= 1 << 31 else c


_M1, _M2 = _signed(0x7FEB352D), _signed(0x846CA68B)  # lowbias32's multipliers


def _shift_right(x: Tensor, k: int) -> Tensor:
    """Logical right shift of int32 bits (``>>`` on int32 is arithmetic: clear the sign's copies)."""
    return (x >> k) & ((1 << (32 - k)) - 1)


def lowbias32(x: Tensor) -> Tensor:
    """Wellons' lowbias32 hash on int32 tensors (multiplication wraps modulo 2^32)."""
    x = x ^ _shift_right(x, 16)
    x = x * _M1
    x = x ^ _shift_right(x, 15)
    x = x * _M2
    return x ^ _shift_right(x, 16)


def hashed_keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device | str) -> Tensor:
    """An int32 mask, 1 with probability 1 - p per element and 0 otherwise, from hash(hash(index) ^ seed)."""
    seed = torch.randint(-(2**31), 2**31, (), dtype=torch.int32, device=device)
    index = torch.arange(torch.Size(shape).numel(), dtype=torch.int32, device=device).view(shape)
    uniform = lowbias32(lowbias32(index) ^ seed) & 0x7FFFFFFF  # 31 bits, uniform over [0, 2^31)
    threshold = min(round(p * 2**31), 2**31 - 1)  # (an int32: p within 2^-31 of 1 keeps one value in 2^31)
    return 1 + ((uniform - threshold) >> 31)  # u >= threshold as the sign of u - threshold: no boolean tensor


def compiling_on_cpu(x: Tensor) -> bool:
    """Whether torch.compile is tracing a computation on ``x`` on a CPU: where inductor writes C++, and the
    forms this project measured faster there take over (this module's masks, nn.activations' ReLU,
    training.losses' cross-entropy)."""
    return x.device.type == "cpu" and torch.compiler.is_compiling()


def uses_hashed_mask(x: Tensor) -> bool:
    """Whether dropout on ``x`` takes the hashed mask: while torch.compile traces, on a CPU, for a tensor
    whose element indices fit the int32 counter (under 2^31 elements; a larger one takes F.dropout)."""
    return compiling_on_cpu(x) and x.numel() < 2**31


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """``F.dropout(x, p, training)``; under torch.compile on a CPU, with the hashed mask."""
    if not training or p == 0.0:
        return x
    if p < 1.0 and uses_hashed_mask(x):  # (F.dropout checks p and zeroes everything at p = 1)
        return x * hashed_keep_mask(x.shape, p, x.device) * (1.0 / (1.0 - p))
    return F.dropout(x, p, True)


class Dropout(nn.Dropout):
    """``nn.Dropout`` (same rate attribute, same state), whose mask is fused when compiled on a CPU."""

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)
