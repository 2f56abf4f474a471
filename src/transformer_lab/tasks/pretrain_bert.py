"""BERT pre-training from scratch: masked language modelling + next-sentence prediction.

prepare: documents (one sentence per line, blank lines between documents), every 20th held out;
a WordPiece vocabulary trained on the training documents (or a given vocab.txt); NSP pairs, with
NotNext sentences of held-out pairs drawn from held-out documents only. build: a BERT preset with
the MLM and NSP heads. loss: mean MLM cross-entropy over the selected tokens + mean NSP
cross-entropy. validate: MLM and NSP accuracy on the held-out pairs. The run exports OUT/model, a
Hugging Face BERT folder (BertForPreTraining; with --no-nsp BertForMaskedLM, without the NSP head and the
pooler, which only NSP trains).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from transformer_lab.config import check_positive
from transformer_lab.data.batches import PretrainBatch, PretrainBatches
from transformer_lab.data.mlm import PairExample, held_out_documents, make_pairs, read_documents
from transformer_lab.models.bert import Bert
from transformer_lab.models.presets import BERT_PRESETS, bert_preset
from transformer_lab.nn.positions import POSITION_ENCODINGS
from transformer_lab.nn.sparse import parse_pattern
from transformer_lab.runtime import Runtime, runtime_for
from transformer_lab.tasks.common import (RunOptions, TaskResult, after_training, open_run, resumed_tokenizer,
                                          task_settings, train, write_summary, write_uncut)
from transformer_lab.tasks.embed import BERT_RECIPE, export
from transformer_lab.tokenizers.wordpiece import WordPieceTokenizer
from transformer_lab.training.config import TrainConfig
from transformer_lab.training.loop import StepLoss, check_on_host

log = logging.getLogger(__name__)

RECIPE = replace(BERT_RECIPE, max_steps=2000, lr=1e-4, warmup=200)


@dataclass
class PretrainConfig:
    run: RunOptions
    data: Path  # one sentence per line, blank lines between documents
    train: TrainConfig = field(default_factory=lambda: replace(RECIPE))
    vocab: Path | None = None  # a vocab.txt to use; None: train WordPiece on the data
    vocab_size: int = 8000
    cased: bool = False
    model: str = "bert-mini"
    max_len: int = 128  # tokens per pair, [CLS]/[SEP] included
    position: str = "learned"  # BERT's; another (alibi, t5, ...) exports a transformer-lab-bert folder
    attention: str = "full"  # self-attention's pattern (window:W[,global:G], block:B, chunked:C)
    nsp: bool = True
    # the pairs' form, recorded with the settings: a run from before BERT's segment pairs (one sentence and the
    # next) resumes with a warning that its data changed, not silently on other pairs
    pairs: str = "segments"
    whole_word: bool = False
    static_masking: bool = False
    mask_prob: float = 0.15
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.train.label_smoothing:
            raise ValueError(f"label_smoothing: the MLM/NSP loss here is plain cross-entropy; got "
                             f"{self.train.label_smoothing}, expected 0")
        self.data = Path(self.data)
        if self.pairs != "segments":
            raise ValueError(f"pairs: 'segments' (BERT's segment pairs) is the one form built, got {self.pairs!r}")
        for name in ("vocab_size", "max_len", "batch_size"):
            check_positive(name, getattr(self, name))
        if not 0.0 < self.mask_prob < 1.0:
            raise ValueError(f"mask_prob: expected 0 < p < 1, got {self.mask_prob}")
        if self.model not in BERT_PRESETS:
            raise ValueError(f"model: expected one of {sorted(BERT_PRESETS)}, got {self.model!r}")
        if self.position not in POSITION_ENCODINGS:
            raise ValueError(f"position: expected one of {sorted(POSITION_ENCODINGS)}, got {self.position!r}")
        parse_pattern(self.attention, causal=False, position=self.position)  # a bad spec or combination: named


@dataclass
class PretrainData:
    tokenizer: WordPieceTokenizer
    n_documents: int
    train_pairs: list[PairExample]
    held_pairs: list[PairExample]  # empty when too few documents to hold any out


def prepare(cfg: PretrainConfig) -> PretrainData:
    docs = read_documents(cfg.data)
    held = held_out_documents(len(docs))
    train_docs = [i for i in range(len(docs)) if i not in held]
    trained = resumed_tokenizer(cfg.run.resume) if cfg.run.resume else None
    if trained is not None:  # a resumed run reads with the vocabulary its weights were trained with
        if not isinstance(trained, WordPieceTokenizer):
            raise ValueError(f"--resume {cfg.run.resume}: its tokenizer is a {type(trained).__name__}, not BERT's "
                             "WordPiece: not a `pretrain bert` run")
        tok = trained
    elif cfg.vocab is not None:
        vocab = cfg.vocab / "vocab.txt" if cfg.vocab.is_dir() else cfg.vocab
        if not vocab.is_file():
            raise FileNotFoundError(f"--vocab {cfg.vocab}: {'no vocab.txt in this folder' if cfg.vocab.is_dir() else 'no such file'}")
        tok = WordPieceTokenizer.from_vocab_file(vocab, lowercase=not cfg.cased)
    else:
        tok = WordPieceTokenizer.train([s for i in train_docs for s in docs[i]], cfg.vocab_size, lowercase=not cfg.cased)
    encoded = [[tok.encode(s) for s in d] for d in docs]
    rng = random.Random(cfg.train.seed)
    train_pairs = make_pairs(encoded, rng, cfg.nsp, only=train_docs, pool=train_docs, max_len=cfg.max_len)
    held_pairs: list[PairExample] = []
    if held:  # NotNext sentences of held-out pairs come from held-out documents too: nothing seen in training
        try:
            held_pairs = make_pairs(encoded, rng, cfg.nsp, only=sorted(held), pool=sorted(held),
                                    max_len=cfg.max_len)
        except ValueError as e:
            log.warning("no held-out evaluation (%s); accuracies are reported on training pairs", e)
    return PretrainData(tok, len(docs), train_pairs, held_pairs)


def build(cfg: PretrainConfig, tok: WordPieceTokenizer) -> Bert:
    return Bert(bert_preset(cfg.model, vocab_size=tok.vocab_size, max_len=max(cfg.max_len, 64), pretraining_heads=True,
                            pad_id=tok.token_to_id("[PAD]"), position=cfg.position, attention=cfg.attention))


def exported(model: Bert, nsp: bool) -> Bert:
    """The model OUT/model holds: a --no-nsp run's without the NSP head it never trained. (Training keeps
    the head, unused, so a checkpoint of any earlier run resumes.)"""
    if nsp:
        return model
    mlm = Bert(replace(model.config, nsp_head=False))
    mlm.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("nsp.")})
    return mlm


def pretrain_loss(nsp: bool):
    def loss_fn(model: Bert, b: PretrainBatch, device: torch.device) -> StepLoss:
        # (the selected positions come as flat indices, found on the host: PretrainBatch.mlm_positions)
        tokens, segments, mask, positions, targets = (t.to(device, non_blocking=True) for t in (
            b.tokens, b.segments, b.attention_mask, b.mlm_positions, b.mlm_targets))
        out = model(tokens, segments, mask, mlm_positions=positions)
        # each part summed over its own units (``PretrainBatch.loss_parts``): a step of several micro-batches
        # or processes has the MLM mean over all its masked tokens, as one batch has
        mlm = F.cross_entropy(out.mlm_logits.float(), targets, reduction="sum")  # (0 when nothing is masked)
        parts = {"mlm": mlm}
        loss = mlm / max(len(targets), 1)
        # (tensors, read back when a log row is written)
        metrics = {"mlm_acc": (out.mlm_logits.argmax(-1) == targets).float().mean() if len(targets) else 0.0}
        if nsp:
            not_next = b.not_next.to(device)
            parts["nsp"] = F.cross_entropy(out.nsp_logits.float(), not_next, reduction="sum")
            loss = loss + parts["nsp"] / len(not_next)
            metrics["nsp_acc"] = (out.nsp_logits.argmax(-1) == not_next).float().mean()
        return StepLoss(loss, mlm.detach(), metrics, parts)

    loss_fn.check_batch = lambda model, b: check_on_host(model, b.tokens, b.segments)  # (see training.loop.LossFn)
    return loss_fn


@torch.no_grad()
def evaluate_pretraining(model: Bert, source: PretrainBatches, nsp: bool, max_batches: int | None = None) -> dict[str, float]:
    """MLM accuracy over all selected tokens, NSP accuracy over all pairs, MLM loss; masks are the
    source's epoch-0 draw, so the figure is the same for every call."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = count = nsp_correct = pairs = 0
    loss_sum = 0.0
    for k, idx in enumerate(source.epoch(0)):
        if max_batches is not None and k >= max_batches:
            break
        b = source.make(idx)
        out = model(b.tokens.to(device), b.segments.to(device), b.attention_mask.to(device),
                    mlm_positions=b.mlm_positions.to(device))
        targets = b.mlm_targets.to(device)
        correct += int((out.mlm_logits.argmax(-1) == targets).sum())
        loss_sum += float(F.cross_entropy(out.mlm_logits.float(), targets, reduction="sum"))
        count += targets.numel()
        if nsp:
            nsp_correct += int((out.nsp_logits.argmax(-1).cpu() == b.not_next).sum())
            pairs += b.not_next.numel()
    model.train(was_training)
    res = {"mlm_acc": correct / max(count, 1), "mlm_loss": loss_sum / max(count, 1)}
    if nsp:
        res["nsp_acc"] = nsp_correct / max(pairs, 1)
    return res


