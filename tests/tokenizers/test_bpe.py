"""Sennrich BPE against its reference implementation, subword-nmt 0.3.8 (learn-bpe and apply-bpe,
called in-process), and against HF ``tokenizers`` (the ``to_hf()`` backend) for ids."""

import contextlib
import io
import json

import pytest
from subword_nmt.apply_bpe import BPE
from subword_nmt.learn_bpe import learn_bpe as subword_nmt_learn_bpe

from conftest import read_lines
from transformer_lab.tokenizers.bpe import BPETokenizer, learn_bpe, read_merges
from transformer_lab.tokenizers.special import SEQ2SEQ_SPECIALS

NUM_MERGES = 10_000


def subword_nmt_merges(corpus, num_merges, min_frequency=2, is_dict=False):
    """The merges subword-nmt's learn_bpe writes (its progress bar and messages silenced)."""
    out = io.StringIO()
    with contextlib.redirect_stderr(io.StringIO()):
        subword_nmt_learn_bpe(corpus, out, num_merges, min_frequency, is_dict=is_dict)
    header, *lines = out.getvalue().splitlines()
    assert header == "#version: 0.2"
    return [tuple(line.split(" ")) for line in lines]


def subword_nmt_bpe(path) -> BPE:
    with open(path, encoding="utf-8") as f:
        return BPE(f)


@pytest.fixture(scope="module")
def train_en(shared_data):
    lines = read_lines(shared_data / "multi30k" / "train.en.gz")
    assert len(lines) == 29000
    return lines


@pytest.fixture(scope="module")
def val(shared_data):
    """English validation lines, plus German ones for characters the English alphabet lacks."""
    en = read_lines(shared_data / "multi30k" / "val.en.gz")
    de = read_lines(shared_data / "multi30k" / "val.de.gz")
    assert len(en) == len(de) == 1014
    return {"en": en, "de": de}


@pytest.fixture(scope="module")
def tok(train_en):
    return BPETokenizer.train(train_en, NUM_MERGES)


@pytest.fixture(scope="module")
def saved(tok, tmp_path_factory):
    return tok.save(tmp_path_factory.mktemp("bpe"))


# --- learning: identical merges to subword-nmt learn-bpe ------------------------------------------
def test_merges_identical_to_subword_nmt_on_multi30k(train_en, tok):
    """Multi30k English train, 10,000 merges: the same list in the same order (subword-nmt takes
    ~6 s of this file's time, ours ~1 s)."""
    expected = subword_nmt_merges(train_en, NUM_MERGES)
    assert len(expected) == NUM_MERGES
    mismatch = next((i for i, (a, b) in enumerate(zip(tok.merges, expected)) if a != b), None)
    assert mismatch is None, f"merge {mismatch}: ours {tok.merges[mismatch]}, subword-nmt {expected[mismatch]}"
    assert tok.merges == expected


def test_sennrich_toy_example_against_subword_nmt_dict_input():
    """The paper's example vocabulary (Sennrich et al. 2016, fig. 1), with word counts as input."""
    counts = {"low": 5, "lower": 2, "newest": 6, "widest": 3}
    ours = learn_bpe(counts, 10)
    # "e s" and "s t</w>" tie at 9 (newest 6 + widest 3): the larger pair wins, not the paper's "e s"
    assert ours[:3] == [("s", "t</w>"), ("e", "st</w>"), ("l", "o")]
    assert ours == subword_nmt_merges([f"{w} {n}\n" for w, n in counts.items()], 10, is_dict=True)


def test_ties_go_to_the_larger_pair_as_in_subword_nmt():
    # every pair occurs once: subword-nmt's max(stats, key=(count, pair)) takes the largest tuple
    lines = ["ab cd", "xy"]
    assert learn_bpe(lines, 1, min_frequency=1) == [("x", "y</w>")]
    assert learn_bpe(lines, 5, min_frequency=1) == subword_nmt_merges(lines, 5, min_frequency=1)


def test_stops_below_min_frequency_as_subword_nmt():
    lines = ["abc abd xyz"]  # only ("a", "b") occurs twice
    assert learn_bpe(lines, 100) == [("a", "b")] == subword_nmt_merges(lines, 100)


def test_corpus_of_single_characters_learns_nothing():
    # no pair at all: we return no merges (subword-nmt 0.3.8 fails here with max() of an empty dict)
    assert learn_bpe(["a b", "c"], 10, min_frequency=1) == []


@pytest.mark.parametrize("num_merges", [0, -1, 2.5, True])
def test_num_merges_below_one_is_rejected(num_merges):
    with pytest.raises(ValueError, match="num_merges"):
        learn_bpe(["a b"], num_merges)


