"""Every batch source the trainer draws from, and the batches they make.

A batch source gives the batches of an epoch as lists of example indices, a pure function of
(seed, epoch), so a resumed run sees exactly the batches the uninterrupted one would have; and it
turns one such list into tensors (``make``). ``training.loop.BatchSource`` is the protocol.

| source | task | batch |
| --- | --- | --- |
| ``ShuffledBatches`` | the date demo: fixed-size batches of symbol pairs | ``Batch`` |
| ``TokenBuckets`` | translation: length-sorted batches under a padded-token budget (§5.1) | ``Batch`` |
| ``RandomWindows`` | language modelling: windows at random offsets (nanoGPT) | ``LMBatch`` |
| ``ClassBatches`` | sequence classification | ``ClassBatch`` |
| ``PretrainBatches`` | BERT's MLM + NSP, masks drawn per example | ``PretrainBatch`` |

A batch's ``n_tokens`` counts the tokens that measure throughput; ``loss_units`` (default
``n_tokens``) is what the trainer divides the summed loss by: target tokens (translation, LM) or
sentences (classification). BERT pre-training's loss has two parts, each a mean over its own units
(``loss_parts``: masked tokens for MLM, pairs for NSP; ``training.loop.StepLoss``).

Shapes: B batch, S source length, T target length.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor

from transformer_lab.config import check_positive
from transformer_lab.data.mlm import IGNORE, PairExample, mask_tokens, pack_pair, word_ids_for
from transformer_lab.data.parallel import EncodedPairs
from transformer_lab.data.vocab import Vocab
from transformer_lab.tokenizers.special import PAD_ID


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """0..n-1 in the order of ``epoch``: a pure function of (seed, epoch), so batches are the same
    after a resume. Every batch source shuffles with this."""
    order = list(range(n))
    random.Random(f"{seed}:{epoch}").shuffle(order)
    return order


def inference_batches(order: Sequence[int], lengths: Sequence[int], batch_size: int,
                      same_length: bool = False) -> list[list[int]]:
    """``order`` (indices, sorted by length) cut into batches of up to ``batch_size``; ``same_length``: a
    batch also ends where the length changes, so no row is padded (a model whose rows change with
    padding, ``nn.sparse.padding_changes_rows``, then computes each as it would alone)."""
    out: list[list[int]] = []
    for i in order:
        if not out or len(out[-1]) == batch_size or same_length and lengths[out[-1][-1]] != lengths[i]:
            out.append([])
        out[-1].append(i)
    return out


def pad_sequences(seqs: Sequence[Sequence[int]], pad_id: int = PAD_ID) -> Tensor:
    """Right-pad to the longest. Shapes: -> (B, T_max) int64."""
    t = max(len(s) for s in seqs)
    out = torch.full((len(seqs), t), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out


def padding_and_mask(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Right padding. Returns tokens (B, S) and attention mask (B, S) bool, True = real token."""
    tokens = pad_sequences(rows, pad_id)
    mask = torch.arange(tokens.size(1))[None, :] < torch.tensor([len(r) for r in rows])[:, None]
    return tokens, mask


# --- encoder-decoder ------------------------------------------------------------------------------
@dataclass
class Batch:
    """One teacher-forced batch: src (B, S); tgt_in = <s> y (B, T); tgt_out = y </s> (B, T)."""

    src: Tensor
    tgt_in: Tensor
    tgt_out: Tensor
    pad_id: int = PAD_ID

    @property
    def n_tokens(self) -> int:
        return int((self.tgt_out != self.pad_id).sum())


def make_batch(pairs: Sequence[tuple[Sequence[str], Sequence[str]]], vocab: Vocab) -> Batch:
    src = pad_sequences([vocab.encode(s, eos=True) for s, _ in pairs], vocab.pad_id)
    tgt = [vocab.encode(t) for _, t in pairs]
    return Batch(src, pad_sequences([[vocab.bos_id] + t for t in tgt], vocab.pad_id),
                 pad_sequences([t + [vocab.eos_id] for t in tgt], vocab.pad_id), vocab.pad_id)


