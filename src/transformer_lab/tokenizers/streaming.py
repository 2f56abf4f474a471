"""Text as it is generated: print each new token's text once it is known, never half a character.

A token's text depends on its neighbours: a WordPiece "##ing" or a BPE "ca@@" joins the next piece
without a space, and a byte-level BPE token can end inside a UTF-8 sequence (an emoji spans several
tokens). So, as transformers' TextStreamer does, the streamer decodes the recent tokens together and
prints what their text gained, holding back text that ends in a replacement character (an
incomplete UTF-8 sequence). The window of recent tokens is bounded, so each step costs the same
however long the generation: the streamed pieces concatenate to the decoded text.
"""

from __future__ import annotations

from typing import Any, Sequence

REPLACEMENT = "\ufffd"


class IncrementalDecoder:
    def __init__(self, tokenizer: Any, context: int = 8, max_window: int = 64):
        self.tokenizer, self.context, self.max_window = tokenizer, context, max_window
        self.window: list[int] = []  # recent ids, decoded together
        self.printed = 0  # characters of decode(window) already returned

    def push(self, ids: Sequence[int]) -> str:
        """The text that ``ids`` add (possibly "", when it is not complete yet)."""
        self.window.extend(int(i) for i in ids)
        text = self.tokenizer.decode(self.window)
        incomplete = text.endswith(REPLACEMENT)
        if incomplete and len(self.window) < self.max_window + self.context:
            return ""  # an incomplete character: wait for the bytes that complete it
        new = text[self.printed:]
        self.printed = len(text)
        if len(self.window) >= self.max_window and not incomplete:  # keep a little context, for the joins
            self.window = self.window[-self.context:]
            self.printed = len(self.tokenizer.decode(self.window))
        return new

    def flush(self) -> str:
        """What is still held back."""
        text = self.tokenizer.decode(self.window) if self.window else ""
        new = text[self.printed:]
        self.window, self.printed = [], 0
        return new
