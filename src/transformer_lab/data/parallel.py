"""Parallel text: aligned source/target files and the Multi30k named set (batching: ``batches``).

Alignment is by line number, so anything that could shift it is an error or a counted skip, never
silent: files with different line counts are refused (naming both and their counts); for training,
pairs with an empty side, and pairs longer than ``max_len`` tokens, are dropped and the counts
reported. For evaluation (``keep_empty=True``) every pair is kept: a translation is scored on all of
its lines.
"""

from __future__ import annotations

import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from transformer_lab.tokenizers.corpus import read_lines

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
    kept: list[int] | None = None  # line numbers (0-based) of the pairs kept, when some were skipped


def read_parallel(src_path: str | Path, tgt_path: str | Path, keep_empty: bool = False) -> ParallelText:
    """Aligned lines of two files. Pairs with an empty (or blank) side are dropped and counted,
    unless ``keep_empty`` (evaluation: every line is scored)."""
    src, tgt = list(read_lines(src_path)), list(read_lines(tgt_path))
    if len(src) != len(tgt):
        raise ValueError(
            f"parallel files are misaligned: {src_path} has {len(src)} lines, {tgt_path} has {len(tgt)}; "
            "they must have one line per sentence pair"
        )
    if not src:
        raise ValueError(f"{src_path}: empty file")
    if keep_empty:
        return ParallelText(src, tgt)
    keep = [i for i in range(len(src)) if src[i].strip() and tgt[i].strip()]
    skipped = len(src) - len(keep)
    if skipped:
        log.warning("%s / %s: skipped %d pairs with an empty side", src_path, tgt_path, skipped)
    return ParallelText([src[i] for i in keep], [tgt[i] for i in keep], skipped, keep if skipped else None)


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
