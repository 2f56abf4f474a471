"""Learning-rate schedules.

The paper's (§5.3): lrate = d_model^-0.5 · min(step^-0.5, step · warmup^-1.5): linear warm-up for
``warmup`` steps, then decay with the inverse square root of the step. Post-LN Transformers need the
warm-up: early gradients near the output are large, and Adam's second-moment estimates are still
poor (Xiong et al. 2020; Liu et al. 2020).
"""

from __future__ import annotations

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
