"""A built-in translation task: dates, written in one of four formats, to spoken English.

    "1987-03-21"   (ISO)        \
    "03/21/1987"   (US)          |->  "the twenty first of march nineteen eighty seven"
    "21.03.1987"   (European)    |
    "21 mar 1987"  (abbreviated) /

Source tokens are characters, target tokens are words. The task needs what translation needs:
reordering (the day moves to the front, the year to the end, from positions that depend on the
format, which only the separators tell), lookup of multi-character units (month "03" or "mar" ->
"march"), and context-dependent rendering (day "21" -> "twenty first" but "11" -> "eleventh"; year
"2005" -> "two thousand five", "1905" -> "nineteen oh five", "1900" -> "nineteen hundred"). It is
generated, so the demo needs no download; held-out dates are never seen in training, in any format.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass

ONES = "zero one two three four five six seven eight nine".split()
TEENS = "ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
ORD_ONES = "_ first second third fourth fifth sixth seventh eighth ninth".split()
ORD_TEENS = ("tenth eleventh twelfth thirteenth fourteenth fifteenth sixteenth seventeenth "
             "eighteenth nineteenth").split()
ORD_TENS = {2: "twentieth", 3: "thirtieth"}
MONTHS = ("january february march april may june july august september october november "
          "december").split()


def two_digit_words(n: int) -> list[str]:
    """0 < n < 100 as cardinal words."""
    if n < 10:
        return [ONES[n]]
    if n < 20:
        return [TEENS[n - 10]]
    tens, ones = divmod(n, 10)
    return [TENS[tens]] + ([ONES[ones]] if ones else [])


def day_words(day: int) -> list[str]:
    """1..31 as ordinal words: 1 -> first, 11 -> eleventh, 21 -> twenty first, 30 -> thirtieth."""
    if day < 10:
        return [ORD_ONES[day]]
    if day < 20:
        return [ORD_TEENS[day - 10]]
    tens, ones = divmod(day, 10)
    return [ORD_TENS[tens]] if ones == 0 else [TENS[tens], ORD_ONES[ones]]


def year_words(year: int) -> list[str]:
    """A year as it is read aloud: 1987 nineteen eighty seven, 1905 nineteen oh five, 1900 nineteen
    hundred, 2000 two thousand, 2005 two thousand five, 2019 twenty nineteen."""
    hi, lo = divmod(year, 100)
    if year % 1000 < 10 and hi % 10 == 0:  # 2000..2009
        return ["two" if hi == 20 else ONES[hi // 10], "thousand"] + ([ONES[lo]] if lo else [])
    head = two_digit_words(hi)
    if lo == 0:
        return head + ["hundred"]
    if lo < 10:
        return head + ["oh", ONES[lo]]
    return head + two_digit_words(lo)


def date_to_words(d: dt.date) -> list[str]:
    return ["the", *day_words(d.day), "of", MONTHS[d.month - 1], *year_words(d.year)]


FORMATS = ("iso", "us", "eu", "abbrev")


def date_source(d: dt.date, fmt: str = "iso") -> list[str]:
    """The date written in format ``fmt``, as a list of characters."""
    if fmt == "iso":
        text = d.isoformat()
    elif fmt == "us":
        text = f"{d.month:02d}/{d.day:02d}/{d.year}"
    elif fmt == "eu":
        text = f"{d.day:02d}.{d.month:02d}.{d.year}"
    elif fmt == "abbrev":
        text = f"{d.day} {MONTHS[d.month - 1][:3]} {d.year}"
    else:
        raise ValueError(f"fmt: expected one of {FORMATS}, got {fmt!r}")
    return list(text)


@dataclass
class DateTask:
    """Train/held-out split of every date in [first_year, last_year], shuffled with ``seed``; each
    date appears once, in a format drawn with the same seed."""

    first_year: int = 1900
    last_year: int = 2099
    n_test: int = 1000
    seed: int = 0

    def pairs(self) -> tuple[list[tuple[list[str], list[str]]], list[tuple[list[str], list[str]]]]:
        start, end = dt.date(self.first_year, 1, 1), dt.date(self.last_year, 12, 31)
        days = [start + dt.timedelta(n) for n in range((end - start).days + 1)]
        rng = random.Random(self.seed)
        rng.shuffle(days)
        data = [(date_source(d, rng.choice(FORMATS)), date_to_words(d)) for d in days]
        if not 0 < self.n_test < len(data):
            raise ValueError(f"n_test: expected 0 < n_test < {len(data)}, got {self.n_test}")
        return data[self.n_test:], data[: self.n_test]

    @staticmethod
    def symbols() -> list[str]:
        """Every source and target symbol, in a fixed order (one shared vocabulary, as the paper)."""
        words = set(ONES + TEENS + TENS[2:] + ORD_ONES[1:] + ORD_TEENS + list(ORD_TENS.values()) + MONTHS)
        words |= {"the", "of", "oh", "hundred", "thousand"}
        letters = sorted({c for m in MONTHS for c in m[:3]})
        return list("0123456789-/. ") + letters + sorted(words)
