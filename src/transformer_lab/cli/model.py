"""`transformer-lab model summary`: parameter counts of a preset or of a model folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import nn

from transformer_lab.cli.args import positive_int
from transformer_lab.config import read_json_object
from transformer_lab.models.bert import Bert
from transformer_lab.models.gpt import GPT
from transformer_lab.models.hf import bert_config_from_hf, gpt_config_from_hf, hf_folder
from transformer_lab.models.presets import BERT_PRESETS, GPT_PRESETS, PRESETS, bert_preset, gpt_preset, preset
from transformer_lab.models.summary import format_summary, parameter_summary, quantized_weights
from transformer_lab.models.transformer import Transformer
from transformer_lab.runs import find_checkpoint, is_ours
from transformer_lab.runs.checkpoint import model_of_config

ALL_PRESETS = sorted(PRESETS) + sorted(GPT_PRESETS) + sorted(BERT_PRESETS)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="inspect model presets and model folders",
                       description="Inspect model presets and model folders.")
    msub = p.add_subparsers(dest="model_command", metavar="SUBCOMMAND", required=True)
    s = msub.add_parser("summary", help="parameter count per component",
                        description="Count a model's parameters by component, from its configuration alone (no "
                                    "weights are read or allocated): a preset of any family (encoder-decoder, GPT, "
                                    "BERT), or --model: one of our run or checkpoint folders, or a Hugging Face BERT "
                                    "or GPT-2 folder.")
    src = s.add_mutually_exclusive_group()
    src.add_argument("--preset", default=None, choices=ALL_PRESETS, help="a named size (default: base)")
    src.add_argument("--model", default=None, metavar="FOLDER",
                     help="a run or checkpoint folder, or a Hugging Face BERT/GPT-2 folder (config.json)")
    s.add_argument("--vocab-size", type=positive_int, default=None,
                   help="with --preset: the vocabulary size (default: the preset's; shakespeare-char: 65 characters, "
                        "gpt-tiny: 8,000 byte-level BPE)")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=summary)


# GPT presets whose vocabulary the data sets: the size their usual data gives (tiny-shakespeare's 65
# characters; `train --preset lm`'s byte-level BPE of 8,000), not GPTConfig's default (GPT-2's 50,257).
DATA_VOCAB = {"shakespeare-char": 65, "shakespeare-char-gpu": 65, "gpt-tiny": 8000}


def preset_model(name: str, vocab_size: int | None) -> nn.Module:
    """A preset's model on the meta device (shapes only)."""
    with torch.device("meta"):
        if name in GPT_PRESETS:
            vocab_size = vocab_size or DATA_VOCAB.get(name)
            return GPT(gpt_preset(name, **({"vocab_size": vocab_size} if vocab_size else {})))
        if name in BERT_PRESETS:
            return Bert(bert_preset(name, **({"vocab_size": vocab_size} if vocab_size else {})))
        sizes = dict(src_vocab_size=vocab_size, tgt_vocab_size=vocab_size) if vocab_size else {}
        return Transformer(preset(name, **sizes))


def folder_model(path: str | Path) -> nn.Module:
    """The model a folder's config.json describes, on the meta device (shapes only)."""
    path = Path(path)
    if is_ours(path):  # (with its adapter or quantized layers, as load_model builds it)
        config = find_checkpoint(path) / "config.json"
        with torch.device("meta"):
            return model_of_config(read_json_object(config), config)
    kind, hf = hf_folder(path, "model summary")
    where = str(path / "config.json")
    with torch.device("meta"):
        return Bert(bert_config_from_hf(hf, where)) if kind == "bert" else GPT(gpt_config_from_hf(hf, where))


def describe(model: nn.Module) -> str:
    c = model.config
    where = f" positions={c.position}" + ("" if c.attention == "full" else f" attention={c.attention}")
    if isinstance(model, Transformer):
        return (f"d_model={c.d_model} h={c.n_heads} d_ff={c.d_ff} N={c.n_encoder_layers}/{c.n_decoder_layers} "
                f"vocab={c.src_vocab_size}/{c.tgt_vocab_size}{where}")
    return (f"d_model={c.d_model} h={c.n_heads} d_ff={c.d_ff} N={c.n_layers} vocab={c.vocab_size} "
            f"context={c.max_len}{where}")


def summary(args: argparse.Namespace) -> int:
    if args.model is not None and args.vocab_size is not None:
        raise ValueError("--vocab-size: a model folder's vocabulary is its own (use it with --preset)")
    if args.model is not None:
        model, name = folder_model(args.model), {"model": str(args.model)}
    else:
        name = {"preset": args.preset or "base"}
        model = preset_model(name["preset"], args.vocab_size)
    result = {**name, "kind": type(model).__name__, **parameter_summary(model)}
    quantized = quantized_weights(model)
    if quantized:
        result["quantized_weights"] = quantized
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{type(model).__name__} {next(iter(name.values()))}: {describe(model)}")
        print(format_summary(result))
    return 0

