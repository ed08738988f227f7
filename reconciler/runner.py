"""The job a cron container or the scheduler runs: audit -> reports -> history -> deliveries.

`run-once` and every scheduled firing call `run_job`; both are thin shells over it.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from typing import Any

from reconciler import alerts, engine, mail
from reconciler.config import Settings
from reconciler.errors import ReconcilerError, RuntimeFailure
from reconciler.history import History, last_result, outcome
from reconciler.logs import bind_run
from reconciler.report import write_reports
from reconciler.result import Counts, EntityResult, RunResult

log = logging.getLogger("reconciler.runner")
TREND_RUNS = 30  # runs per entity in the report's drift-over-time chart


def job_entities(settings: Settings, entities: tuple[str, ...] = ()) -> list[str]:
    """What a job runs: the entities it names, else audit.entities, else every rules file (like --all)."""
    return list(entities or settings.entities or sorted(p.stem for p in settings.rules_dir.glob("*.yaml")))


def run_job(settings: Settings, entities: list[str], *, job: str = "run-once",
            progress: engine.Progress = engine.no_progress) -> RunResult:
    """Audit every record of `entities`, write the reports (report_dir), record the run in the history.

    A report or history failure is raised as RuntimeFailure after the steps that could still run have run.
    A run that fails as a whole (a database unreachable) is recorded as failed (when the history can be
    written), then its error is raised.
    """
    bind_run(None)  # a scheduler thread runs job after job: no line of this one may carry the last run's id
    log.info("job %s: auditing %s", job, ", ".join(entities))
    started = dt.datetime.now(dt.timezone.utc)
    try:
        result = engine.run_audit(settings, entities, progress=progress)
    except RuntimeFailure as exc:  # e.g. a database unreachable: still a run of the schedule, recorded as failed
        _record_failure(settings, entities, job, started, exc)
        raise
    for e in result.entities:
        log.info("job %s: run %s: %s: %s drifted of %s records, %.1f s%s", job, result.run_id, e.entity,
                 e.counts.drifted, e.counts.matched + e.counts.drifted, e.duration_s,
                 f", failed: {e.error}" if e.error else "")
    problems: list[str] = []
    trend = _trend(settings, result, problems)
    if settings.report_dir is not None:
        try:
            paths = write_reports(result, settings.report_dir, trend, secrets=settings.secrets())
            log.info("job %s: run %s: report %s", job, result.run_id, paths.html)
        except ReconcilerError as exc:
            problems.append(str(exc))
    if settings.history.enabled:
        try:
            with engine.postgres_step("recording the run in the history"), History.open(settings) as h:
                h.record(result, job)
        except ReconcilerError as exc:
            problems.append(str(exc))
    previous = _previous(settings, result, problems) if settings.mail.send == "on_change" else None
    try:
        deliver(settings, result, previous)
    except ReconcilerError as exc:
        problems.append(str(exc))
    if problems:
        raise RuntimeFailure(f"run {result.run_id}: " + "; ".join(problems))
    return result


def deliver(settings: Settings, result: RunResult, previous: RunResult | None = None) -> None:
    """The outputs that leave the machine, each a no-op unless configured: Sentry events, then the e-mail
    (`previous`: the last recorded run, for the on_change policy). Both the ad-hoc audit and run_job call it."""
    alerts.send_run_alerts(settings, result)
    mail.send_run_report(settings, result, previous=previous)


def _previous(settings: Settings, result: RunResult, problems: list[str]) -> RunResult | None:
    """The run before this one (which is already recorded), for the e-mail's on_change policy."""
    try:
        with engine.postgres_step("reading the history"):
            return last_result(settings, [e.entity for e in result.entities], before=result.started_at)
    except ReconcilerError as exc:
        problems.append(f"history unreadable: {exc}")
        return None


def _record_failure(settings: Settings, entities: list[str], job: str, started: dt.datetime,
                    exc: RuntimeFailure) -> None:
    failed = RunResult(run_id=uuid.uuid4().hex[:12], mode="audit", started_at=started,
                       finished_at=dt.datetime.now(dt.timezone.utc), entities=tuple(
                           EntityResult(entity=r.entity, source_of_truth=r.source_of_truth, counts=Counts(),
                                        findings=(), findings_truncated=False, error=str(exc))
                           for r in engine.load_rules(settings, entities)))
    if not settings.history.enabled:
        return
    try:
        with engine.postgres_step("recording the failed run in the history"), History.open(settings) as h:
            h.record(failed, job)
    except ReconcilerError as also:  # the history may live in the very database that is down
        log.error("job %s: the failed run could not be recorded in the history either: %s", job, also)


def _trend(settings: Settings, result: RunResult, problems: list[str]) -> dict[str, list[dict[str, Any]]] | None:
    """Per entity: its recorded runs before this one, then this run (for the report's chart)."""
    if not settings.history.enabled or settings.report_dir is None:
        return None
    try:
        with engine.postgres_step("reading the history"), History.open(settings) as h:
            past = {e.entity: h.trend(e.entity, TREND_RUNS - 1, before=result.started_at) for e in result.entities}
    except ReconcilerError as exc:
        problems.append(f"history unreadable: {exc}")
        return None
    return {e.entity: [{"run_id": p.run_id, "started_at": p.started_at, "drifted": p.drifted, "outcome": p.outcome}
                       for p in past[e.entity]]
            + [{"run_id": result.run_id, "started_at": result.started_at, "drifted": e.counts.drifted,
                "outcome": outcome(e.failed, e.has_drift)}]
            for e in result.entities}
