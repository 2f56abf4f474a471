"""The optimizer: Adam as the paper sets it (§5.3: β1 0.9, β2 0.98, ε 1e-9), or AdamW with decoupled
weight decay (GPT/BERT recipes). The learning rate comes from a schedule (``schedules``)."""

from __future__ import annotations

import torch

from transformer_lab.training.config import TrainConfig


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam (β1 0.9, β2 ``cfg.beta2``) over the trainable parameters; with weight decay, AdamW with the
    decay on tensors of two or more dimensions only (weights, embeddings), never on biases and
    LayerNorm gains. The rate is 1.0 here: the scheduler multiplies it."""
    betas = (0.9, cfg.beta2)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model: no trainable parameters (every parameter has requires_grad=False)")
    # On a GPU one fused kernel updates every parameter (issue 14); elsewhere the multi-tensor loops.
    impl = {"fused": True} if all(p.is_cuda for p in params) else {"foreach": True}
    if cfg.weight_decay == 0:
        return torch.optim.Adam(params, lr=1.0, betas=betas, eps=cfg.adam_eps, **impl)
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=1.0, betas=betas, eps=cfg.adam_eps, **impl)
