"""What every writer of files shares."""

from __future__ import annotations

import os
from pathlib import Path


def check_new_folder(path: str | Path, overwrite: bool = False, remedy: str | None = "--overwrite to replace it") -> None:
    """FileExistsError unless ``path`` is new or an empty folder (or ``overwrite``): an output never lands
    silently among other files. ``remedy``: how the caller may insist (None: it cannot)."""
    path = Path(path)
    if overwrite or not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return
    raise FileExistsError(f"{path}: {'holds files' if path.is_dir() else 'is a file'}; choose a new folder"
                          + (f" (or {remedy})" if remedy else ""))


def umask_mode(path: str | Path) -> Path:
    """Give ``path`` the mode a plain ``open`` would have (0o666 less the umask). safetensors writes
    its files 0o600, so weights were unreadable to a group that could read every other file of a run."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)
    return Path(path)
