"""The small statistics the decision rules share: a mean with its spread over seeds, a comparison that
calls a difference inside the noise what it is, not a win, and one way of turning a rule's parts into
its verdict."""

from __future__ import annotations

import math
import statistics
from typing import Sequence


def mean_spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and spread: half the range over seeds (with 2 seeds, the distance of each from the mean)."""
    if not values:
        raise ValueError("values: expected at least one measurement")
    return statistics.fmean(values), (max(values) - min(values)) / 2


def binomial_margin(p_a: float, p_b: float, n: int, z: float = 1.96) -> float:
    """The sampling error of a difference of two accuracies over ``n`` held-out items: ``z`` standard
    errors, sqrt(p_a(1 - p_a)/n + p_b(1 - p_b)/n). Every seed scores the same items, so averaging over
    seeds does not shrink it; taking the two sides as independent overstates it when both score the same
    items, so a difference that clears it is not an artefact of which items were held out."""
    return z * _standard_error((p_a, p_b), n)


def _standard_error(ps: Sequence[float], n: int) -> float:
    """sqrt(sum of p(1 - p)/n over ``ps``): independent accuracies' sampling error over ``n`` items."""
    if n < 1:
        raise ValueError(f"n: expected at least one held-out item, got {n}")
    if any(not 0 <= p <= 1 for p in ps):
        raise ValueError(f"accuracies as proportions in [0, 1] expected with a held-out count n, got {tuple(ps)}")
    return math.sqrt(sum(p * (1 - p) for p in ps) / n)


def differs(a: Sequence[float], b: Sequence[float], n: int | None = None) -> int:
    """+1 if a is above b beyond the noise, -1 if below, 0 if the difference is inside it: the noise is
    the two spreads over seeds together (``|mean a - mean b| <= spread a + spread b``), never less than a
    1% margin of the larger mean, and, when a and b are accuracies over ``n`` held-out items, never less
    than their ``binomial_margin`` (the larger noise decides)."""
    ma, sa = mean_spread(a)
    mb, sb = mean_spread(b)
    margin = max(sa + sb, 0.01 * max(abs(ma), abs(mb)))
    if n is not None:
        margin = max(margin, binomial_margin(ma, mb, n))
    if ma - mb > margin:
        return 1
    if mb - ma > margin:
        return -1
    return 0


def learned(values: Sequence[float], baseline: float, n: int | None = None, z: float = 1.96) -> bool:
    """Whether scores over seeds (accuracies over ``n`` held-out items) are above a baseline that needs no
    learning (the commonest token, the majority label) beyond their noise: a model that stayed there is
    no side of a comparison. The noise: their spread, a 1% margin, and (with ``n``) the sampling error of
    an accuracy at the baseline, z·sqrt(p0(1 - p0)/n); the baseline is a fixed number of the scored items,
    not a second sample."""
    mean, spread = mean_spread(values)
    margin = max(spread, 0.01 * max(abs(mean), abs(baseline)))
    if n is not None:
        _standard_error((mean,), n)  # (checks the scores are proportions)
        margin = max(margin, z * _standard_error((baseline,), n))
    return mean - baseline > margin


def chance_of_separation(n_a: int, n_b: int) -> float:
    """How often ``differs`` calls two sets of seeds apart when nothing separates them (the ranges of
    n_a and n_b exchangeable draws do not overlap): 2 n_a! n_b! / (n_a + n_b)!, both directions. With 2
    seeds a side 1/3, with 3 1/10, with 5 1/126 (the 1% margin makes it a little less)."""
    return 2 * math.factorial(n_a) * math.factorial(n_b) / math.factorial(n_a + n_b)


def outcome_of(signs: Sequence[int]) -> str:
    """The verdict of a claim in parts of three signs, as the rules combine them (rules whose parts are
    only held / not held, such as nsp's or deployment's, count them the same way). Each part is +1 (it holds:
    the claim's way beyond the noise), -1 (it goes against the claim beyond the noise) or 0 (neither).
    Confirmed if every part holds; partly if some hold and others do not (whether these go against or
    stay inside the noise: the verdict's numbers say which); refuted if none holds and some go against;
    inconclusive if none leaves the noise."""
    if not signs:
        raise ValueError("signs: expected at least one part")
    if all(s > 0 for s in signs):
        return "confirmed"
    if any(s > 0 for s in signs):
        return "partly"
    return "refuted" if any(s < 0 for s in signs) else "inconclusive"


def fmt(mean: float, spread: float, digits: int = 3) -> str:
    """``digits`` significant digits each, trailing zeros kept (0.200 ± 0.0178, not 0.2 ± 0.0178), and no
    bare trailing point (47 ± 3.3, not 47. ± 3.3)."""
    def one(x: float) -> str:
        text = f"{x:#.{digits}g}"
        return text[:-1] if text.endswith(".") else text
    return f"{one(mean)} ± {one(spread)}"
