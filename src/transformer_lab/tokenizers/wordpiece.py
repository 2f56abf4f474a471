"""WordPiece, BERT's tokenizer (Schuster & Nakajima 2012; Devlin et al. 2019).

Two stages:

1. The *basic tokenizer* normalises and splits text into words:
   - clean: drop NUL, U+FFFD and every "other" character (categories Cc, Cf, Cn, Co, Cs) except tab,
     newline and carriage return; turn every whitespace character into a space;
   - put spaces around each CJK ideograph, so each becomes its own word (Chinese has no spaces);
   - optionally (uncased models) strip accents (NFD, then drop combining marks) and lowercase;
   - split on whitespace, and make every punctuation character its own word.
2. *WordPiece* splits each word greedily, longest match first: take the longest prefix that is in the
   vocabulary, then the longest "##"-prefixed continuation, and so on. If some position has no
   match, the whole word becomes [UNK] (as does a word over 100 characters).

Training (``WordPieceTokenizer.train``) differs from BPE in the choice of a merge: BPE merges the most
*frequent* pair; WordPiece adds the unit that most increases the likelihood of the training data
(Schuster & Nakajima 2012) under a unigram model over the symbols: the pair (a, b) whose merge most
raises Σ_s n_s log(n_s / N), computed exactly from the counts (``likelihood_gain``). To first order that
gain is count(ab) · [log(count(ab) · N / (count(a) · count(b))) − 1]: the pair's count times how much
likelier its parts are together than apart. The score often quoted instead, count(ab) / (count(a) ·
count(b)) (``score="pmi"``), drops the count: it merges rare pairs first and leaves frequent words in
pieces ("the" as th ##e at 8,000 entries on SST-2; measured in ``explain bpe-wordpiece``).

Oracle: HF ``BertTokenizerFast`` (its Rust ``BertNormalizer`` and ``BertPreTokenizer``); where the
Python ``BertTokenizer`` and the Rust one differ we follow Rust: combining marks of every kind (Mn,
Mc, Me) are stripped, lowercasing is per character (no final-sigma rule), and whitespace is Unicode's
White_Space property.
"""

from __future__ import annotations

import heapq
import math
import unicodedata
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from transformer_lab.config import read_json_object
from transformer_lab.tokenizers.base import Tokenizer
from transformer_lab.tokenizers.special import BERT_SPECIALS

PREFIX = "##"
MAX_CHARS_PER_WORD = 100

# Unicode White_Space (what Rust's char::is_whitespace tests); str.isspace() differs (U+001C..1F).
_WHITESPACE = set("\t\n\x0b\x0c\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000") | {chr(c) for c in range(0x2000, 0x200B)}
_CJK_RANGES = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F), (0x2B920, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F),
)


def is_cjk(ch: str) -> bool:
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


def is_control(ch: str) -> bool:
    return ch not in "\t\n\r" and unicodedata.category(ch).startswith("C")


def is_punctuation(ch: str) -> bool:
    """ASCII punctuation (BERT counts $, +, <, ^, ` ... too) or any Unicode P* category."""
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def normalize(text: str, lowercase: bool, strip_accents: bool | None = None) -> str:
    """BERT's normaliser: clean, space out CJK, strip accents, lowercase (that order, as in HF)."""
    out = []
    for ch in text:
        if ch == "\x00" or ch == "\ufffd" or is_control(ch):
            continue
        if ch in _WHITESPACE:
            out.append(" ")
        elif is_cjk(ch):
            out.append(f" {ch} ")
        else:
            out.append(ch)
    text = "".join(out)
    if lowercase if strip_accents is None else strip_accents:
        text = "".join(c for c in unicodedata.normalize("NFD", text) if not unicodedata.category(c).startswith("M"))
    if lowercase:
        text = "".join(c.lower() for c in text)  # per character: no context-dependent final sigma
    return text


def pre_tokenize(text: str) -> list[str]:
    """Split normalised text on whitespace, each punctuation character a word of its own."""
    words: list[str] = []
    for chunk in text.split():  # the normaliser already mapped every whitespace to " "
        start = 0
        for i, ch in enumerate(chunk):
            if is_punctuation(ch):
                if i > start:
                    words.append(chunk[start:i])
                words.append(ch)
                start = i + 1
        if start < len(chunk):
            words.append(chunk[start:])
    return words


