"""GPT-2's byte-level BPE (Radford et al. 2019, "Language Models are Unsupervised Multitask Learners", §2.2).

Text is turned into UTF-8 bytes, each byte is shown as one printable character (``bytes_to_unicode``),
the result is cut into words by a regular expression (``GPT2_PATTERN``), and each word is split into
tokens by applying learned merges, lowest rank first (``bpe``). Because the 256 byte symbols are all in
the vocabulary, every string can be encoded: there is never an unknown token.

Files are the GPT-2 / HF ``tokenizers`` format: ``vocab.json`` (token -> id) and ``merges.txt`` (one
merge "left right" a line, in rank order, optionally after a ``#version`` line). ``to_hf()`` builds the
equivalent HF ``tokenizers.Tokenizer``, and the tests hold the two to identical ids.

Lone surrogates. A Python ``str`` may hold lone surrogates ("\\ud800"), which strict UTF-8 cannot
encode, and which HF ``tokenizers`` refuses outright (Rust strings cannot hold them). We encode them as
the 3-byte sequences that "surrogatepass" gives (ED A0 80 for U+D800; CESU-8 style), and decode byte
sequences with "surrogatepass" where it applies, else with "replace" (one U+FFFD per maximal invalid
subsequence, which is what HF's decoder, Rust's ``String::from_utf8_lossy``, gives). So
``decode(encode(x)) == x`` for every Python string, and ``decode`` agrees with HF's decoder on any id
sequence except that an encoded surrogate decodes to the surrogate where HF gives three U+FFFD.
"""

from __future__ import annotations

import codecs
import heapq
import json
import logging
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import regex

from transformer_lab.tokenizers.base import Tokenizer
from transformer_lab.tokenizers.merges import apply_merges as bpe  # noqa: F401  (the GPT-2 name)
from transformer_lab.tokenizers.special import GPT2_SPECIALS

logger = logging.getLogger(__name__)

__all__ = [
    "GPT2_PATTERN",
    "ByteLevelBPETokenizer",
    "bpe",
    "bytes_to_unicode",
    "pre_tokenize",
    "text_to_symbols",
    "symbols_to_text",
]

VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
HF_FILE = "tokenizer.json"
MERGES_HEADER = "#version: 0.2"  # what HF's ``save_model`` writes; readers skip any "#version" line


# --- bytes <-> printable symbols ----------------------------------------------------------------
@lru_cache(maxsize=None)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table from the 256 byte values to 256 printable characters.

    Why: BPE works on strings of symbols, and its files (vocab.json, merges.txt) are text with a space
    between the two halves of a merge. Working on bytes instead of characters keeps the base vocabulary
    at 256 symbols and makes every string encodable, but raw bytes include control characters and
    whitespace (space, newline, ...) that would break those files and are unreadable when printed. So
    each byte gets a visible stand-in:

    - bytes that are already printable Latin-1 characters ("!".."~", "¡".."¬", "®".."ÿ", 188 of them)
      stand for themselves, so "hello" stays readable in the vocabulary;
    - the other 68 bytes (0x00-0x20 controls and space, 0x7F-0xA0, 0xAD soft hyphen) are mapped in order
      to the code points 256, 257, ...; hence space (0x20) -> "Ġ" (U+0120) and newline (0x0A) -> "Ċ".
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return dict(sorted(table.items()))


# Both directions as str.translate tables: much faster than a Python loop over the characters.
_BYTE_TO_SYMBOL = dict(bytes_to_unicode())  # chr(b) (a latin-1 decoded byte) -> symbol
_SYMBOL_TO_BYTE = {ord(s): b for b, s in bytes_to_unicode().items()}  # symbol -> chr(b)
_NOT_A_SYMBOL = regex.compile("[^" + regex.escape("".join(bytes_to_unicode().values())) + "]")

_ERRORS = "transformer_lab.surrogatepass_or_replace"


def _surrogatepass_or_replace(error: UnicodeError) -> tuple[str, int]:
    """Codec error handler: an encoded surrogate (ED A0..BF xx) decodes to the surrogate, anything else
    invalid becomes U+FFFD exactly as with errors="replace"."""
    if not isinstance(error, UnicodeDecodeError):
        raise error
    try:
        return codecs.lookup_error("surrogatepass")(error)
    except UnicodeDecodeError:
        return codecs.replace_errors(error)


codecs.register_error(_ERRORS, _surrogatepass_or_replace)


def text_to_symbols(text: str) -> str:
    """UTF-8 bytes of ``text`` (lone surrogates via "surrogatepass"), one printable symbol per byte."""
    data = text.encode("utf-8", "surrogatepass")
    return data.decode("latin-1").translate(_BYTE_TO_SYMBOL)


