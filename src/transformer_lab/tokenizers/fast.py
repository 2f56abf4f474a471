"""The fast backend: HF ``tokenizers`` (Rust) built from the same vocabulary and rules as our
readable tokenizers, for the training pipeline. Tests hold its ids identical to ours.

One behaviour is aligned on purpose: HF matches special tokens inside input text by default; we
treat them as ordinary text unless ``allow_special`` (``encode_special_tokens`` switches HF's
matching off).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


class FastTokenizer:
    def __init__(self, hf_tokenizer):
        self.hf = hf_tokenizer

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "FastTokenizer":
        return cls(tokenizer.to_hf())

    @classmethod
    def from_file(cls, path: str | Path) -> "FastTokenizer":
        from tokenizers import Tokenizer as HFTokenizer

        return cls(HFTokenizer.from_file(str(path)))

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        self.hf.encode_special_tokens = not allow_special
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str], allow_special: bool = False) -> list[list[int]]:
        self.hf.encode_special_tokens = not allow_special
        return [e.ids for e in self.hf.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special)