def wordpiece(word: str, vocab: dict[str, int] | set[str], unk: str, max_chars: int = MAX_CHARS_PER_WORD) -> list[str]:
    """Greedy longest-match-first segmentation of one word."""
    if len(word) > max_chars:
        return [unk]
    pieces, start = [], 0
    while start < len(word):
        end = len(word)
        while end > start:
            piece = word[start:end] if start == 0 else PREFIX + word[start:end]
            if piece in vocab:
                break
            end -= 1
        else:
            return [unk]  # no vocabulary entry matches here: the whole word is unknown
        pieces.append(piece)
        start = end
    return pieces


class WordPieceTokenizer(Tokenizer):
    algorithm = "wordpiece"

    def __init__(
        self,
        vocab: dict[str, int],
        lowercase: bool = True,
        strip_accents: bool | None = None,
        specials: Sequence[str] = BERT_SPECIALS,
        unk_token: str = "[UNK]",
    ):
        super().__init__(vocab, specials, unk_token)
        self.lowercase = lowercase
        self.strip_accents = strip_accents

    # --- encoding -------------------------------------------------------------------------------
    def basic_tokenize(self, text: str) -> list[str]:
        return pre_tokenize(normalize(text, self.lowercase, self.strip_accents))

    def _tokenize(self, text: str) -> list[str]:
        return [p for word in self.basic_tokenize(text) for p in wordpiece(word, self.vocab, self.unk_token)]

    def _detokenize(self, pieces: list[str]) -> str:
        """Words joined by spaces, "##" continuations glued on. Lossy by design (lowercasing,
        accent stripping, spaces around punctuation are not recorded)."""
        out = ""
        for p in pieces:
            out += p[len(PREFIX):] if p.startswith(PREFIX) else (" " + p if out else p)
        return out

    # --- files ----------------------------------------------------------------------------------
    @classmethod
    def from_vocab_file(cls, path: str | Path, lowercase: bool = True, **kw) -> "WordPieceTokenizer":
        """A BERT ``vocab.txt``: one token per line, the line number is the id."""
        path = Path(path)
        try:
            lines = path.read_text(encoding="utf-8").split("\n")
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: vocabulary file not found") from None
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 text (byte offset {e.start})") from None
        if lines and lines[-1] == "":
            lines.pop()
        if not lines:
            raise ValueError(f"{path}: empty vocabulary file")
        vocab: dict[str, int] = {}
        for n, tok in enumerate(lines):
            tok = tok.rstrip("\r")
            if tok in vocab:
                raise ValueError(f"{path}: line {n + 1}: duplicate token {tok!r} (first on line {vocab[tok] + 1})")
            vocab[tok] = n
        specials = kw.pop("specials", BERT_SPECIALS)
        missing = [t for t in specials if t not in vocab]
        if missing:
            raise ValueError(f"{path}: special token(s) {missing} missing from the vocabulary")
        return cls(vocab, lowercase=lowercase, specials=specials, **kw)

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "vocab.txt").write_text("".join(t + "\n" for t in self.id_to_token), encoding="utf-8")
        self.to_hf().save(str(directory / "tokenizer.json"))
        self.write_config(directory, lowercase=self.lowercase, strip_accents=self.strip_accents)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "WordPieceTokenizer":
        directory = Path(directory)
        config = directory / "tokenizer_config.json"
        meta = read_json_object(config)
        try:
            return cls.from_vocab_file(directory / "vocab.txt", lowercase=meta["lowercase"],
                                       strip_accents=meta["strip_accents"], specials=tuple(meta["specials"]),
                                       unk_token=meta["unk_token"])
        except (KeyError, TypeError) as e:
            raise ValueError(f"{config}: not a WordPiece tokenizer config (missing or bad {e})") from None

    def to_hf(self):
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, normalizers, pre_tokenizers

        tok = HFTokenizer(models.WordPiece(self.vocab, unk_token=self.unk_token,
                                           max_input_chars_per_word=MAX_CHARS_PER_WORD))
        tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                    strip_accents=self.strip_accents, lowercase=self.lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix=PREFIX)
        tok.add_special_tokens(list(self.specials))
        return tok

    # --- training -------------------------------------------------------------------------------
    @classmethod
    def train(
        cls,
        lines: Iterable[str],
        vocab_size: int,
        lowercase: bool = True,
        specials: Sequence[str] = BERT_SPECIALS,
        min_frequency: int = 1,
        score: str = "likelihood",
    ) -> "WordPieceTokenizer":
        """Learn a vocabulary by merges of the largest likelihood gain (see the module docstring). The
        alphabet is every character of the text; a merge needs its pair seen ``min_frequency`` times
        (as Hugging Face's trainers count it). ``score="pmi"``: the often-quoted score instead."""
        if vocab_size <= len(specials):
            raise ValueError(f"vocab_size: {vocab_size} leaves no room after the {len(specials)} special tokens "
                             f"({', '.join(specials)}); expected more than {len(specials)}")
        probe = cls({t: i for i, t in enumerate(specials)}, lowercase=lowercase, specials=specials,
                    unk_token=specials[1] if len(specials) > 1 else specials[0])
        words = Counter(w for line in lines for w in probe.basic_tokenize(line))
        pieces = learn_wordpiece_vocab(words, vocab_size - len(specials), score=score, min_frequency=min_frequency)
        vocab = {t: i for i, t in enumerate([*specials, *pieces])}
        unk = "[UNK]" if "[UNK]" in specials else "<unk>"
        return cls(vocab, lowercase=lowercase, specials=specials, unk_token=unk)


