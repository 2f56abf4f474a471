"""What every writer of files shares."""

from __future__ import annotations

import os
from pathlib import Path


def umask_mode(path: str | Path) -> Path:
    """Give ``path`` the mode a plain ``open`` would have (0o666 less the umask). safetensors writes
    its files 0o600, so weights were unreadable to a group that could read every other file of a run."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)
    return Path(path)
