"""Structured pruning: remove whole FFN neurons or whole layers, so the matrices (or the stack) shrink
and the same dense kernels run faster. Zeroing single weights (unstructured pruning) keeps every dense
shape, and so its time, unchanged; ``torch.nn.utils.prune`` does that, and the deployment question
measures both.

Neuron i of a position-wise FFN is row i of W_1 (with b_1, and W_3's row for SwiGLU) and column i of
W_2; removing it removes its term h_i · W_2[:, i] from the output, nothing else. Its score is the
size of that path, ||(W_1[i], b_1[i])|| · ||W_2[:, i]|| (the bias too: a neuron with small weights and a
large bias still adds a near-constant term), and every layer keeps the same number of neurons, so the
model's config still describes it (``d_ff``).

Pruned models lose accuracy; training the smaller model to reproduce the original's outputs
(distillation) is how it is won back.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from transformer_lab.nn.feedforward import PositionwiseFeedForward


def ffn_neuron_scores(ffn: PositionwiseFeedForward) -> Tensor:
    """(d_ff,) the magnitude of each neuron's path: ||(W_1[i], b_1[i])|| · ||W_2[:, i]|| (times ||W_3[i]||
    if gated)."""
    rows = ffn.w_1.weight if ffn.w_1.bias is None else torch.cat([ffn.w_1.weight, ffn.w_1.bias[:, None]], dim=1)
    score = rows.norm(dim=1) * ffn.w_2.weight.norm(dim=0)
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
    """The model's config with ``changes``; a ValueError if it has no such fields (it would no longer
    describe the model, and a saved checkpoint would not load)."""
    config = getattr(model, "config", None)
    if config is None or not all(hasattr(config, k) for k in changes):
        raise ValueError(f"{type(model).__name__}: its config has no {', '.join(changes)} to describe the pruned model")
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
    if len(width) != 1:
        raise ValueError(f"prune_ffn: FFNs of several widths {sorted(width)}; one d_ff could not describe the result")
    if not hasattr(getattr(model, "config", None), "d_ff"):
        raise ValueError(f"{type(model).__name__}: its config has no d_ff to describe the pruned model")
    n = max(1, round(keep * width.pop()))
    for ffn in ffns:
        idx = ffn_neuron_scores(ffn).topk(n).indices.sort().values
        ffn.w_1 = _keep_rows(ffn.w_1, idx)
        if ffn.w_3 is not None:
            ffn.w_3 = _keep_rows(ffn.w_3, idx)
        ffn.w_2 = _keep_columns(ffn.w_2, idx)
    _set_config(model, d_ff=n)
    return model


def keep_layers(model: nn.Module, indices: list[int]) -> nn.Module:
    """Keep only the encoder layers at ``indices`` (in that order), in place, as DistilBERT's student
    starts from every other layer of its teacher; the model's ``config.n_layers`` follows. For an
    encoder with one stack of layers (BERT): a ValueError for other models."""
    layers = getattr(getattr(model, "encoder", None), "layers", None)
    if layers is None or not hasattr(getattr(model, "config", None), "n_layers"):
        raise ValueError(f"keep_layers: expected a BERT-style encoder (model.encoder.layers, config.n_layers), "
                         f"got a {type(model).__name__}")
    if not indices or any(not 0 <= i < len(layers) for i in indices) or len(set(indices)) != len(indices):
        raise ValueError(f"indices: expected distinct layer indices in [0, {len(layers)}), got {indices}")
    model.encoder.layers = nn.ModuleList(layers[i] for i in indices)
    _set_config(model, n_layers=len(indices))
    return model
