"""Logging, configured once by the CLI: JSON lines on stderr when it is not a terminal (cron, containers,
log shippers), readable lines on a terminal. Every line of a run carries the run's id.

The run id is a context variable, set by the engine when it creates the id (`bind_run`); threads that work
for a run copy the context (engine.prefetch), so their lines carry it too.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import sys
from typing import Any, TextIO

_RUN_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("reconciler_run_id", default=None)
FORMATS = ("auto", "json", "text")
LEVELS = ("debug", "info", "warning", "error")
# Attributes every LogRecord has: anything else on a record came from `extra=` and is logged with it.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "run_id"}


def bind_run(run_id: str | None) -> None:
    """From here on (in this context), log lines carry `run_id`. A worker thread that runs one job after
    another keeps its context: bind None (or run each job in `contextvars.copy_context().run`) between jobs."""
    _RUN_ID.set(run_id)


def current_run_id() -> str | None:
    return _RUN_ID.get()


class _RunId(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.run_id = _RUN_ID.get()
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "run_id": getattr(record, "run_id", None),
            **({"thread": record.threadName} if record.threadName != "MainThread" else {}),
            **_extras(record),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        t = dt.datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        run = f" [run {record.run_id}]" if getattr(record, "run_id", None) else ""
        extras = "".join(f" {k}={v}" for k, v in _extras(record).items())
        text = f"{t} {record.levelname:<7} {record.name}{run}: {record.getMessage()}{extras}"
        return text + ("\n" + self.formatException(record.exc_info) if record.exc_info else "")


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is at the time (a test runner may swap it and close the old one)."""

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def configure(fmt: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    """One handler on the root logger (replacing one set up before: safe to call again)."""
    if fmt == "auto":
        fmt = "text" if (stream or sys.stderr).isatty() else "json"
    handler = logging.StreamHandler(stream) if stream is not None else _Stderr()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_RunId())
    handler.set_name("reconciler")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "reconciler"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
