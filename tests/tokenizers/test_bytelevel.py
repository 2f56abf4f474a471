"""GPT-2 byte-level BPE: ours against HF ``tokenizers`` (trainer, BPE model, pre-tokenizer, decoder).

Oracles: HF's ``ByteLevelBPETokenizer`` trained on Multi30k (its files loaded by our class must give
identical ids), HF's ``BpeTrainer`` (our trainer must learn the same merges), HF's ByteLevel
pre-tokenizer and decoder, a minGPT-style O(n^2) BPE written here, and round trips.
"""

from __future__ import annotations

import json
import random
import time
import unicodedata
from pathlib import Path

import pytest
from conftest import read_lines
from tokenizers import ByteLevelBPETokenizer as HFByteLevelBPE
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import pre_tokenizers

from transformer_lab.tokenizers.bytelevel import (
    GPT2_PATTERN,
    ByteLevelBPETokenizer,
    bpe,
    bytes_to_unicode,
    pre_tokenize,
    text_to_symbols,
)

EOT = "<|endoftext|>"
TEST_SETS = ["test_2016_flickr.en.gz", "test_2016_flickr.de.gz", "test_2016_flickr.fr.gz"]

TRICKY = [
    "",
    " ",
    "   ",
    "\t\tTabs\tand\nnewlines\n\n\r\n",
    "multiple    spaces   between  words ",
    "trailing spaces   ",
    "   leading spaces",
    "Family: 👨\u200d👩\u200d👧\u200d👦 and a flag 🏳️\u200d🌈 and skin 👍🏽",
    "café (NFC) vs cafe\u0301 (NFD)",
    "Ångström, naïve, Straße, Œuvre, ÇA",
    "中文字符和日本語のテキスト、한국어 텍스트",
    "Digits 0123456789, 3.14159, 1,000,000 and ٣٤٥ and ⅧⅨ",
    "don't, I'm, you're, we've, they'll, he'd, it's",
    "DON'T, IT'S, 'S, 'T, ’s (curly), ''quoted''",
    "'s's't",
    "a\u00a0b\u2003c\u3000d\u2028e\u2029f\x85g",
    "ctrl\x00\x01\x1c\x1d\x1e\x1f\x7f\xad chars",
    "math ∑∫√ and arrows →⇒ and symbols ©®™",
    "a dog <|endoftext|> a cat",
    "URL https://example.com/a?b=c&d=e#frag",
    "Ğ Ġ Ċ ĉ (the byte stand-ins themselves as text)",
]


# --- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def multi30k(shared_data) -> Path:
    return shared_data / "multi30k"


@pytest.fixture(scope="module")
def test_lines(multi30k) -> list[str]:
    return [line for name in TEST_SETS for line in read_lines(multi30k / name)]


@pytest.fixture(scope="module")
def hf_trained(multi30k, tmp_path_factory):
    """HF's byte-level BPE trained on Multi30k en+de train (8000 tokens), its files, and ours from them."""
    lines = read_lines(multi30k / "train.en.gz") + read_lines(multi30k / "train.de.gz")
    hf = HFByteLevelBPE()
    hf.train_from_iterator(lines, vocab_size=8000, min_frequency=2, special_tokens=[EOT], show_progress=False)
    directory = tmp_path_factory.mktemp("hf_bytelevel")
    hf.save_model(str(directory))
    ours = ByteLevelBPETokenizer.from_files(directory / "vocab.json", directory / "merges.txt")
    return hf, ours, directory


@pytest.fixture(scope="module")
def train_slice(multi30k) -> list[str]:
    return read_lines(multi30k / "train.en.gz")[:3000] + read_lines(multi30k / "train.de.gz")[:3000]


@pytest.fixture(scope="module")
def ours_trained(train_slice) -> ByteLevelBPETokenizer:
    return ByteLevelBPETokenizer.train(train_slice, vocab_size=1500, min_frequency=2)


@pytest.fixture(scope="module")
def tiny() -> ByteLevelBPETokenizer:
    lines = ["the dog runs", "the dogs run", "a dog and the cat", "der Hund läuft"] * 3
    return ByteLevelBPETokenizer.train(lines, vocab_size=300)


