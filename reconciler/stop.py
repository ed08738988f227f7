"""A polite stop. SIGTERM (cron's timeout, systemd, Kubernetes) and SIGINT (Ctrl-C) ask the run to stop at the
next safe point: a repair finishes the batch it is writing (and its audit-trail rows), applies nothing more and
still writes its report; an audit stops at its next thousand records. The CLI installs the handlers; a second
signal is not polite any more (SIGTERM kills at once, SIGINT raises KeyboardInterrupt). The exit code is the
shell's for the signal: 128 + its number (130 for SIGINT, 143 for SIGTERM).

With --workers the request is shared with the worker processes (`shared`): a signal to the parent alone or to
the whole process group (Kubernetes, systemd, a terminal's Ctrl-C) stops every worker at its next safe point."""

from __future__ import annotations

import contextlib
import signal
from multiprocessing.context import BaseContext
from types import SimpleNamespace
from typing import Any, Iterator

from reconciler.errors import ReconcilerError

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _Flag:
    """The number of the signal that asked for the stop (0: none did), in a cell: a plain one in one process,
    shared memory for worker processes (not a multiprocessing.Event: setting one takes a lock, and a signal
    handler that interrupts is_set() in the same thread would wait for that lock forever)."""

    def __init__(self, cell: Any = None) -> None:
        self._cell = cell if cell is not None else SimpleNamespace(value=0)

    def is_set(self) -> bool:
        return bool(self._cell.value)

    def set(self, signum: int = signal.SIGTERM) -> None:
        if not self._cell.value:  # the first signal is the one the stop is for
            self._cell.value = signum

    def clear(self) -> None:
        self._cell.value = 0

    def signum(self) -> int:
        return int(self._cell.value)


_requested = _Flag()


class Interrupted(ReconcilerError):
    def __init__(self, message: str, signum: int = signal.SIGTERM) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


def requested() -> bool:
    return _requested.is_set()


def signal_name() -> str:
    """The signal the stop was asked by (SIGTERM when none was: a stop asked for otherwise)."""
    return signal.Signals(_requested.signum() or signal.SIGTERM).name


def exit_code() -> int:
    """128 + the signal's number, as a shell reports a process that signal ended."""
    return 128 + (_requested.signum() or signal.SIGTERM)


def interrupted(where: str) -> Interrupted:
    return Interrupted(f"stopped by {signal_name()} {where}", _requested.signum() or signal.SIGTERM)


def check(where: str) -> None:
    """Raise Interrupted if a stop was requested (at a point where stopping loses nothing but time)."""
    if _requested.is_set():
        raise interrupted(where)


@contextlib.contextmanager
def on_signals() -> Iterator[None]:
    """Within: SIGTERM and SIGINT request a stop (main thread only). The previous handlers are restored after."""
    _requested.clear()
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: Any) -> None:
        _requested.set(signum)
        for s, before in previous.items():  # a second signal is not polite any more
            signal.signal(s, before)

    for s in SIGNALS:
        previous[s] = signal.signal(s, handler)
        if previous[s] is None:  # installed outside Python: the default is the closest
            previous[s] = signal.SIG_DFL
    try:
        yield
    finally:
        for s, before in previous.items():
            signal.signal(s, before)


@contextlib.contextmanager
def shared(ctx: BaseContext) -> Iterator[_Flag]:
    """Within: the stop request is a flag worker processes can share (pass it to `in_worker`)."""
    global _requested
    local, flag = _requested, _Flag(ctx.RawValue("b", 0))
    _requested = flag  # swap first, copy after: a signal between the two lands in the flag that stays
    if local.is_set():
        flag.set(local.signum())
    try:
        yield flag
    finally:
        _requested = local
        if flag.is_set():
            local.set(flag.signum())


def in_worker(flag: _Flag) -> None:
    """A worker process's initializer: share the parent's stop request, and turn a SIGTERM or SIGINT of the
    worker's own (sent to the process group) into that request, so the worker stops at its next safe point."""
    global _requested
    _requested = flag

    def handler(signum: int, frame: Any) -> None:
        flag.set(signum)
        for s in SIGNALS:  # a second signal is not polite any more
            signal.signal(s, signal.SIG_DFL)

    for s in SIGNALS:
        signal.signal(s, handler)
