"""The run folder: its layout, its lock, and how a path given by a user becomes a checkpoint.

    OUT/.lock                 held (flock) by the process writing the run; holds its pid
    OUT/checkpoints/last/     the latest checkpoint, with the training state (``--resume``)
    OUT/checkpoints/best/     the best validation checkpoint, weights only
    OUT/metrics.csv           one row per logged step and per validation
    OUT/loss.png, OUT/lr.png  plots of metrics.csv
    OUT/summary.json          the run's final figures
    OUT/model/                an exported Hugging Face folder (BERT tasks)
    OUT/adapter/, OUT/quantized/   a fine-tuning run's adapter (peft format), its INT8 model

One writer at a time: a second process opening the same folder gets an error naming the pid that
holds it (the lock dies with its process, so a killed run never leaves a stale lock). A fresh run
refuses a folder that already holds a checkpoint, unless told to resume it or to start over
(``overwrite``, which removes the earlier run's files, and only those, when the new run begins:
``begin``, once its data and model are ready; a command that fails before keeps the earlier run).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from transformer_lab.runs.checkpoint import clean_stale_temporaries, resolve_checkpoint

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs are then not protected from a second writer
    fcntl = None  # type: ignore[assignment]

CHECKPOINTS = "checkpoints"
LAST, BEST = "last", "best"
RUN_FILES = ("metrics.csv", "loss.png", "lr.png", "summary.json")  # what ``overwrite`` removes, with the folders
RUN_DIRS = (CHECKPOINTS, "model", "adapter", "quantized")


class RunFolderInUse(OSError):
    """Another process is writing this run folder."""


class RunFolder:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock_fd: int | None = None
        self._created = False
        self._start_over = False  # (``open(overwrite=True)`` on an earlier run: removed by ``begin``)

    # --- layout -----------------------------------------------------------------------------------
    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    def checkpoint(self, name: str = LAST) -> Path:
        return self.checkpoints / name

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    def plot(self, name: str) -> Path:
        return self.path / f"{name}.png"

    def export(self, name: str = "model") -> Path:
        return self.path / name

    def _has(self, name: str) -> bool:  # (an interrupted save's .old copy counts)
        return any((self.checkpoints / f"{name}{s}").exists() for s in ("", ".old"))

    def has_checkpoint(self) -> bool:
        return self._has(LAST) or self._has(BEST)

    def resumable(self) -> bool:
        return self._has(LAST)

    # --- one writer -----------------------------------------------------------------------------
    def lock(self) -> "RunFolder":
        """Take the folder for this process (created if needed); RunFolderInUse if another holds it."""
        if self._lock_fd is not None:
            return self
        if self.path.exists() and not self.path.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, f"{self.path}: a file, not a run folder; choose another --out")
        self._created = not self.path.exists()
        while True:
            self.path.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:  # the folder was removed as we opened it (a failed run's cleanup)
                continue
            if fcntl is None:
                break
            try:
                _flock_exclusive(fd)
            except OSError as e:
                holder = _read_pid(fd)
                os.close(fd)
                if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise RunFolderInUse(
                        errno.EBUSY, f"{self.path}: in use by process {holder}, which is writing this run; "
                                     "wait for it to finish, stop it, or choose another --out") from None
                raise
            if _same_file(fd, self.path / ".lock"):
                break
            os.close(fd)  # locked a .lock its holder removed as we opened it: take the folder's current one
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd
        return self

    def unlock(self) -> None:
        """Release the folder; one this process created and left empty (a run that failed before
        writing anything) is removed, so a failed command leaves no trace."""
        if self._lock_fd is None:
            return
        fd, self._lock_fd = self._lock_fd, None
        if fcntl is None:  # no advisory lock to hold (and an open file cannot be removed there)
            os.close(fd)
        if self._created and [p.name for p in self.path.iterdir()] == [".lock"]:
            try:
                (self.path / ".lock").unlink()  # while still holding the lock: see lock() for who opened it
                self.path.rmdir()
            except OSError:  # someone wrote into it meanwhile: keep it
                pass
        if fcntl is not None:
            os.close(fd)  # closing the descriptor releases the flock

    def __enter__(self) -> "RunFolder":
        return self.lock()

    def __exit__(self, *exc) -> None:
        self.unlock()

    def open(self, resume_from: str | Path | None = None, overwrite: bool = False) -> "RunFolder":
        """Lock the folder for a run, remove the temporary folders of interrupted saves (under the
        lock, no other process writes here: every one is stale), and check that the run does not
        silently replace an earlier one: a folder that holds a checkpoint is continued only by
        resuming one of its own checkpoints, or started over with ``overwrite``."""
        self.lock()
        try:
            clean_stale_temporaries(self.checkpoints, any_writer=True)
            if self.has_checkpoint() and not self.holds(resume_from):
                if resume_from is not None:
                    raise ValueError(f"{self.path}: holds another run than the one to resume ({resume_from}); "
                                     "choose an empty --out, or resume this folder's own run")
                if not overwrite:
                    what = (f"a run (checkpoints/); resume it (--resume {self.path}), " if self.resumable() else
                            "a run that cannot be resumed (no checkpoints/last: it stopped before its first save); ")
                    raise ValueError(f"{self.path}: already holds {what}start over (--overwrite removes its "
                                     "checkpoints, metrics and plots) or choose another --out")
                self._start_over = True
        except BaseException:
            self.unlock()
            raise
        return self

    def begin(self) -> None:
        """The run is about to write: remove the earlier run that ``open(overwrite=True)`` found."""
        if self._start_over:
            self.remove_run_files()
            self._start_over = False

    def holds(self, path: str | Path | None) -> bool:
        """Whether ``path`` is this run folder or lies inside it."""
        if path is None:
            return False
        here, there = self.path.resolve(), Path(path).resolve()
        return there == here or here in there.parents

    def remove_run_files(self) -> None:
        for name in RUN_DIRS:
            shutil.rmtree(self.path / name, ignore_errors=True)
        for name in RUN_FILES:
            (self.path / name).unlink(missing_ok=True)

    def written(self) -> str:
        """What the run folder holds now, as ``OUT/{checkpoints/last, metrics.csv, ...}`` (for the last log line)."""
        names = [f"{CHECKPOINTS}/{n}" for n in (LAST, BEST) if self.checkpoint(n).is_dir()]
        names += [n for n in (*RUN_FILES, *RUN_DIRS) if n != CHECKPOINTS and (self.path / n).exists()]
        return f"{self.path}/{{{', '.join(names)}}}"

    # --- records --------------------------------------------------------------------------------
    def write_summary(self, summary: dict[str, Any]) -> Path:
        """summary.json, atomically; NaN and infinity are refused (not JSON numbers)."""
        tmp = self.summary.with_name(f".summary.json.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
        tmp.replace(self.summary)
        return self.summary


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _read_pid(fd: int) -> str:
    """The pid the lock's holder wrote (it writes just after taking the lock: wait a moment for it)."""
    for _ in range(20):
        text = os.pread(fd, 64, 0).decode(errors="replace").strip()
        if text:
            return text
        time.sleep(0.05)
    return "unknown"


