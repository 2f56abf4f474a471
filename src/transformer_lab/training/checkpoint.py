"""Checkpoints: a folder with the weights in safetensors (never pickle) and JSON beside them.

    DIR/model.safetensors   weights (tied tensors stored once)
    DIR/config.json         the resolved model config, plus "model_type" (transformer, gpt, bert)
    DIR/meta.json           step, metrics, anything small
    DIR/train_state.pt      optional: optimizer, scheduler, RNG, data position (tensors and plain
                            Python values only; read with torch.load(weights_only=True))
    DIR/...                 optional task files (vocabulary, tokenizer folder)

Written atomically: everything goes to a temporary sibling folder first, which then replaces DIR by
renames. A crash mid-save leaves the previous checkpoint intact (as DIR, or as DIR.old in the
instant between the two renames, which ``load_model`` falls back to); a partial folder is never
taken for a checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import safetensors
import safetensors.torch
import torch

from transformer_lab.config import from_dict, to_dict
from transformer_lab.models.transformer import Transformer, TransformerConfig

REQUIRED = ("model.safetensors", "config.json", "meta.json")
TRAIN_STATE = "train_state.pt"


def _fsync_tree(path: Path) -> None:
    for p in sorted(path.rglob("*")):
        if p.is_file():
            with open(p, "rb+") as f:
                os.fsync(f.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    directory: str | Path,
    model: Transformer,
    meta: dict[str, Any],
    extra: dict[str, Callable[[Path], Any]] | None = None,
    train_state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically. ``extra`` maps a file or folder name to a function writing it."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    old = directory.with_name(directory.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    safetensors.torch.save_model(model, str(tmp / "model.safetensors"))
    config = {"model_type": model_type_of(model), **to_dict(model.config)}
    (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    if train_state is not None:
        torch.save(train_state, tmp / TRAIN_STATE)
    for name, write in (extra or {}).items():
        write(tmp / name)
    _fsync_tree(tmp)
    if directory.exists():
        shutil.rmtree(old, ignore_errors=True)  # stale: DIR itself is the good copy
        directory.rename(old)
    # else DIR.old, if any, is the only good copy (an earlier save died between its renames):
    # it stays until the new one is in place.
    tmp.rename(directory)
    fd = os.open(directory.parent, os.O_RDONLY)  # make the renames durable
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    shutil.rmtree(old, ignore_errors=True)
    return directory


def model_types() -> dict[str, tuple[type, type]]:
    """model_type -> (config class, model class); imported here to keep the modules independent."""
    from transformer_lab.models.bert import Bert, BertConfig
    from transformer_lab.models.gpt import GPT, GPTConfig

    return {"transformer": (TransformerConfig, Transformer), "gpt": (GPTConfig, GPT), "bert": (BertConfig, Bert)}


def model_type_of(model: torch.nn.Module) -> str:
    for name, (_, cls) in model_types().items():
        if type(model) is cls:
            return name
    raise ValueError(f"model: no checkpoint format for {type(model).__name__}")


def resolve_checkpoint(directory: str | Path) -> Path:
    """The folder to read: DIR, or DIR.old after a crash between the two renames of a save."""
    directory = Path(directory)
    if not directory.exists() and directory.with_name(directory.name + ".old").exists():
        directory = directory.with_name(directory.name + ".old")
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no checkpoint folder here (expected {', '.join(REQUIRED)})")
    missing = [n for n in REQUIRED if not (directory / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{directory}: not a complete checkpoint, missing {missing}")
    return directory


@dataclass
class LoadedModel:
    model: torch.nn.Module  # Transformer, GPT or Bert, as config.json's model_type says
    meta: dict[str, Any]
    path: Path


def load_model(directory: str | Path, map_location: str = "cpu") -> LoadedModel:
    directory = resolve_checkpoint(directory)
    data = json.loads((directory / "config.json").read_text())
    kind = data.pop("model_type", "transformer")  # checkpoints from before GPT/BERT have none
    if kind not in model_types():
        raise ValueError(f"{directory / 'config.json'}: unknown model_type {kind!r}; expected one of {sorted(model_types())}")
    config_cls, model_cls = model_types()[kind]
    model = model_cls(from_dict(config_cls, data, where=str(directory / "config.json")))
    weights = directory / "model.safetensors"
    try:
        with safetensors.safe_open(str(weights), "pt") as f:
            stored = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for a damaged header
        raise ValueError(f"{weights}: not a readable safetensors file ({e})") from None
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    wrong = [f"{k}: stored {stored[k]}, config needs {expected[k]}" for k in stored if k in expected and stored[k] != expected[k]]
    if wrong:
        raise ValueError(f"{weights}: weights do not fit the config; shape mismatch in {len(wrong)} tensors: " + "; ".join(wrong[:8]))
    model.to(map_location)
    missing_keys, unexpected = safetensors.torch.load_model(model, str(weights), strict=False, device=map_location)
    if missing_keys or unexpected:
        raise ValueError(
            f"{weights}: weights do not fit the config; "
            f"missing {sorted(missing_keys)[:10]}, unexpected {sorted(unexpected)[:10]}"
        )
    return LoadedModel(model, json.loads((directory / "meta.json").read_text()), directory)


def load_train_state(directory: str | Path) -> dict[str, Any]:
    """Optimizer, scheduler, RNG and data position, never unpickling arbitrary objects."""
    path = resolve_checkpoint(directory) / TRAIN_STATE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: this checkpoint has no training state to resume from")
    return torch.load(path, map_location="cpu", weights_only=True)
