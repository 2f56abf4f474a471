"""Which layers an adapter touches: module names chosen by pattern, as ``peft``'s ``target_modules``.

Patterns as ``nn.names`` reads them: a module name or the end of one at a dot (``w_q``, ``self_attn.w_q``),
or a regular expression matched against the whole name. Hugging Face's ``query``, ``key`` and ``value`` are accepted
for ``w_q``, ``w_k`` and ``w_v`` (the names here: ``nn.attention.MultiHeadAttention``).

A pattern that matches no Linear layer is an error listing the layer names there are.
"""

from __future__ import annotations

from torch import nn

from transformer_lab.nn.names import matches, short_name

ALIASES = {"query": "w_q", "key": "w_k", "value": "w_v"}


def parse_targets(text: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``"query,value"`` or a list -> ("w_q", "w_v"); empty items are an error."""
    items = [t.strip() for t in text.split(",")] if isinstance(text, str) else [str(t).strip() for t in text]
    if not items or any(not t for t in items):
        raise ValueError(f"target: expected comma-separated module names such as 'w_q,w_v', got {text!r}")
    return tuple(ALIASES.get(t, t) for t in items)


def find_linears(model: nn.Module, patterns: tuple[str, ...], kinds: tuple[type, ...] = (nn.Linear,)) -> list[str]:
    """Names of the ``kinds`` layers of ``model`` that some pattern matches, in model order. Every
    pattern must match at least one."""
    layers = [name for name, m in model.named_modules() if isinstance(m, kinds) and name]
    found = [name for name in layers if any(matches(name, p) for p in patterns)]
    unmatched = [p for p in patterns if not any(matches(name, p) for name in layers)]
    if unmatched:
        short = sorted({short_name(name) for name in layers})
        raise ValueError(f"target: {', '.join(map(repr, unmatched))} matches no Linear layer of this "
                         f"{type(model).__name__}; its Linear layers are named {', '.join(short)} "
                         f"(e.g. {layers[0] if layers else 'none'})")
    return found


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)
