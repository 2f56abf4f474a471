"""What every training task shares: where a run goes and how it starts (``RunOptions``), what it
returns (``TaskResult``), and the steps around the training itself: opening the run folder, training,
the work after training (a final evaluation that a signal may cut short, an export that a signal
must not), the summary."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

import torch

from transformer_lab.adapters import LEARNING_RATES, AdapterConfig
from transformer_lab.adapters.peft_format import save_peft
from transformer_lab.runs import LAST, RunFolder, exit_code, find_checkpoint
from transformer_lab.runs.checkpoint import recorded_settings
from transformer_lab.runtime import Runtime
from transformer_lab.runtime.signals import Interrupted, deferred_signals, interruptible_section
from transformer_lab.tokenizers.io import checkpoint_tokenizer
from transformer_lab.training.config import TrainConfig
from transformer_lab.training.loop import LossFn, Trainer, TrainResult

T = TypeVar("T")

log = logging.getLogger(__name__)


@dataclass
class RunOptions:
    """Where a training run writes and how it starts."""

    out: Path
    resume: Path | None = None  # continue from this run folder or checkpoint folder
    overwrite: bool = False  # start over in a folder that holds an earlier run
    device: str | None = None  # None: CUDA when available, else the CPU
    fsdp: bool = False  # under torchrun: shard the model over the processes (FSDP2) instead of replicating it

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.resume is not None:
            self.resume = Path(self.resume)
        if self.resume is not None and self.overwrite:
            raise ValueError("overwrite: cannot both resume a run and start it over; choose one")

    def check_resume(self) -> None:
        """Fail before any data work when the checkpoint to resume from is not there."""
        if self.resume is not None:
            find_checkpoint(self.resume, prefer=(LAST,))


@dataclass
class TaskResult:
    summary: dict[str, Any]
    signum: int | None = None  # the signal that stopped the run, if one did
    is_main: bool = True  # False in a distributed run's other processes (which print nothing)

    @property
    def exit_code(self) -> int:
        return exit_code(self.signum)


@contextmanager
def open_run(opts: RunOptions, runtime: Runtime, reads: str | Path | None = None) -> Iterator[RunFolder]:
    """The run folder, locked by the main process for the whole run (``runs.RunFolder.open``);
    other processes of a distributed run only read it. ``reads``: the model a fine-tuning starts from,
    which a new run's folder may not be or hold (--overwrite would remove it before it is read)."""
    opts.check_resume()
    if reads is not None and opts.resume is None:
        out, model = Path(opts.out).resolve(), Path(reads).resolve()
        if out == model or out in model.parents:
            raise ValueError(f"--out {opts.out}: {'is' if out == model else 'holds'} the model the run starts from "
                             f"(--model {reads}); write the run to a folder of its own")
    folder = RunFolder(opts.out)
    if runtime.is_main:
        folder.open(resume_from=opts.resume, overwrite=opts.overwrite)
    try:
        yield folder
    finally:
        folder.unlock()


def task_settings(task_cfg: Any) -> dict[str, Any]:
    """A task config's own fields (its data, batching and evaluation; not ``run``, nor ``train``, which
    the trainer records itself), as JSON: a data file by its size and a hash of its first and last MiB,
    so a resume notices other data under the same name (and not a moved copy)."""
    def plain(value: Any) -> Any:
        if isinstance(value, Path):
            return fingerprint(value) if value.is_file() else str(value)
        if is_dataclass(value):
            return {k: plain(v) for k, v in asdict(value).items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        return repr(value)
    return {f.name: plain(getattr(task_cfg, f.name)) for f in fields(task_cfg) if f.name not in ("run", "train")}


def resumed_tokenizer(resume: Path) -> Any:
    """The tokenizer of the checkpoint a run resumes (a resumed run reads its data with the tokenizer its
    weights were trained with, not one built anew); None if it has none (then the trainer says what the
    checkpoint holds)."""
    try:
        return checkpoint_tokenizer(find_checkpoint(resume, prefer=(LAST,)))
    except FileNotFoundError:
        return None


def resumed_tokenizer_settings(cfg: Any, resume: Path, keys: tuple[str, ...]) -> Any:
    """A resumed run reads with its checkpoint's tokenizer: ``cfg`` with the tokenizer ``keys`` the checkpoint
    recorded where the command gave others, each named in a warning (so the recorded settings are those used)."""
    then = recorded_settings(find_checkpoint(resume, prefer=(LAST,)))[2]
    other = {k: (then[k], getattr(cfg, k)) for k in keys if k in then and then[k] != getattr(cfg, k)}
    if other:
        log.warning("a resumed run reads with its checkpoint's tokenizer; ignored (checkpoint, given): %s", other)
        cfg = replace(cfg, **{k: v[0] for k, v in other.items()})
    return cfg


def fingerprint(path: Path, chunk: int = 1 << 20) -> str:
    """``size:sha256`` of a file's first and last ``chunk`` bytes (the whole file when it is smaller)."""
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(chunk))
        if size > chunk:
            f.seek(max(chunk, size - chunk))
            h.update(f.read(chunk))
    return f"{size}:{h.hexdigest()[:16]}"


