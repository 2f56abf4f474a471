"""`transformer-lab train`: with no arguments, trains the small encoder-decoder on the built-in
date-translation task ("1987-03-21" -> "the twenty first of march nineteen eighty seven"), decodes
held-out dates greedily, and writes a checkpoint, metrics and a loss curve to --out."""

from __future__ import annotations

import argparse
import json
import logging
import random
from pathlib import Path
from typing import Iterator, Sequence

import torch

from transformer_lab.config import save_json
from transformer_lab.data.synthetic import DateTask
from transformer_lab.data.vocab import BOS, EOS, Batch, Vocab, make_batch
from transformer_lab.generation.greedy import greedy_decode
from transformer_lab.models.presets import PRESETS, preset
from transformer_lab.models.summary import parameter_summary
from transformer_lab.models.transformer import Transformer
from transformer_lab.training.checkpoint import save_checkpoint
from transformer_lab.training.trainer import TrainOptions, plot_loss, train, write_metrics_csv

log = logging.getLogger("transformer_lab")

Pairs = Sequence[tuple[Sequence[str], Sequence[str]]]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model (default: the built-in date-translation demo)",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", default="runs/dates", help="folder for the checkpoint, metrics and plots")
    p.add_argument("--max-steps", type=int, default=2000, help="optimizer steps")
    p.add_argument("--time-budget", type=float, default=None, metavar="MINUTES", help="stop cleanly after this long")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS), help="model size")
    p.add_argument("--batch-size", type=int, default=64, help="sentences per batch")
    p.add_argument("--warmup", type=int, default=400, help="warm-up steps of the paper's schedule")
    p.add_argument("--lr-factor", type=float, default=1.0, help="multiplies the paper's schedule")
    p.add_argument("--n-test", type=int, default=1000, help="held-out dates for exact-match accuracy")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def batch_stream(pairs: Pairs, vocab: Vocab, batch_size: int, seed: int) -> Iterator[Batch]:
    """Endless batches: a fresh seeded permutation each epoch."""
    rng = random.Random(seed)
    order = list(range(len(pairs)))
    while True:
        rng.shuffle(order)
        for i in range(0, len(order) - batch_size + 1, batch_size):
            yield make_batch([pairs[j] for j in order[i : i + batch_size]], vocab)


def exact_match(model: Transformer, pairs: Pairs, vocab: Vocab, batch_size: int = 250) -> tuple[float, list[list[str]]]:
    """Greedy-decode every source; fraction of outputs equal to the reference word for word."""
    outputs: list[list[str]] = []
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i : i + batch_size]
        batch = make_batch(chunk, vocab)
        max_len = batch.tgt_out.size(1) + 10
        ids = greedy_decode(model, batch.src, max_len, BOS, EOS)
        outputs.extend(vocab.decode(row.tolist()) for row in ids)
    correct = sum(list(o) == list(t) for o, (_, t) in zip(outputs, pairs))
    return correct / max(len(pairs), 1), outputs


def run(args: argparse.Namespace) -> int:
    opts = TrainOptions(  # validated before any work starts
        max_steps=args.max_steps, warmup=args.warmup, lr_factor=args.lr_factor,
        time_budget_s=None if args.time_budget is None else args.time_budget * 60, progress=not args.no_progress,
    )
    if args.batch_size < 1:
        raise ValueError(f"--batch-size: expected >= 1, got {args.batch_size}")
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    task = DateTask(n_test=args.n_test, seed=args.seed)
    train_pairs, test_pairs = task.pairs()
    vocab = Vocab(DateTask.symbols())
    cfg = preset(args.preset, src_vocab_size=len(vocab), tgt_vocab_size=len(vocab))
    model = Transformer(cfg)
    n_params = parameter_summary(model)["total"]
    log.info("task: dates (4 formats) -> English words, %d train / %d held-out pairs, vocabulary %d",
             len(train_pairs), len(test_pairs), len(vocab))
    log.info("model: preset %s, %s parameters, %d threads", args.preset, f"{n_params:,}", torch.get_num_threads())
    save_json(cfg, out / "config.json")

    result = train(model, batch_stream(train_pairs, vocab, args.batch_size, args.seed), opts)

    accuracy, outputs = exact_match(model, test_pairs, vocab)
    for (src, ref), hyp in list(zip(test_pairs, outputs))[:5]:
        mark = "ok " if list(hyp) == list(ref) else "ERR"
        log.info("  %s %s -> %s", mark, "".join(src), " ".join(hyp))
    final_loss = result.history[-1]["loss"] if result.history else float("nan")
    summary = {
        "task": "dates",
        "steps": result.steps,
        "train_seconds": round(result.seconds, 1),
        "target_tokens_per_s": round(result.tokens_per_s, 1),
        "final_loss": final_loss,
        "exact_match": accuracy,
        "n_test": len(test_pairs),
        "parameters": n_params,
        "seed": args.seed,
    }
    save_checkpoint(out / "checkpoint", model, vocab, summary)
    write_metrics_csv(result.history, out / "metrics.csv")
    plot_loss(result.history, out / "loss.png", title=f"date translation, preset {args.preset}")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.info("steps %d in %.0f s (%.0f target tokens/s), final loss %.3f", result.steps, result.seconds,
             result.tokens_per_s, final_loss)
    log.info("held-out exact match: %.1f%% of %d dates", 100 * accuracy, len(test_pairs))
    log.info("wrote %s/{checkpoint/, metrics.csv, loss.png, summary.json}", out)
    return 0
