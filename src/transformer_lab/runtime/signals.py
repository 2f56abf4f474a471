"""Stopping on SIGINT / SIGTERM / SIGHUP without losing work: a process-level concern of every long command.

Three ways to take a signal, by what is running:

* a training step: the signal is remembered and the loop stops after the step (then saves once: a
  second signal does not save twice) -- ``StopRequest.installed``;
* work that changes nothing and can be dropped (validation, a final evaluation, generation): stop at
  once, by raising ``Interrupted`` from the handler -- ``interruptible_section``;
* a write that must not be cut (exporting a model folder): finish it, then stop --
  ``deferred_signals``.

``Interrupted`` is a BaseException (as KeyboardInterrupt), so no ``except Exception`` swallows it.
SIGHUP (the terminal closed) is taken like SIGTERM, unless it is ignored (``nohup``): then it stays so.
"""

from __future__ import annotations

import logging
import signal
from contextlib import contextmanager
from typing import Iterator

log = logging.getLogger(__name__)
SIGNALS = (signal.SIGINT, signal.SIGTERM, *((signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ()))


class Interrupted(BaseException):
    """Raised inside an interruptible section when a stop signal arrives."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum


class StopRequest:
    """The signal handler: records the first signal; raises ``Interrupted`` while interruptible."""

    def __init__(self, what_happens: str = "") -> None:
        self.signum: int | None = None
        self.what_happens = what_happens  # said in the log when the signal arrives
        self._interruptible = False

    def __call__(self, signum, frame) -> None:
        if self.signum is None:
            log.warning("signal %d: stopping%s", signum, f" ({self.what_happens})" if self.what_happens else "")
            self.signum = signum
        if self._interruptible:
            self._interruptible = False  # raise once
            raise Interrupted(signum)

    @contextmanager
    def installed(self) -> Iterator["StopRequest"]:
        """Handle the stop signals inside the block (main thread only; elsewhere signals are left alone)."""
        previous = {}
        try:
            for s in SIGNALS:
                nohup = s == getattr(signal, "SIGHUP", None) and signal.getsignal(s) is signal.SIG_IGN
                if not nohup:
                    previous[s] = signal.signal(s, self)
        except ValueError:  # not the main thread
            pass
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
    """SIGINT/SIGTERM raise ``Interrupted`` at once inside the block (also one that lands as it ends)."""
    stop = StopRequest()
    with stop.installed():
        with stop.interruptible():
            yield stop
    if stop.signum is not None:
        raise Interrupted(stop.signum)


@contextmanager
def deferred_signals() -> Iterator[StopRequest]:
    """SIGINT/SIGTERM inside the block are held until it ends, then raised as ``Interrupted``."""
    stop = StopRequest()
    with stop.installed():
        yield stop
    if stop.signum is not None:
        raise Interrupted(stop.signum)
