"""Small BERT runs the BERT experiments share (`bert-mask`, `nsp`, `mask-80-10-10`; `pretrain-finetune`
uses the fine-tuning helper only).

Pre-training data: tiny-shakespeare as tasks/pretrain_bert prepares it (speeches as documents, every
20th held out, NSP pairs), in BERT's uncased vocabulary cut to the pieces used (see ``corpus``).
Model: the bert-mini preset shrunk to 2 layers of width 128, pairs of at most 64 tokens, dropout off
(a run sees under half an epoch). Recipe: tasks/pretrain_bert's (AdamW, linear warm-up and decay,
clipping) at a rate fit for a few hundred steps. Two deviations from BERT, both so that a few hundred
steps of CPU training measure the use of context rather than the start-up: rotary positions instead
of learned ones (with learned absolute positions attention is slow to find the neighbouring words:
bidirectional and causal attention were level after 300 steps, 14.1% and 14.3% MLM accuracy, and
1.3 points apart after 1,000; with rotary, 3.3 points apart after 500), and the MLM output bias
started at the log unigram frequencies (``unigram_log_prior``).

The variants the experiments compare: the NSP loss on or off (the same pairs); the attention
(bidirectional; causal: left context only; the selected tokens' keys hidden, tokens left in place);
the replacement of the selected tokens (80/10/10, or all [MASK]).

Fine-tuning: tasks/classify's loss and accuracy on fixed SST-2 samples (train.tsv to train, dev.tsv
to score), a fresh head on the pooled [CLS], every weight trained.

Every run is a pure function of its arguments and seed. The prepared data and the pre-trained
weights are cached in-process, so experiments run one after another share the runs they have in
common (the bidirectional, 80/10/10, MLM-only run is in all three); callers must not modify what the
caches return.
"""

from __future__ import annotations

import functools
import random
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from transformer_lab.data.batches import ClassBatches, PretrainBatch, PretrainBatches
from transformer_lab.data.classification import read_labelled_tsv
from transformer_lab.data.mlm import (
    IGNORE,
    held_out_documents,
    make_pairs,
    read_documents,
)
from transformer_lab.experiments.data import data_file, minilm_folder
from transformer_lab.models.bert import Bert, BertConfig
from transformer_lab.models.presets import bert_preset
from transformer_lab.nn.masks import causal_mask, combine_masks
from transformer_lab.runtime import Runtime
from transformer_lab.tasks.classify import RECIPE as FINETUNE_RECIPE
from transformer_lab.tasks.classify import accuracy, classification_loss
from transformer_lab.tasks.embed import encode_texts
from transformer_lab.tasks.pretrain_bert import RECIPE as PRETRAIN_RECIPE
from transformer_lab.tasks.pretrain_bert import (
    PretrainData,
    evaluate_pretraining,
    pretrain_loss,
)
from transformer_lab.tokenizers.fast import FastTokenizer
from transformer_lab.tokenizers.wordpiece import WordPieceTokenizer
from transformer_lab.training.config import TrainConfig
from transformer_lab.experiments.training import fit
from transformer_lab.training.loop import StepLoss, Trainer

MAX_LEN = 64  # the model's positions
PAIR_LEN = 32  # tokens per pretraining pair, [CLS] and [SEP] included: chunks of whole verse lines (~10 each)
SMALL = dict(n_layers=2, d_model=128, n_heads=4, d_ff=512, position="rotary")  # on the bert-mini preset
BATCH = 32
PRETRAIN_LR = 3e-3  # a few hundred steps: BERT's 1e-4 would barely move a model this small (6e-3 stalls)
LOG_EVERY = 5  # training steps between the accuracies kept for the curves
HELD_BATCHES = 10  # held-out pairs scored: 10 batches of 64 (~2,600 selected tokens; 21 in all)
FINETUNE_LR = 1e-3  # the small model, ~150 steps (at 1e-4 and 3e-4 it stays at the majority label)
FINETUNE_MAX_LEN = 32  # tokens per SST-2 sentence, [CLS] and [SEP] included: 94% of them fit
FINETUNE_BATCH = 16