def symbols_to_text(pieces: Iterable[str]) -> str:
    """Inverse of ``text_to_symbols``, over a sequence of tokens.

    A token made only of byte symbols stands for those bytes; any other token (a special token such as
    "<|endoftext|>" may be one) stands for its own UTF-8 bytes: HF's ByteLevel decoder makes the same
    per-token choice. The bytes are decoded with "surrogatepass" where it applies, else "replace".
    """
    pieces = list(pieces)
    joined = "".join(pieces)
    if _NOT_A_SYMBOL.search(joined) is None:  # the common case: one translate for everything
        data = joined.translate(_SYMBOL_TO_BYTE).encode("latin-1")
    else:
        data = b"".join(_token_bytes(p) for p in pieces)
    return data.decode("utf-8", _ERRORS)


def _token_bytes(piece: str) -> bytes:
    if _NOT_A_SYMBOL.search(piece) is None:
        return piece.translate(_SYMBOL_TO_BYTE).encode("latin-1")
    return piece.encode("utf-8", "surrogatepass")


# --- pre-tokenisation ---------------------------------------------------------------------------
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_GPT2_RE = regex.compile(GPT2_PATTERN)


def pre_tokenize(text: str) -> list[str]:
    """Cut ``text`` into words with GPT-2's pattern; BPE never merges across two words.

    The alternatives are tried left to right at each position:

    - ``'s|'t|'re|'ve|'m|'ll|'d``: English contractions become their own words ("don't" -> "don", "'t").
      Case-sensitive and ASCII apostrophe only, as in GPT-2: "'S" and "’s" are not contractions.
    - `` ?\\p{L}+``: a run of letters (any script), with at most one leading space attached, so " the"
      is one word and the space is not a token of its own.
    - `` ?\\p{N}+``: a run of digits / numerals, with an optional leading space.
    - `` ?[^\\s\\p{L}\\p{N}]+``: a run of everything else (punctuation, symbols, emoji, controls,
      surrogates), with an optional leading space.
    - ``\\s+(?!\\S)``: whitespace up to, but not including, the last whitespace character before a
      non-space, so that last space can start the next word (" ?\\p{L}+"); at the end of the text it
      takes all the trailing whitespace.
    - ``\\s+``: any whitespace left (e.g. a single newline before a word).

    Every character is matched by some alternative, so ``"".join(pre_tokenize(x)) == x``.
    """
    return _GPT2_RE.findall(text)


# --- BPE ----------------------------------------------------------------------------------------
# --- file parsing and checks --------------------------------------------------------------------
def _read_vocab(path: Path) -> dict[str, int]:
    try:
        vocab = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read the vocabulary as JSON: {e}") from e
    if not isinstance(vocab, dict) or not all(
        isinstance(t, str) and isinstance(i, int) and not isinstance(i, bool) for t, i in vocab.items()
    ):
        raise ValueError(f"{path}: expected a JSON object mapping token strings to integer ids")
    _check_ids(vocab, str(path))
    return vocab


def _check_ids(vocab: Mapping[str, int], where: str) -> None:
    """Ids must be exactly 0..len-1: duplicates would make decoding ambiguous, gaps leave holes."""
    seen: dict[int, str] = {}
    for token, i in vocab.items():
        if i in seen:
            raise ValueError(f"{where}: duplicate id {i} for tokens {seen[i]!r} and {token!r}")
        seen[i] = token
    if seen and (min(seen) != 0 or max(seen) != len(seen) - 1):
        raise ValueError(f"{where}: ids must be 0..{len(seen) - 1}; got {min(seen)}..{max(seen)}")


