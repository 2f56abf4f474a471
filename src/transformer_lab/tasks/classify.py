"""Sequence classification by fine-tuning a pretrained BERT folder (e.g. SST-2 on all-MiniLM-L6-v2).

prepare: GLUE-style TSV files (``sentence``, ``label``), tokenised as the folder's tokenizer does.
build: the folder's encoder plus a fresh classification head on [CLS]'s pooled vector; every weight
trains, or, with an ``adapter`` (LoRA, QLoRA, prefix or prompt tuning), only the adapter and the head.
loss: cross-entropy per sentence. validate: dev accuracy (the best checkpoint is the most accurate).
The run scores --test once with the best checkpoint and exports OUT/model, a Hugging Face BERT folder
(full fine-tuning), or OUT/adapter, a ``peft`` adapter folder for that BERT. ``load_classifier`` and
``predict`` read any of them back (the ``classify`` command, ``serve``'s /classify).

With ``qat`` (a ``QuantConfig``), quantization-aware training: every Linear computes with fake-quantized
weights and activations (``compression.qat``; the dev accuracy that picks the best checkpoint is the
quantized model's), and the run also writes OUT/quantized, the quantized checkpoint (``embed``,
``bench quantize --model`` read it), scoring it on dev and test.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from transformer_lab.adapters import AdapterConfig, apply_adapter, parameter_counts
from transformer_lab.compression import QuantConfig, quantize_model
from transformer_lab.compression.qat import prepare_qat
from transformer_lab.config import check_positive
from transformer_lab.data.batches import ClassBatch, ClassBatches
from transformer_lab.data.classification import read_labelled_tsv
from transformer_lab.models.bert import Bert
from transformer_lab.models.hf import load_bert
from transformer_lab.runs import BEST, LAST, exported_model, find_checkpoint, is_ours, load_model, save_checkpoint
from transformer_lab.runtime import Runtime, runtime_for
from transformer_lab.tasks.common import (RunOptions, TaskResult, adapter_recipe, after_training, open_run,
                                          save_adapter, task_adapter, task_settings, train, write_summary,
                                          write_uncut)
from transformer_lab.tasks.embed import BERT_RECIPE, by_length, cut_length, encode_texts, export
from transformer_lab.tasks.quantize import copied, hf_tokenizer_files
from transformer_lab.tokenizers.io import load_bert_tokenizer
from transformer_lab.tokenizers.wordpiece import WordPieceTokenizer
from transformer_lab.training.config import TrainConfig
from transformer_lab.training.loop import StepLoss, check_on_host

log = logging.getLogger(__name__)

# BERT's fine-tuning rate, 5e-5; the steps (one epoch by default) and warm-up are set from the data.
RECIPE = replace(BERT_RECIPE, lr=5e-5, max_steps=1, warmup=1)


def recipe(adapter: AdapterConfig | None) -> TrainConfig:
    """The training recipe: BERT's fine-tuning rate, or the adapter's (``adapters.LEARNING_RATES``)."""
    return adapter_recipe(RECIPE, adapter)


@dataclass
class ClassifyConfig:
    run: RunOptions
    model: Path  # a Hugging Face BERT folder
    train_file: Path
    dev_file: Path
    test_file: Path | None = None  # scored once at the end with the best dev checkpoint
    train: TrainConfig = field(default_factory=lambda: replace(RECIPE))
    epochs: float = 1.0  # used when train.max_steps is not set explicitly (``steps``)
    steps: int | None = None
    warmup: int | None = None  # None: 10% of the steps
    eval_every: int | None = None  # steps between dev evaluations; None: 4 in the run, 0: at the end only
    max_len: int = 128
    batch_size: int = 32
    split_special_tokens: bool | None = None  # None: as the folder's tokenizer
    adapter: AdapterConfig | None = None  # None: full fine-tuning
    prompt_text: str | None = None  # prompt tuning: initialise the soft prompt from this text
    qat: QuantConfig | None = None  # quantization-aware training for this quantization; None: plain fp32

    def __post_init__(self) -> None:
        if self.train.label_smoothing:
            raise ValueError(f"label_smoothing: the classification loss here is plain cross-entropy; got "
                             f"{self.train.label_smoothing}, expected 0")
        self.model, self.train_file, self.dev_file = Path(self.model), Path(self.train_file), Path(self.dev_file)
        check_positive("epochs", self.epochs)
        check_positive("steps", self.steps, allow_none=True)
        check_positive("max_len", self.max_len)
        check_positive("batch_size", self.batch_size)
        if self.warmup is not None and self.warmup < 0:
            raise ValueError(f"warmup: expected >= 0, got {self.warmup}")
        if self.qat is not None and self.adapter is not None:
            raise ValueError("qat: quantization-aware training trains every weight; it does not combine with --peft")


def classification_loss(model: Bert, b: ClassBatch, device: torch.device) -> StepLoss:
    logits = model(b.tokens.to(device), attention_mask=b.attention_mask.to(device)).class_logits
    labels = b.labels.to(device)
    loss = F.cross_entropy(logits.float(), labels, reduction="sum")
    return StepLoss(loss, loss.detach(), {"acc": (logits.argmax(-1) == labels).float().mean()})  # (read when logged)


classification_loss.check_batch = lambda model, b: check_on_host(model, b.tokens)  # (see training.loop.LossFn)


def classify(model: Bert, ids: list[list[int]], batch_size: int = 64) -> torch.Tensor:
    """Predicted labels (N,)."""
    return by_length(model, ids, batch_size, lambda m, t, mask: m(t, attention_mask=mask).class_logits.argmax(-1))


def load_classifier(folder: str | Path, device: str | torch.device = "cpu",
                    split_special_tokens: bool | None = None) -> tuple[Bert, WordPieceTokenizer, int]:
    """A sentence classifier as ``finetune classify`` leaves it: its run folder (the best checkpoint; a
    ``--peft`` run's with its adapter), OUT/model (a Hugging Face ``BertForSequenceClassification``
    folder) or OUT/quantized; with its tokenizer, read as ``embed`` reads it, and the length texts are cut
    to: the run's own ``--max-len`` where its checkpoint recorded it (a text scores as it did in training),
    else the folder's, within the positions a prompt or prefix leaves."""
    if is_ours(folder):
        loaded = load_model(find_checkpoint(folder), map_location=device)
        model, where = loaded.model, loaded.path
    else:
        model, where = load_bert(folder, pretraining_heads=False).to(device), Path(folder)
    if not isinstance(model, Bert) or not model.config.n_labels:
        what = "no classification head" if isinstance(model, Bert) else f"a {type(model).__name__} checkpoint"
        raise ValueError(f"{where}: {what}; `finetune classify` trains a sentence classifier (its run folder, "
                         "OUT/model or OUT/quantized)")
    return model.eval(), load_bert_tokenizer(where, split_special_tokens), cut_length(where, model)


