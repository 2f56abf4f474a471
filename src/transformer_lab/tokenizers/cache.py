"""Encoded-corpus cache for the training pipeline.

Encoding a corpus is pure: the same file and the same tokenizer give the same ids. So the pipeline
encodes once, with the fast backend, and stores the result keyed by the SHA-256 of the file's bytes
and of the tokenizer's ``tokenizer.json`` (and its special-token setting); any change gives a new key. Files are written
atomically (temporary name, then rename), so a killed run never leaves a half cache that is read; an
entry that cannot be read anyway (a power loss before the data reached the disk) is encoded again.

Stored form: safetensors with ``ids`` (int32, every line's ids end to end) and ``offsets`` (int64,
line i is ids[offsets[i]:offsets[i+1]]).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from transformer_lab.files import umask_mode
from transformer_lab.tokenizers.corpus import read_lines
from transformer_lab.tokenizers.fast import FastTokenizer

log = logging.getLogger(__name__)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_key(path: str | Path, tokenizer: FastTokenizer) -> str:
    """The file's bytes, the tokenizer's definition, and how it reads special-token text (not part of
    tokenizer.json)."""
    tok_hash = hashlib.sha256(tokenizer.hf.to_str().encode("utf-8")).hexdigest()
    key = f"{_sha256_file(Path(path))}:{tok_hash}:split_special_tokens={tokenizer.split_special_tokens}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def _read(target: Path) -> list[list[int]]:
    data = load_file(str(target))
    ids, offsets = data["ids"], data["offsets"]
    if offsets.ndim != 1 or len(offsets) == 0 or offsets[0] != 0 or offsets[-1] != len(ids) or (np.diff(offsets) < 0).any():
        raise ValueError("offsets do not index the ids")
    return [ids[offsets[i] : offsets[i + 1]].tolist() for i in range(len(offsets) - 1)]


def encode_file_cached(path: str | Path, tokenizer: FastTokenizer, cache_dir: str | Path) -> list[list[int]]:
    """Ids of every line of ``path`` (plain or .gz UTF-8), from the cache when it has them."""
    path, cache_dir = Path(path), Path(cache_dir)
    target = cache_dir / f"{path.name}.{cache_key(path, tokenizer)}.safetensors"
    if target.is_file():
        try:
            return _read(target)
        except Exception as e:  # (safetensors' own error types vary) a damaged entry is a miss: rebuilt
            log.warning("%s: unreadable cache entry (%s: %s); encoding again", target, type(e).__name__, e)
    encoded = tokenizer.encode_batch(list(read_lines(path)))
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(e) for e in encoded])
    flat = np.fromiter((i for e in encoded for i in e), dtype=np.int32, count=int(offsets[-1]))
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    save_file({"ids": flat, "offsets": offsets}, str(tmp), metadata={"source": str(path)})
    umask_mode(tmp)
    os.replace(tmp, target)
    log.info("cached %d encoded lines of %s in %s", len(encoded), path, target)
    return encoded
