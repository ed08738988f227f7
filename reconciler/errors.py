"""Typed errors. Each carries the exit code the CLI maps it to, and the file/line/entity/key it is about."""

from __future__ import annotations


def one_line(exc: BaseException, limit: int | None = None) -> str:
    """An exception's message on one line (libraries' messages span several), at most `limit` characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if limit is None else text[:limit]


class ReconcilerError(Exception):
    """Base of every error the CLI reports as one line (no traceback unless --debug)."""

    exit_code = 3


class UsageError(ReconcilerError):
    exit_code = 2


class ConfigError(UsageError):
    """The TOML config is invalid. `where` is 'file: key'."""

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None) -> None:
        self.file, self.key = file, key
        where = ": ".join(p for p in (file, key) if p)
        super().__init__(f"{where}: {message}" if where else message)


class RulesError(UsageError):
    """A rules file is invalid. Names the file and, when known, the line."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None) -> None:
        self.file, self.line = file, line
        where = f"{file}:{line}" if file and line else (file or "")
        super().__init__(f"{where}: {message}" if where else message)


class RuntimeFailure(ReconcilerError):
    """A database was unreachable, a query failed, a stream broke."""

    exit_code = 3


class MissingPrivileges(RuntimeFailure):
    """The database role lacks a privilege the run needs (checked before anything is written)."""


class KeyOrderError(RuntimeFailure):
    """A stream yielded a key out of order: continuing would produce false 'missing' findings."""

    def __init__(self, *, entity: str, side: str, previous: tuple[str, ...], current: tuple[str, ...]) -> None:
        self.entity, self.side, self.previous, self.current = entity, side, previous, current
        super().__init__(
            f"{entity}: the {side} stream yielded key {'/'.join(current)!r} after {'/'.join(previous)!r}; "
            "the two sides are not in the same key order, stopping rather than reporting false drift"
        )
