"""BERT's pretraining data: segment pairs for next-sentence prediction, and masked tokens, as BERT's
reference code builds them (google-research/bert, ``create_pretraining_data.py``).

Input format (BERT's): one sentence per line, documents separated by blank lines.

NSP (Devlin et al. 2019, §3.1 Task #2, A.2): a "sentence" is a span of contiguous text, not a
linguistic sentence. Each document is cut into chunks of whole sentences of about ``max_len - 3``
tokens (10% of the documents aim shorter, a random length from 2: ``short_seq_prob``); each chunk splits
at a random sentence boundary into A and B. Half of the time B is the rest of the chunk (IsNext, label 0);
otherwise, and always when the chunk holds one sentence, B is text from a random sentence of a
*different* document onward, filling the chunk's target length (NotNext, label 1; labels as HF's
BertForPreTraining), and the chunk's unused sentences start the next chunk. A and B are cut to fit by
removing tokens from the longer one, at its front or its back at random. So NotNext pairs are more than
half, by as much as chunks of one sentence are common: a document's last sentence alone, sentences as
long as the chunk (one paragraph per line: nearly all NotNext; `pretrain bert` warns). Without NSP
(RoBERTa's DOC-SENTENCES), a chunk is one segment.

MLM (Task #1): 15% of each sequence's tokens, ``max(1, round(0.15 · length))`` counted over the whole
sequence with [CLS] and [SEP], are chosen at random among the others (never [CLS], [SEP], any bracketed
special such as [UNK] or [MASK], nor padding); each chosen one becomes [MASK] 80% of the time, a random
token 10%, and stays unchanged 10%; the model predicts the original at every chosen position. The random
10% keeps the model from learning that only [MASK] positions matter; the unchanged 10% biases the
representation toward the observed word. Whole-word masking chooses words (a piece and its ##
continuations), skipping a word that would overshoot the count, and decides [MASK] / random / unchanged
for each piece, as the reference does. Dynamic masking (RoBERTa) redraws the choice every epoch; static
masking keeps one draw per example.

Deviations from the reference: random replacements come from the non-special tokens (the reference
draws any vocabulary entry); a NotNext B always comes from another document (the reference tries ten
draws); the pairs are built once (the reference repeats the whole pass ``dupe_factor`` = 10 times, each
with its own masks: dynamic masking does this per epoch); there is no ``max_predictions_per_seq`` cap
(it only sized the reference's fixed arrays: 20 for 128 tokens, where 15% is 19).
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
SHORT_SEQ_PROB = 0.1  # the reference's share of documents whose chunks aim at a random shorter length


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
               only: Sequence[int] | None = None, pool: Sequence[int] | None = None, *, max_len: int,
               short_seq_prob: float = SHORT_SEQ_PROB) -> list[PairExample]:
    """The examples of the documents ``only`` (default all), each sequence ``max_len`` tokens at most with
    its [CLS] and [SEP]s (module docstring; ``create_instances_from_document``); NotNext text comes from
    another document of ``pool`` (default all). With ``nsp`` off, every example is one segment (B empty)."""
    budget = max_len - (3 if nsp else 2)
    if budget < 2:
        raise ValueError(f"max_len: {max_len} leaves no room for text after [CLS]/[SEP]")
    docs = [[list(s) for s in d if len(s)] for d in docs]
    others = [i for i in (range(len(docs)) if pool is None else pool) if docs[i]]
    if nsp and len(others) < 2:
        raise ValueError("NSP needs at least two documents (NotNext sentences come from another document); "
                         "separate documents with blank lines, or turn NSP off (pretrain bert --no-nsp)")
    out = []
    for di in (range(len(docs)) if only is None else only):
        doc = docs[di]
        target = rng.randint(2, budget) if rng.random() < short_seq_prob else budget
        chunk: list[list[int]] = []
        length, i = 0, 0
        while i < len(doc):
            chunk.append(doc[i])
            length += len(doc[i])
            if i == len(doc) - 1 or length >= target:
                if not nsp:
                    a = _joined(chunk)
                    _truncate_pair(a, [], budget, rng)
                    out.append(PairExample(a, [], 0))
                else:
                    a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
                    a = _joined(chunk[:a_end])
                    if len(chunk) == 1 or rng.random() < 0.5:
                        dj = di
                        while dj == di:
                            dj = rng.choice(others)
                        b = []
                        for s in docs[dj][rng.randint(0, len(docs[dj]) - 1):]:
                            b += s
                            if len(b) >= target - len(a):
                                break
                        i -= len(chunk) - a_end  # the chunk's unused sentences go back to the document
                        not_next = 1
                    else:
                        b, not_next = _joined(chunk[a_end:]), 0
                    _truncate_pair(a, b, budget, rng)
                    out.append(PairExample(a, b, not_next))
                chunk, length = [], 0
            i += 1
    if not out:
        raise ValueError("no training examples: the documents hold no tokens")
    return out


def _joined(sentences: Sequence[list[int]]) -> list[int]:
    return [t for s in sentences for t in s]


def _truncate_pair(a: list[int], b: list[int], budget: int, rng: random.Random) -> None:
    """The reference's pretraining ``truncate_seq_pair``: a token off the longer side (B on a tie), from
    its front or its back at random, until both fit in ``budget``. In place."""
    while len(a) + len(b) > budget:
        side = a if len(a) > len(b) else b
        del side[0 if rng.random() < 0.5 else -1]


def held_out_documents(n_docs: int, every: int = 20, minimum: int = 40) -> set[int]:
    """Every ``every``-th document is held out for evaluation when there are at least ``minimum``
    documents (else none: too few to spare)."""
    return set(range(0, n_docs, every)) if n_docs >= minimum else set()


def pack_pair(a: list[int], b: list[int], cls_id: int, sep_id: int, max_len: int) -> tuple[list[int], list[int]]:
    """[CLS] A [SEP] B [SEP] (or [CLS] A [SEP] when B is empty), truncating the longer side's end first,
    B on a tie (the reference's fine-tuning ``truncate_seq_pair``; ``make_pairs`` already fits its
    examples). Returns ids and segment ids (0 for A, 1 for B)."""
    budget = max_len - (3 if b else 2)
    if budget < 2:
        raise ValueError(f"max_len: {max_len} leaves no room for text after [CLS]/[SEP]")
    a, b = list(a), list(b)
    while len(a) + len(b) > budget:
        (a if len(a) > len(b) else b).pop()
    ids = [cls_id] + a + [sep_id] + (b + [sep_id] if b else [])
    segments = [0] * (len(a) + 2) + [1] * (len(b) + 1 if b else 0)
    return ids, segments


def n_predictions(length: int, prob: float = 0.15) -> int:
    """How many tokens of a ``length``-token sequence ([CLS] and [SEP]s counted) MLM chooses: the
    reference's ``max(1, round(length · prob))``; fewer when fewer tokens can be chosen, and under
    whole-word masking when a word would overshoot (a row of words longer than the count gets none)."""
    return max(1, round(length * prob))


def mask_tokens(
    tokens: Tensor,
    special: Tensor,
    mask_id: int,
    vocab_size: int,
    generator: torch.Generator,
    prob: float = 0.15,
    word_ids: Tensor | None = None,
    random_low: int = 0,
    lengths: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Choose and corrupt tokens for MLM (module docstring). ``special`` (bool, like tokens) marks
    [CLS]/[SEP]/padding and other specials, never chosen; ``lengths`` (B,): each row's length without
    padding, which the count ``n_predictions`` is taken of (default: the row's width). ``word_ids``
    (like tokens, -1 for specials): whole-word masking. Random replacements are drawn from ids >=
    ``random_low`` (past the special tokens). Returns (corrupted tokens, labels: the original id where
    chosen, else IGNORE). Shapes: (B, S) -> (B, S), (B, S)."""
    rows, width = tokens.shape
    lengths = torch.full((rows,), width) if lengths is None else lengths
    k = torch.tensor([n_predictions(int(n), prob) for n in lengths])
    if word_ids is None:
        # a random order of each row's candidates (specials last); the first k are chosen
        score = torch.rand(tokens.shape, generator=generator).masked_fill(special, 2.0)
        rank = score.argsort(dim=1).argsort(dim=1)
        selected = (rank < k[:, None]) & ~special
    else:
        selected = torch.zeros_like(special)
        for row in range(rows):
            words = torch.where(special[row], -1, word_ids[row])
            sizes = torch.bincount(words[words >= 0], minlength=int(words.max()) + 1 if len(words) else 0)
            chosen, total = [], 0
            for w in torch.randperm(len(sizes), generator=generator).tolist():
                if total >= k[row]:
                    break
                if sizes[w] == 0 or total + sizes[w] > k[row]:
                    continue  # (the reference skips a word that would overshoot the count)
                chosen.append(w)
                total += int(sizes[w])
            selected[row] = torch.isin(words, torch.tensor(chosen, dtype=words.dtype)) & (words >= 0)
    r = torch.rand(tokens.shape, generator=generator)  # 80/10/10, for each token (each piece of a word)
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