def test_bad_corpus_arguments_are_rejected():
    with pytest.raises(ValueError, match="min_frequency"):
        learn_bpe(["ab ab"], 10, min_frequency=0)
    with pytest.raises(ValueError, match="one str"):
        learn_bpe("ab ab", 10)
    with pytest.raises(ValueError, match="without spaces"):
        learn_bpe({"a b": 3}, 10)
    with pytest.raises(ValueError, match="count of 'ab'"):
        learn_bpe({"ab": 0}, 10)


# --- applying: identical segmentation to subword-nmt apply-bpe ------------------------------------
@pytest.mark.parametrize("lang", ["en", "de"])
def test_segmentation_identical_to_subword_nmt_apply_bpe(lang, tok, saved, val):
    """Multi30k validation, line by line, against ``BPE(codes).process_line`` reading our merges.txt
    (which also shows subword-nmt reads the file). German lines bring unseen characters."""
    bpe = subword_nmt_bpe(saved / "merges.txt")
    mismatched = [line for line in val[lang] if " ".join(tok.tokenize(line)) != bpe.process_line(line).strip("\r\n ")]
    assert mismatched == [], f"first mismatch: {mismatched[0]!r}"


def test_segmentation_details_against_subword_nmt(tmp_path):
    """Overlaps (x x x -> xx x), one-character words, double spaces, CR/LF at the ends."""
    merges = [("x", "x"), ("xx", "x</w>"), ("a", "b"), ("ab", "c</w>")]
    tok = BPETokenizer(merges)
    path = tmp_path / "codes.txt"
    path.write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    bpe = subword_nmt_bpe(path)
    for line in ["xxxx xxx xx x", "abc  abcabc a b", "\r\nabab ab\r\n", "x\ty abx"]:
        assert " ".join(tok.tokenize(line)) == bpe.process_line(line).strip("\r\n "), line
    assert tok.tokenize("xxxxx") == ["xx@@", "xxx"]  # x x x x x</w> -> xx xx x</w> -> xx xxx</w>
    assert tok.tokenize("x") == ["x"]


def test_repeated_merge_keeps_its_first_rank_as_in_subword_nmt(tmp_path):
    """subword-nmt ranks a pair by its first line; ``to_hf`` drops the repeats, since HF would keep
    the last: here "a b" (rank 0) must win over "b c" (rank 1) in "abc"."""
    merges = [("a", "b"), ("b", "c"), ("a", "b"), ("ab", "c</w>"), ("a", "bc</w>")]
    tok = BPETokenizer(merges)
    path = tmp_path / "codes.txt"
    path.write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    assert tok.tokenize("abc abcd") == ["abc", "ab@@", "c@@", "d"]
    assert " ".join(tok.tokenize("abc abcd")) == subword_nmt_bpe(path).process_line("abc abcd")
    assert tok.to_hf().encode("abc abcd", add_special_tokens=False).ids == tok.encode("abc abcd")


def test_decode_inverts_encode_on_validation(tok, val):
    """decode(encode(x)) == x for single-spaced English lines (all their characters are known)."""
    lines = [" ".join(line.split(" ")).strip() for line in val["en"]]
    lines = [line for line in lines if "  " not in line]
    assert len(lines) > 1000
    assert [line for line in lines if tok.decode(tok.encode(line)) != line] == []


# --- the HF backend: identical ids --------------------------------------------------------------
@pytest.mark.parametrize("lang", ["en", "de"])
def test_hf_backend_identical_ids(lang, tok, val):
    """``to_hf()`` against ``encode`` on the whole validation set; German brings <unk> ids."""
    hf = tok.to_hf()
    expected = [e.ids for e in hf.encode_batch(val[lang], add_special_tokens=False)]
    mismatched = [line for line, ids in zip(val[lang], expected) if tok.encode(line) != ids]
    assert mismatched == [], f"first mismatch: {mismatched[0]!r}"
    if lang == "de":
        assert sum(ids.count(tok.unk_id) for ids in expected) > 0
    assert [hf.decode(ids) for ids in expected[:200]] == [tok.decode(ids) for ids in expected[:200]]


def test_hf_backend_on_awkward_text(tok):
    hf = tok.to_hf()
    for text in ["", "   ", "\r\n", " a  man\r\n", "a\tman", "A man\nwalks", "ü ä", "x"]:
        assert hf.encode(text, add_special_tokens=False).ids == tok.encode(text), repr(text)


def test_vocabulary_has_both_spellings_with_one_id(tok):
    """Our ``token@@``/``en`` are HF's ``token``/``en</w>``: same id (see the module docstring)."""
    hf_vocab = tok.to_hf().get_vocab()
    assert len(hf_vocab) == tok.vocab_size
    assert list(tok.vocab)[:4] == list(SEQ2SEQ_SPECIALS)
    for piece, symbol in [("man@@", "man"), ("man", "man</w>"), ("e@@", "e"), ("e", "e</w>")]:
        assert tok.vocab[piece] == hf_vocab[symbol]


