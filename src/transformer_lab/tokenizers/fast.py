"""The fast backend: HF ``tokenizers`` (Rust) built from the same vocabulary and rules as our
readable tokenizers, for the training pipeline. Tests hold its ids identical to ours.

One behaviour is aligned on purpose: literal special-token text follows our tokenizer's
``split_special_tokens`` (HF's ``encode_special_tokens`` is set from it), or ``allow_special`` per call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


class FastTokenizer:
    def __init__(self, hf_tokenizer, split_special_tokens: bool = True):
        self.hf = hf_tokenizer
        self.split_special_tokens = split_special_tokens

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "FastTokenizer":
        return cls(tokenizer.to_hf(), tokenizer.split_special_tokens)

    @classmethod
    def from_file(cls, path: str | Path) -> "FastTokenizer":
        from tokenizers import Tokenizer as HFTokenizer

        return cls(HFTokenizer.from_file(str(path)), split_special_tokens=False)  # as transformers reads it

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def _set_special_mode(self, allow_special: bool | None) -> None:
        self.hf.encode_special_tokens = self.split_special_tokens if allow_special is None else not allow_special

    def encode(self, text: str, allow_special: bool | None = None) -> list[int]:
        self._set_special_mode(allow_special)
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str], allow_special: bool | None = None) -> list[list[int]]:
        self._set_special_mode(allow_special)
        return [e.ids for e in self.hf.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        """As our tokenizers decode: an id outside the vocabulary is an error (HF's drops it silently)."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"ids: id {bad[0]} is out of range; expected 0 <= id < {self.vocab_size}")
        return self.hf.decode(ids, skip_special_tokens=skip_special)
