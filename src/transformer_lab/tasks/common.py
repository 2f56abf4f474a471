"""What every training task shares: where a run goes and how it starts (``RunOptions``), what it
returns (``TaskResult``), and the plumbing from a built model to a finished run (``train``)."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from transformer_lab.runs import LAST, RunFolder, exit_code, find_checkpoint
from transformer_lab.runtime import Runtime
from transformer_lab.training.config import TrainConfig
from transformer_lab.training.loop import LossFn, Trainer, TrainResult


@dataclass
class RunOptions:
    """Where a training run writes and how it starts."""

    out: Path
    resume: Path | None = None  # continue from this run folder or checkpoint folder
    overwrite: bool = False  # start over in a folder that holds an earlier run
    device: str | None = None  # None: CUDA when available, else the CPU

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

    @property
    def exit_code(self) -> int:
        return exit_code(self.signum)


@contextmanager
def open_run(opts: RunOptions) -> Iterator[RunFolder]:
    """The run folder, locked for this process for the whole run (see ``runs.RunFolder.open``)."""
    run = RunFolder(opts.out).open(resume=opts.resume is not None, overwrite=opts.overwrite)
    try:
        yield run
    finally:
        run.unlock()


def train(run: RunFolder, opts: RunOptions, runtime: Runtime, model: torch.nn.Module, source, cfg: TrainConfig,
          loss_fn: LossFn, validate: Callable[[torch.nn.Module], dict] | None = None,
          extra_files: dict[str, Callable[[Path], Any]] | None = None) -> tuple[Trainer, TrainResult]:
    trainer = Trainer(model, source, cfg, run, loss_fn, validate, extra_files, runtime)
    if opts.resume is not None:
        trainer.resume(opts.resume)
    return trainer, trainer.fit()


def positive(name: str, value: int | float | None, allow_none: bool = False) -> None:
    """ValueError unless ``value`` > 0 (the shared check of task settings)."""
    if value is None and allow_none:
        return
    if value is None or isinstance(value, bool) or not value > 0:
        raise ValueError(f"{name}: expected a positive number, got {value}")
