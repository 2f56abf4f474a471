"""Inputs that break tokenizers (RELIABILITY 9-12), for every algorithm; the fast backend is the oracle."""

import time

import pytest

from conftest import read_lines
from transformer_lab.tokenizers.bpe import BPETokenizer
from transformer_lab.tokenizers.bytelevel import ByteLevelBPETokenizer
from transformer_lab.tokenizers.fast import FastTokenizer
from transformer_lab.tokenizers.wordpiece import WordPieceTokenizer


@pytest.fixture(scope="module", params=["bpe", "bytelevel", "wordpiece"])
def tokenizer(request, shared_data):
    lines = read_lines(shared_data / "multi30k" / "train.en.gz")[:4000]
    if request.param == "bpe":
        return BPETokenizer.train(lines, 1000)
    if request.param == "bytelevel":
        return ByteLevelBPETokenizer.train(lines, 1000)
    return WordPieceTokenizer.train(lines, 1000)


@pytest.mark.parametrize("text", ["", " ", "   \t  ", "\n"])
def test_empty_and_whitespace(tokenizer, text):
    ids = tokenizer.encode(text)
    assert ids == FastTokenizer.from_tokenizer(tokenizer).encode(text)
    if tokenizer.algorithm == "bytelevel":
        assert tokenizer.decode(ids) == text  # whitespace is bytes like any other, kept exactly
    elif tokenizer.algorithm == "bpe" and "\t" in text:
        # subword-nmt splits on " " only: a tab is a character, unseen in training -> <unk>, not dropped
        assert ids == [tokenizer.unk_id]
    else:
        assert ids == []
    assert tokenizer.decode([]) == ""


def _long_line(n_chars: int) -> str:
    sentence = "A man in a blue shirt is standing on a ladder cleaning windows. "
    return (sentence * (n_chars // len(sentence) + 1))[:n_chars]


def test_one_megabyte_line_in_bounded_time(tokenizer):
    line = _long_line(1_000_000)
    t0 = time.perf_counter()
    ids = tokenizer.encode(line)
    assert time.perf_counter() - t0 < 20
    assert ids == FastTokenizer.from_tokenizer(tokenizer).encode(line)


def test_one_million_characters_without_whitespace(tokenizer, shared_data):
    """Real text with its spaces removed (not a periodic string, where few merges apply)."""
    line = "".join(read_lines(shared_data / "multi30k" / "train.en.gz")).replace(" ", "")[:1_000_000]
    t0 = time.perf_counter()
    ids = tokenizer.encode(line)
    assert time.perf_counter() - t0 < 30
    assert ids == FastTokenizer.from_tokenizer(tokenizer).encode(line)


@pytest.mark.slow
def test_ten_megabyte_line(tokenizer):
    line = _long_line(10_000_000)
    ids = tokenizer.encode(line)
    assert ids == FastTokenizer.from_tokenizer(tokenizer).encode(line)


@pytest.mark.parametrize("ids", [[5, 10**6], [-1], [1000 + 10**3]])
def test_ids_outside_the_vocabulary_are_an_error_in_both_backends(tokenizer, ids):
    """Ours refused an id outside the vocabulary; the fast backend (HF ``tokenizers``) dropped it silently
    ('!' for [5, 99999]) or overflowed on a negative one. Both now refuse it, naming it."""
    for backend in (tokenizer, FastTokenizer.from_tokenizer(tokenizer)):
        with pytest.raises(ValueError, match="out of range"):
            backend.decode(ids)
    assert FastTokenizer.from_tokenizer(tokenizer).decode([5, 6]) == tokenizer.decode([5, 6])
