"""Checkpoints: a folder with the weights in safetensors (never pickle) and JSON beside them.

    DIR/model.safetensors   weights (tied tensors stored once); its metadata repeats the config
    DIR/config.json         the resolved model config, plus "model_type" (``models.registry``)
    DIR/meta.json           step, metrics, anything small
    DIR/train_state.pt      optional: optimizer, scheduler, RNG, data position (tensors and plain
                            Python values only; read with torch.load(weights_only=True))
    DIR/...                 optional task files (vocabulary, tokenizer folder)

Written atomically: everything goes to a temporary sibling folder ``.DIR.tmp-PID`` first, which then
replaces DIR by renames. A crash mid-save leaves the previous checkpoint intact (as DIR, or as
DIR.old in the instant between the two renames, which ``resolve_checkpoint`` falls back to); a
partial folder is never taken for a checkpoint, and the next save removes it (a dead writer's
temporary folder would otherwise keep a full disk full). A save that fails (disk full, permissions)
removes its temporary folder and raises an OSError naming the checkpoint.

A config.json edited so that it contradicts the weights (heads, padding id, activation, LayerNorm ε:
values that change the function without changing any shape) is refused: the weights' own copy of
the config, in the safetensors metadata, must agree with it.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import safetensors
import safetensors.torch
import torch
from torch import nn

from transformer_lab.adapters import AdapterConfig, apply_adapter
from transformer_lab.compression import QuantConfig, quantized_shell
from transformer_lab.config import from_dict, read_json_object, to_dict
from transformer_lab.files import refuse_onnx_export, umask_mode
from transformer_lab.models.registry import LEGACY_KIND, build_from_config, config_dict
from transformer_lab.runtime import unwrap

REQUIRED = ("model.safetensors", "config.json", "meta.json")
TRAIN_STATE = "train_state.pt"
CONFIG_METADATA = "transformer_lab.config"  # the config, as saved with the weights
ADAPTER = "adapter"  # config.json key of a parameter-efficient adapter's settings
QUANTIZATION = "quantization"  # config.json key of a quantized model's settings (``compression``)
NOT_IN_FUNCTION = ("attention_impl",)  # config fields that choose a kernel, not the function
# Parameter names of earlier versions -> today's (old checkpoints still load).
LEGACY_NAMES = {"mlm.bias": "mlm.decoder.bias"}
_TMP = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)$")


# --- writing --------------------------------------------------------------------------------------
def _fsync_tree(path: Path) -> None:
    for p in sorted(path.rglob("*")):
        if p.is_file():
            with open(p, "rb+") as f:
                os.fsync(f.fileno())
    _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def clean_stale_temporaries(parent: str | Path, any_writer: bool = False) -> list[Path]:
    """Remove the temporary folders that saves of dead processes (or an earlier failed save of this
    one) left in ``parent``; with ``any_writer`` (the caller holds the run folder's lock, so nobody
    else writes there), every one. Returns what was removed."""
    parent = Path(parent)
    removed = []
    if not parent.is_dir():
        return removed
    for entry in parent.iterdir():
        m = _TMP.match(entry.name)
        if m and entry.is_dir():
            pid = int(m["pid"])
            if any_writer or pid == os.getpid() or not _pid_alive(pid):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
    return removed


# The files of a Hugging Face folder that belong to its tokenizer (copied beside a model made from it).
HF_TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                      "sentence_bert_config.json", "vocab.json", "merges.txt", "added_tokens.json")
# What a checkpoint may hold besides its model and training state: the tokenizers and vocabularies our tasks
# write (char_tokenizer.json, tokenizer/, tokenizer_src/, tokenizer_tgt/, the demo's vocab.json) and those.
COMPANIONS = ("char_tokenizer.json", "tokenizer", "tokenizer_src", "tokenizer_tgt", *HF_TOKENIZER_FILES)


def companion_files(directory: str | Path) -> list[Path]:
    """The tokenizer and vocabulary files of a checkpoint folder (``COMPANIONS``), which a model made from it
    needs too; anything else put there (notes, an output written inside it) is not the model's."""
    return [Path(directory) / n for n in COMPANIONS if (Path(directory) / n).exists()]


