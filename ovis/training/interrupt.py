r"""Interruption of a run by SIGTERM / SIGINT: a flag set by the handler, checked between steps.

The first signal sets ``StopSignal.signum``; :meth:`StopSignal.check` (called between
training steps and between evaluation batches) then raises :class:`RunInterrupted`, from a
consistent state, so that the run saves a checkpoint and stops with status ``aborted``.  A second
signal raises at once (``forced``: the state may be mid-step, no checkpoint is saved).
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator, Optional

__all__ = ["RunInterrupted", "StopSignal"]


class RunInterrupted(Exception):
    r"""SIGTERM / SIGINT received: save a checkpoint and stop (status ``aborted``)."""

    def __init__(self, signum: int, forced: bool = False) -> None:
        super().__init__(f"interrupted by signal {signal.Signals(signum).name}"
                         + (" (second signal: stopped at once, no checkpoint)" if forced else ""))
        self.signum = signum
        self.forced = forced


class StopSignal:
    r"""The SIGTERM / SIGINT received by a run, if any (see the module docstring)."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None

    def handle(self, signum: int, frame: Any = None) -> None:
        r"""The signal handler: remember the first signal; raise :class:`RunInterrupted` (forced) on a second."""
        if self.signum is not None:
            raise RunInterrupted(signum, forced=True)
        self.signum = signum

    def check(self) -> None:
        r"""Raise :class:`RunInterrupted` when a signal was received."""
        if self.signum is not None:
            raise RunInterrupted(self.signum)

    @contextmanager
    def installed(self) -> Iterator[None]:
        r""":meth:`handle` as the SIGTERM and SIGINT handler inside the block (the previous
        handlers are restored after it); nothing is installed outside the main thread."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
        for s in old:
            signal.signal(s, self.handle)
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)
