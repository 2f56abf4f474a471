"""Signals (``runtime.signals``): a remembered stop for training steps, an immediate stop for work
that can be dropped, a held stop for writes that must finish; the handlers put back afterwards."""

import os
import signal
import time

import pytest

from transformer_lab.runtime.signals import Interrupted, StopRequest, deferred_signals, interruptible_section


def test_interruptible_section_stops_at_once_and_is_not_swallowed():
    before = signal.getsignal(signal.SIGTERM)
    t0 = time.perf_counter()
    with pytest.raises(Interrupted) as e:
        with interruptible_section():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(10)
            except Exception:  # a broad handler in the work must not swallow the stop
                pytest.fail("Interrupted was caught by `except Exception`")
    assert e.value.signum == signal.SIGTERM and time.perf_counter() - t0 < 5
    assert signal.getsignal(signal.SIGTERM) is before


def test_deferred_signals_finish_the_write_then_stop():
    done = []
    with pytest.raises(Interrupted) as e:
        with deferred_signals():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)
            done.append("written")
    assert done == ["written"] and e.value.signum == signal.SIGINT


def test_a_step_finishes_and_a_second_signal_changes_nothing():
    stop = StopRequest()
    with stop.installed():
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)
        finished = True
    assert finished and stop.signum == signal.SIGTERM
    with pytest.raises(Interrupted):  # an interruptible section entered after a signal does not run
        with stop.interruptible():
            pytest.fail("ran after the stop")


def test_hangup_stops_like_sigterm_unless_nohup_ignores_it():
    """A closed terminal (SIGHUP) killed a run at once, without a save; it is now a stop request like
    SIGTERM. Under ``nohup`` (SIGHUP ignored) it stays ignored: the run goes on."""
    previous = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        stop = StopRequest()
        with stop.installed():
            os.kill(os.getpid(), signal.SIGHUP)
        assert stop.signum == signal.SIGHUP
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        stop = StopRequest()
        with stop.installed():
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.05)
        assert stop.signum is None and signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)