def save_checkpoint(
    directory: str | Path,
    model: nn.Module,
    meta: dict[str, Any],
    extra: dict[str, Callable[[Path], Any]] | None = None,
    train_state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically. ``extra`` maps a file or folder name to a function writing it.
    ``model`` may be wrapped (DDP, torch.compile): the plain model is saved."""
    directory = Path(directory)
    model = unwrap(model)
    config = config_dict(model)
    if getattr(model, "adapter_config", None) is not None:  # LoRA, prefix ...: rebuilt on load (``adapters``)
        config[ADAPTER] = to_dict(model.adapter_config)
    if getattr(model, "quant_config", None) is not None:  # QuantLinear layers: rebuilt empty on load
        config[QUANTIZATION] = to_dict(model.quant_config)
    directory.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(directory.parent)
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    old = directory.with_name(directory.name + ".old")
    try:
        tmp.mkdir()
        safetensors.torch.save_model(model, str(tmp / "model.safetensors"),
                                     metadata={"format": "pt", CONFIG_METADATA: json.dumps(config, sort_keys=True)})
        umask_mode(tmp / "model.safetensors")
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True, allow_nan=False) + "\n")
        if train_state is not None:
            torch.save(train_state, tmp / TRAIN_STATE)
        for name, write in (extra or {}).items():
            write(tmp / name)
        _fsync_tree(tmp)
    except Exception as e:  # disk full, permissions, a writer's own error: nothing half-written stays
        shutil.rmtree(tmp, ignore_errors=True)
        try:  # (torch.save's own message for a full disk does not say so: "unexpected pos ...")
            free = f"; {shutil.disk_usage(directory.parent).free / 2**20:,.0f} MiB free on its disk"
        except OSError:
            free = ""
        message = (f"{directory}: could not write the checkpoint ({e}){free}; the previous checkpoint, if any, "
                   "is unchanged")
        errno = getattr(e, "errno", None)
        raise (OSError(errno, message) if errno else OSError(message)) from e
    if directory.exists():
        shutil.rmtree(old, ignore_errors=True)  # stale: DIR itself is the good copy
        directory.rename(old)
    # else DIR.old, if any, is the only good copy (an earlier save died between its renames):
    # it stays until the new one is in place.
    tmp.rename(directory)
    _fsync_dir(directory.parent)  # make the renames durable
    shutil.rmtree(old, ignore_errors=True)
    return directory


# --- reading --------------------------------------------------------------------------------------
def resolve_checkpoint(directory: str | Path) -> Path:
    """The folder to read: DIR, or DIR.old after a crash between the two renames of a save."""
    directory = Path(directory)
    if not directory.exists() and directory.with_name(directory.name + ".old").exists():
        directory = directory.with_name(directory.name + ".old")
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no checkpoint folder here (expected {', '.join(REQUIRED)})")
    missing = [n for n in REQUIRED if not (directory / n).is_file()]
    if missing:
        refuse_onnx_export(directory)
        raise FileNotFoundError(f"{directory}: not a complete checkpoint, missing {missing}")
    return directory


@dataclass
class LoadedModel:
    model: nn.Module  # Transformer, GPT or Bert, as config.json's model_type says
    meta: dict[str, Any]
    path: Path


def _check_config_agrees(config: dict[str, Any], metadata: dict[str, str] | None, config_path: Path) -> None:
    saved_text = (metadata or {}).get(CONFIG_METADATA)
    if saved_text is None:
        return  # written before the weights carried their config: nothing to compare with
    saved = json.loads(saved_text)
    keys = sorted((set(saved) | set(config)) - set(NOT_IN_FUNCTION))
    differ = [f"{k}: {config.get(k, '(absent)')!r} in config.json, {saved.get(k, '(absent)')!r} in the weights"
              for k in keys if config.get(k) != saved.get(k)]
    if differ:
        raise ValueError(f"{config_path}: contradicts the config the weights were saved with: " + "; ".join(differ)
                         + "; restore config.json or use the checkpoint these weights belong to")


def _load_weights(model: nn.Module, path: Path, map_location: str, config: dict[str, Any], config_path: Path) -> None:
    try:
        with safetensors.safe_open(str(path), "pt") as f:
            metadata = f.metadata()
        stored = safetensors.torch.load_file(str(path), device=map_location)
    except Exception as e:  # safetensors raises its own error types for a damaged file
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    _check_config_agrees(config, metadata, config_path)
    stored = {LEGACY_NAMES.get(k, k): v for k, v in stored.items()}
    own = model.state_dict()
    wrong = [f"{k}: stored {tuple(v.shape)}, config needs {tuple(own[k].shape)}"
             for k, v in stored.items() if k in own and v.shape != own[k].shape]
    if wrong:
        raise ValueError(f"{path}: weights do not fit the config; shape mismatch in {len(wrong)} tensors: "
                         + "; ".join(wrong[:8]))
    # A tied tensor (embeddings = LM head) is stored once, under one of its names.
    by_storage: dict[int, list[str]] = {}
    for k, v in own.items():
        by_storage.setdefault(v.data_ptr(), []).append(k)
    missing = [k for k in own if k not in stored and not any(n in stored for n in by_storage[own[k].data_ptr()])]
    unexpected = [k for k in stored if k not in own]
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not fit the config; missing {sorted(missing)[:10]}, "
                         f"unexpected {sorted(unexpected)[:10]}")
    model.load_state_dict(stored, strict=False)


def load_model(directory: str | Path, map_location: str | torch.device = "cpu") -> LoadedModel:
    """The model of a checkpoint folder (or its ``.old`` fallback), on ``map_location``."""
    directory = resolve_checkpoint(directory)
    config_path = directory / "config.json"
    config = read_json_object(config_path)
    model = model_of_config(config, config_path)
    model.to(map_location)
    _load_weights(model, directory / "model.safetensors", str(map_location), config, config_path)
    return LoadedModel(model, read_json_object(directory / "meta.json"), directory)


def model_of_config(config: dict[str, Any], config_path: Path) -> torch.nn.Module:
    """The model a checkpoint's config.json describes, freshly initialised (on the default device: under
    ``torch.device("meta")``, shapes only), with its adapter and quantized layers, without its weights."""
    adapter, quantization = config.get(ADAPTER), config.get(QUANTIZATION)
    model = build_from_config({k: v for k, v in config.items() if k not in (ADAPTER, QUANTIZATION)}, str(config_path))
    for key, value in ((ADAPTER, adapter), (QUANTIZATION, quantization)):
        if value is not None and not isinstance(value, dict):
            raise ValueError(f"{config_path}: {key}: expected an object, got {value!r}")
    if adapter is not None:
        apply_adapter(model, from_dict(AdapterConfig, adapter, where=f"{config_path}: {ADAPTER}"))
    if quantization is not None:
        quantized_shell(model, from_dict(QuantConfig, quantization, where=f"{config_path}: {QUANTIZATION}"))
    return model


def recorded_settings(directory: str | Path) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """The model kind (``model_type``), the training recipe and the task's settings a checkpoint was written
    with (the recipe and settings empty for a checkpoint written before meta.json kept them), read without
    loading any tensor."""
    directory = resolve_checkpoint(directory)
    kind = read_json_object(directory / "config.json").get("model_type", LEGACY_KIND)
    meta = read_json_object(directory / "meta.json")
    train, task = meta.get("train_config", {}), meta.get("task_settings", {})
    return kind, (train if isinstance(train, dict) else {}), (task if isinstance(task, dict) else {})


def load_train_state(directory: str | Path) -> dict[str, Any]:
    """Optimizer, scheduler, RNG and data position, never unpickling arbitrary objects."""
    path = resolve_checkpoint(directory) / TRAIN_STATE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: this checkpoint has no training state to resume from")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights_only" in str(e) or "Unsupported" in str(e):
            raise ValueError(f"{path}: refused: the file holds objects other than tensors and plain values, which "
                             "are never unpickled here (a training state written by transformer-lab holds none); "
                             "resume from a checkpoint this program wrote") from None
        raise ValueError(f"{path}: damaged training state ({e}); resume from another checkpoint "
                         "(checkpoints/best has the weights) or start over") from None
    except (EOFError, RuntimeError, OSError) as e:
        detail = f"{type(e).__name__}: {e}" if str(e) else "the file ends early"
        raise ValueError(f"{path}: damaged or truncated training state ({detail}); "
                         "resume from another checkpoint or start over") from None
    required = ("optimizer", "scheduler", "scaler", "rng", "trainer", "train_config")
    if not isinstance(state, dict) or not set(required) <= set(state):
        raise ValueError(f"{path}: not a training state written by transformer-lab (expected the entries "
                         f"{', '.join(required)})")
    return state
