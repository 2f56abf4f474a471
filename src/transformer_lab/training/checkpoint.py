"""Checkpoints: a folder with the weights in safetensors (never pickle) and JSON beside them.

    DIR/model.safetensors   weights (tied tensors stored once)
    DIR/config.json         the resolved TransformerConfig
    DIR/vocab.json          the vocabulary
    DIR/meta.json           step, metrics, anything small

Written atomically: everything goes to a temporary sibling folder first, which then replaces DIR by
renames. A crash mid-save leaves the previous checkpoint intact (as DIR, or as DIR.old in the
instant between the two renames, which ``load_checkpoint`` falls back to); a partial folder is
never taken for a checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch

from transformer_lab.config import from_dict, save_json
from transformer_lab.data.vocab import Vocab
from transformer_lab.models.transformer import Transformer, TransformerConfig

FILES = ("model.safetensors", "config.json", "vocab.json", "meta.json")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(directory: str | Path, model: Transformer, vocab: Vocab, meta: dict[str, Any]) -> Path:
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    old = directory.with_name(directory.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    safetensors.torch.save_model(model, str(tmp / "model.safetensors"))
    save_json(model.config, tmp / "config.json")
    vocab.save(tmp / "vocab.json")
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    for name in FILES:
        with open(tmp / name, "rb+") as f:
            os.fsync(f.fileno())
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    _fsync_dir(directory.parent)
    shutil.rmtree(old, ignore_errors=True)
    return directory


@dataclass
class Checkpoint:
    model: Transformer
    vocab: Vocab
    meta: dict[str, Any]
    path: Path


def load_checkpoint(directory: str | Path, map_location: str = "cpu") -> Checkpoint:
    directory = Path(directory)
    if not directory.exists() and directory.with_name(directory.name + ".old").exists():
        directory = directory.with_name(directory.name + ".old")  # crash between the two renames
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no checkpoint folder here (expected {', '.join(FILES)})")
    missing = [n for n in FILES if not (directory / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{directory}: not a complete checkpoint, missing {missing}")
    config = from_dict(TransformerConfig, json.loads((directory / "config.json").read_text()),
                       where=str(directory / "config.json"))
    model = Transformer(config)
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
    missing_keys, unexpected = safetensors.torch.load_model(model, str(weights), strict=False, device=map_location)
    if missing_keys or unexpected:
        raise ValueError(
            f"{weights}: weights do not fit the config; "
            f"missing {sorted(missing_keys)[:10]}, unexpected {sorted(unexpected)[:10]}"
        )
    vocab = Vocab.load(directory / "vocab.json")
    if len(vocab) != config.tgt_vocab_size:
        raise ValueError(f"{directory}: vocab.json has {len(vocab)} symbols, config says {config.tgt_vocab_size}")
    return Checkpoint(model, vocab, json.loads((directory / "meta.json").read_text()), directory)
