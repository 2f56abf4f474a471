"""Byte-pair encoding as in subword-nmt (Sennrich, Haddow & Birch 2016, "Neural Machine Translation of
Rare Words with Subword Units", ACL), giving the same merges and the same segmentation as
``subword-nmt learn-bpe`` / ``apply-bpe`` 0.3.8 (the tests hold us to that).

Learning (``learn_bpe``)
------------------------
1. Words: every line is split on the space character only (``line.strip('\\r\\n ').split(' ')``, empty
   words dropped, tabs and other whitespace stay inside words), and counted.
2. Each word becomes a sequence of symbols, its characters, with the end-of-word marker ``</w>`` glued
   to the last one ("version 0.2"): ``low`` -> ``l o w</w>``. So ``es</w>`` at the end of a word is a
   different symbol from ``es`` inside one, which is what lets BPE learn suffixes.
3. Count every adjacent symbol pair, weighted by the word's frequency.
4. Repeat ``num_merges`` times: take the most frequent pair (ties: the larger pair, comparing
   ``(a, b)`` as Python tuples of strings, as subword-nmt's ``max(stats, key=lambda x: (stats[x], x))``)
   and stop early if its count is below ``min_frequency``; record it; in every word replace each
   occurrence, left to right and non-overlapping (``x x x`` -> ``xx x``), by the concatenated symbol.

Done naively, step 4 recounts the corpus each time. We keep the pair counts incrementally: an index
from each pair to the words that contain it means a merge touches only those words, and for each of
them we subtract the pairs of the old spelling and add those of the new. The most frequent pair comes
from a max-heap with lazy deletion: every count change pushes a fresh entry, and a popped entry whose
count no longer matches is stale and dropped. (subword-nmt instead prunes rare pairs from ``max()``
and re-reads them when needed; the two agree, which the Multi30k test checks merge by merge.)

Applying (``BPETokenizer``)
---------------------------
A word of one character is left as it is. Otherwise it is spelled as in step 2, and while some
adjacent pair is a known merge, the pair with the lowest rank (earliest learned) is merged at all its
non-overlapping occurrences, left to right. ``</w>`` is then dropped, and every piece but the last of
a word gets the separator: ``tokenization`` -> ``["token@@", "ization"]``, printed by subword-nmt as
``token@@ ization``. Detokenizing joins pieces with spaces and deletes ``"@@ "``.

Two spellings of one vocabulary
-------------------------------
Our pieces use subword-nmt's ``@@`` convention; HF ``tokenizers`` (``models.BPE`` with
``end_of_word_suffix="</w>"``) uses the symbols themselves. They are two spellings of the same set:

    symbol (HF)   piece (ours)
    ``ab``        ``ab@@``      (inside a word)
    ``ab</w>``    ``ab``        (at the end of a word)

``self.vocab`` is keyed by our spelling; ``to_hf`` respells each entry with the same id, so both
backends give identical ids. The respelling is ambiguous only for a word-final symbol whose text ends
in ``@@`` (``a@@</w>`` would read back as ``a``): subword-nmt's own output has this ambiguity, and we
refuse to build such a vocabulary rather than give wrong ids (``ValueError``).

The vocabulary (when not given) is the special tokens, then each character of the training alphabet
(sorted by code point) inside and at the end of a word, then each merged symbol in merge order:
every piece the merges can produce. A character outside the alphabet becomes the unknown token, one
per character, as in HF.

Where the backends could part ways, and what we do
--------------------------------------------------
- A pair listed twice in a codes file: subword-nmt ranks it by its first line, HF by its last, so
  ``to_hf`` passes each pair once, at its first rank.
- HF treats special-token strings in the text as special by default (our ``allow_special=True``);
  ``encode_special_tokens = True`` gives our default.
- Codes files without a ``#version`` header are version 0.1 for subword-nmt (``l o w </w>``); we
  segment them the same way, but HF's BPE cannot express them (``to_hf`` raises).
- Text containing the literal string ``</w>`` is not supported: subword-nmt itself cannot tell it
  from the marker.
- Learning from a corpus with no pair at all returns no merges (subword-nmt 0.3.8 raises there).
"""