def random_text(rng: random.Random, length: int, surrogates: bool = True, assigned_only: bool = False) -> str:
    """Random string mixing ASCII, whitespace of every kind, apostrophes (contractions) and code points
    from the whole range; ``surrogates`` allows U+D800..U+DFFF; ``assigned_only`` keeps code points that
    Python's ``unicodedata`` knows (see test_pre_tokenize_matches_hf_on_random_text)."""
    whitespace = " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2028\u2029\u202f\u205f\u3000"
    out = []
    while len(out) < length:
        r = rng.random()
        if r < 0.3:
            out.append(chr(rng.randrange(0x80)))
        elif r < 0.45:
            out.append(rng.choice(whitespace))
        elif r < 0.5:
            out.append(rng.choice(["'", "'s", "'t", "'ll", "\u200d", "\u0301"]))
        else:
            c = chr(rng.randrange(0x110000))
            if not surrogates and 0xD800 <= ord(c) <= 0xDFFF:
                continue
            if assigned_only and unicodedata.category(c) == "Cn":
                continue
            out.append(c)
    return "".join(out)


def reference_bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """minGPT's bpe(): find the lowest-rank adjacent pair, merge all its occurrences left to right,
    repeat. O(n^2), obviously correct."""
    parts = list(word)
    while len(parts) > 1:
        best = min(zip(parts, parts[1:]), key=lambda pair: ranks.get(pair, float("inf")))
        if best not in ranks:
            break
        merged, i = [], 0
        while i < len(parts):
            if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                merged.append(parts[i] + parts[i + 1])
                i += 2
            else:
                merged.append(parts[i])
                i += 1
        parts = merged
    return parts


# --- building blocks ----------------------------------------------------------------------------
def test_bytes_to_unicode_is_gpt2_table():
    """Compared to HF's ByteLevel alphabet and to GPT-2's documented examples."""
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256
    assert set(table.values()) == set(pre_tokenizers.ByteLevel.alphabet())
    assert all(table[b] == chr(b) for b in b"hello!~")  # printable bytes stand for themselves
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[0] == "Ā"
    assert all(c.isprintable() and not c.isspace() for c in table.values())


def test_pre_tokenize_pieces():
    """Hand-written expectations for each alternative of GPT2_PATTERN."""
    assert "'s|'t|'re" in GPT2_PATTERN
    assert pre_tokenize("don't stop") == ["don", "'t", " stop"]
    assert pre_tokenize("IT'S 'S") == ["IT", "'", "S", " '", "S"]  # case-sensitive contractions
    assert pre_tokenize("a   b") == ["a", "  ", " b"]  # last space goes with the next word
    assert pre_tokenize("a  \n\nb ") == ["a", "  \n", "\n", "b", " "]
    assert pre_tokenize("x123 45!!? ok") == ["x", "123", " 45", "!!?", " ok"]


@pytest.mark.parametrize("text", TRICKY)
def test_pre_tokenize_matches_hf(text):
    """Compared to HF's ByteLevel pre-tokenizer (add_prefix_space=False): same words, same byte symbols."""
    hf = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    ours = [text_to_symbols(w) for w in pre_tokenize(text)]
    assert ours == [w for w, _ in hf.pre_tokenize_str(text)]
    assert "".join(pre_tokenize(text)) == text


def test_pre_tokenize_matches_hf_on_random_text():
    """Compared to HF's pre-tokenizer on 3000 random strings of assigned code points.

    Known discrepancy, hence ``assigned_only``: the ``regex`` package knows Unicode 17 while HF's
    Oniguruma knows Unicode 16, so letters/digits new in Unicode 17 (e.g. U+11DB0) are \\p{L} for us and
    unassigned for HF. We keep only code points that Python's ``unicodedata`` (Unicode <= 16) assigns.
    """
    hf = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    rng = random.Random(0)
    for _ in range(3000):
        text = random_text(rng, rng.randrange(1, 40), surrogates=False, assigned_only=True)
        ours = [text_to_symbols(w) for w in pre_tokenize(text)]
        assert ours == [w for w, _ in hf.pre_tokenize_str(text)], repr(text)