def _flock_exclusive(fd: int, patience_s: float = 0.5) -> None:
    """Take the exclusive lock on ``fd``, retrying for ``patience_s``: ``writer_of`` holds a shared one for
    an instant to ask who writes, and a run starting at that instant must not be told the folder is in use
    (a writer holds it for the whole run, so waiting half a second changes nothing else)."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def writer_of(path: Path) -> str | None:
    """The pid of the process writing the run folder ``path`` (holding its lock), or None."""
    if fcntl is None:
        return None
    try:
        fd = os.open(path / ".lock", os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None  # (closing the descriptor releases it)
    except OSError:
        return _read_pid(fd)
    finally:
        os.close(fd)


def find_checkpoint(path: str | Path, prefer: tuple[str, ...] = (BEST, LAST)) -> Path:
    """The checkpoint folder a user means by ``path``: a checkpoint folder itself (or the ``.old``
    copy an interrupted save left), or a run folder, whose checkpoints are tried in ``prefer`` order
    (``translate`` and ``evaluate`` prefer the best; ``--resume`` the last)."""
    path = Path(path)
    checkpoints = path / CHECKPOINTS
    if checkpoints.is_dir() or (path / ".lock").exists() and not (path / "meta.json").exists():
        for name in prefer:
            candidate = checkpoints / name
            if candidate.exists() or candidate.with_name(name + ".old").exists():
                return resolve_checkpoint(candidate)
        holder = writer_of(path)
        raise FileNotFoundError(f"{path}: a run folder without a checkpoint ({' or '.join(prefer)}) yet: " + (
            f"process {holder} is writing it; wait for its first save" if holder else "it stopped before its first save"))
    if not path.exists() and not path.with_name(path.name + ".old").exists():
        raise FileNotFoundError(f"{path}: no such checkpoint or run folder")
    return resolve_checkpoint(path)


def run_folder_of(path: str | Path) -> Path | None:
    """The run folder ``path`` names or lies in (a run folder, or one of its checkpoint folders,
    ``.old`` copies included); None for a checkpoint folder of its own."""
    path = Path(path)
    if (path / CHECKPOINTS).is_dir():
        return path
    if path.parent.name == CHECKPOINTS:
        return path.parent.parent
    return None


def is_ours(path: str | Path) -> bool:
    """Whether ``path`` is one of our run folders or checkpoint folders (not, say, a Hugging Face
    model folder, which has a config.json and weights but no meta.json)."""
    path = Path(path)
    if (path / CHECKPOINTS).is_dir():
        return True
    return any((p / "meta.json").is_file() and (p / "config.json").is_file() for p in (path, path.with_name(path.name + ".old")))


def exported_model(path: str | Path) -> Path | None:
    """The Hugging Face folder a run exported (RUN/model: `pretrain bert`, `finetune classify`), which the
    commands that fine-tune or merge into a BERT read in place of the run; None for anything else."""
    path = Path(path)
    return path / "model" if (path / CHECKPOINTS).is_dir() and (path / "model" / "config.json").is_file() else None


def exit_code(signum: int | None) -> int:
    """0, or 128 + the signal number after a run stopped by a signal (as shells report it)."""
    return 0 if signum is None else 128 + int(signum)
