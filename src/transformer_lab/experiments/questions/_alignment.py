"""What the analysis experiments share (`cross-attention`, `interpretability`, `neuron-importance`): a
trained date model, cached, and the date task's known word alignment.

The date task is generated, so the source characters each target word reads aloud are known exactly:
in "21.03.1987" -> "the twenty first of march nineteen eighty seven", "twenty first" reads the day
digits "21", "march" the month "03", "nineteen" the century digits "19", "eighty seven" the digits
"87". That is a ground-truth word alignment, which attention maps and attributions can be scored
against. The alignment is by field: a word is aligned to every character of the field it renders
(day, month, century = the year's first two digits, rest of the year = its last two). "the", "of"
and the end token read no particular character and have no alignment.

Shapes: B batch, S source length (characters + </s>), T target length (words + </s>).
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from transformer_lab.data.batches import Batch, make_batch
from transformer_lab.data.synthetic import MONTHS, date_to_words, day_words, two_digit_words
from transformer_lab.data.vocab import Vocab
from transformer_lab.experiments.base import Context
from transformer_lab.experiments.training import DatesRun, train_dates

Pair = tuple[Sequence[str], Sequence[str]]


@functools.lru_cache(maxsize=6)
def trained(seed: int, steps: int, n_test: int, overrides: tuple[tuple[str, object], ...] = ()) -> DatesRun:
    """``train_dates`` cached on its arguments, so experiments run in one process share the model they
    all need (each still trains it when run alone). Callers must not modify the model. On the CPU,
    whatever the run's device: the tiny model and the analyses on it are small."""
    return train_dates(seed, steps, dict(overrides) or None, n_test=n_test)


def measured_per_seed(ctx: Context, s: dict[str, Any], label: str,
                      measure: Callable[[DatesRun, int], dict[str, Any]]) -> list[dict[str, Any]]:
    """One trained date model per seed (``trained`` with the budget's steps and n_test), each measured:
    ``[dict(seed=seed, **measure(run, seed)), ...]``, with a progress bar over the seeds."""
    bar = ctx.bar(s["seeds"], label)
    models = []
    for i in range(s["seeds"]):
        seed = ctx.seed + i
        models.append(dict(seed=seed, **measure(trained(seed, s["steps"], s["n_test"]), seed)))
        bar.update(1)
    bar.close()
    return models


def source_fields(src: Sequence[str]) -> dict[str, list[int]]:
    """Positions of the day, month, century ("hi") and year-in-century ("lo") characters of a date
    in any of the task's four formats, told apart by their separator."""
    text = "".join(src)
    if "-" in text:  # 1987-03-21
        day, month, year = [8, 9], [5, 6], 0
    elif "/" in text:  # 03/21/1987
        day, month, year = [3, 4], [0, 1], 6
    elif "." in text:  # 21.03.1987
        day, month, year = [0, 1], [3, 4], 6
    elif " " in text:  # 21 mar 1987, 1 mar 1987
        first = text.index(" ")
        day, month, year = list(range(first)), [first + 1, first + 2, first + 3], first + 5
    else:
        raise ValueError(f"src: {text!r} is not a date in one of the task's formats")
    return {"day": day, "month": month, "hi": [year, year + 1], "lo": [year + 2, year + 3]}


def year_fields(year: int) -> list[str]:
    """The field each word of ``year_words(year)`` reads: the century ("hi") or the rest ("lo"). In
    "two thousand five" the first two words say the century, as "nineteen" does in "nineteen oh five"."""
    hi, lo = divmod(year, 100)
    if year % 1000 < 10 and hi % 10 == 0:  # 2000..2009: "two thousand [five]"
        return ["hi", "hi"] + (["lo"] if lo else [])
    n_lo = 1 if lo == 0 else 2 if lo < 10 else len(two_digit_words(lo))  # "hundred" / "oh five" / "eighty seven"
    return ["hi"] * len(two_digit_words(hi)) + ["lo"] * n_lo


def alignment(src: Sequence[str], tgt: Sequence[str]) -> list[tuple[int, ...] | None]:
    """For each target position (the words, then </s>): the source positions it reads, or None."""
    f = source_fields(src)
    text = "".join(src)
    day = int("".join(text[i] for i in f["day"]))
    year = int("".join(text[i] for i in f["hi"] + f["lo"]))
    month_text = "".join(text[i] for i in f["month"])
    month = int(month_text) if month_text.isdigit() else [m[:3] for m in MONTHS].index(month_text) + 1
    if list(tgt) != date_to_words(dt.date(year, month, day)):
        raise ValueError(f"tgt: {' '.join(tgt)!r} is not the reading of {text!r}")
    fields = [None] + ["day"] * len(day_words(day)) + [None, "month"] + year_fields(year) + [None]  # the, of, </s>
    return [None if name is None else tuple(f[name]) for name in fields]


@dataclass
class Probe:
    """A batch of held-out pairs and its alignment as tensors."""

    batch: Batch
    aligned: Tensor  # (B, T, S) bool: source position s is read by target position t
    has: Tensor  # (B, T) bool: target position t has an alignment
    real: Tensor  # (B, S) bool: a real source token (characters and </s>), not padding


def probe(pairs: Sequence[Pair], vocab: Vocab) -> Probe:
    batch = make_batch(pairs, vocab)
    b, s = batch.src.shape
    t = batch.tgt_out.size(1)
    aligned = torch.zeros(b, t, s, dtype=torch.bool)
    for i, (src, tgt) in enumerate(pairs):
        for j, positions in enumerate(alignment(src, tgt)):
            if positions is not None:
                aligned[i, j, list(positions)] = True
    return Probe(batch, aligned, aligned.any(-1), batch.src != vocab.pad_id)


def score(attribution: Tensor, p: Probe) -> dict[str, float]:
    """How well a (B, T, S) attribution over source positions finds the aligned tokens, over the target
    positions that have an alignment: ``hit`` = share whose highest-scoring real source token is an
    aligned one; ``mass`` = share of the (non-negative) attribution on aligned tokens. ``chance`` = what
    a uniform attribution over the real source tokens gets for both."""
    a = attribution.detach().float().clamp_min(0).masked_fill(~p.real[:, None, :], 0.0)
    top = a.masked_fill(~p.real[:, None, :], -1.0).argmax(-1, keepdim=True)  # (B, T, 1)
    hit = p.aligned.gather(-1, top).squeeze(-1)
    mass = (a * p.aligned).sum(-1) / a.sum(-1).clamp_min(1e-12)
    chance = p.aligned.sum(-1) / p.real.sum(-1, keepdim=True)
    rows = p.has
    return {"hit": float(hit[rows].float().mean()), "mass": float(mass[rows].mean()), "chance": float(chance[rows].mean())}