def train(folder: RunFolder, opts: RunOptions, runtime: Runtime, model: torch.nn.Module, source, cfg: TrainConfig,
          loss_fn: LossFn, validate: Callable[[torch.nn.Module], dict] | None = None,
          extra_files: dict[str, Callable[[Path], Any]] | None = None,
          settings: dict[str, Any] | None = None, fixed: Sequence[str] = ()) -> tuple[Trainer, TrainResult]:
    """Train (``training.Trainer``), resuming when asked; ``settings``: the task's (``task_settings``), ``fixed``
    those of them a resume may not change."""
    if runtime.is_main:
        folder.begin()  # (--overwrite: the earlier run goes now that this one's data and model are ready)
    trainer = Trainer(model, source, cfg, folder, loss_fn, validate, extra_files, runtime, settings=settings, fixed=fixed)
    if opts.resume is not None:
        trainer.resume(opts.resume)
    return trainer, trainer.fit()


def after_training(result: TrainResult, work: Callable[[], T]) -> T | None:
    """``work()`` (a final evaluation) unless a signal stopped training; a signal during it abandons it
    (None) and is recorded in ``result.signum``, so the command still exits 128 + signal. In a
    distributed run only the main process does it (the others would repeat the same figures; a sharded
    model's whole copy is rank 0's, ``Trainer.final_model``)."""
    if result.signum is not None or not result.evaluates:
        return None
    try:
        with interruptible_section():
            return work()
    except Interrupted as e:
        result.signum = e.signum
        return None


def write_uncut(result: TrainResult, write: Callable[[], T]) -> T:
    """``write()`` (an export) finished even if a signal arrives meanwhile; the signal is then recorded."""
    try:
        with deferred_signals():
            out = write()
    except Interrupted as e:  # raised only once the block has ended: ``out`` is complete
        result.signum = result.signum or e.signum
    return out


def write_summary(folder: RunFolder, runtime: Runtime, summary: dict[str, Any]) -> None:
    if runtime.is_main:
        folder.write_summary(summary)


def adapter_recipe(recipe: TrainConfig, adapter: AdapterConfig | None) -> TrainConfig:
    """A task's recipe with an adapter's learning rate (``adapters.LEARNING_RATES``); unchanged without one.
    The schedule's floor (cosine's ``min_lr``) keeps its ratio to the peak."""
    if adapter is None:
        return recipe
    lr = LEARNING_RATES[adapter.method]
    return replace(recipe, lr=lr, min_lr=recipe.min_lr * lr / recipe.lr)


def task_adapter(adapter: AdapterConfig, tok: Any, prompt_text: str | None, train: str = "") -> AdapterConfig:
    """The adapter a task applies: a soft prompt initialised from ``prompt_text`` (in the task's
    tokenizer) and the task's fresh modules (a classification head) trained in full."""
    if prompt_text is not None:
        ids = tok.encode(prompt_text)
        if not ids:
            raise ValueError(f"prompt text: {prompt_text!r} encodes to no tokens")
        adapter = replace(adapter, prompt_init="text", prompt_ids=",".join(map(str, ids)))
    return replace(adapter, train=train) if train else adapter


def swap_in_folder(folder: Path, write: Callable[[Path], Any]) -> Path:
    """Write a folder beside ``folder`` and then swap it in, so a reader never sees half of one."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def save_adapter(model: torch.nn.Module, folder: Path, base_model: str | Path) -> Path:
    """The trained adapter as ``peft`` writes it (``adapters.peft_format``), swapped in whole."""
    return swap_in_folder(folder, lambda tmp: save_peft(model, tmp, base_model))
