"""Label-smoothed cross-entropy (§5.4, ε_ls = 0.1; Szegedy et al. 2016).

The target distribution puts 1 - ε on the reference token and spreads ε uniformly over all V
tokens: q = (1 - ε)·onehot(y) + ε/V. Then CE(q, p) = (1 - ε)·(-log p_y) + ε·mean_v(-log p_v),
the definition F.cross_entropy(label_smoothing=ε) also uses. Padding positions are ignored.
It "hurts perplexity, as the model learns to be more unsure, but improves accuracy and BLEU".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class LossResult:
    loss: Tensor  # summed over real tokens; divide by n_tokens for the mean
    nll: Tensor  # summed -log p_y over real tokens (no smoothing): gives perplexity
    n_tokens: int


def label_smoothed_nll(log_probs: Tensor, target: Tensor, epsilon: float, pad_id: int) -> LossResult:
    """Shapes: log_probs (B, T, V), target (B, T) -> sums over the non-pad target positions."""
    if log_probs.shape[:-1] != target.shape:
        raise ValueError(f"target: shape {tuple(target.shape)} does not match log_probs {tuple(log_probs.shape)}")
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"epsilon: expected 0 <= epsilon < 1, got {epsilon}")
    real = target != pad_id
    nll = -log_probs.gather(-1, target.unsqueeze(-1)).squeeze(-1)  # (B, T)
    smooth = -log_probs.mean(dim=-1)  # (B, T)
    loss = (1.0 - epsilon) * nll + epsilon * smooth
    return LossResult(loss[real].sum(), nll[real].sum().detach(), int(real.sum()))


def label_smoothed_cross_entropy(logits: Tensor, target: Tensor, epsilon: float, pad_id: int) -> LossResult:
    """The same loss from logits, on PyTorch's fused kernel (the training fast path; a test holds it
    equal to ``label_smoothed_nll``). Shapes: logits (B, T, V), target (B, T)."""
    if logits.shape[:-1] != target.shape:
        raise ValueError(f"target: shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}")
    flat, tgt = logits.reshape(-1, logits.size(-1)), target.reshape(-1)
    loss = F.cross_entropy(flat, tgt, ignore_index=pad_id, label_smoothing=epsilon, reduction="sum")
    with torch.no_grad():
        nll = F.cross_entropy(flat, tgt, ignore_index=pad_id, reduction="sum") if epsilon else loss.detach()
    return LossResult(loss, nll, int((target != pad_id).sum()))


def perplexity(nll_per_token: float) -> float:
    """exp(NLL per token), capped at exp(50) so a diverged model gives a number, not an overflow."""
    return math.exp(min(nll_per_token, 50.0))