ATTENTION = ("bidirectional", "causal", "keys hidden")
CORRUPTION = ("80/10/10", "mask only")


# --- data -----------------------------------------------------------------------------------------
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
SST2_MAX = (8000, 2000)  # the most SST-2 training / dev sentences a budget uses


def pairs_from_documents(encoded: list[list[list[int]]], tok: WordPieceTokenizer, seed: int = 0,
                         max_len: int = PAIR_LEN) -> PretrainData:
    """tasks/pretrain_bert.prepare's steps after encoding (every 20th document held out; NSP pairs,
    the NotNext text of held-out pairs from held-out documents), for documents already encoded."""
    held = held_out_documents(len(encoded))
    train_docs = [i for i in range(len(encoded)) if i not in held]
    rng = random.Random(seed)
    train_pairs = make_pairs(encoded, rng, True, only=train_docs, pool=train_docs, max_len=max_len)
    held_pairs = make_pairs(encoded, rng, True, only=sorted(held), pool=sorted(held), max_len=max_len) if held else []
    return PretrainData(tok, len(encoded), train_pairs, held_pairs)


@functools.lru_cache(maxsize=1)
def sst2_pool() -> tuple[list[str], list[int], list[str], list[int]]:
    """SST-2's train.tsv and dev.tsv, each in one fixed shuffled order (seed 0): subsets are prefixes."""
    tx, ty = read_labelled_tsv(data_file("sst2/train.tsv"))
    dx, dy = read_labelled_tsv(data_file("sst2/dev.tsv"))
    rng = random.Random(0)
    ti, di = rng.sample(range(len(tx)), len(tx)), rng.sample(range(len(dx)), len(dx))
    return [tx[i] for i in ti], [ty[i] for i in ti], [dx[i] for i in di], [dy[i] for i in di]


def sst2_subset(n_train: int, n_dev: int) -> tuple[list[str], list[int], list[str], list[int]]:
    """The first ``n_train`` training and ``n_dev`` dev sentences of the fixed shuffles."""
    if n_train > SST2_MAX[0] or n_dev > SST2_MAX[1]:
        raise ValueError(f"n_train, n_dev: at most {SST2_MAX} (the sentences the vocabulary was cut for), "
                         f"got {n_train}, {n_dev}")
    tx, ty, dx, dy = sst2_pool()
    return tx[:n_train], ty[:n_train], dx[:n_dev], dy[:n_dev]


@functools.lru_cache(maxsize=1)
def corpus() -> PretrainData:
    """The training and held-out NSP pairs of ``encoded_corpus`` as tasks/pretrain_bert builds them
    (BERT's reference recipe, ``PAIR_LEN`` tokens; a fixed draw, seed 0, whatever the run's seed)."""
    return pairs_from_documents(*encoded_corpus())


@functools.lru_cache(maxsize=1)
def encoded_corpus() -> tuple[list[list[list[int]]], WordPieceTokenizer]:
    """tiny-shakespeare's documents (speeches) and sentences (lines), encoded in BERT's uncased vocabulary (all-MiniLM-L6-v2's) cut to the special tokens and the pieces these sentences and
    the SST-2 sentences fine-tuning may use: ~13,000 rows of embedding and output layer instead of
    30,522. WordPiece's greedy longest match splits these texts exactly as the whole vocabulary does
    (every piece it picks is kept; no longer match was there to begin with). The sentences are encoded
    once, by the fast (Rust) tokenizer, whose ids the tokenizer tests hold equal to ours."""
    docs = read_documents(data_file("tinyshakespeare/input.txt"))
    tx, _, dx, _ = sst2_pool()
    full = WordPieceTokenizer.from_vocab_file(minilm_folder() / "vocab.txt", lowercase=True)
    sentences = [s for d in docs for s in d]
    flat = FastTokenizer.from_tokenizer(full).encode_batch(sentences + tx[:SST2_MAX[0]] + dx[:SST2_MAX[1]])
    used = sorted({i for ids in flat for i in ids} - {full.token_to_id(t) for t in SPECIALS})
    pieces = [*SPECIALS, *(full.id_to_token[i] for i in used)]
    new_id = {full.token_to_id(t): k for k, t in enumerate(pieces)}
    shakespeare = iter(flat[:len(sentences)])
    encoded = [[[new_id[i] for i in next(shakespeare)] for _ in d] for d in docs]
    return encoded, WordPieceTokenizer({t: k for k, t in enumerate(pieces)}, lowercase=True)