def _read_merges(path: Path) -> tuple[list[tuple[str, str]], list[int]]:
    """Merges in rank order and the 1-based line number of each (for error messages)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read the merges: {e}") from e
    merges, lines = [], []
    # Split on "\n" only: str.splitlines would also split on \x85, \u2028, ... (byte symbols never
    # contain line breaks, but a stricter split keeps the parser honest).
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line or line.startswith("#version"):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"{path}: line {number}: expected two tokens separated by one space, got {line!r}")
        merges.append((parts[0], parts[1]))
        lines.append(number)
    return merges, lines


def _check_model(
    vocab: Mapping[str, int],
    merges: Sequence[tuple[str, str]],
    vocab_where: str,
    merge_where: Callable[[int], str],
) -> None:
    """All 256 byte symbols in the vocabulary (so no unknown token is ever needed), and every merge's
    two parts and result in it (else encoding would produce a token without an id)."""
    missing = [s for s in bytes_to_unicode().values() if s not in vocab]
    if missing:
        raise ValueError(f"{vocab_where}: {len(missing)} of the 256 byte symbols are missing, e.g. {missing[:5]}")
    for i, (left, right) in enumerate(merges):
        for part in (left, right, left + right):
            if part not in vocab:
                raise ValueError(
                    f"{merge_where(i)}: merge {left!r} + {right!r}: {part!r} is not in the vocabulary {vocab_where}"
                )


# --- the tokenizer ------------------------------------------------------------------------------
class ByteLevelBPETokenizer(Tokenizer):
    """GPT-2 byte-level BPE: ``vocab`` (token -> id) plus ``merges`` in rank order.

    Literal special-token text in user input is ordinary text unless ``allow_special=True`` (see
    ``special.py``); HF's tokenizer built by ``to_hf()`` always treats it as special.
    """

    algorithm = "bytelevel"
    cache_size = 50_000  # words; cleared when full (a simple bound on memory)
    cache_max_word = 256  # longer words are not cached: rare, and they would crowd out the rest

    def __init__(
        self,
        vocab: Mapping[str, int],
        merges: Sequence[tuple[str, str]],
        specials: Sequence[str] = GPT2_SPECIALS,
    ):
        merges = [tuple(m) for m in merges]
        _check_ids(vocab, "vocab")
        _check_model(vocab, merges, "vocab", lambda i: f"merges[{i}]")
        super().__init__(dict(vocab), specials)
        self.merges: list[tuple[str, str]] = merges
        # Later duplicates overwrite earlier ones, as in HF's BPE model.
        self.ranks: dict[tuple[str, str], int] = {pair: rank for rank, pair in enumerate(merges)}
        self._cache: dict[str, list[str]] = {}

    # --- files ---------------------------------------------------------------------------------
    @classmethod
    def from_files(
        cls, vocab_json: str | Path, merges_txt: str | Path, specials: Sequence[str] = GPT2_SPECIALS
    ) -> "ByteLevelBPETokenizer":
        vocab_json, merges_txt = Path(vocab_json), Path(merges_txt)
        vocab = _read_vocab(vocab_json)
        merges, lines = _read_merges(merges_txt)
        _check_model(vocab, merges, str(vocab_json), lambda i: f"{merges_txt}: line {lines[i]}")
        missing = [t for t in specials if t not in vocab]
        if missing:
            raise ValueError(f"{vocab_json}: special token(s) {missing} missing from the vocabulary")
        return cls(vocab, merges, specials)

    @classmethod
    def load(cls, directory: str | Path, specials: Sequence[str] | None = None) -> "ByteLevelBPETokenizer":
        """Load ``vocab.json`` + ``merges.txt`` from ``directory``. Specials: as given; else the special
        added tokens recorded in ``tokenizer.json`` (written by ``save``); else GPT-2's."""
        directory = Path(directory)
        if specials is None:
            specials = _specials_from_hf_file(directory / HF_FILE)
        return cls.from_files(directory / VOCAB_FILE, directory / MERGES_FILE, specials)

    def save(self, directory: str | Path) -> Path:
        """Write ``vocab.json``, ``merges.txt`` (HF's format) and ``tokenizer.json`` (HF's one-file format)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        ordered = dict(sorted(self.vocab.items(), key=lambda kv: kv[1]))
        (directory / VOCAB_FILE).write_text(json.dumps(ordered, ensure_ascii=False), encoding="utf-8")
        lines = [MERGES_HEADER] + [f"{a} {b}" for a, b in self.merges]
        (directory / MERGES_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
        self.to_hf().save(str(directory / HF_FILE))
        self.write_config(directory)
        return directory

    def to_hf(self):
        """The equivalent HF ``tokenizers.Tokenizer``: BPE model over the same vocab and merges, GPT-2's
        ByteLevel pre-tokenizer (same regex, no prefix space), ByteLevel decoder, specials registered."""
        from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors
        from tokenizers import Tokenizer as HFTokenizer

        hf = HFTokenizer(models.BPE(vocab=dict(self.vocab), merges=list(self.merges)))
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        hf.decoder = decoders.ByteLevel()
        hf.post_processor = processors.ByteLevel(trim_offsets=False)
        hf.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in self.specials])
        return hf

    # --- text <-> pieces -----------------------------------------------------------------------
    def _tokenize(self, text: str) -> list[str]:
        pieces: list[str] = []
        for word in pre_tokenize(text):
            pieces.extend(self._bpe_cached(text_to_symbols(word)))
        return pieces

    def _bpe_cached(self, symbols: str) -> list[str]:
        cached = self._cache.get(symbols)
        if cached is not None:
            return cached
        tokens = bpe(symbols, self.ranks)
        if len(symbols) <= self.cache_max_word:
            if len(self._cache) >= self.cache_size:
                self._cache.clear()
            self._cache[symbols] = tokens
        return tokens

    def _detokenize(self, pieces: list[str]) -> str:
        return symbols_to_text(pieces)

    # --- training ------------------------------------------------------------------------------
    @classmethod
    def train(
        cls,
        lines: Iterable[str],
        vocab_size: int,
        specials: Sequence[str] = GPT2_SPECIALS,
        min_frequency: int = 2,
    ) -> "ByteLevelBPETokenizer":
        """Learn merges from ``lines`` until the vocabulary has ``vocab_size`` tokens.

        Algorithm (Sennrich et al. 2016 over bytes, as GPT-2):

        1. Vocabulary: the specials, then the 256 byte symbols (in code-point order, as HF's trainer).
        2. Count the words given by ``pre_tokenize`` over all lines; each word starts as its byte symbols.
        3. Repeat: take the adjacent pair with the highest count over all words (each occurrence counts,
           weighted by the word's frequency); stop if that count is below ``min_frequency``. Ties go to
           the pair whose (left id, right id) is smallest, so earlier tokens win: deterministic, and the
           rule HF's BpeTrainer uses. Add the joined token, record the merge, and re-segment only the
           words that contain the pair, updating the pair counts by difference.

        A heap holds (-count, left id, right id); counts of existing pairs only fall, so an entry whose
        count is out of date is pushed back with the current count (HF's trainer does the same).
        """
        specials = tuple(specials)
        vocab: dict[str, int] = {}
        for token in list(specials) + sorted(bytes_to_unicode().values()):
            vocab.setdefault(token, len(vocab))
        if vocab_size < len(vocab):
            raise ValueError(
                f"vocab_size: {vocab_size} is too small; expected at least {len(vocab)} "
                f"(256 byte symbols + {len(specials)} special tokens)"
            )
        if min_frequency < 1:
            raise ValueError(f"min_frequency: expected >= 1, got {min_frequency}")
        id_to_token = list(vocab)
        merges: list[tuple[str, str]] = []

        counts = Counter(text_to_symbols(w) for line in lines for w in pre_tokenize(line))
        words = [[vocab[s] for s in w] for w in counts]  # each word as a list of token ids
        freqs = list(counts.values())

        pair_counts: Counter = Counter()
        where: dict[tuple[int, int], set[int]] = {}  # pair -> indices of words that (may) contain it
        for w, (word, freq) in enumerate(zip(words, freqs)):
            for pair in zip(word, word[1:]):
                pair_counts[pair] += freq
                where.setdefault(pair, set()).add(w)
        heap = [(-c, a, b) for (a, b), c in pair_counts.items()]
        heapq.heapify(heap)

        while len(vocab) < vocab_size and heap:
            neg, a, b = heapq.heappop(heap)
            count = pair_counts.get((a, b), 0)
            if -neg != count:  # out of date: requeue with the current count
                if count > 0:
                    heapq.heappush(heap, (-count, a, b))
                continue
            if count < min_frequency:
                break
            token = id_to_token[a] + id_to_token[b]
            if token not in vocab:  # two different merges can make the same string
                vocab[token] = len(vocab)
                id_to_token.append(token)
            merges.append((id_to_token[a], id_to_token[b]))
            new_id = vocab[token]
            delta = Counter()
            for w in sorted(where.pop((a, b))):
                merged = _merge_word(words[w], a, b, new_id)
                if merged is None:
                    continue
                for pair in zip(words[w], words[w][1:]):
                    delta[pair] -= freqs[w]
                for pair in zip(merged, merged[1:]):
                    delta[pair] += freqs[w]
                    where.setdefault(pair, set()).add(w)
                words[w] = merged
            pair_counts.update(delta)  # Counter.update adds, negative deltas included
            for pair, change in delta.items():
                if change > 0:  # only pairs with the new token grow: they are new to the heap
                    heapq.heappush(heap, (-pair_counts[pair], *pair))
        logger.info("trained byte-level BPE: %d tokens, %d merges", len(vocab), len(merges))
        return cls(vocab, merges, specials)


def _merge_word(word: list[int], a: int, b: int, new_id: int) -> list[int] | None:
    """``word`` with every occurrence of the pair (a, b) joined into ``new_id``, left to right without
    overlap ("a a a" with (a, a) -> "aa a"); None if the pair does not occur."""
    out: list[int] = []
    i, n, found = 0, len(word), False
    while i < n:
        if i + 1 < n and word[i] == a and word[i + 1] == b:
            out.append(new_id)
            i += 2
            found = True
        else:
            out.append(word[i])
            i += 1
    return out if found else None


def _specials_from_hf_file(path: Path) -> tuple[str, ...]:
    """Special added tokens of an HF ``tokenizer.json`` in id order; GPT-2's if the file is absent."""
    if not path.exists():
        return GPT2_SPECIALS
    try:
        added = json.loads(path.read_text(encoding="utf-8")).get("added_tokens", [])
        return tuple(t["content"] for t in sorted(added, key=lambda t: t["id"]) if t.get("special", False))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: cannot read the special tokens: {e}") from e