from __future__ import annotations

import heapq
import json
import logging
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from transformer_lab.tokenizers.base import Tokenizer
from transformer_lab.tokenizers.merges import apply_merges
from transformer_lab.tokenizers.special import SEQ2SEQ_SPECIALS

logger = logging.getLogger(__name__)

EOW = "</w>"  # end-of-word marker glued to a word's last symbol
SEPARATOR = "@@"  # subword-nmt's continuation mark on every piece but the last of a word
VERSION_HEADER = "#version: 0.2"

Pair = tuple[str, str]


# --- learning ----------------------------------------------------------------------------------
def words_of(line: str) -> list[str]:
    """A line's words as subword-nmt sees them: split on " " only, ends stripped of "\\r\\n "."""
    return [w for w in line.strip("\r\n ").split(" ") if w]


def count_words(lines: Iterable[str]) -> Counter:
    """Word frequencies of a corpus (subword-nmt's ``get_vocabulary``)."""
    counts: Counter = Counter()
    for line in lines:
        counts.update(words_of(line))
    return counts


def spell(word: str, version: tuple[int, int] = (0, 2)) -> tuple[str, ...]:
    """A word's initial symbols: ``low`` -> ``l o w</w>`` (0.2), ``l o w </w>`` (0.1)."""
    if version == (0, 1):
        return (*word, EOW)
    return (*word[:-1], word[-1] + EOW)


def merge_pair(symbols: tuple[str, ...], pair: Pair) -> tuple[str, ...]:
    """Replace each occurrence of ``pair``, left to right and non-overlapping, by one symbol."""
    first, second = pair
    out: list[str] = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and symbols[i] == first and symbols[i + 1] == second:
            out.append(first + second)
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return tuple(out)


def _descending(pair: Pair) -> tuple[int, ...]:
    """A key that orders pairs from largest to smallest (Python tuple-of-str order reversed), for a
    min-heap. Code points are negated; the terminator 1 (above every negated code point) makes a
    string sort after its own extensions, as "abc" > "ab" requires."""
    a, b = pair
    return (*(-ord(c) for c in a), 1, *(-ord(c) for c in b), 1)


def learn_bpe(corpus: Mapping[str, int] | Iterable[str], num_merges: int, min_frequency: int = 2) -> list[Pair]:
    """The merges ``subword-nmt learn-bpe -s num_merges --min-frequency min_frequency`` writes, in order.

    ``corpus``: a mapping word -> count (subword-nmt's ``--dict-input``) or an iterable of lines.
    The algorithm and its bookkeeping are described in the module docstring.
    """
    if isinstance(num_merges, bool) or not isinstance(num_merges, int) or num_merges < 1:
        raise ValueError(f"num_merges: expected an int >= 1, got {num_merges!r}")
    if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 1:
        raise ValueError(f"min_frequency: expected an int >= 1, got {min_frequency!r}")
    if isinstance(corpus, str):
        raise ValueError("corpus: expected an iterable of lines or a word -> count mapping, got one str")
    counts = _checked_counts(corpus) if isinstance(corpus, Mapping) else count_words(corpus)

    words = [spell(w) for w in counts]
    freqs = list(counts.values())
    pair_count: dict[Pair, int] = defaultdict(int)
    where: dict[Pair, set[int]] = defaultdict(set)  # pair -> ids of the words that contain it
    for i, symbols in enumerate(words):
        for pair in zip(symbols, symbols[1:]):
            pair_count[pair] += freqs[i]
            where[pair].add(i)
    heap = [(-n, _descending(p), p) for p, n in pair_count.items()]
    heapq.heapify(heap)

    merges: list[Pair] = []
    while len(merges) < num_merges:
        best = _pop_most_frequent(heap, pair_count)
        if best is None or pair_count[best] < min_frequency:
            break
        merges.append(best)
        delta: dict[Pair, int] = defaultdict(int)
        for i in where.pop(best):
            old, new = words[i], merge_pair(words[i], best)
            words[i] = new
            old_pairs, new_pairs = list(zip(old, old[1:])), list(zip(new, new[1:]))
            for pair in old_pairs:
                delta[pair] -= freqs[i]
            for pair in new_pairs:
                delta[pair] += freqs[i]
            for pair in set(old_pairs) - set(new_pairs):
                if pair in where:
                    where[pair].discard(i)
            for pair in set(new_pairs) - set(old_pairs):
                where[pair].add(i)
        for pair, d in delta.items():
            if d == 0:
                continue
            pair_count[pair] += d
            if pair_count[pair] > 0:
                heapq.heappush(heap, (-pair_count[pair], _descending(pair), pair))
            else:
                del pair_count[pair]  # keep the table to live pairs
    return merges


