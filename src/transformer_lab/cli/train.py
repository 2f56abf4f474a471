"""`transformer-lab train`: train an encoder-decoder.

With no arguments: the built-in date-translation demo ("21.03.1987" -> "the twenty first of march
nineteen eighty seven"), a few minutes on 2 CPU cores. With `--preset multi30k-de-en` (or en-de,
fr-en, en-fr), or `--train-src/--train-tgt/--valid-src/--valid-tgt FILES`: real translation with the
paper's recipe. Everything a run writes goes to --out; `--resume` continues a run exactly.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from transformer_lab.models.presets import PRESETS
from transformer_lab.models.summary import parameter_summary
from transformer_lab.training.trainer import TrainConfig, Trainer, finite_or_none

log = logging.getLogger("transformer_lab")

TASK_PRESETS = ["dates", "multi30k-de-en", "multi30k-en-de", "multi30k-fr-en", "multi30k-en-fr"]

# Per-task defaults for options left unset on the command line.
DEFAULTS = {
    "dates": dict(model="tiny", max_steps=2000, warmup=400, lr=1.0, schedule="noam", batch_size=64, eval_every=0),
    "translation": dict(model="multi30k", max_steps=100_000, warmup=1000, lr=0.7, schedule="noam", eval_every=500),
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train an encoder-decoder (default: the built-in date demo)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("run")
    g.add_argument("--preset", default=None, choices=TASK_PRESETS, help="task (default: dates, or translation when files are given)")
    g.add_argument("--out", default=None, help="folder for checkpoints, metrics and plots (default: runs/<preset>)")
    g.add_argument("--max-steps", type=int, default=None, help="optimizer steps")
    g.add_argument("--time-budget", type=float, default=None, metavar="MINUTES", help="stop cleanly after this long")
    g.add_argument("--resume", default=None, metavar="CHECKPOINT", help="continue from OUT/checkpoints/last (or this folder)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    m = p.add_argument_group("model and optimisation")
    m.add_argument("--model", default=None, choices=sorted(PRESETS), help="model size preset")
    m.add_argument("--schedule", default=None, choices=["noam", "linear", "cosine", "constant"])
    m.add_argument("--lr", type=float, default=None, help="noam: factor on the paper's formula; others: peak rate")
    m.add_argument("--warmup", type=int, default=None, help="warm-up steps")
    m.add_argument("--label-smoothing", type=float, default=0.1)
    m.add_argument("--clip-norm", type=float, default=1.0, help="gradient clipping (0: off)")
    m.add_argument("--accumulate", type=int, default=1, help="micro-batches per optimizer step")
    m.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help="bf16/fp16: CUDA only")
    m.add_argument("--eval-every", type=int, default=None, help="steps between validations")
    m.add_argument("--patience", type=int, default=None, help="early stopping: validations without improvement")
    m.add_argument("--save-every", type=int, default=0, help="steps between checkpoints (0: at the end)")
    d = p.add_argument_group("data (translation)")
    d.add_argument("--data", default=None, help="named data set: multi30k (looks in $TRANSFORMER_LAB_DATA/multi30k)")
    d.add_argument("--src", default=None, help="source language of a named set")
    d.add_argument("--tgt", default=None, help="target language of a named set")
    for name in ("train-src", "train-tgt", "valid-src", "valid-tgt"):
        d.add_argument(f"--{name}", default=None, metavar="FILE", help="aligned text file (plain or .gz)")
    d.add_argument("--vocab-size", type=int, default=8000, help="subword vocabulary (byte-level BPE)")
    d.add_argument("--separate-vocab", action="store_true", help="one vocabulary per language (no tying)")
    d.add_argument("--max-len", type=int, default=100, help="skip training pairs longer than this (counted)")
    d.add_argument("--max-tokens", type=int, default=4000, help="padded tokens per batch")
    d.add_argument("--bleu-sample", type=int, default=200, help="validation sentences scored with BLEU")
    d.add_argument("--cache-dir", default=None, help="tokenizer and encoded-data cache (default: ~/.cache/transformer_lab)")
    p.add_argument("--batch-size", type=int, default=None, help="dates: sentences per batch")
    p.add_argument("--n-test", type=int, default=1000, help="dates: held-out dates for exact-match accuracy")
    p.set_defaults(func=run)


def _task(args: argparse.Namespace) -> str:
    files = any(getattr(args, n) for n in ("train_src", "train_tgt", "valid_src", "valid_tgt"))
    if args.preset in (None, "dates") and not files and not args.data:
        return "dates"
    return "translation"


def _fill_defaults(args: argparse.Namespace, task: str) -> None:
    for key, value in DEFAULTS[task].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.out is None:
        args.out = f"runs/{args.preset or task}"


def _train_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        max_steps=args.max_steps, time_budget_s=None if args.time_budget is None else args.time_budget * 60,
        schedule=args.schedule, lr=args.lr, warmup=args.warmup, label_smoothing=args.label_smoothing,
        clip_norm=args.clip_norm or None, accumulate=args.accumulate, eval_every=args.eval_every,
        patience=args.patience, save_every=args.save_every, precision=args.precision, seed=args.seed,
        progress=not args.no_progress,
    )


def run(args: argparse.Namespace) -> int:
    task = _task(args)
    _fill_defaults(args, task)
    cfg = _train_config(args)  # validated before any work starts
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.out)
    resume = None
    if args.resume:
        resume = Path(args.resume)
        if (resume / "checkpoints" / "last").is_dir():  # a run folder: its last checkpoint
            resume = resume / "checkpoints" / "last"
        if not resume.exists():
            raise FileNotFoundError(f"--resume: {resume}: no such checkpoint folder")
    torch.manual_seed(args.seed)
    if task == "dates":
        from transformer_lab.tasks import dates

        return dates.run(args, cfg, out, device, resume)
    return _run_translation(args, cfg, out, device, resume)


def _run_translation(args, cfg: TrainConfig, out: Path, device: str, resume: Path | None) -> int:
    from transformer_lab.tasks import translation as tr

    if args.preset and args.preset != "dates":
        src, tgt = tr.TASKS[args.preset]["src"], tr.TASKS[args.preset]["tgt"]
        args.data = args.data or "multi30k"
    else:
        src, tgt = args.src, args.tgt
    if args.train_src or args.train_tgt:
        missing = [n for n in ("train_src", "train_tgt", "valid_src", "valid_tgt") if not getattr(args, n)]
        if missing:
            raise ValueError(f"--{missing[0].replace('_', '-')}: give all four of --train-src/--train-tgt/--valid-src/--valid-tgt")
        train_files = (Path(args.train_src), Path(args.train_tgt))
        valid_files = (Path(args.valid_src), Path(args.valid_tgt))
    else:
        if not (src and tgt):
            raise ValueError("--src/--tgt: a named data set needs both languages (or use --preset multi30k-de-en)")
        train_files = tr.named_files(args.data, src, tgt, "train")
        valid_files = tr.named_files(args.data, src, tgt, "valid")
    cache = Path(args.cache_dir) if args.cache_dir else None
    data = tr.prepare_data(train_files, valid_files, args.vocab_size, not args.separate_vocab, args.max_len, cache)
    model = tr.build_model(data, args.model, max_len=args.max_len)
    log.info("data: %d training pairs (%d skipped as longer than %d tokens), %d validation; vocabulary %d%s",
             len(data.train), data.train.skipped_long, args.max_len, len(data.valid), data.tokenizer_tgt.vocab_size,
             " (joint)" if data.joint else " per side")
    log.info("model: %s, %s parameters; device %s", args.model, f"{parameter_summary(model)['total']:,}", device)
    source = tr.batches(data, args.max_tokens, args.seed)
    trainer = Trainer(model, source, cfg, out, tr.make_validate(data, args.bleu_sample), tr.tokenizer_files(data), device)
    if resume:
        trainer.resume(resume)
    result = trainer.fit()
    summary = {"task": args.preset or "translation", "steps": result.state.step, "stopped_by": result.stopped_by,
               "train_seconds": round(result.state.elapsed_s, 1), "target_tokens_per_s": round(result.tokens_per_s, 1),
               "best_val_loss": finite_or_none(result.state.best_val_loss),
               "last_validation": next((r for r in reversed(result.state.history) if "val_loss" in r), None)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    log.info("wrote %s/{checkpoints/last, checkpoints/best, metrics.csv, loss.png, lr.png, summary.json}", out)
    return _exit_code(result)


def _exit_code(result) -> int:
    """Non-zero after a signal (checkpoint written): 128 + signal number, as shells report it."""
    return 0 if result.signum is None else 128 + int(result.signum)
