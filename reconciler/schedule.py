"""`reconcile serve`: the configured cron schedules, on APScheduler 3, each firing one `run_job`.

- One APScheduler job per [[schedule.jobs]] entry, in its time zone; max_instances=1 and coalesce, so a
  slow run is never overlapped by its own next firing (that firing is skipped, and logged).
- A lock per entity: two jobs that share an entity never audit it at the same time; the later one skips it.
- run_missed: at start-up, a job whose last scheduled time passed since the last recorded run of any of
  its entities (history) runs once, now. No history at all is not a missed run.
- SIGTERM or SIGINT: no new runs start, the running ones finish, then `serve` returns (a second signal
  exits at once).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import signal
import threading
import time
from typing import Any, Callable, Iterator

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger

from reconciler import cron, runner
from reconciler.config import ScheduleJob, Settings
from reconciler.errors import ReconcilerError, UsageError
from reconciler.history import History

log = logging.getLogger("reconciler.schedule")
JobFunction = Callable[[Settings, list[str], str], Any]  # (settings, entities, job name)


def _run_job(settings: Settings, entities: list[str], name: str) -> Any:
    return runner.run_job(settings, entities, job=name)


class EntityLocks:
    """One lock per entity name, taken without waiting: a busy entity is skipped, not queued."""

    def __init__(self) -> None:
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    @contextlib.contextmanager
    def hold(self, entities: list[str]) -> Iterator[list[str]]:
        """Yield the entities whose lock this call got (the others are busy); release them afterwards."""
        with self._guard:
            locks = [(e, self._locks.setdefault(e, threading.Lock())) for e in entities]
        got = [(e, lock) for e, lock in locks if lock.acquire(blocking=False)]
        try:
            yield [e for e, _ in got]
        finally:
            for _, lock in got:
                lock.release()


def trigger_of(job: ScheduleJob) -> CronTrigger:
    return cron.trigger(job.cron, cron.timezone(job.timezone))


def missed(trigger: CronTrigger, last_started: dt.datetime | None, now: dt.datetime) -> bool:
    """A scheduled time fell between the last recorded run and now."""
    if last_started is None:
        return False
    due = trigger.get_next_fire_time(None, last_started + dt.timedelta(microseconds=1))
    return due is not None and due <= now


class Scheduler:
    def __init__(self, settings: Settings, job_function: JobFunction = _run_job) -> None:
        if not settings.schedule.jobs:
            raise UsageError(f"{settings.source}: no [[schedule.jobs]] configured: nothing to serve "
                             "(see config/reconciler.toml)")
        self.settings = settings
        self.job_function = job_function
        self.locks = EntityLocks()
        self.running: set[str] = set()
        self._running_guard = threading.Lock()
        self.scheduler = BackgroundScheduler(timezone=dt.timezone.utc, job_defaults={
            "max_instances": 1, "coalesce": True, "misfire_grace_time": None})

    def start(self, now: dt.datetime | None = None) -> None:
        now = now or dt.datetime.now(dt.timezone.utc)
        for job in self.settings.schedule.jobs:
            trigger = trigger_of(job)
            catch_up = job.run_missed and self._missed(job, trigger, now)
            self.scheduler.add_job(self.fire, trigger, args=[job], id=job.name, name=job.name,
                                   **({"next_run_time": now} if catch_up else {}))
            nxt = "now (a run was missed)" if catch_up else str(trigger.get_next_fire_time(None, now))
            log.info("job %s: cron %r (%s), entities %s; next run %s", job.name, job.cron, job.timezone,
                     ", ".join(self._entities(job)), nxt)
        self.scheduler.start()

    def _entities(self, job: ScheduleJob) -> list[str]:
        return runner.job_entities(self.settings, job.entities)

    def _missed(self, job: ScheduleJob, trigger: CronTrigger, now: dt.datetime) -> bool:
        if not self.settings.history.enabled:
            log.warning("job %s: run_missed needs the history ([history] enabled = true); not checked", job.name)
            return False
        try:
            with History.open(self.settings) as h:
                lasts = [h.last_started(e) for e in self._entities(job)]
        except ReconcilerError as exc:
            log.error("job %s: cannot read the history to check for a missed run: %s", job.name, exc)
            return False
        known = [t for t in lasts if t is not None]
        return bool(known) and missed(trigger, min(known), now)

    def fire(self, job: ScheduleJob) -> None:
        entities = self._entities(job)
        with self.locks.hold(entities) as free:
            busy = [e for e in entities if e not in free]
            if busy:
                log.warning("job %s: %s still being audited by another job; skipped this time", job.name,
                            ", ".join(busy))
            if not free:
                return
            with self._running_guard:
                self.running.add(job.name)
            started = time.monotonic()
            log.info("job %s: run started (%s)", job.name, ", ".join(free))
            try:
                self.job_function(self.settings, free, job.name)
                log.info("job %s: run finished in %.1f s", job.name, time.monotonic() - started)
            except ReconcilerError as exc:
                log.error("job %s: run failed after %.1f s: %s", job.name, time.monotonic() - started, exc)
            except Exception:  # a bug must not kill the scheduler: logged with its traceback, next firing runs
                log.exception("job %s: run failed with an unexpected error", job.name)
            finally:
                with self._running_guard:
                    self.running.discard(job.name)

    def shutdown(self) -> None:
        """No new runs; wait for the running ones to finish."""
        with self._running_guard:
            running = sorted(self.running)
        if running:
            log.info("waiting for the running job(s) %s to finish before exiting", ", ".join(running))
        self.scheduler.shutdown(wait=True)
        log.info("scheduler stopped cleanly")


def serve(settings: Settings, job_function: JobFunction = _run_job) -> None:
    """Run the schedules until SIGTERM or SIGINT, then let the running jobs finish and return."""
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            log.warning("%s again: exiting without waiting for running jobs", name)
            os._exit(128 + signum)
        log.info("%s received: no new runs will start", name)
        stop.set()

    scheduler = Scheduler(settings, job_function)
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        scheduler.start()
        while not stop.wait(1.0):
            pass
        scheduler.shutdown()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
