"""Argument helpers shared by the commands: checked number types (a bad value is an argparse error
naming the flag, before any work), the run-folder options, and text input from stdin."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from transformer_lab.adapters import METHODS, AdapterConfig
from transformer_lab.runs import LAST, find_checkpoint, run_folder_of
from transformer_lab.runs.checkpoint import recorded_settings
from transformer_lab.tasks.common import RunOptions, TaskResult
from transformer_lab.tokenizers.corpus import decode_lines
from transformer_lab.training.config import TrainConfig
from transformer_lab.training.schedules import SCHEDULES


def _number(kind: type, low: float, inclusive: bool, what: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not (value >= low if inclusive else value > low) or value != value or value == float("inf"):  # NaN, inf
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value

    parse.__name__ = what
    return parse


positive_int = _number(int, 0, False, "an integer >= 1")
non_negative_int = _number(int, 0, True, "an integer >= 0")
positive_float = _number(float, 0.0, False, "a number > 0")
non_negative_float = _number(float, 0.0, True, "a number >= 0")


MAX_SEED = 2**32 - 1  # (torch takes 64 bits, but seeds are offset by rank and step, and numpy's are 32-bit)


def seed(text: str) -> int:
    value = non_negative_int(text)
    if value > MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected a seed in 0..{MAX_SEED}, got {text}")
    return value


def probability(text: str) -> float:
    value = non_negative_float(text)
    if value >= 1.0:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1), got {text}")
    return value


def add_run_args(p: argparse.ArgumentParser, out_required: bool = False) -> None:
    """--out, --resume, --overwrite, --device, --seed, --no-progress."""
    g = p.add_argument_group("run")
    g.add_argument("--out", default=None,  # (required without --resume when out_required: run_options says so)
                   help="run folder: checkpoints, metrics, plots (with --resume: the resumed run's folder"
                        f"{'; otherwise required' if out_required else ''})")
    g.add_argument("--resume", default=None, metavar="RUN_OR_CHECKPOINT",
                   help="continue this run (its checkpoints/last) or checkpoint folder exactly where it stopped")
    g.add_argument("--overwrite", action="store_true",
                   help="start over in a run folder that holds an earlier run (removes its checkpoints, metrics, plots)")
    add_device(g)
    g.add_argument("--seed", type=seed, default=None,
                   help="initialisation, data order, dropout (default 0; with --resume, the run's)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--fsdp", action="store_true",
                   help="under torchrun: shard the model's weights, gradients and optimizer state over the processes "
                        "(FSDP2) instead of a copy in each (DDP)")


def add_device(p) -> None:
    """--device and --threads."""
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    add_threads(p)


def add_threads(p) -> None:
    """--threads (``cli.main`` sets torch's threads before the command runs)."""
    p.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads for torch (default: torch's choice, one per core; fewer when other work shares "
                        "the cores: a decode on 2 busy cores ran 13-18x faster at 1)")


def add_json_summary(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true",
                   help="print the run's summary (what OUT/summary.json holds) as one JSON line on stdout")


def finish(result: TaskResult, print_json: bool) -> int:
    """A training command's end: its summary as one JSON line when asked (the main process's only, under
    torchrun); the exit code (128 + signal when a signal stopped the run)."""
    if print_json and result.is_main:
        print(json.dumps(result.summary))
    return result.exit_code


def run_options(args: argparse.Namespace, default_out: str | None = None) -> RunOptions:
    """The run's options; without --out, a resumed run continues in its own folder (``--resume RUN``)."""
    out = args.out or (args.resume and run_folder_of(args.resume)) or default_out
    if out is None and args.resume:
        raise ValueError(f"--resume {args.resume}: not a run folder nor one of its checkpoints (a checkpoint folder "
                         "of its own needs --out: the folder the resumed run writes to)")
    if out is None:
        raise ValueError("--out: give the run folder (or --resume RUN to continue a run in its own folder)")
    return RunOptions(out=Path(out), resume=Path(args.resume) if args.resume else None,
                      overwrite=args.overwrite, device=args.device, fsdp=getattr(args, "fsdp", False))


def add_split_special_tokens(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split-special-tokens", action="store_true", default=None,
                   help='treat "[MASK]", "[SEP]", "<|endoftext|>" ... in the text as ordinary text (default: as the '
                        "model folder's tokenizer does, which for Hugging Face folders means special tokens)")


def texts_or_stdin(texts: list[str], what: str, given: str = "TEXT") -> list[str]:
    """The TEXT arguments, else the lines of stdin (UTF-8, checked); ``given``: how else a command takes them."""
    out = texts or list(decode_lines(sys.stdin.buffer, "stdin"))
    if not out:
        raise ValueError(f"{given}: nothing to {what} (give {given} or lines on stdin)")
    return out


def add_train_args(p: argparse.ArgumentParser) -> None:
    """The options every training command shares; unset ones keep the task's recipe."""
    g = p.add_argument_group("optimisation (unset: the task's recipe)")
    g.add_argument("--max-steps", type=positive_int, default=None, help="optimizer steps")
    g.add_argument("--time-budget", type=positive_float, default=None, metavar="MINUTES", help="stop cleanly (with a checkpoint) after this command has trained this long")
    g.add_argument("--schedule", default=None, choices=SCHEDULES, help="learning rate by step (noam: the paper's)")
    g.add_argument("--lr", type=positive_float, default=None, help="noam: factor on the paper's formula; others: peak rate")
    g.add_argument("--warmup", type=non_negative_int, default=None, help="warm-up steps (0: none; noam needs >= 1)")
    g.add_argument("--label-smoothing", type=probability, default=None, help="translation: 0.1 (the paper)")
    g.add_argument("--weight-decay", type=non_negative_float, default=None, help="AdamW decoupled decay (GPT presets: 0.1)")
    g.add_argument("--beta2", type=probability, default=None, help="Adam's beta2 (translation 0.98, GPT 0.99)")
    g.add_argument("--min-lr", type=non_negative_float, default=None, help="cosine: the rate's floor")
    g.add_argument("--clip-norm", type=non_negative_float, default=None, help="gradient clipping (0: off; default 1.0)")
    g.add_argument("--accumulate", type=positive_int, default=None, help="micro-batches per optimizer step")
    g.add_argument("--precision", default=None, choices=["fp32", "bf16", "fp16"], help="bf16/fp16: CUDA only")
    g.add_argument("--eval-every", type=non_negative_int, default=None, help="steps between validations (0: at the end)")
    g.add_argument("--patience", type=positive_int, default=None, help="early stopping: validations without improvement")
    g.add_argument("--save-every", type=non_negative_int, default=None,
                   help="steps between checkpoints (0: at each validation); also at the end and on a signal")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the model for training (the first steps compile: 1-2 min on CPU; measured "
                        "1.28-1.38x eager for the Multi30k preset on 2 cores, ~1.04x for a 0.8 M-parameter GPT: README)")
    g.add_argument("--log-every", type=positive_int, default=None, help="steps between rows of metrics.csv (default 20)")
    g.add_argument("--dropout", type=probability, default=None,
                   help="every dropout of the model at this rate while training (default: the model's own; 0: none, "
                        "e.g. to compare runs exactly)")


def resumed(args: argparse.Namespace) -> tuple[str, dict, dict]:
    """With --resume: the model kind (``model_type``: transformer, gpt, bert), the recipe and the task
    settings its last checkpoint recorded; else ("", {}, {})."""
    return recorded_settings(find_checkpoint(args.resume, prefer=(LAST,))) if args.resume else ("", {}, {})


def resumed_settings(args: argparse.Namespace, kind: str) -> tuple[dict, dict]:
    """The recipe and task settings a resumed run of a ``kind`` model was trained with, which the options
    left unset keep; empty without --resume and for a checkpoint of another kind (which the resume itself
    then refuses by name)."""
    then, train, task = resumed(args)
    return (train, task) if then == kind else ({}, {})


def kept(args: argparse.Namespace, kind: str, **given: Any) -> dict[str, Any]:
    """The task settings ``given`` (None: not on the command line), each unset one a resumed run's recorded
    value; those neither given nor recorded are left out (the task config's default applies). A resumed
    run so continues as it was going: its batch size, length, vocabulary ... (``kind``: ``resumed_settings``)."""
    _, then = resumed_settings(args, kind)
    out = {k: v if v is not None else then.get(k) for k, v in given.items()}
    return {k: v for k, v in out.items() if v is not None}


def refuse_unused(why: str, **given: Any) -> None:
    """ValueError naming the options ``given`` (set: not None, not False) that this reading of the command
    would ignore: ``why`` says which reading, after "not for"."""
    named = [f"--{k.replace('_', '-')}" for k, v in given.items() if v is not None and v is not False]
    if named:
        raise ValueError(f"{', '.join(named)}: not for {why}")


def run_seed(args: argparse.Namespace) -> int:
    """--seed, else a resumed run's own (its adapter was initialised with it: a resume compares them), else 0."""
    return args.seed if args.seed is not None else int(resumed(args)[1].get("seed", 0))


def train_config(args: argparse.Namespace, recipe: TrainConfig, kind: str) -> TrainConfig:
    """The recipe with the options given on the command line (checked by TrainConfig). A resumed run's
    unset options keep the run's own values (its length, rate, schedule ...: it continues as it was
    going), not the task's recipe; a time budget and --compile (how, not what, it trains: a flag cannot be
    turned off) are the new command's alone. ``kind``: the model the command trains (``resumed_settings``)."""
    then, _ = resumed_settings(args, kind)
    names = {f.name for f in fields(TrainConfig)} - {"time_budget_s", "progress", "compile"}
    recipe = replace(recipe, **{k: v for k, v in then.items() if k in names})
    given = dict(max_steps=args.max_steps, schedule=args.schedule, lr=args.lr, warmup=args.warmup,
                 label_smoothing=args.label_smoothing, weight_decay=args.weight_decay, beta2=args.beta2,
                 min_lr=args.min_lr, accumulate=args.accumulate, precision=args.precision, eval_every=args.eval_every,
                 patience=args.patience, save_every=args.save_every, dropout=args.dropout,
                 log_every=args.log_every, compile=args.compile or None)
    values = {k: v for k, v in given.items() if v is not None}
    if args.schedule is not None and args.lr is None and (args.schedule == "noam") != (recipe.schedule == "noam"):
        # noam's --lr is a factor on the paper's formula, the others' the peak rate: the recipe's value means
        # nothing under the other reading (1.0 as a peak rate diverges; 1e-3 as a factor barely trains)
        reading = "a factor on the paper's formula (1: the paper's)" if args.schedule == "noam" else "the peak rate"
        raise ValueError(f"--lr: --schedule {args.schedule} reads --lr as {reading}, and the task's recipe has "
                         f"{recipe.schedule} lr {recipe.lr:g}; give --lr with --schedule")
    if args.time_budget is not None:
        values["time_budget_s"] = args.time_budget * 60
    if args.clip_norm is not None:
        values["clip_norm"] = args.clip_norm or None  # 0: no clipping
    return replace(recipe, seed=recipe.seed if args.seed is None else args.seed, progress=not args.no_progress,
                   **values)


LORA, PREFIX, PROMPT = ("lora", "qlora"), ("prefix",), ("prompt",)
# Each method's own options: their defaults and the methods that use them (the others' are refused with a
# method, and all of them without --peft).
PEFT_OPTIONS = {"r": (8, LORA), "alpha": (16.0, LORA), "lora_dropout": (0.0, LORA), "target": ("w_q,w_v", LORA),
                "prefix_len": (20, PREFIX), "prefix_hidden": (512, PREFIX), "prompt_len": (20, PROMPT),
                "prompt_text": (None, PROMPT)}


def add_peft_args(p: argparse.ArgumentParser) -> None:
    """Parameter-efficient fine-tuning: which method and its sizes (``adapters``)."""
    g = p.add_argument_group("parameter-efficient fine-tuning (unset: every weight trains)")
    g.add_argument("--peft", default=None, choices=METHODS,
                   help="lora: low-rank updates; qlora: LoRA on a 4-bit NF4 base; prefix: trained keys/values in every "
                        "layer; prompt: trained input vectors")
    d = {name: default for name, (default, _) in PEFT_OPTIONS.items()}
    g.add_argument("--r", type=positive_int, default=d["r"], help="LoRA rank")
    g.add_argument("--alpha", type=positive_float, default=d["alpha"], help="LoRA scale: the update is (alpha / r) B A")
    g.add_argument("--lora-dropout", type=probability, default=d["lora_dropout"], help="dropout on the LoRA input")
    g.add_argument("--target", default=d["target"],
                   help="LoRA: Linear layers by name (w_q,w_k,w_v,w_o,w_1,w_2; query,key,value also accepted)")
    g.add_argument("--prefix-len", type=positive_int, default=d["prefix_len"], help="prefix tuning: virtual tokens per layer")
    g.add_argument("--prefix-hidden", type=non_negative_int, default=d["prefix_hidden"],
                   help="prefix tuning: the reparameterization MLP's width while training (0: none)")
    g.add_argument("--prompt-len", type=positive_int, default=d["prompt_len"], help="prompt tuning: soft-prompt vectors")
    g.add_argument("--prompt-text", default=d["prompt_text"],
                   help="prompt tuning: initialise from this text's token embeddings (default: sampled vocabulary)")


def adapter_config(args: argparse.Namespace) -> AdapterConfig | None:
    """The --peft options as an AdapterConfig (None without --peft); an option of another method, or one
    given without --peft, is an error rather than ignored."""
    for name, (default, methods) in PEFT_OPTIONS.items():
        if getattr(args, name) != default and args.peft not in methods:
            raise ValueError(f"--{name.replace('_', '-')}: an option of --peft {' or '.join(methods)}, "
                             f"{'given without --peft' if args.peft is None else f'not of --peft {args.peft}'}")
    if args.peft is None:  # a resumed --peft run continues with its own adapter (it was refused, printing a dict)
        recorded = resumed(args)[2].get("adapter") if getattr(args, "resume", None) else None
        known = {f.name for f in fields(AdapterConfig)}
        return AdapterConfig(**{k: v for k, v in recorded.items() if k in known}) if isinstance(recorded, dict) else None
    return AdapterConfig(method=args.peft, r=args.r, alpha=args.alpha, dropout=args.lora_dropout, targets=args.target,
                         prefix_len=args.prefix_len, prefix_hidden=args.prefix_hidden, prompt_len=args.prompt_len,
                         seed=run_seed(args))
