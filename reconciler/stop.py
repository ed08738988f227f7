"""A polite stop. SIGTERM (cron's timeout, systemd, Kubernetes) asks the run to stop at the next safe point:
a repair finishes the batch it is writing (and its audit-trail rows) and applies nothing more; an audit stops
at its next thousand records. The CLI installs the handler; a second SIGTERM kills at once.

With --workers the request is shared with the worker processes (`shared`): a SIGTERM to the parent alone or to
the whole process group (Kubernetes, systemd, a terminal) stops every worker at its next safe point."""

from __future__ import annotations

import contextlib
import signal
import threading
from multiprocessing.context import BaseContext
from typing import Any, Iterator, Protocol

from reconciler.errors import ReconcilerError


class _Flag(Protocol):
    def is_set(self) -> bool: ...
    def set(self) -> None: ...
    def clear(self) -> None: ...


class _SharedFlag:
    """A flag in shared memory. Not a multiprocessing.Event: setting one takes a lock, and a signal handler
    that interrupts is_set() in the same thread would wait for that lock forever."""

    def __init__(self, ctx: BaseContext) -> None:
        self._value = ctx.RawValue("b", 0)

    def is_set(self) -> bool:
        return bool(self._value.value)

    def set(self) -> None:
        self._value.value = 1

    def clear(self) -> None:
        self._value.value = 0


_requested: _Flag = threading.Event()
EXIT_CODE = 143  # 128 + SIGTERM, as a shell reports a process it terminated


class Interrupted(ReconcilerError):
    exit_code = EXIT_CODE


def requested() -> bool:
    return _requested.is_set()


def check(where: str) -> None:
    """Raise Interrupted if a stop was requested (at a point where stopping loses nothing but time)."""
    if _requested.is_set():
        raise Interrupted(f"stopped by SIGTERM {where}")


@contextlib.contextmanager
def on_sigterm() -> Iterator[None]:
    """Within: SIGTERM requests a stop (main thread only). The previous handler is restored after."""
    _requested.clear()

    def handler(signum: int, frame: Any) -> None:
        _requested.set()
        signal.signal(signal.SIGTERM, previous)  # a second SIGTERM is not polite any more

    previous = signal.signal(signal.SIGTERM, handler) or signal.SIG_DFL
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def shared(ctx: BaseContext) -> Iterator[_Flag]:
    """Within: the stop request is an event worker processes can share (pass it to `in_worker`)."""
    global _requested
    local, event = _requested, _SharedFlag(ctx)
    _requested = event  # swap first, copy after: a SIGTERM between the two lands in the flag that stays
    if local.is_set():
        event.set()
    try:
        yield event
    finally:
        _requested = local
        if event.is_set():
            local.set()


def in_worker(event: _Flag) -> None:
    """A worker process's initializer: share the parent's stop request, and turn a SIGTERM of the worker's own
    (sent to the process group) into that request, so the worker stops at its next safe point."""
    global _requested
    _requested = event

    def handler(signum: int, frame: Any) -> None:
        event.set()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM is not polite any more

    signal.signal(signal.SIGTERM, handler)