class Corrupted:
    """A ``PretrainBatches`` whose selected tokens all take one form: ``"mask"`` ([MASK] everywhere: the
    mask-only alternative to 80/10/10, with the same selection) or ``"original"`` (left in place: the
    input fine-tuning sees, and the one the keys-hidden variant trains on). Labels are unchanged."""

    def __init__(self, source: PretrainBatches, form: str):
        if form not in ("mask", "original"):
            raise ValueError(f"form: expected 'mask' or 'original', got {form!r}")
        self.source, self.form = source, form

    def __len__(self) -> int:
        return len(self.source)

    def epoch(self, epoch: int) -> list[list[int]]:
        return self.source.epoch(epoch)

    def make(self, indices) -> PretrainBatch:
        b = self.source.make(indices)
        selected = b.labels != IGNORE
        fill = torch.full_like(b.tokens, self.source.mask_id) if self.form == "mask" else b.labels
        return replace(b, tokens=torch.where(selected, fill, b.tokens))


# --- attention variants ---------------------------------------------------------------------------
class AttentionVariant:
    """Adds a mask to every self-attention of a BERT's encoder (a forward pre-hook on the encoder: the
    model's code is unchanged). ``"causal"``: each position sees itself and the positions to its left
    (the decoder's trick); ``"keys hidden"``: no query may attend to the positions in ``self.hidden``
    (B, S) bool, set before each forward; ``"bidirectional"``: nothing added (BERT)."""

    def __init__(self, model: Bert, kind: str):
        if kind not in ATTENTION:
            raise ValueError(f"attention: expected one of {ATTENTION}, got {kind!r}")
        self.kind = kind
        self.hidden: torch.Tensor | None = None
        if kind != "bidirectional":
            model.encoder.register_forward_pre_hook(self)

    def __call__(self, module, args):
        x, mask, *rest = args  # the encoder's (x (B, S, D), key-padding mask (B, 1, 1, S), positions)
        if self.kind == "causal":
            extra = causal_mask(x.size(1), x.device)  # (1, 1, S, S)
        else:
            extra = ~self.hidden[:, None, None, :]  # (B, 1, 1, S): hidden keys, for every query
        return (x, combine_masks(mask, extra), *rest)


def hiding_loss(variant: AttentionVariant, loss_fn):
    """``loss_fn`` with the batch's selected positions hidden as keys first (the keys-hidden variant)."""
    def fn(model: Bert, b: PretrainBatch, device: torch.device) -> StepLoss:
        variant.hidden = (b.labels != IGNORE).to(device)
        return loss_fn(model, b, device)
    return fn


# --- pre-training ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pretrained:
    config: BertConfig
    state: dict[str, torch.Tensor]  # the weights after training (CPU)
    train_steps: tuple[int, ...]  # every LOG_EVERY-th step
    train_mlm_acc: tuple[float, ...]  # the training batch's MLM accuracy at those steps
    held: dict[str, float]  # held-out MLM accuracy (and loss, NSP accuracy) in the run's own condition
    seconds: float  # training time


@functools.lru_cache(maxsize=1)
def unigram_log_prior() -> torch.Tensor:
    """log p(token) over the training pairs (add-one smoothed), (V,). The MLM output bias starts here
    instead of at 0: with Adam a bias moves ~lr per step, so from 0 a few hundred steps go to learning
    word frequencies (the loss sits on that plateau); from here they go to using the context, which is
    what the experiments compare. Every variant starts from it alike."""
    data = corpus()
    tokens = torch.tensor([t for p in data.train_pairs for t in p.a + p.b], dtype=torch.long)
    counts = 1.0 + torch.bincount(tokens, minlength=data.tokenizer.vocab_size).float()
    return torch.log(counts / counts.sum())


