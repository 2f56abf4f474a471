"""When the models' input checks may skip reading values back to the host.

A model checks its ids (and positions) once per batch, at its boundary, so a wrong batch is a clear
``ValueError`` instead of an ``IndexError`` deep inside ``nn.Embedding`` or a device-side assert on a
GPU. Checking values means reading them (``int(tokens.max())``): free on a CPU, but on a GPU each read
waits for the device's whole queue (a host sync), and under ``torch.compile`` it would break the graph.

So the value checks are skipped in two places: while Dynamo traces, and inside ``values_checked()``,
which a caller enters after checking the same batch on the host, before moving it to the device
(the trainer does this with its task's ``check_batch``). Shapes are checked everywhere: they are free.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

import torch

_checked: ContextVar[bool] = ContextVar("transformer_lab_values_checked", default=False)


@contextmanager
def values_checked() -> Iterator[None]:
    """Inside: the inputs' values were checked on the host; models check shapes only."""
    token = _checked.set(True)
    try:
        yield
    finally:
        _checked.reset(token)


def skip_value_checks() -> bool:
    """True while torch.compile traces, or inside ``values_checked()``."""
    return torch.compiler.is_compiling() or _checked.get()
