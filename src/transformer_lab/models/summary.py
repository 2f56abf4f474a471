"""Parameter counts by component; a tensor shared by several modules (tied embeddings) counts once,
under the first module that owns it."""

from __future__ import annotations

from collections import OrderedDict

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
    return "\n".join(lines)
