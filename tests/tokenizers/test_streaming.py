"""Streaming decode (``tokenizers.streaming``): the pieces printed as tokens arrive concatenate to the
decoded text, for every algorithm (WordPiece and BPE join pieces; byte-level BPE splits characters
across tokens), however long the stream."""

import pytest

from transformer_lab.tokenizers.bpe import BPETokenizer
from transformer_lab.tokenizers.bytelevel import ByteLevelBPETokenizer
from transformer_lab.tokenizers.char import CharTokenizer
from transformer_lab.tokenizers.streaming import IncrementalDecoder
from transformer_lab.tokenizers.wordpiece import WordPieceTokenizer

LINES = ["the cat sat on the mat, unbelievably happy", "dogs running quickly 🐕‍🦺 über café", "naïve résumé 東京"] * 30
TEXT = "the unbelievably happy dogs sat on the café mat 🐕‍🦺 東京 running"


@pytest.fixture(scope="module", params=["wordpiece", "bpe", "bytelevel", "char"])
def tok(request):
    if request.param == "wordpiece":
        return WordPieceTokenizer.train(LINES, 120)
    if request.param == "bpe":
        return BPETokenizer.train(LINES, 40)
    if request.param == "bytelevel":
        return ByteLevelBPETokenizer.train(LINES, 290)
    return CharTokenizer.train("".join(LINES) + TEXT)


@pytest.mark.parametrize("repeat", [1, 40])  # 40: longer than the decoder's window
def test_streamed_pieces_concatenate_to_the_decoded_text(tok, repeat):
    ids = tok.encode(" ".join([TEXT] * repeat))
    stream = IncrementalDecoder(tok)
    pieces = [stream.push([i]) for i in ids] + [stream.flush()]
    assert "".join(pieces) == tok.decode(ids)
    assert all("\ufffd" not in p for p in pieces)  # never half a character


def test_words_are_not_run_together():
    """The old streamer decoded each token alone: "hello world" streamed as "helloworld"."""
    tok = WordPieceTokenizer.train(LINES, 120)
    stream = IncrementalDecoder(tok)
    text = "".join(stream.push([i]) for i in tok.encode("the cat sat")) + stream.flush()
    assert text == "the cat sat"
