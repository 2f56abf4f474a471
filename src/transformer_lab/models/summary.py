"""Parameter counts by component; a tensor shared by several modules (tied embeddings) counts once,
under the first module that owns it; a quantized model's integer weights, which are buffers, apart."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

# Finer groups, by the module path pattern of the encoder-decoder.
_DETAIL = (
    ("self_attn.", "self_attention"),
    ("cross_attn.", "cross_attention"),
    ("ffn.", "feed_forward"),
    ("norm", "layer_norm"),
)


def parameter_summary(model: nn.Module) -> dict:
    """``{"total": N, "components": {top-level child: N}, "detail": {finer group: N}}``; both
    dicts sum to ``total``."""
    components: dict[str, int] = OrderedDict()
    detail: dict[str, int] = OrderedDict()
    for name, child in model.named_children():
        components[name] = 0
    total = 0
    for name, p in model.named_parameters():  # de-duplicated: tied weights appear once
        n = p.numel()
        total += n
        top = name.split(".", 1)[0]
        components[top] = components.get(top, 0) + n
        group = top
        for pattern, label in _DETAIL:
            if pattern in name:
                group = f"{top}.{label}"
                break
        detail[group] = detail.get(group, 0) + n
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable, "components": dict(components), "detail": detail}


def format_summary(summary: dict) -> str:
    width = max(len(k) for k in summary["detail"]) + 2
    lines = [f"{'component':<{width}}{'parameters':>14}"]
    for key, n in summary["components"].items():
        lines.append(f"{key:<{width}}{n:>14,}")
    lines.append("")
    for key, n in summary["detail"].items():
        lines.append(f"  {key:<{width - 2}}{n:>14,}")
    lines.append(f"\n{'total':<{width}}{summary['total']:>14,}  ({summary['total'] / 1e6:.1f} M)")
    if summary.get("quantized_weights"):
        lines.append(f"quantized layers' weights and biases (buffers, not counted above): {summary['quantized_weights']:,}")
    return "\n".join(lines)


def quantized_weights(model: nn.Module) -> int:
    """Weights a quantized model holds as buffers, so not parameters: rows x columns of each quantized Linear
    and embedding table, and its bias."""
    total = 0
    for m in model.modules():
        codes = getattr(m, "qweight", None)
        if codes is None:
            codes = getattr(m, "packed", None)  # (QLoRA's NF4 base layers)
        if isinstance(codes, torch.Tensor):
            rows = getattr(m, "out_features", None) or codes.size(0)
            cols = getattr(m, "in_features", None) or codes.size(1)
            bias = getattr(m, "bias", None)
            buffered_bias = isinstance(bias, torch.Tensor) and not isinstance(bias, nn.Parameter)
            total += rows * cols + (bias.numel() if buffered_bias else 0)
    return total
