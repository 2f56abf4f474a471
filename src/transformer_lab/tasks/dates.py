"""The built-in demo task: dates in four formats to spoken English (see ``data.synthetic``).

prepare: every date of 1900-2099, shuffled, 1,000 held out (never seen, in any format). build: the
``tiny`` encoder-decoder over one character+word vocabulary. loss: the translation task's label-
smoothed cross-entropy. decode: greedy; the figure is exact match on the held-out dates. The
checkpoint keeps the vocabulary (``vocab.json``), which ``translate``, ``evaluate``, ``serve`` and
``export`` read as text (``data.vocab.SymbolText``: characters in, words out).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import torch

from transformer_lab.data.batches import ShuffledBatches, make_batch
from transformer_lab.data.synthetic import DateTask
from transformer_lab.data.vocab import VOCAB_FILE, Vocab
from transformer_lab.generation.search import Seq2SeqStep, greedy_search
from transformer_lab.models.presets import PRESETS, preset
from transformer_lab.models.summary import parameter_summary
from transformer_lab.models.transformer import Transformer
from transformer_lab.runs import find_checkpoint, load_model
from transformer_lab.runtime import Runtime, runtime_for
from transformer_lab.config import check_positive
from transformer_lab.tasks.common import RunOptions, TaskResult, after_training, open_run, task_settings, train, write_summary
from transformer_lab.tasks.translation import seq2seq_loss
from transformer_lab.training.config import TrainConfig

log = logging.getLogger(__name__)

RECIPE = TrainConfig(max_steps=2000, warmup=400, lr=1.0, schedule="noam")
Pairs = Sequence[tuple[Sequence[str], Sequence[str]]]


@dataclass
class DatesConfig:
    run: RunOptions
    train: TrainConfig = field(default_factory=lambda: replace(RECIPE))
    model: str = "tiny"  # size preset
    position: str | None = None  # None: the preset's (sinusoidal)
    batch_size: int = 64
    n_test: int = 1000  # held-out dates for exact-match accuracy

    def __post_init__(self) -> None:
        check_positive("batch_size", self.batch_size)
        check_positive("n_test", self.n_test)
        if self.model not in PRESETS:
            raise ValueError(f"model: expected one of {sorted(PRESETS)}, got {self.model!r}")


def prepare(n_test: int, seed: int) -> tuple[Pairs, Pairs, Vocab]:
    train_pairs, test_pairs = DateTask(n_test=n_test, seed=seed).pairs()
    return train_pairs, test_pairs, Vocab(DateTask.symbols())


def build(vocab: Vocab, model_preset: str = "tiny", position: str | None = None) -> Transformer:
    overrides = {} if position is None else {"position": position}
    return Transformer(preset(model_preset, src_vocab_size=len(vocab), tgt_vocab_size=len(vocab), pad_id=vocab.pad_id,
                              **overrides))


def exact_match(model: Transformer, pairs: Pairs, vocab: Vocab, batch_size: int = 250) -> tuple[float, list[list[str]]]:
    """Greedy-decode every source; fraction of outputs equal to the reference word for word."""
    model.eval()
    outputs: list[list[str]] = []
    device = next(model.parameters()).device
    for i in range(0, len(pairs), batch_size):
        batch = make_batch(pairs[i : i + batch_size], vocab)
        res = greedy_search(Seq2SeqStep(model, batch.src.to(device)), batch.src.size(0), vocab.bos_id, vocab.eos_id,
                            batch.tgt_out.size(1) + 10)
        outputs.extend(vocab.decode(ids) for ids in res.tokens)
    correct = sum(list(o) == list(t) for o, (_, t) in zip(outputs, pairs))
    return correct / max(len(pairs), 1), outputs


def run(cfg: DatesConfig, runtime: Runtime | None = None) -> TaskResult:
    runtime = runtime or runtime_for(cfg.run.device, cfg.run.fsdp)
    with open_run(cfg.run, runtime) as folder:
        train_pairs, test_pairs, vocab = prepare(cfg.n_test, cfg.train.seed)
        torch.manual_seed(cfg.train.seed)  # the initial weights
        model = build(vocab, cfg.model, cfg.position)
        n_params = parameter_summary(model)["total"]
        log.info("task: dates (4 formats) -> English words, %d train / %d held-out pairs, vocabulary %d",
                 len(train_pairs), len(test_pairs), len(vocab))
        log.info("model: preset %s, %s parameters, %d threads, device %s", cfg.model, f"{n_params:,}",
                 torch.get_num_threads(), runtime.device)
        trainer, result = train(folder, cfg.run, runtime, model, ShuffledBatches(train_pairs, vocab, cfg.batch_size, cfg.train.seed),
                                cfg.train, seq2seq_loss(cfg.train.label_smoothing), extra_files={VOCAB_FILE: vocab.save},
                                settings={**task_settings(cfg), "held_out_seed": cfg.train.seed},
                                fixed=("n_test", "held_out_seed"))  # (they choose the held-out dates)
        history = [r for r in result.state.history if "loss" in r]
        summary = {"task": "dates", "steps": result.state.step, "stopped_by": result.stopped_by,
                   "train_seconds": round(result.state.elapsed_s, 1),
                   "target_tokens_per_s": round(result.tokens_per_s, 1),
                   "final_loss": history[-1]["loss"] if history else None,
                   "n_test": len(test_pairs), "parameters": n_params, "seed": cfg.train.seed}
        scored = after_training(result, lambda: exact_match(trainer.final_model, test_pairs, vocab))
        if scored is not None:
            accuracy, outputs = scored
            summary["exact_match"] = accuracy
            for (src, ref), hyp in list(zip(test_pairs, outputs))[:5]:
                log.info("  %s %s -> %s", "ok " if list(hyp) == list(ref) else "ERR", "".join(src), " ".join(hyp))
            log.info("held-out exact match: %.1f%% of %d dates", 100 * accuracy, len(test_pairs))
        write_summary(folder, runtime, summary)
        log.info("steps %d in %.0f s (%.0f target tokens/s)", result.state.step, result.state.elapsed_s, result.tokens_per_s)
        if runtime.is_main:
            log.info("wrote %s", folder.written())
            log.info('more dates: transformer-lab translate --checkpoint %s "1987-03-21" "21 mar 1987" '
                     "[--plot-attention att.png]", cfg.run.out)
    return TaskResult(summary, result.signum, runtime.is_main)


def load(checkpoint: str | Path, device: str | torch.device = "cpu") -> tuple[Transformer, Vocab]:
    loaded = load_model(find_checkpoint(checkpoint, prefer=("last",)), map_location=device)
    return loaded.model, Vocab.load(loaded.path / VOCAB_FILE)