def predict(model: Bert, tok: WordPieceTokenizer, texts: Sequence[str], max_len: int, batch_size: int = 64,
            truncated: list[int] | None = None) -> torch.Tensor:
    """Each text's class probabilities (N, n_labels): the softmax of the head's logits; labels are the
    training file's (0, 1, ...) (``truncated``: as ``embed.encode_texts``)."""
    return by_length(model, encode_texts(tok, texts, max_len, truncated), batch_size,
                     lambda m, t, mask: m(t, attention_mask=mask).class_logits.float().softmax(-1))


def accuracy(model: Bert, ids: list[list[int]], labels: list[int]) -> float:
    return float((classify(model, ids) == torch.tensor(labels)).float().mean())


def check_labels(train: list[int], others: list[tuple[Any, list[int]]]) -> None:
    """ValueError when the training labels are not 0..K-1, each with examples (the head has one output per
    number up to the largest: labels 100 and 200 made a 201-way head), or when a dev or test file has a
    label the training file never has: the head would learn nothing for it (dev), or could not predict it
    (test)."""
    seen = set(train)
    n_absent = max(seen) + 1 - len(seen)
    if n_absent:
        absent = list(itertools.islice((i for i in itertools.count() if i not in seen), 5))
        shown = ", ".join(map(str, absent)) + (f" ... ({n_absent:,} in all)" if n_absent > 5 else "")
        raise ValueError(f"labels: expected 0..K-1, each in the training file; it has {len(seen)} labels up to "
                         f"{max(seen)}, without {shown} (number the classes 0..{len(seen) - 1})")
    for path, labels in others:
        unseen = sorted(set(labels) - seen)
        if unseen:
            raise ValueError(f"{path}: label{'s' * (len(unseen) > 1)} {', '.join(map(str, unseen))} never in the "
                             f"training file (its labels: {', '.join(map(str, sorted(seen)))})")