def _pop_most_frequent(heap: list, pair_count: dict[Pair, int]) -> Pair | None:
    """The most frequent live pair (ties: the largest), dropping stale heap entries on the way."""
    while heap:
        neg_count, _, pair = heapq.heappop(heap)
        if pair_count.get(pair, 0) == -neg_count:
            return pair
    return None


def _checked_counts(counts: Mapping[str, int]) -> dict[str, int]:
    for word, n in counts.items():
        if not isinstance(word, str) or not word or " " in word:
            raise ValueError(f"corpus: words must be non-empty strings without spaces, got {word!r}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"corpus: count of {word!r} must be an int >= 1, got {n!r}")
    return dict(counts)


# --- merges files ------------------------------------------------------------------------------
def read_merges(path: str | Path) -> tuple[list[Pair], tuple[int, int]]:
    """A subword-nmt codes file: an optional ``#version: X.Y`` header, then ``a b`` per line.

    Without a header subword-nmt reads the file as version 0.1 (``</w>`` a symbol of its own), and so
    do we. Returns (merges in file order, version).
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").rstrip("\n").split("\n")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: merges file not found") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte offset {e.start})") from None
    version, first = (0, 1), 0
    if lines[0].startswith("#version:"):
        version = _parse_version(lines[0], path)
        first = 1
    merges: list[Pair] = []
    for n in range(first, len(lines)):
        if n == first and lines[n] == "" and len(lines) == first + 1:
            break  # no merges at all (subword-nmt rejects this file; we accept it)
        parts = lines[n].strip("\r\n ").split(" ")
        if len(parts) != 2 or not all(parts):
            raise ValueError(
                f"{path}: line {n + 1}: expected two symbols separated by one space, got {lines[n]!r}"
            )
        merges.append((parts[0], parts[1]))
    return merges, version


def _parse_version(header: str, path: Path) -> tuple[int, int]:
    text = header.split()[-1]
    # subword-nmt drops trailing ".0"s: "0.2.0" is 0.2
    parts = re.sub(r"(\.0+)*$", "", text).split(".")
    if parts == ["0", "1"] or parts == ["0", "2"]:
        return (0, int(parts[1]))
    raise ValueError(f"{path}: line 1: unsupported version {text!r} (expected 0.1 or 0.2)")


def write_merges(path: str | Path, merges: Sequence[Pair], version: tuple[int, int] = (0, 2)) -> Path:
    """A codes file subword-nmt reads: the 0.2 header (none for 0.1, which is how 0.1 is marked)."""
    path = Path(path)
    header = [VERSION_HEADER] if version == (0, 2) else []
    path.write_text("".join(line + "\n" for line in header + [f"{a} {b}" for a, b in merges]), encoding="utf-8")
    return path


# --- the two spellings -------------------------------------------------------------------------
def symbol_to_piece(symbol: str) -> str:
    """HF spelling -> ours: ``ab</w>`` -> ``ab``, ``ab`` -> ``ab@@``."""
    return symbol[: -len(EOW)] if symbol.endswith(EOW) else symbol + SEPARATOR


def piece_to_symbol(piece: str) -> str:
    """Ours -> HF spelling: ``ab@@`` -> ``ab``, ``ab`` -> ``ab</w>``."""
    return piece[: -len(SEPARATOR)] if piece.endswith(SEPARATOR) else piece + EOW


def pieces_for(
    merges: Sequence[Pair], alphabet: Iterable[str], version: tuple[int, int] = (0, 2), extra: Iterable[str] = ()
) -> list[str]:
    """Every piece the merges can produce, in our spelling: each character inside and at the end of a
    word (sorted by code point), then each merged symbol in merge order, then the ``extra`` symbols;
    duplicates dropped."""
    symbols = [s for c in sorted(set(alphabet)) for s in (c, c + EOW)]
    symbols += [a + b for a, b in merges]
    symbols += list(extra)
    pieces: list[str] = []
    for symbol in symbols:
        if version == (0, 2) or symbol.endswith(EOW):
            candidates = [symbol_to_piece(symbol)]
        else:  # 0.1: "</w>" may follow any symbol and is then dropped, so each can end a word
            candidates = [symbol + SEPARATOR, symbol]
        pieces += [p for p in candidates if p]
    return list(dict.fromkeys(pieces))


def alphabet_of(merges: Sequence[Pair]) -> set[str]:
    """The characters named in a merges list (all a codes file tells about the alphabet)."""
    chars: set[str] = set()
    for pair in merges:
        for symbol in pair:
            chars.update(symbol[: -len(EOW)] if symbol.endswith(EOW) else symbol)
    return chars


# --- the tokenizer -----------------------------------------------------------------------------
class BPETokenizer(Tokenizer):
    """Sennrich BPE, segmenting exactly like ``subword-nmt apply-bpe`` (see the module docstring).

    ``merges``: in rank order (a repeated pair keeps its first rank, as in subword-nmt).
    ``vocab``: piece (our ``@@`` spelling) -> id; by default the specials followed by ``pieces_for``
    (merges, alphabet). ``alphabet``: characters known besides those in the merges.
    """

    algorithm = "bpe"

    def __init__(
        self,
        merges: Sequence[Pair],
        vocab: dict[str, int] | None = None,
        specials: Sequence[str] = SEQ2SEQ_SPECIALS,
        unk_token: str | None = "<unk>",
        alphabet: Iterable[str] = (),
        version: tuple[int, int] = (0, 2),
    ):
        if version not in ((0, 1), (0, 2)):
            raise ValueError(f"version: expected (0, 1) or (0, 2), got {version!r}")
        self.merges = [_checked_pair(p, n) for n, p in enumerate(merges)]
        self.version = tuple(version)
        self.ranks: dict[Pair, int] = {}
        for rank, pair in enumerate(self.merges):
            self.ranks.setdefault(pair, rank)
        if vocab is None:
            # the inputs too: a hand-written codes file may read a symbol no merge writes (never
            # produced, but HF wants an id for every symbol its merges name)
            inputs = [s for pair in self.merges for s in pair]
            pieces = pieces_for(self.merges, set(alphabet) | alphabet_of(self.merges), self.version, inputs)
            clash = sorted(p for p in pieces if p in specials)
            if clash:
                raise ValueError(f"merges: pieces {clash} have the spelling of special tokens; "
                                 "rename the special tokens or remove those words from the corpus")
            vocab = {p: i for i, p in enumerate([*specials, *pieces])}
        super().__init__(vocab, specials, unk_token)
        self._check_vocab()
        self._cache: dict[str, tuple[str, ...]] = {}

    def _check_vocab(self) -> None:
        """Every symbol a merge reads or writes needs an id (else HF, which merges ids, would part
        ways with us), and for 0.2 the respelling to HF's symbols must be one-to-one."""
        symbols = {s for a, b in self.merges for s in (a, b, a + b)}
        missing = sorted(p for p in pieces_for([], (), self.version, symbols) if p not in self.vocab)
        if missing:
            raise ValueError(f"vocab: {len(missing)} piece(s) used by the merges are missing, e.g. {missing[:5]}")
        if self.version != (0, 2):
            return
        ambiguous = sorted(s for s in symbols if s.endswith(SEPARATOR + EOW))
        if ambiguous:
            raise ValueError(
                f"merges: word-final symbols {ambiguous[:5]} end in {SEPARATOR!r}, so the {SEPARATOR!r} "
                "convention cannot tell them from word-internal ones (nor can subword-nmt's output)"
            )
        clash = sorted(p for p in self.vocab if p not in self.specials and piece_to_symbol(p) in self.specials)
        if clash:
            raise ValueError(f"vocab: pieces {clash[:5]} are spelled like special tokens in HF's spelling")

    # --- encoding -------------------------------------------------------------------------------
    def _tokenize(self, text: str) -> list[str]:
        pieces: list[str] = []
        for word in words_of(text):
            symbols = self.segment_word(word)
            pieces += [s + SEPARATOR for s in symbols[:-1]]
            pieces.append(symbols[-1])
        return pieces

    def segment_word(self, word: str) -> tuple[str, ...]:
        """One word's symbols after BPE, ``</w>`` removed (subword-nmt's ``encode``)."""
        if len(word) == 1:
            return (word,)  # subword-nmt leaves single characters alone
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        # Lowest rank first at all occurrences, left to right; a heap keeps long words O(n log n).
        symbols = tuple(apply_merges(spell(word, self.version), self.ranks))
        if symbols[-1] == EOW:  # 0.1: the marker was never merged
            symbols = symbols[:-1]
        elif symbols[-1].endswith(EOW):
            symbols = (*symbols[:-1], symbols[-1][: -len(EOW)])
        if len(self._cache) < 100_000:  # bounded: words are Zipfian, the head is what repeats
            self._cache[word] = symbols
        return symbols

    def _detokenize(self, pieces: list[str]) -> str:
        """Undo the ``@@ `` convention (``sed -r 's/(@@ )|(@@ ?$)//g'`` in subword-nmt's docs)."""
        text = " ".join(pieces).replace(SEPARATOR + " ", "")
        return text[: -len(SEPARATOR)] if text.endswith(SEPARATOR) else text

    # --- training -------------------------------------------------------------------------------
    @classmethod
    def train(
        cls,
        lines: Iterable[str],
        num_merges: int,
        specials: Sequence[str] = SEQ2SEQ_SPECIALS,
        min_frequency: int = 2,
        unk_token: str | None = "<unk>",
    ) -> "BPETokenizer":
        """Learn ``num_merges`` merges (fewer if pairs run out) from ``lines``; the vocabulary is the
        specials plus every piece of the corpus alphabet and the merges."""
        counts = count_words(lines)
        merges = learn_bpe(counts, num_merges, min_frequency)
        alphabet = {c for word in counts for c in word}
        return cls(merges, specials=specials, unk_token=unk_token, alphabet=alphabet)

    # --- files ----------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """``merges.txt`` (subword-nmt codes), ``vocab.json`` (our spelling) and ``tokenizer.json``
        (HF; not written for version 0.1 codes, which HF's BPE cannot express)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_merges(directory / "merges.txt", self.merges, self.version)
        vocab = dict(sorted(self.vocab.items(), key=lambda kv: kv[1]))
        (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
        self.write_config(directory)
        if self.version == (0, 2):
            self.to_hf().save(str(directory / "tokenizer.json"))
        else:
            logger.warning("%s: version 0.1 codes, no tokenizer.json written (HF BPE cannot express them)", directory)
        return directory

    @classmethod
    def load(
        cls,
        path: str | Path,
        specials: Sequence[str] | None = None,
        unk_token: str | None = "<unk>",
    ) -> "BPETokenizer":
        """From a directory written by ``save``, or a plain subword-nmt codes file.

        The special tokens are those marked special in ``tokenizer.json`` when there is one, else
        ``specials`` (default ``SEQ2SEQ_SPECIALS``). A codes file alone names only the characters
        its merges use: others become unknown, unlike in the tokenizer that was saved.
        """
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or directory")
        merges_path = path / "merges.txt" if path.is_dir() else path
        merges, version = read_merges(merges_path)
        vocab = None
        if path.is_dir() and (path / "vocab.json").exists():
            vocab = _read_vocab(path / "vocab.json")
        if specials is None and path.is_dir() and (path / "tokenizer.json").exists():
            specials = _hf_specials(path / "tokenizer.json")
        specials = SEQ2SEQ_SPECIALS if specials is None else specials
        try:
            return cls(merges, vocab=vocab, specials=specials, unk_token=unk_token, version=version)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    @classmethod
    def from_hf_json(cls, data: dict) -> "BPETokenizer":
        """From a parsed HF ``tokenizer.json`` written by ``to_hf`` (BPE with the ``</w>`` suffix):
        the vocabulary is respelled back (``ab`` -> ``ab@@``, ``ab</w>`` -> ``ab``)."""
        model = data["model"]
        specials = tuple(t["content"] for t in data.get("added_tokens", []) if t.get("special"))
        vocab = {tok if tok in specials else symbol_to_piece(tok): i for tok, i in model["vocab"].items()}
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
        return cls(merges, vocab=vocab, specials=specials, unk_token=model.get("unk_token"))

    # --- the fast backend -----------------------------------------------------------------------
    def to_hf(self):
        """HF ``tokenizers`` BPE with the same ids: the vocabulary respelled (``ab@@`` -> ``ab``,
        ``ab`` -> ``ab</w>``), the merges deduplicated (subword-nmt keeps a pair's first rank), words
        split on " " only, the ends of the text stripped of "\\r\\n " as subword-nmt does."""
        from tokenizers import Regex
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, normalizers, pre_tokenizers

        if self.version != (0, 2):
            raise ValueError(
                f"version: HF BPE needs version 0.2 codes ('</w>' on the last character), got {self.version}"
            )
        vocab = {tok if tok in self.specials else piece_to_symbol(tok): i for tok, i in self.vocab.items()}
        model = models.BPE(vocab, list(self.ranks), unk_token=self.unk_token, end_of_word_suffix=EOW)
        tok = HFTokenizer(model)
        # \A and \z: Oniguruma's ^ and $ would also match at line breaks inside the text
        tok.normalizer = normalizers.Replace(Regex(r"\A[\r\n ]+|[\r\n ]+\z"), "")
        tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="removed")
        tok.decoder = decoders.BPEDecoder(suffix=EOW)
        tok.add_special_tokens(list(self.specials))
        return tok


def _checked_pair(pair, n: int) -> Pair:
    if not (
        isinstance(pair, (tuple, list)) and len(pair) == 2
        and all(isinstance(s, str) and s and " " not in s for s in pair)
    ):
        raise ValueError(f"merges[{n}]: expected a pair of non-empty strings without spaces, got {pair!r}")
    return (pair[0], pair[1])


def _read_vocab(path: Path) -> dict[str, int]:
    try:
        vocab = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: line {e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(vocab, dict) or not all(isinstance(i, int) for i in vocab.values()):
        raise ValueError(f"{path}: expected a JSON object mapping piece -> integer id")
    return vocab


def _hf_specials(path: Path) -> tuple[str, ...]:
    added = json.loads(path.read_text(encoding="utf-8")).get("added_tokens", [])
    return tuple(t["content"] for t in sorted(added, key=lambda t: t["id"]) if t.get("special"))
