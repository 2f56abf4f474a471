"""The trainer's own state (step, data position, validation record) and the random number generators',
everything a checkpoint needs besides weights and optimizer to resume exactly."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    position: int = 0  # next batch within the epoch
    best_val_loss: float = math.inf
    bad_evals: int = 0
    elapsed_s: float = 0.0  # wall clock at the last step (the time budget's)
    paused_s: float = 0.0  # of elapsed_s, in validations and checkpoint saves: not training, not in tokens/s
    tokens: int = 0
    pending_eval: bool = False  # a validation a signal abandoned: a resumed run does it first
    history: list[dict] = field(default_factory=list)  # metrics rows; stored in metrics.csv, not the checkpoint


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_to_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_tuple(x):
    return tuple(_to_tuple(i) for i in x) if isinstance(x, (list, tuple)) else x
