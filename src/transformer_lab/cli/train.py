"""`transformer-lab train`: train an encoder-decoder or a GPT language model.

With no arguments: the built-in date-translation demo ("21.03.1987" -> "the twenty first of march
nineteen eighty seven"), a few minutes on 2 CPU cores. With `--preset multi30k-de-en` (or en-de,
fr-en, en-fr), or `--train-src/--train-tgt/--valid-src/--valid-tgt FILES`: real translation with the
paper's recipe. With `--preset shakespeare-char --data input.txt`: nanoGPT's character-level GPT;
`--preset lm --data FILE` a GPT on any text (byte-level BPE by default, `--tokenizer char|bytelevel|PATH`).
Everything a run writes goes to --out; `--resume` continues a run exactly; a folder that already
holds a run needs `--resume` or `--overwrite`.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from pathlib import Path

from transformer_lab.cli.args import (add_json_summary, add_run_args, add_train_args, finish, non_negative_int, positive_int,
                                      kept, refuse_unused, resumed, run_options, train_config)
from transformer_lab.data.text import locate
from transformer_lab.models.presets import GPT_PRESETS, PRESETS
from transformer_lab.nn.positions import POSITION_ENCODINGS
from transformer_lab.tasks import dates, lm, translation

log = logging.getLogger("transformer_lab")

TASK_PRESETS = ["dates", *translation.TASKS, *lm.PRESETS]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train an encoder-decoder or a GPT (default: the built-in date demo)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default=None, choices=TASK_PRESETS, help="task (default: dates, or translation when files are given)")
    add_run_args(p)
    add_json_summary(p)
    add_train_args(p)
    m = p.add_argument_group("model")
    m.add_argument("--model", default=None, choices=sorted(PRESETS) + sorted(GPT_PRESETS), help="model size preset")
    m.add_argument("--position", default=None, choices=sorted(POSITION_ENCODINGS),
                   help="position encoding (default: the preset's: sinusoidal for the encoder-decoder, learned for GPT)")
    m.add_argument("--attention", default=None, metavar="PATTERN",
                   help="language or translation model: self-attention pattern for long inputs: window:W (the W keys "
                        "before; in the encoder, on each side), "
                        "block:B[,random:R][,global:G], chunked:C (exact, in chunks of C queries); default full")
    m.add_argument("--memory", type=positive_int, default=None, metavar="M",
                   help="language model: Transformer-XL recurrence, each --context segment also attending to the M "
                        "positions before it (streams of consecutive segments; needs a relative --position)")
    d = add_translation_data_args(p, "translation: named data set multi30k (looks in $TRANSFORMER_LAB_DATA/multi30k); "
                                     "language model: a text file")
    d.add_argument("--vocab-size", type=positive_int, default=None, help="subword vocabulary (byte-level BPE; "
                                                                         "default 8000)")
    d.add_argument("--separate-vocab", action="store_true", default=None, help="one vocabulary per language (no tying)")
    g = p.add_argument_group("data (language model: --preset shakespeare-char or lm)")
    g.add_argument("--tokenizer", default=None, help="char, bytelevel (trained on the training split) or a tokenizer path")
    g.add_argument("--context", type=positive_int, default=None, help="training window (default: the model's max_len)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="dates: sentences per batch; LM: windows per batch")
    p.add_argument("--n-test", type=positive_int, default=None,
                   help="dates: held-out dates for exact-match accuracy (default 1000; with --resume, the run's)")
    p.set_defaults(func=run)


def add_translation_data_args(p: argparse.ArgumentParser, data_help: str) -> argparse._ArgumentGroup:
    d = p.add_argument_group("data (translation)")
    d.add_argument("--data", default=None, help=data_help)
    d.add_argument("--src", default=None, help="source language of a named set")
    d.add_argument("--tgt", default=None, help="target language of a named set")
    for name in ("train-src", "train-tgt", "valid-src", "valid-tgt"):
        d.add_argument(f"--{name}", default=None, metavar="FILE", help="aligned text file (plain or .gz)")
    d.add_argument("--max-len", type=positive_int, default=None,
                   help="skip training pairs longer than this (counted; default 100)")
    d.add_argument("--max-tokens", type=positive_int, default=None, help="padded tokens per batch (default 4000)")
    d.add_argument("--bleu-sample", type=non_negative_int, default=None,
                   help="validation sentences scored with BLEU (default 200)")
    d.add_argument("--cache-dir", default=None, help="tokenizer and encoded-data cache (default: ~/.cache/transformer_lab)")
    return d


def _task(args: argparse.Namespace) -> str:
    if args.preset in lm.PRESETS:
        return "lm"
    files = any(getattr(args, n) for n in ("train_src", "train_tgt", "valid_src", "valid_tgt"))
    if args.preset in (None, "dates") and not files and not args.data:
        return "dates"
    return "translation"


def run(args: argparse.Namespace) -> int:
    task = _task(args)
    # --resume RUN with nothing naming a task: a translation run resumes as what it was (not as the demo)
    if args.resume and task == "dates" and args.preset is None:
        kind, _, then = resumed(args)
        if kind == "transformer" and then.get("train_files"):
            raise ValueError(f"--resume {args.resume}: a translation run on its own files; resume it with them "
                             "(--train-src/--train-tgt/--valid-src/--valid-tgt), the other options keep the run's values")
        if kind == "transformer" and then.get("data"):  # a named set: its preset, or its name and languages
            if then.get("name") in translation.TASKS:
                args.preset = then["name"]
            else:
                take_named_set(args, then)
            task = "translation"
            log.info("resuming a translation run: %s", f"--preset {args.preset}" if args.preset else
                     f"--data {args.data} --src {args.src} --tgt {args.tgt}")
    if args.memory is not None and task != "lm":
        raise ValueError(f"--memory: for a language model (--preset lm or shakespeare-char), not the {task} task")
    if args.attention is not None and task == "dates":
        raise ValueError("--attention: for a language model or a translation model, not the dates task")
    if task == "lm":  # (a translation's options, which the language model would ignore)
        refuse_unused("a language model (a translation's or the dates demo's options; its text is --data, its "
                      "length --context)", **{n: getattr(args, n) for n in (
                          "train_src", "train_tgt", "valid_src", "valid_tgt", "src", "tgt", "max_len", "max_tokens",
                          "bleu_sample", "separate_vocab", "cache_dir", "n_test")})
    opts = run_options(args, default_out=f"runs/{args.preset or task}")
    if args.resume and task == "dates" and (kind := resumed(args)[0]) != "transformer":
        raise ValueError(f"--resume {args.resume}: a {kind} run; resume it with the options that name its task and "
                         "data (e.g. --preset shakespeare-char --data FILE), the others keep the run's own values")
    if task == "dates" and (args.eval_every is not None or args.patience is not None):
        raise ValueError("--eval-every/--patience: the dates task has no validation set to evaluate or stop on (its "
                         "score is the exact match on --n-test held-out dates at the end)")
    if task == "dates":  # (a translation's or a language model's options, which the demo ignored)
        refuse_unused("the dates demo (a translation needs --preset multi30k-de-en or --data; a language model "
                      "--preset shakespeare-char --data FILE)", **{n: getattr(args, n) for n in (
                          "src", "tgt", "max_len", "max_tokens", "bleu_sample", "vocab_size", "separate_vocab",
                          "cache_dir", "tokenizer", "context")})
        cfg = dates.DatesConfig(opts, train_config(args, dates.RECIPE, "transformer"),
                                **kept(args, "transformer", model=args.model, position=args.position,
                                       batch_size=args.batch_size, n_test=args.n_test))
        return finish(dates.run(cfg), args.json)
    if task == "lm":
        if not args.data:
            raise ValueError(f"--data: --preset {args.preset} needs a text file (e.g. --data tinyshakespeare/input.txt)")
        overrides = kept(args, "gpt", model=args.model, position=args.position, attention=args.attention,
                         memory=args.memory, tokenizer=args.tokenizer, vocab_size=args.vocab_size, context=args.context,
                         batch_size=args.batch_size)  # (a resumed run: the settings left out are its own)
        cfg = lm.LMConfig.preset(args.preset, opts, locate(args.data), **overrides)
        cfg = replace(cfg, train=train_config(args, cfg.train, "gpt"))  # (checked again: a label smoothing is refused)
        if args.vocab_size is not None and cfg.tokenizer == "char":
            raise ValueError("--vocab-size: the char tokenizer's vocabulary is the text's characters (a subword one, "
                             "--tokenizer bytelevel, takes a size)")
        return finish(lm.run(cfg), args.json)
    refuse_unused("a translation model (the dates demo's or a language model's options; its batches are --max-tokens)",
                  **{n: getattr(args, n) for n in ("batch_size", "n_test", "context", "tokenizer")})
    return finish(translation.run(_translation_config(args, opts)), args.json)


def take_named_set(args: argparse.Namespace, then: dict) -> bool:
    """A resumed translation run on a named set (its recorded task settings ``then``): its --data, and its
    --src/--tgt where not given (a given one is a change the resume reports). False for a run on files."""
    if not then.get("data"):
        return False
    args.data, args.src, args.tgt = then["data"], args.src or then.get("src"), args.tgt or then.get("tgt")
    return True


def translation_data(args: argparse.Namespace, preset: str | None = None) -> dict:
    """The data fields of a translation config: four aligned files, or a named set with its languages."""
    files = [getattr(args, n) for n in ("train_src", "train_tgt", "valid_src", "valid_tgt")]
    if any(files):
        missing = [n for n, f in zip(("train-src", "train-tgt", "valid-src", "valid-tgt"), files) if not f]
        if missing:
            raise ValueError(f"--{missing[0]}: give all four of --train-src/--train-tgt/--valid-src/--valid-tgt")
        refuse_unused("the --train-src/... files (they are the data)", src=args.src, tgt=args.tgt, data=args.data)
        paths = [Path(f) for f in files]
        return dict(train_files=(paths[0], paths[1]), valid_files=(paths[2], paths[3]))
    if preset in translation.TASKS:
        languages = translation.TASKS[preset]
        other = {k: v for k, v in (("src", args.src), ("tgt", args.tgt)) if v is not None and v != languages[k]}
        if other:  # (--preset multi30k-de-en --src fr trained German to English)
            raise ValueError(f"--src/--tgt: --preset {preset} translates {languages['src']} to {languages['tgt']}; for "
                             f"{other.get('src', languages['src'])} to {other.get('tgt', languages['tgt'])}: --preset "
                             f"multi30k-{other.get('src', languages['src'])}-{other.get('tgt', languages['tgt'])}, or "
                             "--src and --tgt without a preset")
        return dict(data=args.data or "multi30k", **languages)
    if not (args.src and args.tgt):
        raise ValueError("--src/--tgt: a named data set (--data multi30k) needs both languages; or give the files "
                         "(--train-src/--train-tgt/--valid-src/--valid-tgt)")
    return dict(data=args.data or "multi30k", src=args.src, tgt=args.tgt)


def _translation_config(args: argparse.Namespace, opts) -> translation.TranslationConfig:
    # (a resumed run: the settings left out are its own; else TranslationConfig's defaults)
    settings = kept(args, "transformer", model=args.model, position=args.position, attention=args.attention,
                    vocab_size=args.vocab_size, joint=False if args.separate_vocab else None, max_len=args.max_len,
                    max_tokens=args.max_tokens, bleu_sample=args.bleu_sample)
    return translation.TranslationConfig(
        opts, train_config(args, translation.RECIPE, "transformer"), **translation_data(args, args.preset), **settings,
        cache_dir=Path(args.cache_dir) if args.cache_dir else None, name=args.preset or "translation")