def small_config(vocab_size: int, pad_id: int, **overrides: Any) -> BertConfig:
    return bert_preset("bert-mini", vocab_size=vocab_size, max_len=MAX_LEN, pad_id=pad_id, **{**SMALL, **overrides})


def pretrain_source(seed: int, corruption: str = "80/10/10", held: bool = False):
    """Training batches (shuffled and masked by ``seed``) or the held-out batches (a fixed draw)."""
    data = corpus()
    if held:
        source = PretrainBatches(data.held_pairs, data.tokenizer, PAIR_LEN, 64, seed=10_000)
    else:
        source = PretrainBatches(data.train_pairs, data.tokenizer, PAIR_LEN, BATCH, seed=seed)
    return Corrupted(source, "mask") if corruption == "mask only" else source


def held_accuracy(model: Bert, form: str | None = None, nsp: bool = False,
                  batches: int = HELD_BATCHES) -> dict[str, float]:
    """MLM accuracy on the first ``batches`` batches of held-out pairs' selected tokens, corrupted
    80/10/10 (``form`` None) or all in one form (``Corrupted``); NSP accuracy too with ``nsp``."""
    source = pretrain_source(0, held=True)
    return evaluate_pretraining(model, Corrupted(source, form) if form else source, nsp, batches)


def held_labels(batches: int = HELD_BATCHES) -> torch.Tensor:
    """The selected tokens ``held_accuracy`` scores, in order (the same for every model and corruption)."""
    source = pretrain_source(0, held=True)
    labels = [source.make(ix).labels for ix in source.epoch(0)[:batches]]
    labels = torch.cat([x[x != IGNORE] for x in labels]) if labels else torch.zeros(0, dtype=torch.long)
    if not labels.numel():
        raise ValueError("no held-out tokens to score: the held-out documents are empty")
    return labels


def unigram_accuracy(batches: int = HELD_BATCHES) -> float:
    """MLM accuracy of always answering the commonest training token, on the held-out batches that
    ``held_accuracy`` scores: what a model that ignores the context gets."""
    return float((held_labels(batches) == int(unigram_log_prior().argmax())).double().mean())


def held_tokens(batches: int = HELD_BATCHES) -> int:
    """How many selected tokens ``held_accuracy`` scores: the count its accuracies' sampling error is of."""
    return held_labels(batches).numel()