def test_bpe_matches_mingpt_reference(hf_trained, test_lines):
    """Our heap-based bpe() against the O(n^2) minGPT algorithm written above, on every test-set word and
    on random byte-symbol strings (long ones exercise stale heap entries)."""
    _, ours, _ = hf_trained
    words = {text_to_symbols(w) for line in test_lines[::5] for w in pre_tokenize(line)}
    rng = random.Random(0)
    letters = list("aeinrst") + ["Ġ", "Ã", "¤"]
    words |= {"".join(rng.choice(letters) for _ in range(rng.randrange(1, 60))) for _ in range(300)}
    for word in sorted(words):
        assert bpe(word, ours.ranks) == reference_bpe(word, ours.ranks), word
    assert bpe("", ours.ranks) == [] and bpe("a", ours.ranks) == ["a"]


# --- oracle: HF-trained files loaded by our class ------------------------------------------------
def test_hf_files_identical_ids_on_test_sets(hf_trained, test_lines):
    """Every line of Multi30k test_2016_flickr en/de/fr: our ids == HF ByteLevelBPETokenizer's ids, and
    our decode == HF's decode == the line."""
    hf, ours, _ = hf_trained
    assert ours.vocab_size == hf.get_vocab_size() == 8000
    hf_ids = [e.ids for e in hf.encode_batch(test_lines)]
    for line, expected in zip(test_lines, hf_ids):
        ids = ours.encode(line)
        assert ids == expected, line
        assert ours.decode(ids) == line == hf.decode(expected)


@pytest.mark.parametrize("text", [t for t in TRICKY if EOT not in t])
def test_hf_files_identical_ids_on_tricky_strings(hf_trained, text):
    """Emoji with ZWJ, NFC vs NFD, CJK, whitespace runs, digits, contractions: ids == HF's."""
    hf, ours, _ = hf_trained
    ids = ours.encode(text)
    assert ids == hf.encode(text).ids
    assert ours.decode(ids) == text


def test_no_normalisation(hf_trained):
    """NFC and NFD spellings are different byte strings, so different ids (as in HF and GPT-2); both
    round-trip exactly."""
    _, ours, _ = hf_trained
    nfc, nfd = "café", unicodedata.normalize("NFD", "café")
    assert ours.encode(nfc) != ours.encode(nfd)
    assert ours.decode(ours.encode(nfd)) == nfd


def test_decode_matches_hf_on_random_ids(hf_trained):
    """Compared to HF's ByteLevel decoder on random id sequences (mostly invalid UTF-8): equal, except
    that an encoded surrogate (ED A0..BF xx) is the surrogate for us and three U+FFFD for HF."""
    hf, ours, _ = hf_trained
    rng = random.Random(0)
    byte_ids = [ours.vocab[s] for s in bytes_to_unicode().values()]
    surrogate = [ours.vocab[bytes_to_unicode()[b]] for b in b"\xed\xa0\x80"]
    for _ in range(500):
        ids = [rng.choice(byte_ids) if rng.random() < 0.7 else rng.randrange(ours.vocab_size) for _ in range(20)]
        if rng.random() < 0.2:
            ids[5:5] = surrogate
        ours_text = ours.decode(ids)
        as_hf = "".join("\ufffd" * 3 if 0xD800 <= ord(c) <= 0xDFFF else c for c in ours_text)
        assert as_hf == hf.decode(ids), ids
    assert ours.decode(surrogate) == "\ud800"


# --- our trainer ---------------------------------------------------------------------------------
def test_trainer_equals_hf_trainer(train_slice, ours_trained):
    """Compared to HF's BpeTrainer on the same lines: identical vocabulary and merges, in order (same
    alphabet order, same tie-break: highest count, then smallest (left id, right id))."""
    hf = HFByteLevelBPE()
    hf.train_from_iterator(train_slice, vocab_size=1500, min_frequency=2, special_tokens=[EOT], show_progress=False)
    hf_model = json.loads(hf._tokenizer.to_str())["model"]
    assert ours_trained.vocab == hf_model["vocab"]
    assert [tuple(m) for m in hf_model["merges"]] == ours_trained.merges


def test_trainer_agrees_with_its_hf_export(ours_trained, test_lines):
    """Our trained tokenizer against its own to_hf() (the fast backend) on every test line, plus round trip."""
    fast = ours_trained.to_hf()
    expected = [e.ids for e in fast.encode_batch(test_lines)]
    for line, hf_ids in zip(test_lines, expected):
        ids = ours_trained.encode(line)
        assert ids == hf_ids, line
        assert ours_trained.decode(ids) == line == fast.decode(ids)