def pairs_in(word: Sequence[str]) -> Iterator[tuple[str, str]]:
    """The adjacent pairs a merge would replace: every pair of two different symbols, and a symbol
    paired with itself once per two in a run (``x x x`` holds one ``(x, x)``: merging it gives ``xx x``)."""
    run = 1
    for prev, sym in zip(word, word[1:]):
        run = run + 1 if sym == prev else 1
        if sym != prev or run % 2 == 0:
            yield prev, sym


def likelihood_gain(k: int, count_a: int, count_b: int, total: int, same: bool = False) -> float:
    """How much the unigram log-likelihood of the corpus, Σ_s n_s log(n_s / N) in nats, rises when ``k``
    occurrences of the pair (a, b) become one symbol: n_ab = k, n_a and n_b lose k each (2k when a is
    b), N loses k. With f(x) = x log x that log-likelihood is Σ_s f(n_s) − f(N). (ab is taken as a new
    symbol; where other words already spell it, the rise is larger than this.)"""
    # (x log x written out, 0 log 0 = 0: this runs for every pair re-scored after every merge)
    log = math.log
    if same:
        rest = count_a - 2 * k
        local = k * log(k) - count_a * log(count_a) + (rest * log(rest) if rest else 0.0)
    else:
        rest_a, rest_b = count_a - k, count_b - k
        local = (k * log(k) - count_a * log(count_a) - count_b * log(count_b)
                 + (rest_a * log(rest_a) if rest_a else 0.0) + (rest_b * log(rest_b) if rest_b else 0.0))
    return local - (total - k) * log(total - k) + total * log(total)


def pmi_score(k: int, count_a: int, count_b: int, total: int, same: bool = False) -> float:
    """count(ab) / (count(a) · count(b)): the score often quoted for WordPiece (e.g. Hugging Face's
    course). It ignores how often the pair occurs, so pairs of rare symbols come first (kept to measure
    it against the likelihood: ``experiments/questions/bpe_wordpiece.py``)."""
    return k / (count_a * count_b)


SCORES = {"likelihood": likelihood_gain, "pmi": pmi_score}