@functools.lru_cache(maxsize=16)
def pretrain(seed: int, steps: int, nsp: bool = False, attention: str = "bidirectional", corruption: str = "80/10/10",
             device: str = "cpu", held_batches: int = HELD_BATCHES) -> Pretrained:
    """The small BERT pre-trained for ``steps`` steps of 32 pairs: MLM (+ NSP with ``nsp``) on the same
    pairs, with the given attention and corruption; scored on the held-out pairs (80/10/10, as trained
    for ``"mask only"`` too: ``held_accuracy`` scores other forms)."""
    if corruption not in CORRUPTION:
        raise ValueError(f"corruption: expected one of {CORRUPTION}, got {corruption!r}")
    data = corpus()
    tok: WordPieceTokenizer = data.tokenizer
    torch.manual_seed(seed)
    model = Bert(small_config(tok.vocab_size, tok.token_to_id("[PAD]"), pretraining_heads=True, dropout=0.0,
                              attention_dropout=0.0))
    with torch.no_grad():  # deviation: BERT starts this bias at 0; see unigram_log_prior
        model.mlm.decoder.bias.copy_(unigram_log_prior())
    variant = AttentionVariant(model, attention)
    source, loss_fn = pretrain_source(seed, corruption), pretrain_loss(nsp)
    if attention == "keys hidden":  # the selected tokens stay in place; only their keys are hidden
        source, loss_fn = Corrupted(pretrain_source(seed), "original"), hiding_loss(variant, loss_fn)
    cfg: TrainConfig = replace(PRETRAIN_RECIPE, max_steps=steps, warmup=max(1, steps // 10), lr=PRETRAIN_LR, seed=seed,
                               log_every=LOG_EVERY, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model, source, cfg, Path(tmp), loss_fn, runtime=Runtime(torch.device(device)))
        result = fit(trainer)
    model = trainer.model.eval()
    logged = [r for r in result.state.history if "mlm_acc" in r]
    # the keys-hidden run is scored by its training accuracy only (held-out scoring would need the hook's input)
    held = {} if attention == "keys hidden" else held_accuracy(model, nsp=nsp, batches=held_batches)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return Pretrained(model.config, state, tuple(r["step"] for r in logged), tuple(r["mlm_acc"] for r in logged), held,
                      result.state.elapsed_s)


def pretrained_model(pre: Pretrained, device: str | torch.device = "cpu", **overrides: Any) -> Bert:
    """A fresh model with the pre-trained weights (``overrides`` on its config: heads, dropout); weights
    the new config has no place for (the pre-training heads) are dropped, new heads stay fresh."""
    model = Bert(replace(pre.config, **overrides))
    own = model.state_dict()
    model.load_state_dict({k: v for k, v in pre.state.items() if k in own and v.shape == own[k].shape}, strict=False)
    return model.to(device)


def tail_mean(values, n: int = 20) -> float:
    tail = list(values)[-n:]
    return sum(tail) / max(len(tail), 1)


# --- fine-tuning ----------------------------------------------------------------------------------
@dataclass
class Finetuned:
    accuracy: float  # on the dev sentences
    train_s: float  # wall time of the training steps


def finetune_measured(model: Bert, tok: WordPieceTokenizer, seed: int, n_train: int, n_dev: int, steps: int, lr: float,
                      max_len: int = MAX_LEN, batch_size: int = BATCH,
                      device: str | torch.device = "cpu") -> Finetuned:
    """Fine-tune ``model`` (with a 2-label head) on ``n_train`` SST-2 sentences for ``steps`` steps of
    tasks/classify's recipe at rate ``lr`` (10% warm-up); its accuracy on ``n_dev`` dev sentences and
    the training's wall time. Only the parameters that require gradients train (an adapter's)."""
    tx, ty, dx, dy = sst2_subset(n_train, n_dev)
    train_ids, dev_ids = encode_texts(tok, tx, max_len), encode_texts(tok, dx, max_len)
    source = ClassBatches(train_ids, ty, batch_size, model.config.pad_id, seed)
    cfg = replace(FINETUNE_RECIPE, max_steps=steps, warmup=max(1, steps // 10), lr=lr, seed=seed, log_every=steps,
                  progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model, source, cfg, Path(tmp), classification_loss, runtime=Runtime(torch.device(device)))
        result = fit(trainer)
    return Finetuned(accuracy(trainer.model.eval(), dev_ids, dy), result.state.elapsed_s)


def finetune(model: Bert, tok: WordPieceTokenizer, seed: int, n_train: int, n_dev: int, steps: int, lr: float,
             max_len: int = MAX_LEN, batch_size: int = BATCH, device: str | torch.device = "cpu") -> float:
    """``finetune_measured``'s accuracy."""
    return finetune_measured(model, tok, seed, n_train, n_dev, steps, lr, max_len, batch_size, device).accuracy


def majority_share(n_dev: int) -> float:
    """Accuracy of always answering the dev subset's commoner label: the floor a fine-tuned model beats."""
    labels = sst2_subset(0, n_dev)[3]
    return max(labels.count(k) for k in set(labels)) / len(labels)


def finetune_pretrained(pre: Pretrained, seed: int, n_train: int, n_dev: int, steps: int,
                        device: str | torch.device = "cpu") -> float:
    """SST-2 dev accuracy of the small pre-trained BERT fine-tuned (fresh head, dropout 0.1 as BERT)."""
    torch.manual_seed(seed)  # the head's initial weights
    model = pretrained_model(pre, device, pretraining_heads=False, n_labels=2, dropout=0.1, attention_dropout=0.1)
    return finetune(model, corpus().tokenizer, seed, n_train, n_dev, steps, FINETUNE_LR, FINETUNE_MAX_LEN,
                    FINETUNE_BATCH, device)
