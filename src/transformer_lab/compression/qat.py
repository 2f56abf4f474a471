"""Quantization-aware training: the canon's answer to the quality quantization costs.

The forward pass computes with the numbers the quantized model will use (fake quantization: each
weight and activation rounded to its grid and back, with exactly ``QuantLinear``'s grids); the
backward pass treats the rounding as the identity, the straight-through estimator (Bengio et al.
2013; Jacob et al. 2018):

    forward   y = x̂ Ŵᵀ + b,      Ŵ = fake_quantize(W),  x̂ = fake_quantize(x)
    backward  ∂L/∂W = ∂L/∂Ŵ,     ∂L/∂x = ∂L/∂x̂          (w + (ŵ - w).detach() in code)

so the fp32 weights drift to where rounding hurts the loss least. Activation grids: per token at run
time (dynamic), or (static) a range kept as torch.ao's FakeQuantize keeps it, an exponential moving
average of each batch's min and max. After training, ``convert_qat`` gives back plain ``nn.Linear``
layers (the same Parameters) for ``quantize_model``, which then loses little.

``FakeQuantLinear`` is an ``nn.Linear`` with the same ``weight`` and ``bias`` (its running range is
not saved), so checkpoints written during QAT load into the plain model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from transformer_lab.compression.linear import quantize_tokens
from transformer_lab.compression.model import QuantConfig, _check_quantizable, _set, resolve_skip, target_linears
from transformer_lab.compression.quant import fake_quantize, qparams_from_range


def straight_through(x: Tensor, x_hat: Tensor) -> Tensor:
    """x̂ in the forward pass, the identity's gradient in the backward pass."""
    return x + (x_hat - x).detach()


class FakeQuantLinear(nn.Linear):
    def __init__(self, linear: nn.Linear, cfg: QuantConfig, momentum: float = 0.01):
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias  # the same Parameters: the optimiser trains them
        self.cfg, self.momentum = cfg, momentum
        self.register_buffer("input_lo", torch.zeros(()), persistent=False)
        self.register_buffer("input_hi", torch.zeros(()), persistent=False)
        self.observed = False

    def fake_weight(self) -> Tensor:
        """W on the grid QuantLinear.from_linear will use (symmetric, min-max, per tensor / channel / group)."""
        cfg, w = self.cfg, self.weight.detach()
        rows = w.reshape(-1, cfg.group_size) if cfg.granularity == "group" else w
        absmax = rows.abs().amax(dim=None if cfg.granularity == "tensor" else 1)
        p = qparams_from_range(-absmax, absmax, cfg.bits, True, None if cfg.granularity == "tensor" else 0)
        return fake_quantize(rows, p).reshape(w.shape)

    def fake_input(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, self.in_features)
        if self.cfg.scheme == "dynamic":
            q, s = quantize_tokens(flat.detach())
            return (q.float() * s).reshape(x.shape)
        if self.training or not self.observed:  # static: a moving average of the batches' ranges
            lo, hi = flat.detach().min(), flat.detach().max()
            c = 1.0 if not self.observed else self.momentum
            self.input_lo.mul_(1 - c).add_(c * lo)
            self.input_hi.mul_(1 - c).add_(c * hi)
            self.observed = True
        return fake_quantize(x.detach(), qparams_from_range(self.input_lo, self.input_hi, 8, False))

    def forward(self, x: Tensor) -> Tensor:
        w = straight_through(self.weight, self.fake_weight())
        if self.cfg.scheme != "weight-only":
            x = straight_through(x, self.fake_input(x))
        return F.linear(x, w, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, fake {self.cfg.scheme} {self.cfg.bits}-bit ({self.cfg.granularity})"


def prepare_qat(model: nn.Module, cfg: QuantConfig) -> nn.Module:
    """Every Linear ``quantize_model(model, cfg)`` would convert becomes a ``FakeQuantLinear`` (in
    place; returns the model). Prepare before the optimiser is built (the Parameters stay the same
    objects either way)."""
    _check_quantizable(model)
    if cfg.smooth is not None:
        raise ValueError("smooth: SmoothQuant rescales weights from calibration statistics; train without it "
                         "(quantization-aware training adapts the weights itself) and smooth at quantization if wanted")
    skip = resolve_skip(model, cfg.skipped) if cfg.skipped else ()  # (as quantize_model reads it: w_q, every layer's)
    for n in target_linears(model, skip):
        _set(model, n, FakeQuantLinear(model.get_submodule(n), cfg))
    return model


def convert_qat(model: nn.Module) -> nn.Module:
    """Plain ``nn.Linear`` layers back (the trained Parameters), ready for ``quantize_model``."""
    for name, m in list(model.named_modules()):
        if isinstance(m, FakeQuantLinear):
            linear = nn.Linear(m.in_features, m.out_features, m.bias is not None, device=m.weight.device)
            linear.weight, linear.bias = m.weight, m.bias
            _set(model, name, linear)
    return model
