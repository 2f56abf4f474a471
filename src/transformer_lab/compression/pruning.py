"""Structured pruning: remove whole FFN neurons or whole layers, so the matrices (or the stack) shrink
and the same dense kernels run faster. Zeroing single weights (unstructured pruning) keeps every dense
shape, and so its time, unchanged; ``torch.nn.utils.prune`` does that, and the deployment question
measures both.

Neuron i of a position-wise FFN is row i of W_1 (with b_1, and W_3's row for SwiGLU) and column i of
W_2; removing it removes its term h_i · W_2[:, i] from the output, nothing else. Its score is the
size of that path, ||W_1[i]|| · ||W_2[:, i]||, and every layer keeps the same number of neurons, so
the model's config still describes it (``d_ff``).

Pruned models lose accuracy; training the smaller model to reproduce the original's outputs
(distillation) is how it is won back.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from transformer_lab.nn.feedforward import PositionwiseFeedForward


def ffn_neuron_scores(ffn: PositionwiseFeedForward) -> Tensor:
    """(d_ff,) the magnitude of each neuron's path: ||W_1[i]|| · ||W_2[:, i]|| (times ||W_3[i]|| if gated)."""
    score = ffn.w_1.weight.norm(dim=1) * ffn.w_2.weight.norm(dim=0)
    return score * ffn.w_3.weight.norm(dim=1) if ffn.w_3 is not None else score


def _keep_rows(layer: nn.Linear, idx: Tensor) -> nn.Linear:
    out = nn.Linear(layer.in_features, len(idx), bias=layer.bias is not None).to(layer.weight)
    out.weight.data.copy_(layer.weight.data[idx])
    if layer.bias is not None:
        out.bias.data.copy_(layer.bias.data[idx])
    return out


def _keep_columns(layer: nn.Linear, idx: Tensor) -> nn.Linear:
    out = nn.Linear(len(idx), layer.out_features, bias=layer.bias is not None).to(layer.weight)
    out.weight.data.copy_(layer.weight.data[:, idx])
    if layer.bias is not None:
        out.bias.data.copy_(layer.bias.data)
    return out


def _set_config(model: nn.Module, **changes: int) -> None:
    config = getattr(model, "config", None)
    if config is not None and all(hasattr(config, k) for k in changes):
        model.config = dataclasses.replace(config, **changes)


@torch.no_grad()
def prune_ffn(model: nn.Module, keep: float) -> nn.Module:
    """Keep the fraction ``keep`` (0 < keep <= 1) of every FFN's neurons, those of the largest
    ``ffn_neuron_scores``, in place; the model's ``config.d_ff`` follows. Returns the model."""
    if not 0 < keep <= 1:
        raise ValueError(f"keep: expected a fraction in (0, 1], got {keep}")
    ffns = [m for m in model.modules() if isinstance(m, PositionwiseFeedForward)]
    if not ffns:
        raise ValueError("prune_ffn: the model has no position-wise FFN")
    width = {f.w_1.out_features for f in ffns}
    n = max(1, round(keep * max(width)))
    for ffn in ffns:
        idx = ffn_neuron_scores(ffn).topk(min(n, ffn.w_1.out_features)).indices.sort().values
        ffn.w_1 = _keep_rows(ffn.w_1, idx)
        if ffn.w_3 is not None:
            ffn.w_3 = _keep_rows(ffn.w_3, idx)
        ffn.w_2 = _keep_columns(ffn.w_2, idx)
    if len(width) == 1:
        _set_config(model, d_ff=n)
    return model


def keep_layers(model: nn.Module, indices: list[int]) -> nn.Module:
    """Keep only the encoder layers at ``indices`` (in that order), in place, as DistilBERT's student
    starts from every other layer of its teacher; the model's ``config.n_layers`` follows."""
    layers = model.encoder.layers
    if not indices or any(not 0 <= i < len(layers) for i in indices) or len(set(indices)) != len(indices):
        raise ValueError(f"indices: expected distinct layer indices in [0, {len(layers)}), got {indices}")
    model.encoder.layers = nn.ModuleList(layers[i] for i in indices)
    _set_config(model, n_layers=len(indices))
    return model
