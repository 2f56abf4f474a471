"""Plain text for language modelling: reading a file, and nanoGPT's train/validation split.

The split is by position, as nanoGPT's: the first 90% of the encoded tokens train, the last 10%
validate (batches: ``batches.RandomWindows``).
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import torch
from torch import Tensor

from transformer_lab.tokenizers.corpus import readable_file


def locate(path: str | Path) -> Path:
    """``path``, or, when it is relative and not here, ``$TRANSFORMER_LAB_DATA/path`` if that exists (as
    named data sets are found): ``--data tinyshakespeare/input.txt`` works from any folder."""
    path = Path(path)
    root = os.environ.get("TRANSFORMER_LAB_DATA")
    if not path.exists() and not path.is_absolute() and root and (Path(root) / path).exists():
        return Path(root) / path
    return path


def read_text(path: str | Path) -> str:
    path = locate(path)
    if not path.exists():
        root = os.environ.get("TRANSFORMER_LAB_DATA")
        where = (f" (nor under $TRANSFORMER_LAB_DATA={root})" if root else
                 " (a relative path is also looked for under $TRANSFORMER_LAB_DATA, which is not set)"
                 ) if not path.is_absolute() else ""
        raise FileNotFoundError(f"{path}: no such text file{where}")
    path = readable_file(path)
    try:
        if path.suffix == ".gz":  # (as every other command reads text: plain or gzipped)
            with gzip.open(path, "rt", encoding="utf-8-sig") as f:
                text = f.read()
        else:
            text = path.read_text(encoding="utf-8-sig")  # (a byte-order mark, as some editors write, dropped)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except (gzip.BadGzipFile, EOFError) as e:
        raise ValueError(f"{path}: not a gzip file, or a truncated one ({e})") from None
    if not text.strip():
        raise ValueError(f"{path}: the file is empty (a language model's text)")
    return text


def split_tokens(ids: list[int] | Tensor, val_fraction: float, context: int, where: str) -> tuple[Tensor, Tensor]:
    """(train, valid) token tensors: the first ``1 - val_fraction`` of ``ids`` and the rest; each must
    hold at least one window of ``context + 1`` tokens."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction: expected 0 < f < 1, got {val_fraction}")
    ids = torch.as_tensor(ids, dtype=torch.long)
    n_train = int(len(ids) * (1 - val_fraction))
    train, valid = ids[:n_train], ids[n_train:]
    for name, part in (("training", train), ("validation", valid)):
        if len(part) <= context:
            raise ValueError(f"{where}: the {name} split has {len(part)} tokens, fewer than one window of "
                             f"{context + 1}; use a longer text or a shorter context")
    return train, valid
