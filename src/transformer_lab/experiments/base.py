"""What an experiment is: a question of the canon, the claim it tests, a decision rule written down
before the run, settings per budget, a measurement, and a verdict computed from the measurement only.

    exp.run(settings, ctx) -> measurements (JSON-able dict)
    exp.verdict(measurements) -> Verdict (confirmed / refuted / partly / inconclusive, and the numbers)
    exp.figures(measurements, folder) -> the PNGs drawn from the measurements

Budgets: ``smoke`` (seconds: what the test suite runs), ``quick`` (<= 3 minutes on 2 CPU cores),
``full`` (<= 30 minutes, or on a GPU).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

OUTCOMES = ("confirmed", "refuted", "partly", "inconclusive")
BUDGETS = ("smoke", "quick", "full")


@dataclass
class Verdict:
    outcome: str  # one of OUTCOMES
    because: str  # one sentence, with the numbers that decided it
    deciding: dict[str, Any] = field(default_factory=dict)  # those numbers, by name

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome: expected one of {OUTCOMES}, got {self.outcome!r}")


@dataclass
class Context:
    """What a run gets besides its settings: the seed, the device, where figures go, a progress bar."""

    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    folder: Path = Path(".")
    progress: bool = True
    models: dict[str, Any] = field(default_factory=dict)  # trained models a run keeps for measurements

    def bar(self, total: int, desc: str):
        return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, disable=not self.progress)


class Experiment:
    """One question of the canon. Subclasses set the class attributes and implement run/verdict/figures."""

    id: str = ""
    question_zh: str = ""  # the canon's wording
    question: str = ""  # in English
    claim: str = ""  # the canon's answer, the claim under test
    rule: str = ""  # the decision rule, in words, fixed before any run
    budgets: dict[str, dict[str, Any]] = {}
    needs: str | None = None  # a feature not built yet: listed, not run

    def run(self, settings: dict[str, Any], ctx: Context) -> dict[str, Any]:
        raise NotImplementedError

    def verdict(self, m: dict[str, Any]) -> Verdict:
        raise NotImplementedError

    def figures(self, m: dict[str, Any], folder: Path) -> list[Path]:
        return []

    def settings(self, budget: str) -> dict[str, Any]:
        if budget not in BUDGETS:
            raise ValueError(f"budget: expected one of {BUDGETS}, got {budget!r}")
        return dict(self.budgets[budget])


def pending(id: str, question_zh: str, question: str, claim: str, needs: str) -> Experiment:
    """A question whose experiment needs a feature that is not built yet: listed, never run."""
    exp = Experiment()
    exp.id, exp.question_zh, exp.question, exp.claim, exp.needs = id, question_zh, question, claim, needs
    return exp


Figure = Callable[[dict[str, Any], Path], Path]