def learn_wordpiece_vocab(word_counts: dict[str, int], size: int, score: str = "likelihood",
                          min_frequency: int = 1) -> list[str]:
    """The alphabet (initial characters, and "##"-prefixed inner characters) plus merged symbols,
    in the order learned, until ``size`` entries or no pair seen ``min_frequency`` times is left.
    ``score``: "likelihood" (each merge is the pair of largest ``likelihood_gain``) or "pmi".

    Bookkeeping, incremental: ``pair_count`` and ``symbol_count`` (weighted by word frequency), an
    index from each pair to the words that contain it, and a max-heap of scores with lazy deletion.
    A merge changes the counts of the two merged symbols, so the scores of every pair containing
    either change too: those are re-pushed, and a popped entry whose counts are stale is dropped.
    The likelihood gain also depends on N, which every merge lowers; a lower N only lowers a pair's
    gain (f(N) − f(N − k) falls with N), so an entry's score is an upper bound of its pair's gain
    now: a popped entry is recomputed, taken if unchanged, pushed back with its new score if not.
    """
    if size < 1:
        raise ValueError(f"vocab_size: leaves no room after the special tokens (size {size})")
    if score not in SCORES:
        raise ValueError(f"score: expected one of {sorted(SCORES)}, got {score!r}")
    gain = SCORES[score]
    ids = list(word_counts)
    freq = [word_counts[w] for w in ids]
    split = [[w[0]] + [PREFIX + c for c in w[1:]] for w in ids]
    alphabet = sorted({s for word in split for s in word}, key=lambda s: (s.startswith(PREFIX), s))
    if len(alphabet) > size:
        raise ValueError(
            f"vocab_size: {size} entries (after specials) is smaller than the alphabet of "
            f"{len(alphabet)} characters; raise vocab_size"
        )
    symbol_count: Counter = Counter()
    pair_count: Counter = Counter()
    where: dict[tuple[str, str], set[int]] = defaultdict(set)
    pairs_of: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for i, word in enumerate(split):
        for s in word:
            symbol_count[s] += freq[i]
        for pair in pairs_in(word):
            pair_count[pair] += freq[i]
            where[pair].add(i)
            pairs_of[pair[0]].add(pair)
            pairs_of[pair[1]].add(pair)
    total = sum(symbol_count.values())

    def entry(pair: tuple[str, str]) -> tuple:
        # Ties: the more frequent pair, then the lexicographically smaller one (deterministic).
        counts = (pair_count[pair], symbol_count[pair[0]], symbol_count[pair[1]])
        return -gain(*counts, total, pair[0] == pair[1]), -counts[0], pair, counts

    heap = [entry(p) for p in pair_count]
    heapq.heapify(heap)
    vocab = list(alphabet)
    known = set(vocab)
    while len(vocab) < size and heap:
        top = heapq.heappop(heap)
        pair = top[2]
        if pair_count.get(pair, 0) < max(min_frequency, 1):
            continue  # merged already, gone, or too rare
        now = entry(pair)
        if now[3] != top[3]:
            continue  # stale counts: a fresh entry was pushed when they changed
        if now[0] != top[0]:
            heapq.heappush(heap, now)  # N fell since: the gain is lower now
            continue
        a, b = pair
        merged = a + b[len(PREFIX):]
        if merged not in known:  # (rarely, other words already spell it from another pair)
            vocab.append(merged)
            known.add(merged)
        touched: set[tuple[str, str]] = set()
        for i in sorted(where.pop(pair)):
            word, f = split[i], freq[i]
            for p in pairs_in(word):  # remove the word's old pairs and symbols
                pair_count[p] -= f
                where[p].discard(i)
                touched.add(p)
            for s in word:
                symbol_count[s] -= f
            new, j = [], 0
            while j < len(word):
                if j + 1 < len(word) and word[j] == a and word[j + 1] == b:
                    new.append(merged)
                    j += 2
                else:
                    new.append(word[j])
                    j += 1
            split[i] = new
            total -= f * (len(word) - len(new))
            for s in new:
                symbol_count[s] += f
            for p in pairs_in(new):
                pair_count[p] += f
                where[p].add(i)
                pairs_of[p[0]].add(p)
                pairs_of[p[1]].add(p)
                touched.add(p)
        pair_count.pop(pair, None)
        touched |= pairs_of[a] | pairs_of[b] | pairs_of[merged]
        for p in touched:
            if pair_count.get(p, 0) > 0:
                heapq.heappush(heap, entry(p))
    return vocab
