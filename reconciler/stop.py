"""A polite stop. SIGTERM (cron's timeout, systemd, Kubernetes) asks the run to stop at the next safe point:
a repair finishes the batch it is writing (and its audit-trail rows) and applies nothing more; an audit stops
at its next thousand records. The CLI installs the handler; a second SIGTERM kills at once."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator

from reconciler.errors import ReconcilerError

_requested = threading.Event()
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
