"""The built-in date task and the vocabulary."""

import datetime as dt

import pytest

from transformer_lab.data.synthetic import DateTask, date_source, date_to_words, day_words, year_words
from transformer_lab.data.vocab import BOS, EOS, PAD, UNK, Vocab, make_batch


@pytest.mark.parametrize(
    "year, words",
    [(1987, "nineteen eighty seven"), (1905, "nineteen oh five"), (1900, "nineteen hundred"),
     (2000, "two thousand"), (2005, "two thousand five"), (2019, "twenty nineteen"), (2010, "twenty ten")],
)
def test_year_words(year, words):
    assert " ".join(year_words(year)) == words


@pytest.mark.parametrize("day, words", [(1, "first"), (11, "eleventh"), (12, "twelfth"), (20, "twentieth"),
                                        (21, "twenty first"), (30, "thirtieth"), (31, "thirty first")])
def test_day_words(day, words):
    assert " ".join(day_words(day)) == words


def test_formats_and_target():
    d = dt.date(1987, 3, 21)
    assert " ".join(date_to_words(d)) == "the twenty first of march nineteen eighty seven"
    assert ["".join(date_source(d, f)) for f in ("iso", "us", "eu", "abbrev")] == [
        "1987-03-21", "03/21/1987", "21.03.1987", "21 mar 1987"]


def test_split_is_disjoint_deterministic_and_covered_by_vocab():
    train, test = DateTask(first_year=1990, last_year=1999, n_test=100).pairs()
    assert len(train) + len(test) == 3652 and len(test) == 100
    assert not {tuple(t) for _, t in train} & {tuple(t) for _, t in test}  # held-out dates unseen
    assert DateTask(first_year=1990, last_year=1999, n_test=100).pairs()[1] == test
    vocab = Vocab(DateTask.symbols())
    assert all(UNK not in vocab.encode(s) + vocab.encode(t) for s, t in train + test)


def test_vocab_and_batch():
    vocab = Vocab(["a", "b", "c"])
    assert vocab.encode(["a", "z"], bos=True, eos=True) == [BOS, 4, UNK, EOS]
    assert vocab.decode([4, 5, EOS, 6]) == ["a", "b"]
    batch = make_batch([(["a"], ["b", "c"]), (["a", "b", "c"], ["c"])], vocab)
    assert batch.src.tolist() == [[4, EOS, PAD, PAD], [4, 5, 6, EOS]]
    assert batch.tgt_in.tolist() == [[BOS, 5, 6], [BOS, 6, PAD]]
    assert batch.tgt_out.tolist() == [[5, 6, EOS], [6, EOS, PAD]]
    assert batch.n_tokens == 5
    with pytest.raises(ValueError, match="duplicate"):
        Vocab(["a", "a"])
    with pytest.raises(ValueError, match="reserved"):
        Vocab(["<pad>"])
