"""Adapters after training: merge a LoRA / QLoRA adapter into its base model and write a plain model.

The base is a Hugging Face BERT or GPT-2 folder (the merged model is written as one, with the base's
tokenizer files) or one of our runs / checkpoints (the merged model is written as our checkpoint).
The adapter is a ``peft`` adapter folder: one written by ``finetune --peft`` or by ``peft`` itself.
Prefix and prompt adapters add inputs, not weights: there is nothing to merge.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from torch import nn

from transformer_lab.adapters import merge_lora, parameter_counts
from transformer_lab.adapters.peft_format import load_peft, read_peft
from transformer_lab.config import read_json_object
from transformer_lab.models.hf import BERT_TYPES, gpt_from_hf, load_bert, save_bert, save_gpt
from transformer_lab.models.bert import Bert
from transformer_lab.runs import exported_model, find_checkpoint, is_ours, load_model, save_checkpoint
from transformer_lab.runs.checkpoint import companion_files, recorded_settings
from transformer_lab.runs.folder import run_folder_of
from transformer_lab.tasks.quantize import check_output, copied, hf_tokenizer_files

log = logging.getLogger(__name__)



def _head_size(tensors: dict) -> int:
    for key in ("base_model.model.classifier.weight", "base_model.classifier.weight"):
        if key in tensors:
            return int(tensors[key].shape[0])
    return 0


def load_base(base: Path, adapter_tensors: dict) -> tuple[nn.Module, str, Path]:
    """The base model, its kind: "bert" / "gpt2" (a Hugging Face folder) or "ours" (a checkpoint), and
    the folder its tokenizer files are in. A `pretrain bert` run: the Hugging Face folder it exported,
    which `finetune classify` fine-tuned from."""
    base = exported_model(base) or base
    cfg = base / "config.json"
    kind = read_json_object(cfg).get("model_type") if cfg.is_file() and not is_ours(base) else None
    if kind in BERT_TYPES:
        n_labels = _head_size(adapter_tensors)  # (the adapter brings that head's trained weights)
        return load_bert(base, announce_fresh=not n_labels, n_labels=n_labels), "bert", base
    if kind == "gpt2":
        return gpt_from_hf(base), "gpt2", base
    loaded = load_model(find_checkpoint(base))
    if getattr(loaded.model, "adapter_config", None) is not None:  # (it failed in load_peft: "already has an adapter")
        recorded = recorded_settings(loaded.path)[2].get("model")
        raise ValueError(f"{base}: a --peft run, its base with an adapter; give the base it was tuned from"
                         + (f" ({recorded})" if recorded else ""))
    if _head_size(adapter_tensors) and isinstance(loaded.model, Bert) and not loaded.model.config.n_labels:
        raise ValueError(f"{base}: a BERT checkpoint without a classification head, and the adapter brings one; "
                         "merge into the folder it was fine-tuned from (for a `pretrain bert` run: RUN or RUN/model)")
    return loaded.model, "ours", loaded.path


def _same_folder(recorded: str, base: Path) -> bool:
    """Whether the base an adapter recorded is ``base``: the same folder, or (moved, or a hub name) the same
    last part of the path; a run folder and its checkpoints count as one."""
    def root(p: Path) -> Path:  # (RUN/checkpoints/NAME and RUN/model are the run RUN)
        return p.parent.parent if p.parent.name == "checkpoints" else p.parent if exported_model(p.parent) == p else p
    here, there = root(base.resolve()), root(Path(recorded).resolve())
    return here == there or (not Path(recorded).exists() and Path(recorded).name == here.name)


def _run_settings(adapter: Path) -> dict[str, Any]:
    """The task settings of the run an adapter folder lies in (RUN/adapter), {} for an adapter on its own."""
    run = run_folder_of(adapter.parent)
    try:
        return recorded_settings(find_checkpoint(run))[2] if run is not None else {}
    except (FileNotFoundError, ValueError):
        return {}


def merge_adapter(base: str | Path, adapter: str | Path, out: str | Path) -> dict[str, Any]:
    """Base + LoRA adapter -> a plain model in ``out``. Returns what was written."""
    base, adapter, out = Path(base), Path(adapter), Path(out)
    config, tensors = read_peft(adapter)
    if config["peft_type"] != "LORA":
        raise ValueError(f"{adapter}: a {config['peft_type']} adapter adds inputs, not weights: there is nothing to "
                         "merge (load it with the base model instead)")
    model, kind, files = load_base(base, tensors)
    trained_on = config.get("base_model_name_or_path")
    if isinstance(trained_on, str) and trained_on and not _same_folder(trained_on, base):
        log.warning("%s: trained on %s (its adapter_config.json), merged into %s: the same weights? (an adapter "
                    "added to another base of the same shapes gives wrong outputs, with no error)", adapter,
                    trained_on, base)
    load_peft(model, adapter)
    adapted = parameter_counts(model).trainable
    run = _run_settings(adapter)
    if isinstance(run.get("adapter"), dict) and run["adapter"].get("method") == "qlora":
        log.warning("%s: trained as QLoRA, on the base's 4-bit (NF4) weights; merged into the fp32 base, as is usual, "
                    "its outputs differ from the run's and from the scores it reported (on a small model, most of "
                    "them): evaluate the merged model", adapter)
    model = merge_lora(model.eval())
    for p in model.parameters():
        p.requires_grad_(True)
    check_output(out, base, also_reads=[adapter])
    if kind in BERT_TYPES:
        save_bert(model, out)
    elif kind == "gpt2":
        save_gpt(model, out)
    else:
        # the base checkpoint's tokenizers or vocabulary (tokenizer/, char_tokenizer.json, vocab.json ...)
        save_checkpoint(out, model, {"merged_from": {"base": str(base), "adapter": str(adapter)}},
                        extra=copied(companion_files(files)))
    if kind != "ours":
        for path in hf_tokenizer_files(files):
            shutil.copyfile(path, out / path.name)
    if kind in BERT_TYPES and isinstance(run.get("max_len"), int):  # texts cut where the run cut them, as its
        config = out / "tokenizer_config.json"                       # OUT/model records it (tasks.embed.cut_length)
        settings = read_json_object(config) if config.is_file() else {}
        config.write_text(json.dumps({**settings, "model_max_length": run["max_len"]}, indent=2) + "\n")
    log.info("merged %s (%s adapter parameters) into %s; wrote %s", adapter, f"{adapted:,}", base, out)
    return {"model": str(out), "format": {"bert": "hf-bert", "gpt2": "hf-gpt2", "ours": "checkpoint"}[kind],
            "adapter_parameters": adapted}
