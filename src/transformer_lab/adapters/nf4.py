"""4-bit NormalFloat (NF4) with double quantization: QLoRA's storage for frozen weights
(Dettmers et al. 2023, "QLoRA", §3), written out in plain PyTorch.

NF4. Pretrained weights are roughly normal, so the 16 code values are quantiles of N(0, 1) rather
than evenly spaced: 8 for the positive half, 7 for the negative half and an exact zero, scaled to
[-1, 1] (asymmetric so that 0 is representable; ``nf4_values`` builds them the way bitsandbytes
does, from offset 0.9677 = the midpoint of the two largest quantiles of 2·8+1 and 2·7+1 levels).

Blockwise absmax. The weight is cut into blocks of 64 numbers; each block is divided by its largest
magnitude c (so it lies in [-1, 1]) and every number becomes the index of the nearest code value:
4 bits, two per byte (the first in the high nibble, as bitsandbytes packs them).

Double quantization (§3). The fp32 constants c cost 32/64 = 0.5 bits per weight; QLoRA quantizes
them again: their mean is subtracted and the rest stored as 8-bit floats with one fp32 absmax per
256 constants, 8/64 + 32/(64·256) ≈ 0.127 bits per weight. In all ≈ 4.13 bits per weight, 12.9% of
fp32. The 8-bit float is bitsandbytes' "dynamic" type (Dettmers 2016, ``dynamic_map``): a sign, then
a run of zeros counting decimal places (the exponent, 0 to 6), the remaining bits a fraction; it
keeps about two significant digits at any magnitude.

Dequantization reverses the steps: code value × c. ``NF4Linear`` keeps only the packed form and
dequantizes its weight on every forward (the matmul itself runs in the input's dtype).

Shapes: a weight of any shape, flattened; n numbers -> ceil(n / 64) blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BLOCK = 64  # numbers per absmax block (QLoRA's choice)
SCALE_BLOCK = 256  # absmax constants per second-level block (double quantization)


def nf4_values(offset: float = 0.9677083) -> Tensor:
    """The 16 NF4 code values, ascending, from -1 to 1 with an exact 0 (fp32)."""
    positive = torch.special.ndtri(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])  # 8 quantiles > 0
    negative = -torch.special.ndtri(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])  # 7 quantiles < 0
    values = torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]).sort().values
    return (values / values.max()).float()


def dynamic_map() -> Tensor:
    """The 256 values of the signed 8-bit dynamic type, ascending in [-1, 1]: for i = 0..6, 2^i
    evenly spaced fractions in (0.1, 1) times 10^(i-6), with both signs; then 0 and 1."""
    values = [0.0, 1.0]
    for i in range(7):
        edges = torch.linspace(0.1, 1, 2 ** i + 1)
        means = ((edges[:-1] + edges[1:]) / 2 * 10.0 ** (i - 6)).tolist()  # midpoints of the fraction bins
        values += means + [-m for m in means]
    return torch.tensor(values).sort().values


NF4 = nf4_values()
DYNAMIC = dynamic_map()


def nearest(x: Tensor, code: Tensor) -> Tensor:
    """Index of the nearest value of the ascending ``code`` for every element of ``x`` (uint8)."""
    midpoints = (code[:-1] + code[1:]) / 2
    return torch.bucketize(x, midpoints.to(x.device)).to(torch.uint8)


@dataclass
class NF4Tensor:
    """A quantized tensor: ``packed`` uint8 (two 4-bit codes per byte) and the block constants, either
    ``absmax`` fp32 (one per block) or, double-quantized, ``absmax_code`` (uint8 indices into
    ``DYNAMIC``) with ``absmax_scale`` (fp32, one per 256 blocks) and ``absmax_offset`` (their mean)."""

    packed: Tensor
    shape: torch.Size
    block: int
    absmax: Tensor | None = None
    absmax_code: Tensor | None = None
    absmax_scale: Tensor | None = None
    absmax_offset: Tensor | None = None

    def nbytes(self) -> int:
        parts = (self.packed, self.absmax, self.absmax_code, self.absmax_scale, self.absmax_offset)
        return sum(t.numel() * t.element_size() for t in parts if t is not None)


def quantize_nf4(w: Tensor, block: int = BLOCK, double_quant: bool = True) -> NF4Tensor:
    """NF4 with blockwise absmax (and double quantization of the absmax constants)."""
    if block < 2 or block % 2:
        raise ValueError(f"block: expected an even size >= 2, got {block}")
    flat = w.detach().float().reshape(-1)
    n = flat.numel()
    if n == 0:
        raise ValueError("quantize_nf4: the tensor is empty")
    pad = -n % block
    blocks = F.pad(flat, (0, pad)).view(-1, block)  # (n_blocks, block)
    absmax = blocks.abs().amax(dim=1)  # (n_blocks,)
    normed = blocks / absmax.clamp(min=torch.finfo(torch.float32).tiny)[:, None]  # in [-1, 1]
    codes = nearest(normed, NF4).view(-1)  # (n padded,) 4-bit codes
    packed = (codes[0::2] << 4) | codes[1::2]
    q = NF4Tensor(packed, w.shape, block)
    if not double_quant:
        q.absmax = absmax
        return q
    q.absmax_offset = absmax.mean()
    centred = absmax - q.absmax_offset
    pad2 = -centred.numel() % SCALE_BLOCK
    groups = F.pad(centred, (0, pad2)).view(-1, SCALE_BLOCK)  # (n_groups, 256)
    q.absmax_scale = groups.abs().amax(dim=1)
    normed2 = groups / q.absmax_scale.clamp(min=1e-38)[:, None]  # in [-1, 1]
    q.absmax_code = nearest(normed2, DYNAMIC).view(-1)[: centred.numel()].clone()  # its own storage
    return q


def block_absmax(q: NF4Tensor) -> Tensor:
    """The fp32 constant of every block (decoded from float8 when double-quantized)."""
    if q.absmax is not None:
        return q.absmax
    n = q.absmax_code.numel()
    scale = q.absmax_scale.repeat_interleave(SCALE_BLOCK)[:n]
    return DYNAMIC.to(scale.device)[q.absmax_code.long()] * scale + q.absmax_offset


def dequantize_nf4(q: NF4Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    codes = torch.stack([q.packed >> 4, q.packed & 0x0F], dim=1).view(-1).long()  # (n padded,)
    values = NF4.to(q.packed.device)[codes].view(-1, q.block) * block_absmax(q)[:, None]
    return values.view(-1)[: q.shape.numel()].view(q.shape).to(dtype)


class NF4Linear(nn.Module):
    """A frozen Linear whose weight is stored in NF4 and dequantized for each forward; the bias (if
    any) stays in full precision, as in bitsandbytes' Linear4bit."""

    def __init__(self, linear: nn.Linear, block: int = BLOCK, double_quant: bool = True):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        q = quantize_nf4(linear.weight, block, double_quant)
        self.block, self.shape = q.block, q.shape
        for name in ("packed", "absmax", "absmax_code", "absmax_scale", "absmax_offset"):
            self.register_buffer(name, getattr(q, name))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def quantized(self) -> NF4Tensor:
        return NF4Tensor(self.packed, self.shape, self.block, self.absmax, self.absmax_code, self.absmax_scale,
                         self.absmax_offset)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> Tensor:
        return dequantize_nf4(self.quantized(), dtype)

    def weight_bytes(self) -> int:
        """Bytes the quantized weight occupies (packed codes and block constants)."""
        return self.quantized().nbytes()

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.dequantized_weight(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def to_linear(self) -> nn.Linear:
        """A plain Linear with the dequantized weight (what merging a QLoRA adapter starts from)."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device=self.packed.device)
        with torch.no_grad():
            lin.weight.copy_(self.dequantized_weight())
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin

    def extra_repr(self) -> str:
        dq = self.absmax is None
        return f"in={self.in_features}, out={self.out_features}, block={self.block}, double_quant={dq}"
