"""Timing and results shared by every benchmark.

Rounds alternate ours / peer and the median round counts, so drift in the machine's speed (turbo,
another process) hits both sides alike. A benchmark returns a ``BenchResult``: one JSON-ready object
with at least ``ours``, ``peer`` and ``ratio`` (ours / peer in speed: above 1 means ours is faster),
plus the table rows and notes the text output shows.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable


def time_rounds(fns: dict[str, Callable[[], None]], steps: int, rounds: int) -> dict[str, float]:
    """Median seconds per call of each function, rounds interleaved; one untimed warm-up call each."""
    if steps < 1 or rounds < 1:
        raise ValueError(f"steps, rounds: expected >= 1, got {steps}, {rounds}")
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            times[name].append((time.perf_counter() - t0) / steps)
    return {k: statistics.median(v) for k, v in times.items()}


def speed_row(work: float, seconds: dict[str, float], digits: int = 1) -> dict[str, float]:
    """``work`` units per second for "ours" and "peer", and their ratio."""
    return {"ours": round(work / seconds["ours"], digits), "peer": round(work / seconds["peer"], digits),
            "ratio": round(seconds["peer"] / seconds["ours"], 3)}


@dataclass
class BenchResult:
    result: dict[str, Any]  # the JSON object (--json)
    rows: list[tuple[str, dict]] = field(default_factory=list)  # (label, {"ours", "peer", "ratio"}) for the table
    header: str | None = None  # one line of settings above the table (default: the result's scalars)
    notes: list[str] = field(default_factory=list)  # lines under the table

    def table(self) -> str:
        r = self.result
        header = self.header or ", ".join(f"{k} {v}" for k, v in r.items()
                                          if not isinstance(v, (dict, list)) and k not in ("ours", "peer", "ratio"))
        width = max([36, *(len(label) + 1 for label, _ in self.rows)])  # (a long label keeps the columns aligned)
        lines = [header, f"{'':{width}}{'ours':>12}{'peer':>12}{'ratio':>8}"]
        for label, row in self.rows:
            lines.append(f"{label:{width}}{row['ours']:>12,.1f}{row['peer']:>12,.1f}{row['ratio']:>8.2f}")
        return "\n".join(lines + self.notes)