class ShuffledBatches:
    """Fixed-size batches of symbol ``pairs`` in a fresh seeded order each epoch (the last partial
    batch of an epoch is dropped)."""

    def __init__(self, pairs: Sequence[tuple[Sequence[str], Sequence[str]]], vocab: Vocab, batch_size: int, seed: int = 0):
        check_positive("batch_size", batch_size)
        if len(pairs) < batch_size:
            raise ValueError(f"batch_size: {batch_size} is more than the {len(pairs)} training pairs")
        self.pairs, self.vocab, self.batch_size, self.seed = pairs, vocab, batch_size, seed

    def __len__(self) -> int:
        return len(self.pairs) // self.batch_size

    def epoch(self, epoch: int) -> list[list[int]]:
        order = epoch_order(len(self.pairs), self.seed, epoch)
        n = self.batch_size
        return [order[i : i + n] for i in range(0, len(order) - n + 1, n)]

    def make(self, indices: Sequence[int]) -> Batch:
        return make_batch([self.pairs[i] for i in indices], self.vocab)


class TokenBuckets:
    """Length-sorted batches capped by a token budget; batch order reshuffled every epoch.

    As in the paper (§5.1: "sentence pairs were batched together by approximate sequence length; each
    batch contained ... approximately 25000 source tokens and 25000 target tokens"): pairs are sorted by
    length and cut into batches whose padded size, sentences × (longest side + 1 for <s> or </s>),
    stays under ``max_tokens``.
    """

    def __init__(self, pairs: EncodedPairs, max_tokens: int, bos: int, eos: int, pad: int, seed: int = 0):
        if max_tokens < 1:
            raise ValueError(f"max_tokens: expected >= 1, got {max_tokens}")
        self.pairs, self.bos, self.eos, self.pad, self.seed = pairs, bos, eos, pad, seed
        lengths = [max(len(s), len(t)) + 1 for s, t in zip(pairs.src, pairs.tgt)]
        longest = max(lengths, default=0)
        if longest > max_tokens:
            raise ValueError(f"max_tokens: {max_tokens} is below the longest pair ({longest} tokens); raise it or set --max-len")
        # Sort by length, ties broken by a fixed shuffle, so equal-length pairs mix across batches.
        order = list(range(len(lengths)))
        random.Random(seed).shuffle(order)
        order.sort(key=lambda i: lengths[i])
        self.batches: list[list[int]] = []
        current: list[int] = []
        for i in order:
            width = lengths[i]  # ascending order: the newcomer is the longest so far
            if current and width * (len(current) + 1) > max_tokens:
                self.batches.append(current)
                current = []
            current.append(i)
        if current:
            self.batches.append(current)

    def __len__(self) -> int:
        return len(self.batches)

    def epoch(self, epoch: int) -> list[list[int]]:
        """The batches (lists of pair indices) of ``epoch``, in that epoch's order."""
        return [self.batches[i] for i in epoch_order(len(self.batches), self.seed, epoch)]

    def make(self, indices: Sequence[int]) -> Batch:
        src = [self.pairs.src[i] + [self.eos] for i in indices]
        tgt = [self.pairs.tgt[i] for i in indices]
        return Batch(
            pad_sequences(src, self.pad),
            pad_sequences([[self.bos] + t for t in tgt], self.pad),
            pad_sequences([t + [self.eos] for t in tgt], self.pad),
            self.pad,
        )


# --- language modelling ---------------------------------------------------------------------------
@dataclass
class LMBatch:
    x: Tensor  # (B, T) inputs
    y: Tensor  # (B, T) next tokens
    segment: int | None = None  # SegmentStreams: which segment of the streams (0: a memory starts afresh)

    @property
    def n_tokens(self) -> int:
        return self.y.numel()


