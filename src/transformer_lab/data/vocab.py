"""A symbol vocabulary with the special tokens the encoder-decoder needs, and padded batches.

Specials come first, at fixed ids: <pad>=0, <s>=1 (begin), </s>=2 (end), <unk>=3.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
PAD, BOS, EOS, UNK = range(4)


class Vocab:
    def __init__(self, symbols: Sequence[str]):
        dupes = sorted(s for s, n in Counter(symbols).items() if n > 1)
        if dupes:
            raise ValueError(f"symbols: duplicate entries {dupes[:10]}")
        clash = sorted(set(symbols) & set(SPECIALS))
        if clash:
            raise ValueError(f"symbols: {clash} are reserved special tokens")
        self.itos = list(SPECIALS) + list(symbols)
        self.stoi = {s: i for i, s in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, symbols: Sequence[str], bos: bool = False, eos: bool = False) -> list[int]:
        ids = [self.stoi.get(s, UNK) for s in symbols]
        return ([BOS] if bos else []) + ids + ([EOS] if eos else [])

    def decode(self, ids: Sequence[int]) -> list[str]:
        """Symbols up to the first </s>, specials dropped."""
        out = []
        for i in ids:
            i = int(i)
            if i == EOS:
                break
            if i >= len(SPECIALS):
                out.append(self.itos[i])
        return out

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"symbols": self.itos[len(SPECIALS):]}, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Vocab":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            return cls(data["symbols"])
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: vocabulary file not found") from None
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: not a vocabulary file ({e})") from None


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """0..n-1 in the order of ``epoch``: a pure function of (seed, epoch), so batches are the same
    after a resume. Every batch source shuffles with this."""
    order = list(range(n))
    random.Random(f"{seed}:{epoch}").shuffle(order)
    return order


def pad_sequences(seqs: Sequence[Sequence[int]], pad_id: int = PAD) -> Tensor:
    """Right-pad to the longest. Shapes: -> (B, T_max) int64."""
    t = max(len(s) for s in seqs)
    out = torch.full((len(seqs), t), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out


@dataclass
class Batch:
    """One teacher-forced batch: src (B, S); tgt_in = <s> y (B, T); tgt_out = y </s> (B, T)."""

    src: Tensor
    tgt_in: Tensor
    tgt_out: Tensor

    @property
    def n_tokens(self) -> int:
        return int((self.tgt_out != PAD).sum())


def make_batch(pairs: Sequence[tuple[Sequence[str], Sequence[str]]], vocab: Vocab) -> Batch:
    src = pad_sequences([vocab.encode(s, eos=True) for s, _ in pairs])
    tgt = [vocab.encode(t) for _, t in pairs]
    return Batch(src, pad_sequences([[BOS] + t for t in tgt]), pad_sequences([t + [EOS] for t in tgt]))


class ShuffledBatches:
    """Fixed-size batches of ``pairs`` in a fresh seeded order each epoch (a ``BatchSource``)."""

    def __init__(self, pairs: Sequence[tuple[Sequence[str], Sequence[str]]], vocab: Vocab, batch_size: int, seed: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
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
