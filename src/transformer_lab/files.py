"""What every writer of files shares."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Sequence


def check_writable(path: str | Path, what: str, folder: bool = False) -> None:
    """Before the work whose result goes to ``path`` (a file in an existing folder, or a ``folder``, made
    with its parents): OSError naming ``what`` (the flag) when it cannot be written there, rather than
    after the work is done and lost. Tried with a temporary file (permissions alone do not say: a
    read-only mount, a root user)."""
    path = Path(path)
    if not folder and path.is_dir():
        raise OSError(f"{what} {path}: a folder; give a file name")
    if folder and path.exists() and not path.is_dir():
        raise OSError(f"{what} {path}: a file, not a folder")
    if not folder and path.exists():  # a file to replace, or a pipe, /dev/stdout ...: opened to append, not cut
        try:
            open(path, "a").close()
        except OSError as e:
            raise OSError(f"{what} {path}: cannot write it ({e.strerror or e})") from None
        return
    parent = next((p for p in path.absolute().parents if p.exists()), None) if folder else path.absolute().parent
    if parent is None or not parent.is_dir():
        raise OSError(f"{what} {path}: no folder {path.parent} to write it in")
    try:
        tempfile.TemporaryFile(dir=path if folder and path.is_dir() else parent).close()
    except OSError as e:
        raise OSError(f"{what} {path}: cannot write there ({e.strerror or e})") from None


def check_new_folder(path: str | Path, overwrite: bool = False, remedy: str | None = "--overwrite to replace it",
                     reads: Sequence[str | Path] = (), earlier: Callable[[Path], bool] | None = None,
                     what: str = "output", sealed: Sequence[str | Path] = ()) -> None:
    """FileExistsError unless ``path`` is new or an empty folder (or ``overwrite``): an output never lands
    silently among other files. ``remedy``: how the caller may insist (None: it cannot). A command that
    replaces its output whole names the folders it ``reads`` (the output may not be one of them or hold one:
    it would delete what it reads; beside them, in a run folder say, it may) and how to know its own
    ``earlier`` output, the only thing ``overwrite`` then replaces (``what``: its name in the message). Nor
    may it lie inside a ``sealed`` folder (a checkpoint, which its next save replaces whole)."""
    path = Path(path)
    check_writable(path, "--out", folder=True)
    target = path.resolve()
    for source in map(Path, reads):
        s = source.resolve()
        if target == s or target in s.parents:
            raise ValueError(f"{path}: the output would {'be' if target == s else 'hold'} {source}, which this command "
                             "reads; choose a folder apart from it")
    for folder in map(Path, sealed):
        if folder.resolve() in target.parents:
            raise ValueError(f"{path}: inside the checkpoint {folder}, which a save replaces whole (and a copy of it "
                             "would copy the output); choose a folder beside it")
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return
    if overwrite and (earlier is None or (path.is_dir() and earlier(path))):
        return
    if overwrite:
        raise FileExistsError(f"{path}: holds other files than an earlier {what}; --overwrite replaces only that: "
                              "choose a new folder")
    raise FileExistsError(f"{path}: {'holds files' if path.is_dir() else 'is a file'}; choose a new folder"
                          + (f" (or {remedy})" if remedy else ""))


def umask_mode(path: str | Path) -> Path:
    """Give ``path`` the mode a plain ``open`` would have (0o666 less the umask). safetensors writes
    its files 0o600, so weights were unreadable to a group that could read every other file of a run."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)
    return Path(path)


def replace_folder(new: Path, path: Path) -> None:
    """Put the finished folder ``new`` at ``path``; an earlier ``path`` is kept, under a hidden name of this
    process's (never a name a user may have, such as ``path.old``), until the new one is in place, then
    removed (a crash between leaves one whole copy)."""
    old = path.with_name(f".{path.name}.replaced-{os.getpid()}")
    if path.exists():
        path.rename(old)
    new.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def refuse_onnx_export(folder: str | Path) -> None:
    """ValueError for an ONNX export folder (``export.json``) given where a model folder is read: its
    graph runs under onnxruntime, and the commands take the checkpoint or folder it was made from."""
    if (Path(folder) / "export.json").is_file() and not (Path(folder) / "model.safetensors").is_file():
        raise ValueError(f"{folder}: an ONNX export (export.json), not a checkpoint; onnxruntime runs it (in Python: "
                         "export.OnnxSeq2SeqStep, export.onnx_session); the commands take the checkpoint it was made from")
