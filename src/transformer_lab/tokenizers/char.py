"""Character-level tokenizer: one id per distinct character of the training text (nanoGPT's
shakespeare-char: the sorted set of characters, 65 for tiny-shakespeare). No special tokens."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence


class CharTokenizer:
    def __init__(self, chars: Sequence[str]):
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise ValueError("chars: expected distinct single characters")
        if not chars:
            raise ValueError("chars: empty vocabulary (empty training text?)")
        self.itos = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.itos)}

    @classmethod
    def train(cls, text: str) -> "CharTokenizer":
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        unknown = sorted({c for c in text if c not in self.stoi})
        if unknown:
            first = min(text.index(c) for c in unknown)
            line = text.count("\n", 0, first) + 1
            column = first - (text.rfind("\n", 0, first) + 1) + 1
            where = f" (the first at line {line}, column {column})" if "\n" in text else ""
            raise ValueError(f"text: characters outside the vocabulary of {self.vocab_size}: {unknown[:20]}{where}")
        return [self.stoi[c] for c in text]

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        return "".join(self.itos[int(i)] for i in ids)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        if path.suffix != ".json":
            path.mkdir(parents=True, exist_ok=True)
            path = path / "tokenizer.json"
        path.write_text(json.dumps({"type": "char", "chars": "".join(self.itos)}, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "CharTokenizer":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            if data.get("type") != "char":
                raise ValueError("not a character tokenizer")
            return cls(list(data["chars"]))
        except (json.JSONDecodeError, KeyError, AttributeError, ValueError) as e:
            raise ValueError(f"{path}: not a character tokenizer file ({e})") from None
