"""Secrets (database and SMTP passwords) never leave the process: every text that does (console output,
error messages, report files) goes through `scrub` with the run's secrets.

Scrubbing is by value, not by pattern, so it also catches a password that a library quotes back inside an
error message (libpq echoes parts of a malformed connection string).
"""

from __future__ import annotations

import html
import json
import re
from typing import Any, Iterable
from urllib.parse import quote, unquote

MASK = "***"
_URL_PASSWORD = re.compile(r"^[a-z][a-z0-9+.-]*://[^:/?#@]*:([^@/?#]*)@", re.IGNORECASE)
_KV_PASSWORD = re.compile(r"""(?:^|\s)password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)""", re.IGNORECASE)


def dsn_password(dsn: str | None) -> str | None:
    """The password a libpq connection string (URL or key=value form) holds, if any; parsed leniently so
    that a malformed DSN (the one most likely to end up in an error message) still gives it up."""
    if not dsn:
        return None
    url = _URL_PASSWORD.match(dsn.strip())
    if url:
        return unquote(url.group(1)) or None
    kv = _KV_PASSWORD.search(dsn)
    if kv:
        value = kv.group(1)
        if value.startswith("'"):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        return value or None
    return None


def _forms(secret: str) -> set[str]:
    """The ways a secret can appear in text we write: as is, URL-encoded, JSON- and HTML-escaped."""
    return {secret, quote(secret, safe=""), quote(secret), json.dumps(secret)[1:-1],
            json.dumps(secret, ensure_ascii=False)[1:-1], html.escape(secret), html.escape(secret, quote=False)}


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """`text` with every form of every secret replaced by ***. Longest first, so no fragment survives."""
    forms = {f for s in secrets if s for f in _forms(s) if f}
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, MASK)
    return text


def scrub_data(value: Any, secrets: Iterable[str | None]) -> Any:
    """`scrub` on every string (and key) of JSON-like data: structure-preserving, unlike scrubbing its text."""
    secrets = tuple(s for s in secrets if s)
    if not secrets:
        return value
    if isinstance(value, str):
        return scrub(value, secrets)
    if isinstance(value, dict):
        return {scrub_data(k, secrets): scrub_data(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub_data(v, secrets) for v in value]
    return value


class LogFilter:
    """A logging filter (put it on handlers) that scrubs the secrets from every formatted message."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = secrets  # kept by reference: a list filled in once the settings are read

    def filter(self, record: Any) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:  # tracebacks are formatted later: format (and scrub) now
            import logging

            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.msg, record.args = scrub(message, self.secrets), ()
        if record.exc_text:
            record.exc_text = scrub(record.exc_text, self.secrets)
        return True
