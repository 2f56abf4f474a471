"""Special tokens, one mechanism for every algorithm, and the seq2seq ids every vocabulary shares.

Special tokens ([CLS], </s>, <|endoftext|>, ...) occupy fixed ids and are never produced by the
subword algorithm itself. What literal text such as "[SEP]" inside user input becomes is a property
of the tokenizer, ``split_special_tokens`` (``transformers``' name for it):

* True: the text is *ordinary text*, split into ordinary pieces, so a user cannot inject control
  tokens. The default of every tokenizer this project trains.
* False: each occurrence becomes the special token's id. What ``transformers`` does by default, so
  a tokenizer loaded from a Hugging Face model folder (``tokenizer.json``, a BERT ``vocab.txt``)
  starts with False and encodes any text as that folder's reference tokenizer does.

``encode(text, allow_special=...)`` overrides the tokenizer's setting for one call.
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
SEQ2SEQ_SPECIALS = ("<pad>", "<unk>", "<s>", "</s>")
# Their ids: first in every encoder-decoder vocabulary here (subword tokenizers and the demo's Vocab).
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(4)
GPT2_SPECIALS = ("<|endoftext|>",)


class SpecialTokens:
    """An ordered set of special-token strings."""

    def __init__(self, tokens: Iterable[str] = ()):
        self.tokens: tuple[str, ...] = tuple(tokens)
        dupes = sorted({t for t in self.tokens if self.tokens.count(t) > 1})
        if dupes:
            raise ValueError(f"special tokens: duplicates {dupes}")
        if any(not t for t in self.tokens):
            raise ValueError("special tokens: the empty string cannot be a special token")
        # Longest first, so "<s>" never wins over a longer token that starts with it.
        alternatives = sorted(self.tokens, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, alternatives))) if alternatives else None

    def __contains__(self, token: str) -> bool:
        return token in self.tokens

    def __iter__(self):
        return iter(self.tokens)

    def __len__(self) -> int:
        return len(self.tokens)

    def split(self, text: str, allow_special: bool) -> list[tuple[str, bool]]:
        """Segments of ``text`` as (string, is_special); without ``allow_special`` one plain segment."""
        if not allow_special or self._pattern is None:
            return [(text, False)] if text else []
        out: list[tuple[str, bool]] = []
        pos = 0
        for m in self._pattern.finditer(text):
            if m.start() > pos:
                out.append((text[pos : m.start()], False))
            out.append((m.group(), True))
            pos = m.end()
        if pos < len(text):
            out.append((text[pos:], False))
        return out


def check_specials_in_vocab(specials: Sequence[str], vocab: dict[str, int], where: str) -> None:
    missing = [t for t in specials if t not in vocab]
    if missing:
        raise ValueError(f"{where}: special token(s) {missing} missing from the vocabulary")
