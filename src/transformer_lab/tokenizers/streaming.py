"""Text as it is generated: decode token ids a few at a time, never printing half a character.

A byte-level BPE token can end in the middle of a UTF-8 sequence (an emoji spans several tokens), so
decoding each token alone would print replacement characters. ``IncrementalDecoder`` holds tokens
back until they decode to complete characters (at most ``max_pending`` tokens: a sequence that is
never valid is printed as it decodes), so the streamed pieces concatenate to the full decode.
"""

from __future__ import annotations

from typing import Any, Sequence

REPLACEMENT = "\ufffd"


class IncrementalDecoder:
    def __init__(self, tokenizer: Any, max_pending: int = 4):
        self.tokenizer, self.max_pending = tokenizer, max_pending
        self.pending: list[int] = []

    def push(self, ids: Sequence[int]) -> str:
        """The text that ``ids`` complete (possibly "")."""
        self.pending.extend(int(i) for i in ids)
        text = self.tokenizer.decode(self.pending)
        if text.endswith(REPLACEMENT) and len(self.pending) < self.max_pending:
            return ""
        self.pending = []
        return text

    def flush(self) -> str:
        text = self.tokenizer.decode(self.pending) if self.pending else ""
        self.pending = []
        return text
