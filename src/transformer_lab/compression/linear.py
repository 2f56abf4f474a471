"""Quantized Linear layers: the weight stored as b-bit integers, the product computed three ways.

    q_w = round(W / s_w)        s_w per output channel (or per tensor, or per group of inputs), symmetric

- ``dynamic``: activations quantized per token at run time, ``s_x = max|x[t, :]| / 127.5``:
      y = (s_x ⊗ s_w) · (q_x q_wᵀ) + b                      q_x q_wᵀ summed exactly in int32
  With ``activations="tensor"``, one affine grid over the whole input per call instead
  (s_x = (max - min) / 255, as fbgemm's dynamic Linear chooses it), computed like ``static`` below;
  its integer path is PyTorch's fbgemm kernel (``quantized::linear_dynamic``, quantization, GEMM and
  rescale in one call) on our int8 weights, which pays where the per-token path's dozen small kernel
  calls dominate: decoding, a few rows per step (measured: greedy translation 1.4x faster).
- ``static``: one activation grid fixed by calibration (an observer: min-max, percentile, MSE, KL),
  affine, q_x = round(x / s_x) + z_x:
      y = (s_x · s_w) · (q_x q_wᵀ - z_x Σ_i q_w[:, i]) + b
- ``weight-only``: activations stay fp32; y = x (s_w · q_w)ᵀ + b. Smaller, not faster (the CPU
  multiplies in fp32 either way); 4 bits and per-group scales are where it pays.

With ``smooth`` (SmoothQuant, Xiao et al. 2023) the input channels were rescaled before quantizing:
W' = W · diag(m), x' = x / m, so long-tailed activation channels hand part of their range to the
weights, where it is cheap; the layer stores 1 / m and applies it to x (on fbgemm's path too: x / m,
then the kernel). Layers reading one input (attention's Q, K, V) share one m, and on fbgemm run as one
product (``joint``).

Two paths compute each scheme:

- ``impl="reference"``: dequantize and multiply in fp32, every formula visible, any device;
- ``impl="int"``: ``torch._int_mm`` (int8 x int8 -> int32, PyTorch's integer GEMM; on this project's
  CPU about 4.5x the fp32 matmul at MiniLM's sizes) and one fp32 rescale; weight-only 8-bit uses
  ``torch._weight_int8pack_mm``. Tests hold it to the reference path.

4-bit weights are packed two to a byte (``pack_int4``); 8-bit ones are int8. ``QuantEmbedding``
keeps an embedding table in int8 (one scale per row): a lookup, no product to speed up, but in a
small model the table is much of the size (all-MiniLM-L6-v2: 45 of its 87 MiB).
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from transformer_lab.compression.observers import MinMaxObserver, Observer
from transformer_lab.compression.quant import EPS, QParams, qparams_from_range, quantize

IMPLS = ("int", "reference")
ACTIVATIONS = ("token", "tensor")
FBGEMM = "fbgemm" in torch.backends.quantized.supported_engines  # PyTorch's x86 quantized kernels are built in
SCHEMES = ("dynamic", "static", "weight-only")
GRANULARITIES = ("tensor", "channel", "group")


def pack_int4(q: Tensor) -> Tensor:
    """(out, in) integers in [-8, 7] -> (out, ceil(in / 2)) uint8, two to a byte (even index low)."""
    u = (q + 8).to(torch.uint8)
    if u.size(1) % 2:
        u = F.pad(u, (0, 1), value=8)
    return u[:, 0::2] | (u[:, 1::2] << 4)


def unpack_int4(packed: Tensor, in_features: int) -> Tensor:
    """The inverse of ``pack_int4``: int8 (out, in_features) in [-8, 7]."""
    low, high = (packed & 0x0F).to(torch.int8) - 8, (packed >> 4).to(torch.int8) - 8
    return torch.stack([low, high], dim=2).reshape(packed.size(0), -1)[:, :in_features]


def quantize_tokens(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-token symmetric int8: (q_x (T, in) int8, s_x (T, 1))."""
    s = torch.clamp(x.abs().amax(dim=1, keepdim=True) / 127.5, min=EPS)
    return torch.clamp(torch.round(x / s), -128, 127).to(torch.int8), s


