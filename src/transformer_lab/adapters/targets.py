"""Which layers an adapter touches: module names chosen by pattern, as ``peft``'s ``target_modules``.

A pattern is a module name or the end of one at a dot: ``w_q`` matches every
``encoder.layers.3.self_attn.w_q``; ``self_attn.w_q`` only self-attention's, not cross-attention's.
A pattern with regular-expression characters is matched against the whole name
(``encoder\\.layers\\.[0-5]\\..*w_q``). Hugging Face's ``query``, ``key`` and ``value`` are accepted
for ``w_q``, ``w_k`` and ``w_v`` (the names here: ``nn.attention.MultiHeadAttention``).

A pattern that matches no Linear layer is an error listing the layer names there are.
"""

from __future__ import annotations

import re

from torch import nn

ALIASES = {"query": "w_q", "key": "w_k", "value": "w_v"}
_REGEX = re.compile(r"[\\^$*+?()\[\]{}|]")


def parse_targets(text: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``"query,value"`` or a list -> ("w_q", "w_v"); empty items are an error."""
    items = [t.strip() for t in text.split(",")] if isinstance(text, str) else [str(t).strip() for t in text]
    if not items or any(not t for t in items):
        raise ValueError(f"target: expected comma-separated module names such as 'w_q,w_v', got {text!r}")
    return tuple(ALIASES.get(t, t) for t in items)


def matches(name: str, pattern: str) -> bool:
    if _REGEX.search(pattern):
        return re.fullmatch(pattern, name) is not None
    return name == pattern or name.endswith("." + pattern)


def find_linears(model: nn.Module, patterns: tuple[str, ...], kinds: tuple[type, ...] = (nn.Linear,)) -> list[str]:
    """Names of the ``kinds`` layers of ``model`` that some pattern matches, in model order. Every
    pattern must match at least one."""
    layers = [name for name, m in model.named_modules() if isinstance(m, kinds) and name]
    found = [name for name in layers if any(matches(name, p) for p in patterns)]
    unmatched = [p for p in patterns if not any(matches(name, p) for name in layers)]
    if unmatched:
        short = sorted({_short(name) for name in layers})
        raise ValueError(f"target: {', '.join(map(repr, unmatched))} matches no Linear layer of this "
                         f"{type(model).__name__}; its Linear layers are named {', '.join(short)} "
                         f"(e.g. {layers[0] if layers else 'none'})")
    return found


def _short(name: str) -> str:
    """A layer's name as a pattern names it: its last part, or its last two where the last is an index
    (``classifier.1``, a Linear inside an nn.Sequential; "1" alone reads as no layer)."""
    parts = name.split(".")
    return ".".join(parts[-2:]) if parts[-1].isdigit() and len(parts) > 1 else parts[-1]


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)