def test_trainer_vocab_layout_and_min_frequency():
    """Specials first, then the 256 byte symbols in code-point order; no merge below min_frequency."""
    tok = ByteLevelBPETokenizer.train(["ab ab ab cd"], vocab_size=1000, specials=("<pad>", EOT), min_frequency=2)
    assert tok.id_to_token[:2] == ["<pad>", EOT]
    assert tok.id_to_token[2:258] == sorted(bytes_to_unicode().values())
    # "ab" occurs 3 times, "Ġab" twice (" ab"), "cd" once: only pairs seen >= 2 times merge.
    assert tok.merges == [("a", "b"), ("Ġ", "ab")]
    assert tok.vocab_size == 260


def test_trainer_rejects_small_vocab():
    with pytest.raises(ValueError, match=r"vocab_size: 200 .*at least 257"):
        ByteLevelBPETokenizer.train(["hello"], vocab_size=200)
    with pytest.raises(ValueError, match="min_frequency"):
        ByteLevelBPETokenizer.train(["hello"], vocab_size=300, min_frequency=0)


# --- round trips ---------------------------------------------------------------------------------
def test_round_trip_random_unicode(tiny):
    """decode(encode(x)) == x on 2000 seeded random strings over the whole code-point range, surrogates
    included (hypothesis is not installed in the venv, so a seeded generator stands in)."""
    rng = random.Random(1)
    for _ in range(2000):
        text = random_text(rng, rng.randrange(0, 50))
        ids = tiny.encode(text)
        assert tiny.decode(ids) == text, repr(text)
        assert all(0 <= i < tiny.vocab_size for i in ids)


@pytest.mark.parametrize(
    "text",
    ["\ud800", "\udfff", "a\udc80b", "\ud83d\ude00", "\ude00\ud83d", "x\ud800\ud800y", "😀\udbff"],
)
def test_lone_surrogates_round_trip(tiny, text):
    """Lone surrogates are encoded as their "surrogatepass" bytes (ED A0 80 for U+D800) and come back
    exactly. A surrogate *pair* stays two code points, distinct from the astral character it spells."""
    ids = tiny.encode(text)
    assert tiny.decode(ids) == text
    if text == "\ud800":
        assert ids == [tiny.vocab[bytes_to_unicode()[b]] for b in b"\xed\xa0\x80"]
    if text == "\ud83d\ude00":
        assert tiny.decode(ids) != "😀"


def test_invalid_bytes_decode_to_replacement(tiny):
    """Ids that do not spell valid UTF-8 decode with U+FFFD (never an exception)."""
    ids = [tiny.vocab[bytes_to_unicode()[b]] for b in b"a\xff\xc3b\xe2\x82"]
    assert tiny.decode(ids) == "a\ufffd\ufffdb\ufffd"


def test_million_characters_without_whitespace(hf_trained):
    """One 1,000,000-character word (the worst case for BPE: no whitespace to cut it): bounded time,
    exact round trip, ids == HF's."""
    hf, ours, _ = hf_trained
    rng = random.Random(0)
    text = "".join(rng.choice(["the", "dog", "Hund", "spielt", "runs"]) for _ in range(300_000))[:1_000_000]
    assert len(text) == 1_000_000 and len(pre_tokenize(text)) == 1
    start = time.perf_counter()
    ids = ours.encode(text)
    elapsed = time.perf_counter() - start
    assert elapsed < 20, f"encode took {elapsed:.1f}s"
    assert ours.decode(ids) == text
    assert ids == hf.encode(text).ids


# --- special tokens ------------------------------------------------------------------------------
def test_literal_special_is_text_unless_allowed(hf_trained):
    """'<|endoftext|>' typed by a user is ordinary text; allow_special=True makes it the special id, as
    HF's tokenizer (which always treats it as special) does."""
    _, ours, _ = hf_trained
    eot = ours.vocab[EOT]
    text = "a dog<|endoftext|>a cat"
    plain = ours.encode(text)
    assert eot not in plain and ours.decode(plain) == text
    allowed = ours.encode(text, allow_special=True)
    assert allowed.count(eot) == 1
    assert allowed == ours.to_hf().encode(text).ids
    assert ours.decode(allowed) == "a doga cat"
    assert ours.decode(allowed, skip_special=False) == text


