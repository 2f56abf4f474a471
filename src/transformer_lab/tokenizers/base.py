"""What every tokenizer offers: text -> pieces -> ids and back, with one special-token mechanism.

Subclasses implement ``_tokenize`` (one plain-text segment -> pieces), ``_detokenize`` (pieces ->
text), ``to_hf`` (the equivalent HF ``tokenizers.Tokenizer``, our fast backend and export format)
and ``save``.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Sequence

from transformer_lab.tokenizers.special import SpecialTokens, check_specials_in_vocab


class Tokenizer(ABC):
    algorithm: str = ""
    # Literal special-token text in the input: ordinary text (True) or the special id (False); see
    # ``special.py``. Loaders of Hugging Face files set False, as transformers behaves.
    split_special_tokens: bool = True

    def __init__(self, vocab: dict[str, int], specials: Sequence[str] = (), unk_token: str | None = None):
        ids = sorted(vocab.values())
        if ids != list(range(len(ids))):
            raise ValueError(f"vocab: ids must be 0..{len(ids) - 1} with no gaps or repeats")
        self.vocab = dict(vocab)
        self.id_to_token = [""] * len(vocab)
        for tok, i in vocab.items():
            self.id_to_token[i] = tok
        self.specials = SpecialTokens(specials)
        check_specials_in_vocab(self.specials.tokens, self.vocab, f"{self.algorithm} tokenizer")
        if unk_token is not None and unk_token not in self.vocab:
            raise ValueError(f"unk_token: {unk_token!r} is not in the vocabulary")
        self.unk_token = unk_token
        self.unk_id = None if unk_token is None else self.vocab[unk_token]
        # Skipped by decode(skip_special=True), the unknown token included, as HF tokenizers do;
        # decode(skip_special=False) shows it. Encoding never drops unknown text: it becomes unk_id.
        self.special_ids = {self.vocab[t] for t in self.specials}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def token_to_id(self, token: str) -> int | None:
        return self.vocab.get(token)

    # --- text -> pieces -> ids ------------------------------------------------------------------
    def tokenize(self, text: str, allow_special: bool | None = None) -> list[str]:
        """``allow_special``: parse literal special-token text as specials (True) or as text (False);
        None follows the tokenizer's ``split_special_tokens``."""
        if not isinstance(text, str):
            raise ValueError(f"text: expected str, got {type(text).__name__}")
        if allow_special is None:
            allow_special = not self.split_special_tokens
        pieces: list[str] = []
        for segment, is_special in self.specials.split(text, allow_special):
            if is_special:
                pieces.append(segment)
            else:
                pieces.extend(self._tokenize(segment))
        return pieces

    def encode(self, text: str, allow_special: bool | None = None) -> list[int]:
        ids = []
        for piece in self.tokenize(text, allow_special):
            i = self.vocab.get(piece, self.unk_id)
            if i is None:
                raise ValueError(f"piece {piece!r} is not in the vocabulary and there is no unk_token")
            ids.append(i)
        return ids

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        pieces = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.id_to_token):
                raise ValueError(f"ids: id {i} is out of range; expected 0 <= id < {len(self.id_to_token)}")
            if skip_special and i in self.special_ids:
                continue
            pieces.append(self.id_to_token[i])
        return self._detokenize(pieces)

    # --- algorithm-specific ---------------------------------------------------------------------
    @abstractmethod
    def _tokenize(self, text: str) -> list[str]: ...

    @abstractmethod
    def _detokenize(self, pieces: list[str]) -> str: ...

    @abstractmethod
    def to_hf(self):  # -> tokenizers.Tokenizer
        ...

    @abstractmethod
    def save(self, directory: str | Path) -> Path: ...

    def write_config(self, directory: str | Path, **extra) -> None:
        """``tokenizer_config.json``: the algorithm (which ``io.load_tokenizer`` dispatches on), the
        specials, and whatever the algorithm needs to be rebuilt."""
        config = {"algorithm": self.algorithm, "specials": list(self.specials), "unk_token": self.unk_token,
                  "split_special_tokens": self.split_special_tokens, **extra}
        (Path(directory) / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
