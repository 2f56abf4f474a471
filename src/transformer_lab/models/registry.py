"""The model kinds a checkpoint can hold: the name stored as ``model_type`` in its config.json, with
the config class and the model class. A new kind registers itself here; nothing else lists models.

``kind_of`` accepts subclasses (a model whose Linear layers were replaced, for LoRA or INT8, is
still its kind); wrappers (DDP, torch.compile) are taken off by the caller (``runtime.unwrap``).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from transformer_lab.config import from_dict, to_dict
from transformer_lab.models.bert import Bert, BertConfig
from transformer_lab.models.gpt import GPT, GPTConfig
from transformer_lab.models.transformer import Transformer, TransformerConfig

MODEL_KINDS: dict[str, tuple[type, type[nn.Module]]] = {
    "transformer": (TransformerConfig, Transformer),
    "gpt": (GPTConfig, GPT),
    "bert": (BertConfig, Bert),
}
LEGACY_KIND = "transformer"  # checkpoints written before GPT and BERT have no model_type


def register_model_kind(name: str, config_cls: type, model_cls: type[nn.Module]) -> None:
    if name in MODEL_KINDS and MODEL_KINDS[name] != (config_cls, model_cls):
        raise ValueError(f"model kind {name!r} is already registered for {MODEL_KINDS[name][1].__name__}")
    MODEL_KINDS[name] = (config_cls, model_cls)


def kind_of(model: nn.Module) -> str:
    for name, (_, cls) in MODEL_KINDS.items():
        if isinstance(model, cls):
            return name
    raise ValueError(f"model: no checkpoint format for {type(model).__name__}; "
                     f"known kinds: {sorted(MODEL_KINDS)} (models.registry.register_model_kind adds one)")


def config_dict(model: nn.Module) -> dict[str, Any]:
    """What config.json holds: ``model_type`` and the model's config fields."""
    return {"model_type": kind_of(model), **to_dict(model.config)}


def build_from_config(data: dict[str, Any], where: str) -> nn.Module:
    """A freshly initialised model from a config.json's contents."""
    data = dict(data)
    kind = data.pop("model_type", LEGACY_KIND)
    if kind not in MODEL_KINDS:
        raise ValueError(f"{where}: unknown model_type {kind!r}; expected one of {sorted(MODEL_KINDS)}")
    config_cls, model_cls = MODEL_KINDS[kind]
    return model_cls(from_dict(config_cls, data, where=where))
