"""BERT's pretraining data: sentence pairs for next-sentence prediction, and masked tokens.

Input format (BERT's): one sentence per line, documents separated by blank lines.

NSP (Devlin et al. 2019, §3.1 Task #2): for sentence A, B is the sentence that follows it in the
same document half of the time (IsNext, label 0) and a random sentence from a *different* document
otherwise (NotNext, label 1; labels as HF's BertForPreTraining).

MLM (Task #1): 15% of the tokens are selected (never [CLS], [SEP] or padding); of those, 80% become
[MASK], 10% a random token, 10% stay unchanged; the model predicts the original at every selected
position. The random 10% keeps the model from learning that only [MASK] positions matter; the
unchanged 10% biases the representation toward the observed word. Whole-word masking selects words
(a piece and its ## continuations) instead of pieces. Dynamic masking (RoBERTa) redraws the
selection every epoch; static masking keeps one draw per example.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from transformer_lab.tokenizers.corpus import read_lines

IGNORE = -100  # label of a position that is not predicted (F.cross_entropy's ignore_index)


@dataclass
class PairExample:
    a: list[int]
    b: list[int]
    not_next: int  # 0 IsNext, 1 NotNext


def read_documents(path: str | Path) -> list[list[str]]:
    """Documents (lists of non-empty lines), split at blank lines."""
    docs, current = [], []
    for line in read_lines(path):
        line = line.strip()
        if line:
            current.append(line)
        elif current:
            docs.append(current)
            current = []
    if current:
        docs.append(current)
    if not docs:
        raise ValueError(f"{path}: no text (expected one sentence per line, blank lines between documents)")
    return docs


def make_pairs(docs: Sequence[Sequence[list[int]]], rng: random.Random, nsp: bool = True,
               only: Sequence[int] | None = None, pool: Sequence[int] | None = None) -> list[PairExample]:
    """One example per sentence that has a successor in its document (of the documents ``only``,
    default all); NotNext sentences come from another document of ``pool`` (default all). With
    ``nsp`` off, every example is a single segment (B empty), as RoBERTa trains."""
    others = [i for i in (range(len(docs)) if pool is None else pool) if docs[i]]
    if nsp and len(others) < 2:
        raise ValueError("NSP needs at least two documents (NotNext sentences come from another document); "
                         "separate documents with blank lines, or turn NSP off (pretrain bert --no-nsp)")
    out = []
    for di in (range(len(docs)) if only is None else only):
        doc = docs[di]
        for si in range(len(doc) - 1 if nsp else len(doc)):
            if not nsp:
                out.append(PairExample(list(doc[si]), [], 0))
            elif rng.random() < 0.5:
                out.append(PairExample(list(doc[si]), list(doc[si + 1]), 0))
            else:
                dj = di
                while dj == di:
                    dj = rng.choice(others)
                out.append(PairExample(list(doc[si]), list(rng.choice(docs[dj])), 1))
    if not out:
        raise ValueError("no training pairs: every document has a single sentence")
    return out


def held_out_documents(n_docs: int, every: int = 20, minimum: int = 40) -> set[int]:
    """Every ``every``-th document is held out for evaluation when there are at least ``minimum``
    documents (else none: too few to spare)."""
    return set(range(0, n_docs, every)) if n_docs >= minimum else set()


def pack_pair(a: list[int], b: list[int], cls_id: int, sep_id: int, max_len: int) -> tuple[list[int], list[int]]:
    """[CLS] A [SEP] B [SEP] (or [CLS] A [SEP] when B is empty), truncating the longer side first
    (BERT's truncate_seq_pair). Returns ids and segment ids (0 for A, 1 for B)."""
    budget = max_len - (3 if b else 2)
    if budget < 2:
        raise ValueError(f"max_len: {max_len} leaves no room for text after [CLS]/[SEP]")
    a, b = list(a), list(b)
    while len(a) + len(b) > budget:
        (a if len(a) >= len(b) else b).pop()
    ids = [cls_id] + a + [sep_id] + (b + [sep_id] if b else [])
    segments = [0] * (len(a) + 2) + [1] * (len(b) + 1 if b else 0)
    return ids, segments


def mask_tokens(
    tokens: Tensor,
    special: Tensor,
    mask_id: int,
    vocab_size: int,
    generator: torch.Generator,
    prob: float = 0.15,
    word_ids: Tensor | None = None,
    random_low: int = 0,
) -> tuple[Tensor, Tensor]:
    """Select and corrupt tokens for MLM. ``special`` (bool, like tokens) marks [CLS]/[SEP]/padding,
    never selected. ``word_ids`` (same shape, -1 for specials): whole-word masking, every piece of a
    word shares its word's draws. Random replacements are drawn from ids >= ``random_low`` (past
    the special tokens). Returns (corrupted tokens, labels: the original id where selected, else
    IGNORE). Shapes: (B, S) -> (B, S), (B, S)."""
    if word_ids is None:
        u = torch.rand(tokens.shape, generator=generator)  # selection
        r = torch.rand(tokens.shape, generator=generator)  # 80/10/10
    else:
        n_words = int(word_ids.max()) + 1 if word_ids.numel() else 0
        wu = torch.rand(tokens.size(0), max(n_words, 1), generator=generator)
        wr = torch.rand(tokens.size(0), max(n_words, 1), generator=generator)
        w = word_ids.clamp(min=0)
        u, r = wu.gather(1, w), wr.gather(1, w)
    selected = (u < prob) & ~special
    labels = torch.where(selected, tokens, torch.full_like(tokens, IGNORE))
    to_mask = selected & (r < 0.8)
    to_random = selected & (r >= 0.8) & (r < 0.9)
    random_ids = torch.randint(random_low, vocab_size, tokens.shape, generator=generator)
    out = torch.where(to_mask, torch.full_like(tokens, mask_id), tokens)
    out = torch.where(to_random, random_ids, out)
    return out, labels


def word_ids_for(pieces: Sequence[str], special: Sequence[bool]) -> list[int]:
    """Word index of every WordPiece piece: a ``##`` piece continues the previous word; specials -1."""
    out, w = [], -1
    for p, s in zip(pieces, special):
        if s:
            out.append(-1)
            continue
        if not p.startswith("##") or w < 0:
            w += 1
        out.append(w)
    return out
