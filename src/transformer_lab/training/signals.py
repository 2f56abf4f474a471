"""Stopping on SIGINT / SIGTERM without losing work.

During a training step a signal is remembered and the loop stops after the step (then saves once:
a second signal does not save twice). Inside an ``interruptible`` section (validation, a final
evaluation: work that changes nothing and can be dropped) the signal stops the work at once, by
raising ``Interrupted`` from the handler, so a run told to stop does not first finish a long pass.
"""

from __future__ import annotations

import logging
import signal
from contextlib import contextmanager
from typing import Iterator

log = logging.getLogger(__name__)
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """Raised inside an interruptible section when a stop signal arrives."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum


class StopRequest:
    """The signal handler: records the first signal; raises ``Interrupted`` while interruptible."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._interruptible = False

    def __call__(self, signum, frame) -> None:
        if self.signum is None:
            log.warning("signal %d: stopping (the current step finishes and is saved)", signum)
            self.signum = signum
        if self._interruptible:
            self._interruptible = False  # raise once
            raise Interrupted(signum)

    @contextmanager
    def installed(self) -> Iterator["StopRequest"]:
        """Handle SIGINT and SIGTERM inside the block (main thread only; elsewhere signals are left alone)."""
        try:
            previous = {s: signal.signal(s, self) for s in SIGNALS}
        except ValueError:  # not the main thread
            previous = {}
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    @contextmanager
    def interruptible(self) -> Iterator[None]:
        """A section a stop signal ends at once (``Interrupted``); entered after a signal, it does not run."""
        if self.signum is not None:
            raise Interrupted(self.signum)
        self._interruptible = True
        try:
            yield
        finally:
            self._interruptible = False


@contextmanager
def interruptible_section() -> Iterator[StopRequest]:
    """For work after training (a final evaluation): SIGINT/SIGTERM raise ``Interrupted`` at once."""
    stop = StopRequest()
    with stop.installed(), stop.interruptible():
        yield stop
