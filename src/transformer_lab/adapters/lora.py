"""LoRA: low-rank adaptation of a frozen Linear layer (Hu et al. 2021, "LoRA", §4.1).

    h = W x + b + (α / r) · B A dropout(x)        W: (out, in) frozen;  A: (r, in), B: (out, r) trained

A starts Kaiming-uniform (as an ``nn.Linear``'s weight) and B at zero, so the adapted model starts
exactly equal to the base model; only A and B (r · (in + out) numbers instead of in · out) train.
α / r keeps the update's size comparable when r changes (§4.1: "we simply set α to the first r we
try and do not tune it"). Dropout acts on the adapter's input only, as in ``peft``.

Merging folds the update into the weight, W ← W + (α / r) B A, so inference costs nothing extra;
unmerging subtracts it again (equal to the original weight up to fp32 rounding, ~1e-7 relative).
A base that stores its weight quantized (``qlora.NF4Linear``) cannot take the update in place:
``merge`` refuses it, and ``peft_format`` / ``merge_lora`` dequantize first.

Shapes: x (..., in) -> (..., out).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from transformer_lab.nn.dropout import Dropout


class LoRALinear(nn.Module):
    """A frozen ``base`` (an ``nn.Linear``, or any module with ``in_features``/``out_features`` and a
    Linear's forward) plus the trainable update B A scaled by α / r."""

    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        if r < 1:
            raise ValueError(f"r: the rank of a LoRA update must be >= 1, got {r}")
        if alpha <= 0:
            raise ValueError(f"alpha: expected > 0, got {alpha}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout: expected 0 <= p < 1, got {dropout}")
        self.base = base
        self.in_features, self.out_features = base.in_features, base.out_features
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        weight = getattr(base, "weight", None)
        kw = {"device": weight.device} if isinstance(weight, Tensor) and weight.device.type != "meta" else {}
        self.lora_A = nn.Linear(self.in_features, r, bias=False, **kw)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, **kw)
        self.dropout = Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.reset_lora_parameters()

    def reset_lora_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # nn.Linear's own init (§4.1: "random Gaussian")
        nn.init.zeros_(self.lora_B.weight)  # ΔW = 0 at the start: the adapted model is the base model

    def delta_weight(self) -> Tensor:
        """(α / r) B A, shaped like the base weight (out, in)."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    def forward(self, x: Tensor) -> Tensor:
        y = self.base(x)
        if self.merged:
            return y
        return y + self.lora_B(self.lora_A(self.dropout(x))) * self.scaling

    def _base_weight(self, action: str) -> nn.Parameter:
        if type(self.base) is not nn.Linear:
            raise ValueError(f"{action}: the base layer is a {type(self.base).__name__} (quantized weights cannot take "
                             "the update in place); dequantize it first (adapters.merge_lora does)")
        return self.base.weight

    @torch.no_grad()
    def merge(self) -> None:
        """W ← W + (α / r) B A; the forward then skips the adapter."""
        if not self.merged:
            w = self._base_weight("merge")
            w += self.delta_weight().to(w.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            w = self._base_weight("unmerge")
            w -= self.delta_weight().to(w.dtype)
            self.merged = False

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha:g}, merged={self.merged}"
