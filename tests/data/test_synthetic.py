"""The built-in date task and the vocabulary."""

import datetime as dt

import pytest

from transformer_lab.data.synthetic import DateTask, date_source, date_to_words, day_words, year_words
from transformer_lab.data.batches import make_batch
from transformer_lab.data.vocab import Vocab
from transformer_lab.tokenizers.special import BOS_ID as BOS, EOS_ID as EOS, PAD_ID as PAD, UNK_ID as UNK


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


def test_one_set_of_special_ids():
    """Issue 9: the demo's vocabulary and every subword tokenizer put <pad>, <unk>, <s>, </s> at the
    same ids (they once disagreed: BOS was 1 here and 2 there)."""
    from transformer_lab.tokenizers.bytelevel import ByteLevelBPETokenizer
    from transformer_lab.tokenizers.special import SEQ2SEQ_SPECIALS

    vocab = Vocab(["a"])
    tok = ByteLevelBPETokenizer.train(["a b c"], 270, specials=SEQ2SEQ_SPECIALS)
    for name, i in zip(SEQ2SEQ_SPECIALS, (PAD, UNK, BOS, EOS)):
        assert vocab.stoi[name] == tok.token_to_id(name) == i
    assert (vocab.pad_id, vocab.unk_id, vocab.bos_id, vocab.eos_id) == (PAD, UNK, BOS, EOS)


def test_vocab_file_of_the_earlier_order_still_loads(tmp_path):
    """A vocab.json written before the order was unified (no "specials" entry: <pad>, <s>, </s>, <unk>)
    keeps its own ids, so an old demo checkpoint still decodes."""
    import json

    path = tmp_path / "vocab.json"
    path.write_text(json.dumps({"symbols": ["a", "b"]}))
    old = Vocab.load(path)
    assert (old.pad_id, old.bos_id, old.eos_id, old.unk_id) == (0, 1, 2, 3)
    assert old.decode([4, 5, 2, 4]) == ["a", "b"]
    Vocab(["a", "b"]).save(path)
    assert Vocab.load(path).bos_id == BOS
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a vocabulary file"):
        Vocab.load(path)


def test_symbol_text_reads_the_demos_vocabulary_as_text():
    """``SymbolText``: the demo's sources one symbol per character, its targets one per word, as
    ``DateTask`` writes its pairs; what the vocabulary lacks (an upper-case letter, a special token's
    text) is an error naming it; a vocabulary of the earlier specials' order is refused (translate's
    decoding uses the shared ids)."""
    from transformer_lab.data.synthetic import FORMATS
    from transformer_lab.data.vocab import SymbolText

    vocab = Vocab(DateTask.symbols())
    src, tgt = SymbolText(vocab, "char"), SymbolText(vocab, "word")
    d = dt.date(1987, 3, 21)
    for fmt in FORMATS:
        assert src.encode("".join(date_source(d, fmt))) == vocab.encode(date_source(d, fmt))
    words = date_to_words(d)
    assert tgt.decode(vocab.encode(words, eos=True) + vocab.encode(["the"])) == " ".join(words)  # up to </s>
    assert tgt.decode([BOS, *vocab.encode(["of"])], skip_special=False) == "<s> of"
    assert src.encode(" 21 mar 1987\n") == src.encode("21 mar 1987")
    with pytest.raises(ValueError, match=r"\['M'\] outside the vocabulary"):
        src.encode("21 Mar 1987")
    with pytest.raises(ValueError, match=r"\['</s>'\] outside"):
        tgt.encode("the </s> of")
    with pytest.raises(ValueError, match="before the specials' order"):
        SymbolText(Vocab(["a"], specials=("<pad>", "<s>", "</s>", "<unk>")), "char")
    with pytest.raises(ValueError, match="unit"):
        SymbolText(vocab, "byte")