@torch.no_grad()
def dev_scores(model: Bert, ids: list[list[int]], labels: list[int], batch_size: int = 64) -> dict[str, float]:
    """Cross-entropy (val_loss), accuracy and error rate over labelled sentences."""
    logits = by_length(model, ids, batch_size, lambda m, t, mask: m(t, attention_mask=mask).class_logits.float())
    y = torch.tensor(labels)
    acc = float((logits.argmax(-1) == y).float().mean())
    return {"val_loss": float(F.cross_entropy(logits, y)), "dev_acc": acc, "dev_error": 1.0 - acc}


def _settings(cfg: ClassifyConfig) -> dict[str, Any]:
    """The task's settings a resume compares, less the length, warm-up and validations: they become the
    trainer's own (``TrainConfig``), which it compares itself."""
    return {k: v for k, v in task_settings(cfg).items() if k not in ("steps", "warmup", "eval_every")}


def run(cfg: ClassifyConfig, runtime: Runtime | None = None) -> TaskResult:
    runtime = runtime or runtime_for(cfg.run.device, cfg.run.fsdp)
    train_x, train_y = read_labelled_tsv(cfg.train_file)
    dev_x, dev_y = read_labelled_tsv(cfg.dev_file)
    test = read_labelled_tsv(cfg.test_file) if cfg.test_file else None
    n_labels = max(train_y + dev_y) + 1
    check_labels(train_y, [(cfg.dev_file, dev_y), *([(cfg.test_file, test[1])] if test else [])])
    base = exported_model(cfg.model) or Path(cfg.model)
    if base != Path(cfg.model):  # a `pretrain bert` run folder: the Hugging Face folder it exported
        log.info("model: %s (the run's exported BERT)", base)
    elif is_ours(base):
        raise ValueError(f"--model {cfg.model}: one of our checkpoints (a quantized model, a --peft run ...), not a "
                         "Hugging Face BERT folder; fine-tune the fp32 folder a run exported (`pretrain bert` and "
                         "`finetune classify` write RUN/model; give RUN or RUN/model) or the base a --peft run adapted")
    resumed = cfg.run.resume is not None
    with open_run(cfg.run, runtime, reads=base) as folder:
        tok = load_bert_tokenizer(base, cfg.split_special_tokens)
        torch.manual_seed(cfg.train.seed)  # the fresh head's initial weights (a resumed run reads its own)
        model = load_bert(base, announce_fresh=not resumed, n_labels=n_labels, pretraining_heads=False)
        if cfg.adapter is not None:  # the fresh head trains in full beside the adapter
            apply_adapter(model, task_adapter(cfg.adapter, tok, cfg.prompt_text, train="classifier"))
        if cfg.qat is not None:
            prepare_qat(model, cfg.qat)
        counts = parameter_counts(model)
        log.info("%s%s", counts, f" ({cfg.adapter.method})" if cfg.adapter else
                 f" (quantization-aware: {cfg.qat.scheme} {cfg.qat.bits}-bit)" if cfg.qat else " (full fine-tuning)")
        max_len = min(cfg.max_len, model.config.max_len - model.n_virtual)  # (a prompt or prefix takes positions)
        if max_len < 3:
            raise ValueError(f"--max-len {cfg.max_len}: {model.n_virtual} prefix or prompt positions leave {max_len} "
                             f"of the model's {model.config.max_len} for [CLS], text and [SEP]")
        if max_len < cfg.max_len:
            log.warning("--max-len %d: the model holds %d positions%s; texts are cut at %d word pieces with [CLS] and "
                        "[SEP]", cfg.max_len, model.config.max_len,
                        f" ({model.n_virtual} of them a prompt's or prefix's)" if model.n_virtual else "", max_len)
        train_ids, dev_ids = encode_texts(tok, train_x, max_len), encode_texts(tok, dev_x, max_len)
        source = ClassBatches(train_ids, train_y, cfg.batch_size, model.config.pad_id, cfg.train.seed)
        # (a resumed run keeps its own length, warm-up and validations unless given: cfg.train holds them)
        steps = cfg.steps or (cfg.train.max_steps if resumed else max(1, math.ceil(cfg.epochs * len(source))))
        warmup = cfg.warmup if cfg.warmup is not None else cfg.train.warmup if resumed else max(1, steps // 10)
        every = cfg.eval_every if cfg.eval_every is not None else cfg.train.eval_every if resumed else max(1, steps // 4)
        train_cfg = replace(cfg.train, max_steps=steps, warmup=warmup, eval_every=every)
        log.info("fine-tuning %s: %d training sentences, %d dev, %d labels; %d steps of %d", base, len(train_x),
                 len(dev_x), n_labels, steps, cfg.batch_size)

        def validate(m: Bert) -> dict:
            return dev_scores(m, dev_ids, dev_y)

        validate.select = "dev_error"  # the best checkpoint is the most accurate one (Trainer._evaluate)

        # (the tokenizer in every checkpoint: the run folder is then a model for embed, quantize, export, serve)
        trainer, result = train(folder, cfg.run, runtime, model, source, train_cfg, classification_loss, validate,
                                {"tokenizer": tok.save}, settings=_settings(cfg))
        summary: dict[str, Any] = {"steps": result.state.step, "train_seconds": round(result.state.elapsed_s, 1),
                                   "stopped_by": result.stopped_by, "method": cfg.adapter.method if cfg.adapter else "qat" if cfg.qat else "full",
                                   "trainable_parameters": counts.trainable, "total_parameters": counts.total}
        best = load_model(find_checkpoint(folder.path, prefer=(BEST, LAST)), map_location=runtime.device).model
        if runtime.is_main and cfg.adapter is not None:
            summary["adapter"] = str(write_uncut(result, lambda: save_adapter(best, folder.export("adapter"), base)))
        elif runtime.is_main:
            summary["model"] = str(write_uncut(result, lambda: export(best, tok, folder.export(), max_len)))
        quantized = None
        if cfg.qat is not None:  # the fp32 weights QAT trained, quantized the way it simulated
            calib = train_ids[:256]
            quantized = quantize_model(copy.deepcopy(best).eval(), cfg.qat, calibrate=lambda m: by_length(
                m, calib, cfg.batch_size, lambda mm, t, mask: mm(t, attention_mask=mask).class_logits))
            if runtime.is_main:
                path = folder.export("quantized")
                summary["quantized"] = str(write_uncut(result, lambda: save_checkpoint(
                    path, quantized, {"qat": True, "task_settings": {"max_len": max_len}}, extra=copied(hf_tokenizer_files(base)))))

        def score() -> dict:
            out = {"dev_acc": round(accuracy(best, dev_ids, dev_y), 4)}
            if quantized is not None:
                out["quantized_dev_acc"] = round(accuracy(quantized, dev_ids, dev_y), 4)
            if test is not None:
                test_ids = encode_texts(tok, test[0], max_len)
                out["test_acc"] = round(accuracy(best, test_ids, test[1]), 4)
                out["test_sentences"] = len(test[0])
                if quantized is not None:
                    out["quantized_test_acc"] = round(accuracy(quantized, test_ids, test[1]), 4)
            return out

        scores = after_training(result, score)
        if scores is not None:
            summary.update(scores)
            log.info("dev accuracy %.2f%%%s; wrote %s", 100 * scores["dev_acc"],
                     f", test accuracy {100 * scores['test_acc']:.2f}%" if "test_acc" in scores else "",
                     summary.get("model") or summary.get("adapter"))
        write_summary(folder, runtime, summary)
    return TaskResult(summary, result.signum, runtime.is_main)