class RandomWindows:
    """Batches of B windows of T+1 tokens at random offsets (x = window[:-1], y = window[1:]); an
    "epoch" is len(ids) / (B·T) batches whose offsets are a pure function of (seed, epoch)."""

    def __init__(self, ids: Tensor, batch_size: int, context: int, seed: int = 0):
        check_positive("batch_size", batch_size)
        check_positive("context", context)
        if len(ids) <= context:
            raise ValueError(f"ids: {len(ids)} tokens, fewer than one window of {context + 1}")
        self.ids, self.batch_size, self.context, self.seed = ids, batch_size, context, seed
        self.n_batches = max(1, (len(ids) - 1) // (batch_size * context))

    def __len__(self) -> int:
        return self.n_batches

    def epoch(self, epoch: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        offsets = torch.randint(len(self.ids) - self.context, (self.n_batches, self.batch_size), generator=g)
        return offsets.tolist()

    def make(self, offsets: Sequence[int]) -> LMBatch:
        idx = torch.as_tensor(offsets)[:, None] + torch.arange(self.context + 1)  # (B, T+1)
        windows = self.ids[idx]
        return LMBatch(windows[:, :-1], windows[:, 1:])


class SegmentStreams:
    """Transformer-XL's batches: the text cut into B contiguous streams, batch k holding every stream's
    k-th segment of T tokens, in order, so that a memory of segment k serves segment k + 1. An epoch
    walks the streams once; the order is fixed (the recurrence needs it), the seed unused."""

    def __init__(self, ids: Tensor, batch_size: int, context: int, seed: int = 0):
        check_positive("batch_size", batch_size)
        check_positive("context", context)
        per = (len(ids) - 1) // batch_size
        if per < context:
            raise ValueError(f"ids: {len(ids)} tokens make {batch_size} streams of {per}, shorter than one segment of "
                             f"{context}; use fewer streams (--batch-size) or a shorter --context")
        x = ids[: batch_size * per + 1]
        self.inputs, self.targets = x[:-1].view(batch_size, per), x[1:].view(batch_size, per)
        self.context, self.n_batches = context, per // context

    def __len__(self) -> int:
        return self.n_batches

    def epoch(self, epoch: int) -> list[list[int]]:
        return [[k] for k in range(self.n_batches)]

    def make(self, indices: Sequence[int]) -> LMBatch:
        (k,) = indices
        cut = slice(k * self.context, (k + 1) * self.context)
        return LMBatch(self.inputs[:, cut], self.targets[:, cut], segment=k)


# --- sequence classification ----------------------------------------------------------------------
@dataclass
class ClassBatch:
    tokens: Tensor  # (B, S)
    attention_mask: Tensor  # (B, S)
    labels: Tensor  # (B,)

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum())  # real tokens, for throughput

    @property
    def loss_units(self) -> int:
        return self.tokens.size(0)  # the loss is a mean over sentences


class ClassBatches:
    """Sentences shuffled per epoch from (seed, epoch), batched with right padding."""

    def __init__(self, ids: list[list[int]], labels: list[int], batch_size: int, pad_id: int, seed: int = 0):
        check_positive("batch_size", batch_size)
        if len(ids) != len(labels) or not ids:
            raise ValueError(f"ids, labels: expected as many labels as sentences (>= 1), got {len(ids)} and {len(labels)}")
        self.ids, self.labels, self.batch_size, self.pad_id, self.seed = ids, labels, batch_size, pad_id, seed

    def __len__(self) -> int:
        return (len(self.ids) + self.batch_size - 1) // self.batch_size

    def epoch(self, epoch: int) -> list[list[int]]:
        order = epoch_order(len(self.ids), self.seed, epoch)
        return [order[k:k + self.batch_size] for k in range(0, len(order), self.batch_size)]

    def make(self, indices: Sequence[int]) -> ClassBatch:
        tokens, mask = padding_and_mask([self.ids[i] for i in indices], self.pad_id)
        return ClassBatch(tokens, mask, torch.tensor([self.labels[i] for i in indices]))


# --- BERT pretraining -----------------------------------------------------------------------------
@dataclass
class PretrainBatch:
    tokens: Tensor  # (B, S) corrupted
    segments: Tensor  # (B, S)
    attention_mask: Tensor  # (B, S) bool
    labels: Tensor  # (B, S) original ids at selected positions, else IGNORE
    not_next: Tensor  # (B,)
    # The selected positions as flat indices b * S + s, and their ids (N,): found here, on the host, so the
    # model gathers them by index (a boolean index would read their count back from the device, and
    # break a compiled graph).
    mlm_positions: Tensor = field(init=False)
    mlm_targets: Tensor = field(init=False)

    def __post_init__(self) -> None:
        selected = self.labels != IGNORE
        self.mlm_positions = selected.flatten().nonzero().squeeze(1)
        self.mlm_targets = self.labels[selected]

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum())  # real tokens, for throughput

    @property
    def loss_parts(self) -> dict[str, int]:
        # BERT's loss: the MLM mean over the masked tokens + the NSP mean over the pairs (training.loop.StepLoss)
        return {"mlm": len(self.mlm_targets), "nsp": self.tokens.size(0)}