def run(cfg: PretrainConfig, runtime: Runtime | None = None) -> TaskResult:
    runtime = runtime or runtime_for(cfg.run.device, cfg.run.fsdp)
    with open_run(cfg.run, runtime) as folder:
        data = prepare(cfg)
        torch.manual_seed(cfg.train.seed)  # the initial weights
        model = build(cfg, data.tokenizer)
        masking = dict(max_len=cfg.max_len, whole_word=cfg.whole_word, prob=cfg.mask_prob)
        source = PretrainBatches(data.train_pairs, data.tokenizer, batch_size=cfg.batch_size, seed=cfg.train.seed,
                                 dynamic=not cfg.static_masking, **masking)
        held = (PretrainBatches(data.held_pairs, data.tokenizer, batch_size=64, seed=10_000 + cfg.train.seed, **masking)
                if data.held_pairs else None)
        log.info("data: %d documents, %d training pairs, %d held-out pairs; vocabulary %d; model %s (%s parameters)",
                 data.n_documents, len(data.train_pairs), len(data.held_pairs), data.tokenizer.vocab_size, cfg.model,
                 f"{sum(p.numel() for p in model.parameters()):,}")
        shares = {name: round(sum(p.not_next for p in pairs) / len(pairs), 4)
                  for name, pairs in (("train", data.train_pairs), ("held_out", data.held_pairs)) if pairs and cfg.nsp}
        if shares:  # (a one-sentence chunk is always NotNext: long lines, or short documents, tip the balance)
            log.info("NotNext share: %s", ", ".join(f"{k} {v:.1%}" for k, v in shares.items()))
            if shares["train"] > 0.75:
                log.warning("%.0f%% of the training pairs are NotNext (BERT's recipe gives about half on documents of "
                            "many short sentences): many chunks hold one sentence, as lines longer than --max-len %d "
                            "or documents of one line make them; NSP accuracy is then to be read against that share "
                            "(expected: one sentence per line)", 100 * shares["train"], cfg.max_len)

        def validate(m: Bert) -> dict:
            res = evaluate_pretraining(m, held, cfg.nsp)
            return {"val_loss": res["mlm_loss"], **{f"val_{k}": v for k, v in res.items() if k != "mlm_loss"}}

        trainer, result = train(folder, cfg.run, runtime, model, source, cfg.train, pretrain_loss(cfg.nsp),
                                validate if held else None, {"tokenizer": data.tokenizer.save}, task_settings(cfg))
        summary: dict[str, Any] = {
            "steps": result.state.step, "train_seconds": round(result.state.elapsed_s, 1), "stopped_by": result.stopped_by,
            "evaluated_on": "held-out documents" if held else "training pairs (too few documents to hold out)",
            **({"not_next_share": shares} if shares else {})}
        if runtime.is_main:  # the weights as trained so far, as a Hugging Face folder
            summary["model"] = str(write_uncut(result, lambda: export(exported(trainer.final_model, cfg.nsp),
                                                                      data.tokenizer, folder.export())))
        final = after_training(result, lambda: evaluate_pretraining(trainer.final_model, held or source, cfg.nsp))
        if final is not None:
            summary.update({k: round(v, 4) for k, v in final.items()})
            log.info("MLM accuracy %.1f%%%s (%s); wrote %s", 100 * final["mlm_acc"],
                     f", NSP accuracy {final['nsp_acc']:.1%}" if cfg.nsp else "", summary["evaluated_on"],
                     summary.get("model"))
        write_summary(folder, runtime, summary)
    return TaskResult(summary, result.signum, runtime.is_main)
