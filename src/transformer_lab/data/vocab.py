"""A symbol vocabulary (the demo's characters and words) with the encoder-decoder's special tokens.

Specials come first, at the ids every seq2seq vocabulary here shares (``tokenizers.special``):
<pad>=0, <unk>=1, <s>=2 (begin), </s>=3 (end). A vocabulary file records its specials, so a file
written before that order was fixed (<pad>, <s>, </s>, <unk>) still loads with its own ids.
``SymbolText`` reads and writes text in such a vocabulary, for the commands that take text
(``translate``, ``evaluate``, ``serve``, ``export``).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Sequence

from transformer_lab.tokenizers.special import EOS_ID, SEQ2SEQ_SPECIALS

VOCAB_FILE = "vocab.json"  # in a checkpoint of the dates task
LEGACY_SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")  # vocab.json files without a "specials" entry


class Vocab:
    def __init__(self, symbols: Sequence[str], specials: Sequence[str] = SEQ2SEQ_SPECIALS):
        if sorted(specials) != sorted(SEQ2SEQ_SPECIALS):
            raise ValueError(f"specials: expected an order of {SEQ2SEQ_SPECIALS}, got {tuple(specials)}")
        dupes = sorted(s for s, n in Counter(symbols).items() if n > 1)
        if dupes:
            raise ValueError(f"symbols: duplicate entries {dupes[:10]}")
        clash = sorted(set(symbols) & set(specials))
        if clash:
            raise ValueError(f"symbols: {clash} are reserved special tokens")
        self.specials = tuple(specials)
        self.itos = list(specials) + list(symbols)
        self.stoi = {s: i for i, s in enumerate(self.itos)}
        self.pad_id, self.unk_id = self.stoi["<pad>"], self.stoi["<unk>"]
        self.bos_id, self.eos_id = self.stoi["<s>"], self.stoi["</s>"]

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, symbols: Sequence[str], bos: bool = False, eos: bool = False) -> list[int]:
        ids = [self.stoi.get(s, self.unk_id) for s in symbols]
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def decode(self, ids: Sequence[int]) -> list[str]:
        """Symbols up to the first </s>, specials dropped."""
        out = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i >= len(self.specials):
                out.append(self.itos[i])
        return out

    def save(self, path: str | Path) -> None:
        data = {"specials": list(self.specials), "symbols": self.itos[len(self.specials):]}
        Path(path).write_text(json.dumps(data, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Vocab":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            return cls(data["symbols"], data.get("specials", LEGACY_SPECIALS))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: vocabulary file not found") from None
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as e:
            raise ValueError(f"{path}: not a vocabulary file ({e})") from None


class SymbolText:
    """Text in a symbol vocabulary, as a tokenizer: ``unit="char"`` reads one symbol per character (the
    demo's sources: "21.03.1987"), ``"word"`` one per space-separated word (its targets: "the twenty first
    of march ..."); decoding joins the symbols the same way. A symbol outside the vocabulary is an error
    naming it (the demo knows the letters of the months' abbreviations, lower case: "21 mar 1987" reads, "21 March 1987" does not),
    not an unknown token the model never saw in training."""

    algorithm = "symbols"

    def __init__(self, vocab: Vocab, unit: str):
        if unit not in ("char", "word"):
            raise ValueError(f"unit: expected 'char' or 'word', got {unit!r}")
        if vocab.eos_id != EOS_ID:
            raise ValueError(f"vocabulary: </s> at id {vocab.eos_id}, a file from before the specials' order was "
                             f"fixed ({vocab.specials}); retrain it to read text with it")
        self.vocab, self.unit = vocab, unit
        self.id_to_token = vocab.itos

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def tokenize(self, text: str) -> list[str]:
        return list(text.strip()) if self.unit == "char" else text.split()

    def encode(self, text: str) -> list[int]:
        symbols = self.tokenize(text)
        unknown = sorted({s for s in symbols if s not in self.vocab.stoi or s in self.vocab.specials})
        if unknown:
            known = "".join(s for s in self.vocab.itos[len(self.vocab.specials):] if len(s) == 1)
            raise ValueError(f"text {text!r}: {unknown[:20]} outside the vocabulary"
                             + (f" (its characters: {known!r})" if self.unit == "char" else ""))
        return self.vocab.encode(symbols)

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        """The symbols up to the first </s>, specials dropped (``skip_special=False``: every id's symbol)."""
        symbols = self.vocab.decode(ids) if skip_special else [self.vocab.itos[int(i)] for i in ids]
        return ("" if self.unit == "char" else " ").join(symbols)
