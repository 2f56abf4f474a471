"""Parallel text: aligned source/target files, the Multi30k named set, and token-bucket batching.

Alignment is by line number, so anything that could shift it is an error or a counted skip, never
silent: files with different line counts are refused (naming both and their counts); pairs with an
empty side, and pairs longer than ``max_len`` tokens, are dropped and the counts reported.

Batching as in the paper (§5.1: "sentence pairs were batched together by approximate sequence
length; each batch contained ... approximately 25000 source tokens and 25000 target tokens"):
pairs are sorted by length, cut into batches whose padded size (sentences × longest sentence) stays
under ``max_tokens``, and the batch order is shuffled each epoch with a generator seeded by
(seed, epoch), so the batches of any epoch can be rebuilt exactly on resume.
"""

from __future__ import annotations

import logging
import os
import random
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from transformer_lab.data.vocab import Batch, epoch_order, pad_sequences
from transformer_lab.tokenizers.io import read_lines

log = logging.getLogger(__name__)

MULTI30K_URL = "https://github.com/multi30k/dataset/raw/master/data/task1/raw/{name}"
MULTI30K_SPLITS = {"train": "train", "valid": "val", "test": "test_2016_flickr"}
MULTI30K_LANGS = ("de", "en", "fr")


def user_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "transformer_lab"


def multi30k_files(src: str, tgt: str, split: str, download: bool = True) -> tuple[Path, Path]:
    """The two files of a Multi30k split: from $TRANSFORMER_LAB_DATA/multi30k, else the user cache,
    else downloaded from the dataset's public repository into the user cache."""
    for lang in (src, tgt):
        if lang not in MULTI30K_LANGS:
            raise ValueError(f"language: Multi30k task 1 has {MULTI30K_LANGS}, got {lang!r}")
    if split not in MULTI30K_SPLITS:
        raise ValueError(f"split: expected one of {sorted(MULTI30K_SPLITS)}, got {split!r}")
    names = [f"{MULTI30K_SPLITS[split]}.{lang}.gz" for lang in (src, tgt)]
    places = []
    if os.environ.get("TRANSFORMER_LAB_DATA"):
        places.append(Path(os.environ["TRANSFORMER_LAB_DATA"]) / "multi30k")
    places.append(user_cache_dir() / "multi30k")
    for place in places:
        if all((place / n).is_file() for n in names):
            return place / names[0], place / names[1]
    target = user_cache_dir() / "multi30k"
    if download:
        try:
            for n in names:
                _download(MULTI30K_URL.format(name=n), target / n)
            return target / names[0], target / names[1]
        except (urllib.error.URLError, OSError) as e:
            reason = f"download failed ({e})"
    else:
        reason = "download disabled"
    raise FileNotFoundError(
        f"Multi30k {split} {src}-{tgt} not found and {reason}. Put the files "
        + ", ".join(names) + f" (from {MULTI30K_URL.format(name='')}) into {target} "
        f"or into $TRANSFORMER_LAB_DATA/multi30k"
    )


def _download(url: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    log.info("downloading %s", url)
    with urllib.request.urlopen(url, timeout=30) as r, open(tmp, "wb") as f:
        f.write(r.read())
    os.replace(tmp, path)  # never a half file under the real name


@dataclass
class ParallelText:
    src: list[str]
    tgt: list[str]
    skipped_empty: int = 0


def read_parallel(src_path: str | Path, tgt_path: str | Path) -> ParallelText:
    src, tgt = list(read_lines(src_path)), list(read_lines(tgt_path))
    if len(src) != len(tgt):
        raise ValueError(
            f"parallel files are misaligned: {src_path} has {len(src)} lines, {tgt_path} has {len(tgt)}; "
            "they must have one line per sentence pair"
        )
    if not src:
        raise ValueError(f"{src_path}: empty file")
    keep = [i for i in range(len(src)) if src[i].strip() and tgt[i].strip()]
    skipped = len(src) - len(keep)
    if skipped:
        log.warning("%s / %s: skipped %d pairs with an empty side", src_path, tgt_path, skipped)
    return ParallelText([src[i] for i in keep], [tgt[i] for i in keep], skipped)


@dataclass
class EncodedPairs:
    src: list[list[int]]
    tgt: list[list[int]]
    skipped_long: int = 0

    def __len__(self) -> int:
        return len(self.src)


def filter_long(src: Sequence[list[int]], tgt: Sequence[list[int]], max_len: int | None) -> EncodedPairs:
    """Drop pairs with a side over ``max_len`` tokens (before <s>/</s>), counting them."""
    if max_len is None:
        return EncodedPairs(list(src), list(tgt))
    keep = [i for i in range(len(src)) if len(src[i]) <= max_len and len(tgt[i]) <= max_len]
    return EncodedPairs([src[i] for i in keep], [tgt[i] for i in keep], len(src) - len(keep))


class TokenBuckets:
    """Length-sorted batches capped by a token budget; batch order reshuffled every epoch.

    Padded size of a batch = sentences × (longest side + 1 for <s> or </s>) <= ``max_tokens``.
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
        )