class PretrainBatches:
    """MLM + NSP batches. Batches of an epoch are a pure function of (seed, epoch); masks too
    (dynamic: redrawn each epoch; static: one draw per example), and an example's masks do not
    depend on the batch it lands in."""

    def __init__(self, examples: list[PairExample], tokenizer, max_len: int, batch_size: int, seed: int = 0,
                 dynamic: bool = True, whole_word: bool = False, prob: float = 0.15):
        check_positive("batch_size", batch_size)
        self.examples, self.tok, self.max_len, self.batch_size = examples, tokenizer, max_len, batch_size
        self.seed, self.dynamic, self.whole_word, self.prob = seed, dynamic, whole_word, prob
        ids = {n: tokenizer.token_to_id(n) for n in ("[CLS]", "[SEP]", "[MASK]", "[PAD]")}
        missing = [n for n, i in ids.items() if i is None]
        if missing:
            raise ValueError(f"tokenizer: BERT pretraining needs the special tokens {missing} in the vocabulary")
        self.cls_id, self.sep_id, self.mask_id, self.pad_id = ids["[CLS]"], ids["[SEP]"], ids["[MASK]"], ids["[PAD]"]
        self.special_ids = sorted({i for t, i in tokenizer.vocab.items() if t.startswith("[") and t.endswith("]")})
        self.random_low = max(self.special_ids) + 1 if self.special_ids == list(range(len(self.special_ids))) else 0
        self.n = len(examples)

    def __len__(self) -> int:
        return (self.n + self.batch_size - 1) // self.batch_size

    def epoch(self, epoch: int) -> list[list[int]]:
        order = epoch_order(self.n, self.seed, epoch)
        # the epoch rides along in the index, so masks can depend on it (dynamic masking)
        return [[epoch * self.n + i for i in order[k:k + self.batch_size]] for k in range(0, self.n, self.batch_size)]

    def make(self, indices: Sequence[int]) -> PretrainBatch:
        rows = []
        for idx in indices:
            epoch, i = divmod(idx, self.n)
            ex = self.examples[i]
            ids, seg = pack_pair(ex.a, ex.b, self.cls_id, self.sep_id, self.max_len)
            rows.append((ids, seg, ex.not_next, (epoch if self.dynamic else 0) * self.n + i))
        tokens = pad_sequences([r[0] for r in rows], self.pad_id)
        segments = pad_sequences([r[1] for r in rows], 0)
        attention = tokens != self.pad_id
        special = torch.isin(tokens, torch.tensor(self.special_ids)) | ~attention
        corrupted, labels = tokens.clone(), torch.full_like(tokens, IGNORE)
        for k, (ids, _, _, key) in enumerate(rows):
            # one generator per example, drawn over the example's own length: its masks do not depend
            # on the batch it lands in (nor on the padding that batch needs)
            g = torch.Generator().manual_seed(self.seed * 7_919 + key)
            n = len(ids)
            word_ids = None
            if self.whole_word:
                pieces = [self.tok.id_to_token[int(t)] for t in tokens[k, :n]]
                word_ids = torch.tensor([word_ids_for(pieces, special[k, :n].tolist())])
            c, lab = mask_tokens(tokens[k:k + 1, :n], special[k:k + 1, :n], self.mask_id, self.tok.vocab_size, g,
                                 self.prob, word_ids, self.random_low)
            corrupted[k, :n], labels[k, :n] = c[0], lab[0]
        return PretrainBatch(corrupted, segments, attention, labels, torch.tensor([r[2] for r in rows]))