# --- files ---------------------------------------------------------------------------------------
def test_save_load_and_hf_file(ours_trained, test_lines, tmp_path):
    """save() writes vocab.json, merges.txt and tokenizer.json; load() gives the same tokenizer, and HF
    reads tokenizer.json to the same ids."""
    ours_trained.save(tmp_path)
    assert (tmp_path / "merges.txt").read_text(encoding="utf-8").startswith("#version")
    loaded = ByteLevelBPETokenizer.load(tmp_path)
    assert loaded.vocab == ours_trained.vocab and loaded.merges == ours_trained.merges
    assert loaded.specials.tokens == ours_trained.specials.tokens
    hf = HFTokenizer.from_file(str(tmp_path / "tokenizer.json"))
    for line in test_lines[:200]:
        assert loaded.encode(line) == hf.encode(line).ids == ours_trained.encode(line)


def test_load_reads_custom_specials(tmp_path):
    tok = ByteLevelBPETokenizer.train(["a b c"] * 3, vocab_size=300, specials=("<pad>", "<s>"))
    tok.save(tmp_path)
    assert ByteLevelBPETokenizer.load(tmp_path).specials.tokens == ("<pad>", "<s>")


def test_empty_input(tiny):
    assert tiny.encode("") == []
    assert tiny.decode([]) == ""
    with pytest.raises(ValueError, match="text"):
        tiny.encode(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="out of range"):
        tiny.decode([tiny.vocab_size])


def _corrupt(directory: Path, vocab=None, merges=None, vocab_text=None) -> None:
    if vocab_text is not None:
        (directory / "vocab.json").write_text(vocab_text, encoding="utf-8")
    if vocab is not None:
        (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    if merges is not None:
        (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


@pytest.mark.parametrize(
    "case, bad_file, message",
    [
        ("bad json", "vocab.json", "JSON"),
        ("not an object", "vocab.json", "JSON object"),
        ("duplicate id", "vocab.json", "duplicate id"),
        ("missing byte symbol", "vocab.json", "byte symbols are missing"),
        ("one part", "merges.txt", "line 3: expected two tokens"),
        ("three parts", "merges.txt", "line 2: expected two tokens"),
        ("unknown part", "merges.txt", "line 2: merge 'Ġ' \\+ 'zzz'"),
        ("unknown result", "merges.txt", "line 2: .*'ĠĠ' is not in the vocabulary"),
        ("missing special", "vocab.json", "special token"),
    ],
)
def test_malformed_files_name_the_file(tiny, tmp_path, case, bad_file, message):
    tiny.save(tmp_path)
    vocab = dict(tiny.vocab)
    first = "{} {}".format(*tiny.merges[0])
    if case == "bad json":
        _corrupt(tmp_path, vocab_text='{"a": 0,')
    elif case == "not an object":
        _corrupt(tmp_path, vocab_text="[1, 2]")
    elif case == "duplicate id":
        vocab["Ġ"] = vocab["a"]
        _corrupt(tmp_path, vocab=vocab)
    elif case == "missing byte symbol":
        last = max(vocab, key=vocab.get)
        vocab[last], vocab["Ā"] = vocab["Ā"], vocab[last]  # keep ids contiguous
        del vocab["Ā"]
        _corrupt(tmp_path, vocab=vocab)
    elif case == "one part":
        _corrupt(tmp_path, merges=[first, "onlyone"])
    elif case == "three parts":
        _corrupt(tmp_path, merges=["a b c"])
    elif case == "unknown part":
        _corrupt(tmp_path, merges=["Ġ zzz"])
    elif case == "unknown result":
        _corrupt(tmp_path, merges=["Ġ Ġ"])
    elif case == "missing special":
        with pytest.raises(ValueError, match=r"vocab\.json.*special token"):
            ByteLevelBPETokenizer.load(tmp_path, specials=("<mask>",))
        return
    with pytest.raises(ValueError, match=message) as info:
        ByteLevelBPETokenizer.load(tmp_path)
    assert bad_file in str(info.value)


def test_constructor_checks_merges(tiny):
    with pytest.raises(ValueError, match=r"merges\[0\]"):
        ByteLevelBPETokenizer(tiny.vocab, [("Ġ", "Ġ")])
