"""INT8 Linear layers: weights quantized once per output channel, activations per token at run time
("dynamic" quantization), the matrix product in integers.

    q_w = round(W / s_w),   s_w = max|W[o, :]| / 127.5      per output channel o (symmetric, int8)
    q_x = round(x / s_x),   s_x = max|x[t, :]| / 127.5      per token t, computed on every call
    y   = (s_x ⊗ s_w) · (q_x q_wᵀ) + b                      q_x q_wᵀ summed exactly in int32

(the grids of ``quant.qparams_from_range`` with zero point 0). Two paths compute it:

- ``impl="reference"``: dequantize both and multiply in fp32, every formula visible, any device;
- ``impl="int"``: ``torch._int_mm`` (int8 x int8 -> int32, PyTorch's integer GEMM; on this project's
  CPU about 4.5x the fp32 matmul at MiniLM's sizes), then one fp32 rescale. A test holds it to the
  reference path.

The weight grid may come from any observer (``weight_observer``: min-max by default; percentile, MSE
or KL clip long-tailed rows). Embeddings and a projection tied to them stay in fp32 (``quantize_linears``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from transformer_lab.compression.observers import MinMaxObserver, Observer
from transformer_lab.compression.quant import EPS, quantize

IMPLS = ("int", "reference")


class Int8Linear(nn.Module):
    def __init__(self, linear: nn.Linear, impl: str = "int", weight_observer: Observer | None = None):
        super().__init__()
        if impl not in IMPLS:
            raise ValueError(f"impl: expected one of {IMPLS}, got {impl!r}")
        self.in_features, self.out_features, self.impl = linear.in_features, linear.out_features, impl
        obs = weight_observer or MinMaxObserver(bits=8, symmetric=True, axis=0)
        if obs.axis != 0 or not obs.symmetric or obs.bits != 8:
            raise ValueError("weight_observer: expected a symmetric 8-bit observer per output channel (axis=0)")
        w = linear.weight.detach().float()
        obs.observe(w)
        p = obs.qparams()
        self.register_buffer("qweight", quantize(w, p).to(torch.int8))  # (out, in)
        self.register_buffer("scale", p.scale.clone())  # (out,)
        bias = linear.bias.detach().float().clone() if linear.bias is not None else None
        self.register_buffer("bias", bias)

    @staticmethod
    def quantize_tokens(x: Tensor) -> tuple[Tensor, Tensor]:
        """Per-token symmetric int8: (q_x (T, in) int8, s_x (T, 1))."""
        s = torch.clamp(x.abs().amax(dim=1, keepdim=True) / 127.5, min=EPS)
        return torch.clamp(torch.round(x / s), -128, 127).to(torch.int8), s

    def forward(self, x: Tensor) -> Tensor:
        if x.size(-1) != self.in_features:
            raise ValueError(f"x: last dimension {x.size(-1)}, but this layer takes {self.in_features}")
        lead = x.shape[:-1]
        q_x, s_x = self.quantize_tokens(x.reshape(-1, self.in_features).float())
        if self.impl == "int":
            y = torch._int_mm(q_x, self.qweight.t()).float().mul_(s_x).mul_(self.scale)  # int32 sums, one rescale
        else:
            y = (q_x.float() * s_x) @ (self.qweight.float() * self.scale[:, None]).t()
        if self.bias is not None:
            y = y.add_(self.bias)
        return y.to(x.dtype).reshape(*lead, self.out_features)

    def weight_bytes(self) -> int:
        return self.qweight.numel() + 4 * self.scale.numel()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, impl={self.impl}"


def quantize_linears(model: nn.Module, impl: str = "int", skip: tuple[str, ...] = ()) -> nn.Module:
    """Every nn.Linear of ``model`` -> Int8Linear, in place, except those named in ``skip`` (or inside
    them) and those whose weight is an embedding table (a tied output projection). Returns the model."""
    tables = {id(m.weight) for m in model.modules()
              if isinstance(m, nn.Embedding) or (hasattr(m, "vocab_size") and isinstance(getattr(m, "weight", None), nn.Parameter))}
    for name, m in list(model.named_modules()):
        if type(m) is not nn.Linear or id(m.weight) in tables:
            continue
        if any(name == s or name.startswith(s + ".") for s in skip):
            continue
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, Int8Linear(m, impl))
    return model