def _prepack(q_w: Tensor, scales: Tensor, bias: Tensor | None):
    """int8 weights (out, in) with one scale per output channel -> fbgemm's packed weight."""
    with warnings.catch_warnings():  # torch announces the quantized tensor type's deprecation
        warnings.simplefilter("ignore")
        w = torch._make_per_channel_quantized_tensor(q_w, scales.double().contiguous(),
                                                     torch.zeros(q_w.size(0), dtype=torch.long), 0)
    return torch.ops.quantized.linear_prepack(w, bias)


class QuantLinear(nn.Module):
    """A quantized ``nn.Linear``. Build one with ``from_linear``; the constructor makes the empty
    shell a checkpoint's tensors are loaded into."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, scheme: str = "dynamic", bits: int = 8,
                 granularity: str = "channel", group_size: int = 32, smooth: bool = False, impl: str = "int",
                 activations: str = "token"):
        super().__init__()
        for name, value, allowed in (("scheme", scheme, SCHEMES), ("granularity", granularity, GRANULARITIES),
                                     ("impl", impl, IMPLS), ("bits", bits, (4, 8)), ("activations", activations, ACTIVATIONS)):
            if value not in allowed:
                raise ValueError(f"{name}: expected one of {allowed}, got {value!r}")
        if granularity == "group" and scheme != "weight-only":
            raise ValueError("granularity 'group': per-group weight scales need the weight-only scheme (an integer "
                             "GEMM takes one scale per output channel)")
        if granularity == "group" and (group_size < 1 or in_features % group_size):
            raise ValueError(f"group_size: {group_size} does not divide in_features={in_features}")
        self.in_features, self.out_features = in_features, out_features
        self.scheme, self.bits, self.granularity, self.group_size = scheme, bits, granularity, group_size
        self.activations = activations
        self._packed = None  # fbgemm's prepacked weight and bias, built on first use (not saved)
        self._packed_stamp = object()  # replaced when new weights are loaded: joint products packed before go stale
        self._joint = None  # (stamps of the layers, their joint packed weight), see ``joint``
        n_scales = {"tensor": 1, "channel": out_features, "group": out_features * (in_features // max(group_size, 1))}
        width = (in_features + 1) // 2 if bits == 4 else in_features
        self.register_buffer("qweight", torch.zeros(out_features, width, dtype=torch.uint8 if bits == 4 else torch.int8))
        self.register_buffer("weight_scale", torch.ones(n_scales[granularity]))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        if scheme == "static":
            self.register_buffer("input_scale", torch.ones(()))
            self.register_buffer("input_zero_point", torch.zeros((), dtype=torch.int32))  # on the int8 grid
            self.register_buffer("weight_sum", torch.zeros(out_features, dtype=torch.int32))  # Σ_i q_w[o, i]
        self.register_buffer("input_multiplier", torch.ones(in_features) if smooth else None)  # 1 / m
        self.impl = impl  # (also sets _fast: whether calls go straight to fbgemm)

    @classmethod
    def from_linear(cls, linear: nn.Linear, scheme: str = "dynamic", bits: int = 8, granularity: str = "channel",
                    group_size: int = 32, weight_observer: Callable[..., Observer] = MinMaxObserver,
                    input_qparams: QParams | None = None,
                    smooth: Tensor | None = None, impl: str = "int", activations: str = "token") -> "QuantLinear":
        """Quantize ``linear``: its weight's range from ``weight_observer`` (an observer class, min-max by
        default; built symmetric, ``bits``, one range per ``granularity``); ``input_qparams`` is the static scheme's activation
        grid (8-bit, per tensor); ``smooth`` the SmoothQuant multipliers m (in_features,)."""
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, scheme, bits, granularity,
                    group_size, smooth is not None, impl, activations)
        w = linear.weight.detach().float()
        if smooth is not None:
            w = w * smooth
            layer.input_multiplier.copy_(1.0 / smooth)
        rows = w.reshape(-1, group_size) if granularity == "group" else w
        obs = weight_observer(bits=bits, symmetric=True, axis=None if granularity == "tensor" else 0)
        obs.observe(rows)
        p = obs.qparams()
        q = quantize(rows, p).reshape(w.shape).to(torch.int8)
        layer.qweight.copy_(pack_int4(q) if bits == 4 else q)
        layer.weight_scale.copy_(p.scale.reshape(-1))
        if linear.bias is not None:
            layer.bias.copy_(linear.bias.detach().float())
        if scheme == "static":
            if input_qparams is None:
                raise ValueError("static: the activation grid (input_qparams, from calibration) is missing")
            if input_qparams.axis is not None or input_qparams.bits != 8:
                raise ValueError("input_qparams: the static scheme takes one 8-bit grid per tensor")
            layer.input_scale.copy_(input_qparams.scale)
            layer.input_zero_point.copy_(input_qparams.zero_point - input_qparams.q_min - 128)  # uint8 -> int8 grid
            layer.weight_sum.copy_(q.sum(dim=1, dtype=torch.int32))
        return layer

    # --- the weight, in integers and in fp32 -------------------------------------------------------
    def int_weight(self) -> Tensor:
        """q_w as int8 (out, in)."""
        return unpack_int4(self.qweight, self.in_features) if self.bits == 4 else self.qweight

    def weight_scales(self) -> Tensor:
        """s_w broadcastable against (out, in)."""
        if self.granularity == "group":
            return self.weight_scale.view(self.out_features, -1).repeat_interleave(self.group_size, dim=1)
        return self.weight_scale.view(-1, 1)

    def dequantized_weight(self) -> Tensor:
        return self.int_weight().float() * self.weight_scales()

    # --- forward -----------------------------------------------------------------------------------
    def input_grid(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(s_x, z_x on the int8 grid) of one affine grid over ``x``: the static scheme's calibrated one,
        or per call for dynamic per-tensor activations."""
        if self.scheme == "static":
            return self.input_scale, self.input_zero_point
        p = qparams_from_range(x.min(), x.max(), 8, symmetric=False)
        return p.scale, p.zero_point - 128

    def quantize_input(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | int]:
        """(q_x int8 (T, in), s_x (T, 1) or (), z_x) for the integer schemes."""
        if self.scheme == "dynamic" and self.activations == "token":
            q, s = quantize_tokens(x)
            return q, s, 0
        s, z = self.input_grid(x)
        return torch.clamp(torch.round(x / s) + z, -128, 127).to(torch.int8), s, z

    @property
    def impl(self) -> str:
        return self._impl

    @impl.setter
    def impl(self, value: str) -> None:
        if value not in IMPLS:
            raise ValueError(f"impl: expected one of {IMPLS}, got {value!r}")
        self._impl = value
        self._fast = value == "int" and self.scheme == "dynamic" and self.activations == "tensor" and FBGEMM

    def _smoothed(self, x: Tensor) -> Tensor:
        return x if self.input_multiplier is None else x * self.input_multiplier

    def forward(self, x: Tensor) -> Tensor:
        if x.size(-1) != self.in_features:
            raise ValueError(f"x: last dimension {x.size(-1)}, but this layer takes {self.in_features}")
        if self._fast and x.dtype == torch.float32 and x.device.type == "cpu":
            # one kernel call: quantization, GEMM, rescale and bias (any leading dims)
            return torch.ops.quantized.linear_dynamic(self._smoothed(x), self._prepacked(), False)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features).float()
        x2 = self._smoothed(x2)
        if self.scheme == "weight-only":
            y = self._weight_only(x2)
        else:
            y = self._integer(x2)
        if self.bias is not None:
            y = y.add_(self.bias)
        return y.to(x.dtype).reshape(*lead, self.out_features)

    def _weight_only(self, x: Tensor) -> Tensor:
        return x @ self.dequantized_weight().t()

    def _integer(self, x: Tensor) -> Tensor:
        q_x, s_x, z = self.quantize_input(x)
        if self.impl == "reference":
            return ((q_x.float() - z) * s_x) @ self.dequantized_weight().t()
        q_w = self.int_weight()
        acc = torch._int_mm(q_x, q_w.t())  # int32 sums
        if not isinstance(z, int):  # an affine input grid: take z_x · Σ_i q_w[o, i] back out
            acc = acc - z * (self.weight_sum if self.scheme == "static" else q_w.sum(dim=1, dtype=torch.int32))
        return acc.float().mul_(s_x).mul_(self.weight_scale)  # one rescale (per-token / per-tensor x per-channel)

    def _prepacked(self):
        """fbgemm's packed int8 weight and bias, built on first use (and again after a checkpoint is
        loaded into the layer)."""
        if self._packed is None:
            self._packed = _prepack(self.int_weight(), self.weight_scale.expand(self.out_features), self.bias)
        return self._packed

    def joint(self, *others: "QuantLinear") -> Callable[[Tensor], Tensor] | None:
        """This layer and ``others``, which read the same input, as one product: the outputs side by
        side (..., Σ out_features), or None where that cannot be (not all on fbgemm's per-tensor path,
        or different SmoothQuant multipliers). One quantization of the shared input instead of one per
        layer, one larger GEMM: attention's Q, K, V (measured: 1.6x faster at 128 tokens, 1.05x at
        1,024). The same grid as each layer alone (one grid per input), so the same numbers."""
        layers = (self, *others)
        if not all(isinstance(m, QuantLinear) and m._fast for m in layers):  # (checked every call: impl can change)
            return None
        stamps = tuple(m._packed_stamp for m in layers)
        if self._joint is None or len(self._joint[0]) != len(stamps) or \
                any(a is not b for a, b in zip(self._joint[0], stamps)):  # the objects themselves: ids get reused
            ok = (all(m.in_features == self.in_features for m in layers)
                  and all((m.input_multiplier is None) == (self.input_multiplier is None) for m in layers)
                  and (self.input_multiplier is None
                       or all(torch.equal(m.input_multiplier, self.input_multiplier) for m in others)))
            packed = None
            if ok:
                bias = None if any(m.bias is None for m in layers) else torch.cat([m.bias for m in layers])
                packed = _prepack(torch.cat([m.int_weight() for m in layers]),
                                  torch.cat([m.weight_scale.expand(m.out_features) for m in layers]), bias)
            self._joint = (stamps, packed)
        packed = self._joint[1]
        if packed is None:
            return None
        return lambda x: torch.ops.quantized.linear_dynamic(self._smoothed(x), packed, False)

    def weights_changed(self) -> None:
        """New integer weights: fbgemm's packed copies (this layer's, and any joint product) are stale."""
        self._packed, self._packed_stamp = None, object()

    def _load_from_state_dict(self, *args, **kwargs):
        self.weights_changed()
        super()._load_from_state_dict(*args, **kwargs)

    def weight_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.qweight, self.weight_scale))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, scheme={self.scheme}, "
                f"bits={self.bits}, granularity={self.granularity}, impl={self.impl}"
                + (", activations per tensor" if self.scheme == "dynamic" and self.activations == "tensor" else "")
                + (", smooth" if self.input_multiplier is not None else ""))


class QuantEmbedding(nn.Module):
    """An embedding table in int8, one symmetric scale per row (token): a lookup reads 1 byte per
    value and rescales the rows it fetched. ``factor``: a TokenEmbedding's √d_model (1 for a plain one)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, factor: float = 1.0):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.factor = num_embeddings, embedding_dim, factor
        self.register_buffer("qweight", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(num_embeddings))

    @classmethod
    def from_table(cls, weight: Tensor, factor: float = 1.0) -> "QuantEmbedding":
        layer = cls(weight.size(0), weight.size(1), factor)
        obs = MinMaxObserver(bits=8, symmetric=True, axis=0)
        obs.observe(weight.detach().float())
        p = obs.qparams()
        layer.qweight.copy_(quantize(weight.detach().float(), p).to(torch.int8))
        layer.weight_scale.copy_(p.scale)
        return layer

    def forward(self, ids: Tensor) -> Tensor:
        rows = F.embedding(ids, self.qweight).float()
        return rows * (self.weight_scale[ids] * self.factor).unsqueeze(-1)

    def weight_bytes(self) -> int:
        return self.qweight.numel() + 4 * self.weight_scale.numel()

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8 per row" + (f", x{self.factor:.3g}" if self.factor != 1 else "")
