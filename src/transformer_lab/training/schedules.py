"""Learning-rate schedules.

The paper's (§5.3): lrate = d_model^-0.5 · min(step^-0.5, step · warmup^-1.5): linear warm-up for
``warmup`` steps, then decay with the inverse square root of the step. Post-LN Transformers need the
warm-up: early gradients near the output are large, and Adam's second-moment estimates are still
poor (Xiong et al. 2020; Liu et al. 2020).
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def noam_lr(step: int, d_model: int, warmup: int, factor: float = 1.0) -> float:
    """The paper's rate at 1-based ``step``."""
    if step < 1:
        raise ValueError(f"step: expected >= 1 (the schedule is 1-based), got {step}")
    if warmup < 1:
        raise ValueError(f"warmup: expected >= 1, got {warmup}")
    return factor * d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)


def noam_scheduler(optimizer: Optimizer, d_model: int, warmup: int, factor: float = 1.0) -> LambdaLR:
    """LambdaLR multiplies each group's *initial* lr by the lambda: set the optimizer's lr to 1.0.
    LambdaLR counts from 0 before the first step, so step k of training uses noam_lr(k)."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] = 1.0
    return LambdaLR(optimizer, lambda i: noam_lr(i + 1, d_model, warmup, factor))


def warmup_linear_lr(step: int, peak: float, warmup: int, total: int) -> float:
    """Linear warm-up to ``peak`` over ``warmup`` steps, then linear decay to 0 at ``total``."""
    if step < warmup:
        return peak * step / warmup
    return peak * max(0.0, (total - step) / max(1, total - warmup))


def warmup_cosine_lr(step: int, peak: float, warmup: int, total: int, floor: float = 0.0) -> float:
    """Linear warm-up to ``peak``, then half a cosine down to ``floor`` at ``total`` (GPT recipes)."""
    if step < warmup:
        return peak * step / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


SCHEDULES = ("noam", "linear", "cosine", "constant")


def build_scheduler(optimizer: Optimizer, kind: str, lr: float, warmup: int, total: int, d_model: int,
                    min_lr: float = 0.0) -> LambdaLR:
    """``noam``: the paper's formula times ``lr`` (a factor, 1.0 = the paper); the others: ``lr`` is the
    peak rate. Step k of training (1-based) uses the rate of step k."""
    if kind not in SCHEDULES:
        raise ValueError(f"schedule: expected one of {SCHEDULES}, got {kind!r}")
    if kind == "noam":
        return noam_scheduler(optimizer, d_model, warmup, lr)
    fn = {
        "linear": lambda s: warmup_linear_lr(s, lr, warmup, total),
        "cosine": lambda s: warmup_cosine_lr(s, lr, warmup, total, min_lr),
        "constant": lambda s: lr * min(1.0, s / max(1, warmup)),
    }[kind]
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] = 1.0
    return LambdaLR(optimizer, lambda i: fn(i + 1))
