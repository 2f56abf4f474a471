"""The encoded-corpus cache: same ids as our reference tokenizer, reused, and invalidated by changes."""

from transformer_lab.tokenizers import cache as cache_mod
from transformer_lab.tokenizers.cache import encode_file_cached
from transformer_lab.tokenizers.fast import FastTokenizer
from transformer_lab.tokenizers.wordpiece import WordPieceTokenizer


def test_cache_hit_miss_and_invalidation(tmp_path, monkeypatch):
    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat sat\nthe dog ran\n\nthe cat ran\n")
    ours = WordPieceTokenizer.train(corpus.read_text().splitlines() * 5, vocab_size=30)
    fast = FastTokenizer.from_tokenizer(ours)
    first = encode_file_cached(corpus, fast, tmp_path / "cache")
    assert first == [ours.encode(line) for line in corpus.read_text().splitlines()]
    assert len(list((tmp_path / "cache").iterdir())) == 1

    calls = []
    monkeypatch.setattr(cache_mod, "read_lines", lambda p: calls.append(p) or iter(()))
    assert encode_file_cached(corpus, fast, tmp_path / "cache") == first  # served from the cache
    assert calls == []
    monkeypatch.undo()

    corpus.write_text("the dog sat\n")  # new content -> new key, recomputed
    assert encode_file_cached(corpus, fast, tmp_path / "cache") == [ours.encode("the dog sat")]
    other = FastTokenizer.from_tokenizer(WordPieceTokenizer.train(["a b c d"] * 3, vocab_size=12))
    encode_file_cached(corpus, other, tmp_path / "cache")  # another tokenizer -> another key
    names = [p.name for p in (tmp_path / "cache").iterdir()]
    assert len(names) == 3 and not any(n.startswith(".") for n in names)


def test_the_special_token_setting_is_part_of_the_key(tmp_path):
    """The same tokenizer reading "[SEP]" as text or as the special token encodes differently; the
    setting is not in tokenizer.json, so it must be in the cache key."""
    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat [SEP] sat\n")
    ours = WordPieceTokenizer.train(["the cat sat [ SEP ]"] * 5, vocab_size=40)
    as_text = encode_file_cached(corpus, FastTokenizer.from_tokenizer(ours), tmp_path / "cache")
    ours.split_special_tokens = False
    as_special = encode_file_cached(corpus, FastTokenizer.from_tokenizer(ours), tmp_path / "cache")
    assert as_text == [ours.encode("the cat [SEP] sat", allow_special=False)]
    assert as_special == [ours.encode("the cat [SEP] sat")] and as_special != as_text


def test_a_damaged_entry_is_encoded_again(tmp_path, caplog):
    """An entry left empty or cut short (a power loss before the data reached the disk: the rename is
    not a flush) broke every later run with safetensors' "header too small"; it is now a miss."""
    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat sat\nthe dog ran\n")
    ours = WordPieceTokenizer.train(corpus.read_text().splitlines() * 5, vocab_size=30)
    fast = FastTokenizer.from_tokenizer(ours)
    first = encode_file_cached(corpus, fast, tmp_path / "cache")
    (entry,) = (tmp_path / "cache").iterdir()
    for damage in (b"", entry.read_bytes()[:40]):
        entry.write_bytes(damage)
        with caplog.at_level("WARNING"):
            assert encode_file_cached(corpus, fast, tmp_path / "cache") == first
        assert "unreadable cache entry" in caplog.text
        assert encode_file_cached(corpus, fast, tmp_path / "cache") == first  # rewritten whole
