"""The built-in demo task: dates in four formats to spoken English (see ``data.synthetic``)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Sequence

import torch

from transformer_lab.data.synthetic import DateTask
from transformer_lab.data.vocab import BOS, EOS, ShuffledBatches, Vocab, make_batch
from transformer_lab.generation.search import Seq2SeqStep, greedy_search
from transformer_lab.models.presets import preset
from transformer_lab.models.summary import parameter_summary
from transformer_lab.models.transformer import Transformer
from transformer_lab.training.checkpoint import load_model
from transformer_lab.training.trainer import TrainConfig, Trainer

log = logging.getLogger("transformer_lab")

Pairs = Sequence[tuple[Sequence[str], Sequence[str]]]


def exact_match(model: Transformer, pairs: Pairs, vocab: Vocab, batch_size: int = 250) -> tuple[float, list[list[str]]]:
    """Greedy-decode every source; fraction of outputs equal to the reference word for word."""
    model.eval()
    outputs: list[list[str]] = []
    device = next(model.parameters()).device
    for i in range(0, len(pairs), batch_size):
        batch = make_batch(pairs[i : i + batch_size], vocab)
        res = greedy_search(Seq2SeqStep(model, batch.src.to(device)), batch.src.size(0), BOS, EOS, batch.tgt_out.size(1) + 10)
        outputs.extend(vocab.decode(ids) for ids in res.tokens)
    correct = sum(list(o) == list(t) for o, (_, t) in zip(outputs, pairs))
    return correct / max(len(pairs), 1), outputs


def run(args: argparse.Namespace, cfg: TrainConfig, out: Path, device: str, resume: Path | None) -> int:
    task = DateTask(n_test=args.n_test, seed=args.seed)
    train_pairs, test_pairs = task.pairs()
    vocab = Vocab(DateTask.symbols())
    model = Transformer(preset(args.model, src_vocab_size=len(vocab), tgt_vocab_size=len(vocab)))
    n_params = parameter_summary(model)["total"]
    log.info("task: dates (4 formats) -> English words, %d train / %d held-out pairs, vocabulary %d",
             len(train_pairs), len(test_pairs), len(vocab))
    log.info("model: preset %s, %s parameters, %d threads", args.model, f"{n_params:,}", torch.get_num_threads())
    trainer = Trainer(model, ShuffledBatches(train_pairs, vocab, args.batch_size, args.seed), cfg, out,
                      extra_files={"vocab.json": vocab.save}, device=device)
    if resume:
        trainer.resume(resume)
    result = trainer.fit()

    accuracy, outputs = exact_match(model, test_pairs, vocab)
    for (src, ref), hyp in list(zip(test_pairs, outputs))[:5]:
        log.info("  %s %s -> %s", "ok " if list(hyp) == list(ref) else "ERR", "".join(src), " ".join(hyp))
    history = [r for r in result.state.history if "loss" in r]
    summary = {
        "task": "dates",
        "steps": result.state.step,
        "stopped_by": result.stopped_by,
        "train_seconds": round(result.state.elapsed_s, 1),
        "target_tokens_per_s": round(result.tokens_per_s, 1),
        "final_loss": history[-1]["loss"] if history else None,
        "exact_match": accuracy,
        "n_test": len(test_pairs),
        "parameters": n_params,
        "seed": args.seed,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    log.info("steps %d in %.0f s (%.0f target tokens/s)", result.state.step, result.state.elapsed_s, result.tokens_per_s)
    log.info("held-out exact match: %.1f%% of %d dates", 100 * accuracy, len(test_pairs))
    log.info("wrote %s/{checkpoints/last, metrics.csv, loss.png, lr.png, summary.json}", out)
    return 0 if result.signum is None else 128 + int(result.signum)


def load(checkpoint: str | Path) -> tuple[Transformer, Vocab]:
    loaded = load_model(checkpoint)
    return loaded.model, Vocab.load(loaded.path / "vocab.json")
