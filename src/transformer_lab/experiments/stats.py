"""The small statistics the decision rules share: a mean with its spread over seeds, and a
comparison that calls a difference inside the spread what it is, not a win."""

from __future__ import annotations

import math
import statistics
from typing import Sequence


def mean_spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and spread: half the range over seeds (with 2 seeds, the distance of each from the mean)."""
    if not values:
        raise ValueError("values: expected at least one measurement")
    return statistics.fmean(values), (max(values) - min(values)) / 2


def differs(a: Sequence[float], b: Sequence[float]) -> int:
    """+1 if a is above b beyond both spreads, -1 if below, 0 if the difference is inside the spread
    (``|mean a - mean b| <= spread a + spread b``, and never less than a 1% margin of the larger mean)."""
    ma, sa = mean_spread(a)
    mb, sb = mean_spread(b)
    margin = max(sa + sb, 0.01 * max(abs(ma), abs(mb)))
    if ma - mb > margin:
        return 1
    if mb - ma > margin:
        return -1
    return 0


def learned(values: Sequence[float], baseline: float) -> bool:
    """Whether scores over seeds (accuracies) are above a baseline that needs no learning (the commonest
    token, the majority label) beyond their spread: a model that stayed there is no side of a comparison."""
    return differs(values, [baseline]) > 0


def chance_of_separation(n_a: int, n_b: int) -> float:
    """How often ``differs`` calls two sets of seeds apart when nothing separates them (the ranges of
    n_a and n_b exchangeable draws do not overlap): 2 n_a! n_b! / (n_a + n_b)!, both directions. With 2
    seeds a side 1/3, with 3 1/10, with 5 1/126 (the 1% margin makes it a little less)."""
    return 2 * math.factorial(n_a) * math.factorial(n_b) / math.factorial(n_a + n_b)


def outcome_of(signs: Sequence[int]) -> str:
    """The verdict of several comparisons with ``differs``'s signs (+1: the claim's way beyond the spread,
    -1: against it, 0: inside it): refuted if any goes against, confirmed if all go the claim's way,
    partly if some do, inconclusive if none leaves the spread."""
    if any(s < 0 for s in signs):
        return "refuted"
    if all(s > 0 for s in signs):
        return "confirmed"
    return "partly" if any(s > 0 for s in signs) else "inconclusive"


def fmt(mean: float, spread: float, digits: int = 3) -> str:
    """``digits`` significant digits each, trailing zeros kept (0.200 ± 0.0178, not 0.2 ± 0.0178)."""
    return f"{mean:#.{digits}g} ± {spread:#.{digits}g}"
