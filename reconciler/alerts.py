"""Sentry alerts: one event per drifted entity (not per finding), and runtime failures as errors.

Nothing here runs without a DSN (`[sentry] dsn` or $SENTRY_DSN): sentry-sdk is then not even imported.
With one, each call makes its own client (no global `sentry_sdk.init`, so a scheduler's runs and the
tests do not share state), without integrations (no logging hooks, no excepthook: we decide what is
sent), without local variables in stack traces and without PII, and flushes it before returning.
Events carry counts and field paths only, never a finding's values.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator

from reconciler.config import Settings
from reconciler.errors import ConfigError
from reconciler.logs import current_run_id
from reconciler.redact import scrub_data
from reconciler.report import COUNT_KEYS
from reconciler.result import EntityResult, RunResult

if TYPE_CHECKING:
    import sentry_sdk

log = logging.getLogger(__name__)
TOP_FIELDS = 10  # drifted field paths in an event's context
FLUSH_TIMEOUT_S = 10.0


def drift_fingerprint(entity: str) -> list[str]:
    """The same entity's drift groups into one Sentry issue, whatever its counts."""
    return ["reconciler-drift", entity]


def send_run_alerts(settings: Settings, result: RunResult) -> int:
    """One event per entity above the threshold (and one error per failed entity); returns how many were sent."""
    events = [_failure_event(result, e) if e.error else _drift_event(result, e)
              for e in result.entities if e.error or _above_threshold(settings, e)]
    if not events or not settings.sentry.dsn:
        return 0
    sent = 0
    with _scope(settings) as scope:
        for event in events:
            sent += scope.capture_event(event) is not None
    log.info("sent %d Sentry events", sent, extra={"events": sent})
    return sent


def capture_failure(settings: Settings, exc: BaseException) -> None:
    """A runtime failure (an exception at the CLI boundary, a failed scheduled run) as a Sentry error.
    Never raises: a Sentry problem must not hide the failure being reported."""
    if not settings.sentry.dsn:
        return
    try:
        from sentry_sdk.utils import event_from_exception

        with _scope(settings) as scope:
            event, hint = event_from_exception(exc, client_options=scope.get_client().options,
                                               mechanism={"type": "reconciler", "handled": False})
            event["tags"] = {"run_id": current_run_id() or "none"}
            scope.capture_event(scrub_data(event, settings.secrets()), hint=hint)  # no password leaves in it
    except Exception as err:  # noqa: BLE001 - see the docstring
        log.warning("could not send the failure to Sentry: %s: %s", type(err).__name__, err)


def _above_threshold(settings: Settings, e: EntityResult) -> bool:
    compared = e.counts.matched + e.counts.drifted
    ratio = e.counts.drifted / compared if compared else 0.0
    return e.has_drift and e.counts.drifted >= settings.sentry.min_drifted and ratio >= settings.sentry.min_drift_ratio


def _tags(result: RunResult, e: EntityResult) -> dict[str, str]:
    return {"entity": e.entity, "run_id": result.run_id, "mode": result.mode, "source_of_truth": e.source_of_truth}


def _drift_event(result: RunResult, e: EntityResult) -> dict[str, Any]:
    c = e.counts
    counts = {k: int(getattr(c, k)) for k in COUNT_KEYS}
    compared = c.matched + c.drifted
    return {
        "level": "warning",
        "logger": "reconciler.drift",
        "message": f"{e.entity}: {c.drifted:,} of {compared:,} records drifted",
        "fingerprint": drift_fingerprint(e.entity),
        "tags": {**_tags(result, e), "drifted": str(c.drifted), "mismatched": str(c.mismatched),
                 "missing_in_firestore": str(c.missing_in_firestore),
                 "missing_in_postgres": str(c.missing_in_postgres)},
        "contexts": {
            "drift": {**counts, "drifted": c.drifted, "drift_ratio": round(c.drifted / compared, 6) if compared else 0,
                      "top_fields": dict(list(e.field_counts.items())[:TOP_FIELDS])},
            "run": {"run_id": result.run_id, "mode": result.mode, "started_at": result.started_at.isoformat(),
                    "finished_at": result.finished_at.isoformat()},
        },
    }


def _failure_event(result: RunResult, e: EntityResult) -> dict[str, Any]:
    return {
        "level": "error",
        "logger": "reconciler.run",
        "message": f"{e.entity}: failed: {e.error}",
        "fingerprint": ["reconciler-failure", e.entity],
        "tags": _tags(result, e),
        "contexts": {"run": {"run_id": result.run_id, "mode": result.mode}},
    }


@contextmanager
def _scope(settings: Settings) -> Iterator["sentry_sdk.Scope"]:
    import sentry_sdk
    from sentry_sdk.utils import BadDsn

    try:
        client = sentry_sdk.Client(dsn=settings.sentry.dsn, environment=settings.sentry.environment or None,
                                   default_integrations=False, auto_enabling_integrations=False,
                                   include_local_variables=False, max_breadcrumbs=0)  # and no PII: the default
    except BadDsn as exc:
        raise ConfigError(f"not a Sentry DSN: {exc}", key="sentry.dsn (or SENTRY_DSN)") from None
    try:
        with sentry_sdk.new_scope() as scope:
            scope.set_client(client)
            yield scope
    finally:
        client.close(timeout=FLUSH_TIMEOUT_S)  # flushes what was captured
