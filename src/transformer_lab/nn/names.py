"""Layers named by pattern, as ``peft``'s ``target_modules`` names them (an adapter's targets, the layers a
quantization skips).

A pattern is a module name or the end of one at a dot: ``w_q`` matches every
``encoder.layers.3.self_attn.w_q``; ``self_attn.w_q`` only self-attention's, not cross-attention's.
A pattern with regular-expression characters is matched against the whole name
(``encoder\\.layers\\.[0-5]\\..*w_q``).
"""

from __future__ import annotations

import re

_REGEX = re.compile(r"[\\^$*+?()\[\]{}|]")


def matches(name: str, pattern: str) -> bool:
    if _REGEX.search(pattern):
        return re.fullmatch(pattern, name) is not None
    return name == pattern or name.endswith("." + pattern)


def short_name(name: str) -> str:
    """A layer's name as a pattern names it: its last part, or its last two where the last is an index
    (``classifier.1``, a Linear inside an nn.Sequential; "1" alone reads as no layer)."""
    parts = name.split(".")
    return ".".join(parts[-2:]) if parts[-1].isdigit() and len(parts) > 1 else parts[-1]