# --- files ----------------------------------------------------------------------------------------
def test_save_load_round_trip(tok, saved, val):
    assert (saved / "merges.txt").read_text(encoding="utf-8").startswith("#version: 0.2\ni n\n")
    loaded = BPETokenizer.load(saved)
    assert loaded.merges == tok.merges
    assert loaded.vocab == tok.vocab
    assert loaded.specials.tokens == tok.specials.tokens
    assert [loaded.encode(line) for line in val["en"]] == [tok.encode(line) for line in val["en"]]
    assert json.loads((saved / "vocab.json").read_text(encoding="utf-8")) == tok.vocab


def test_saved_tokenizer_json_gives_identical_ids(tok, saved, val):
    from tokenizers import Tokenizer as HFTokenizer

    hf = HFTokenizer.from_file(str(saved / "tokenizer.json"))
    assert [e.ids for e in hf.encode_batch(val["de"], add_special_tokens=False)] == [tok.encode(x) for x in val["de"]]


def test_load_plain_subword_nmt_codes_file(train_en, tmp_path):
    """A codes file as ``subword-nmt learn-bpe`` writes it; the alphabet is then what the merges name."""
    path = tmp_path / "codes.txt"
    path.write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in learn_bpe(train_en[:2000], 500)))
    tok = BPETokenizer.load(path)
    bpe = subword_nmt_bpe(path)
    for line in train_en[2000:2300]:
        assert " ".join(tok.tokenize(line)) == bpe.process_line(line).strip("\r\n ")


def test_codes_without_header_are_version_0_1_as_in_subword_nmt(tmp_path):
    """No ``#version`` line: subword-nmt's 0.1 rules (``</w>`` a symbol of its own)."""
    path = tmp_path / "codes.txt"
    path.write_text("e </w>\nl o\nlo w\nw e</w>\nlow e</w>\n")
    tok = BPETokenizer.load(path)
    assert tok.version == (0, 1)
    bpe = subword_nmt_bpe(path)
    for line in ["lowe lowest owe we low e", "ewe"]:
        assert " ".join(tok.tokenize(line)) == bpe.process_line(line)
    assert tok.tokenize("lowe") == ["lowe"]
    with pytest.raises(ValueError, match="version"):
        tok.to_hf()


@pytest.mark.parametrize(
    "content, line",
    [("#version: 0.2\na b\na b c\n", 3), ("a b\nab\n", 2), ("#version: 0.2\na  b\n", 2),
     ("a b\n\nc d\n", 2), ("#version: 0.3\na b\n", 1)],
)
def test_malformed_merges_file_names_file_and_line(tmp_path, content, line):
    path = tmp_path / "bad.txt"
    path.write_text(content)
    with pytest.raises(ValueError, match=rf"bad\.txt: line {line}:"):
        read_merges(path)
    with pytest.raises(ValueError, match=rf"bad\.txt: line {line}:"):
        BPETokenizer.load(path)


def test_missing_merges_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="merges.txt"):
        BPETokenizer.load(tmp_path)


# --- bad and unusual input ------------------------------------------------------------------------
def test_empty_and_whitespace_only_text(tok):
    assert tok.encode("") == [] and tok.tokenize("") == []
    assert tok.encode("   ") == [] and tok.encode(" \r\n") == []
    assert tok.decode([]) == ""


def test_unknown_characters_become_unk_one_each(tok):
    ids = tok.encode("a ♞man ☃☃")
    assert tok.tokenize("a ♞man ☃☃") == ["a", "♞@@", "man", "☃@@", "☃"]
    assert [i == tok.unk_id for i in ids] == [False, True, False, True, True]
    assert tok.to_hf().encode("a ♞man ☃☃", add_special_tokens=False).ids == ids


def test_special_token_text_is_ordinary_unless_allowed(tok):
    """HF matches special tokens in text by default (our ``allow_special=True``);
    ``encode_special_tokens=True`` turns that off (our default)."""
    text = "a <s> b</s>"
    assert tok.vocab["<s>"] not in tok.encode(text)
    expected = [*tok.encode("a"), tok.vocab["<s>"], *tok.encode("b"), tok.vocab["</s>"]]
    assert tok.encode(text, allow_special=True) == expected
    hf = tok.to_hf()
    assert hf.encode(text, add_special_tokens=False).ids == tok.encode(text, allow_special=True)
    hf.encode_special_tokens = True
    assert hf.encode(text, add_special_tokens=False).ids == tok.encode(text)


def test_ambiguous_separator_vocabulary_is_rejected():
    # "b@@" at the end of a word would be spelled like "b" inside one
    with pytest.raises(ValueError, match="end in '@@'"):
        BPETokenizer.train(["ab@@ ab@@ ab@@"] * 3, 10)


def test_vocab_missing_merge_pieces_is_rejected():
    with pytest.raises(ValueError, match="missing"):
        BPETokenizer([("a", "b</w>")], vocab={"<pad>": 0, "<unk>": 1, "<s>": 2, "</s>": 3, "a@@": 4})
