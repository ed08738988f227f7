"""`reconcile serve`: cron parsing, no overlapping runs, missed runs at start-up, SIGTERM; real APScheduler,
and for the runs themselves real Postgres + the Firestore emulator."""

from __future__ import annotations

import datetime as dt
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import zoneinfo
from pathlib import Path

import psycopg
import pytest

from reconciler import cron
from reconciler.config import load_settings
from reconciler.errors import ConfigError
from reconciler.runner import run_job
from reconciler.schedule import Scheduler, missed

ROOT = Path(__file__).parents[1]
UTC = dt.timezone.utc
MONDAY = dt.datetime(2026, 1, 5, 0, 0, tzinfo=UTC)  # a Monday


def _weekdays(expr: str) -> set[str]:
    t = cron.trigger(f"0 12 * * {expr}", UTC)
    out, at = set(), MONDAY
    for _ in range(14):
        at = t.get_next_fire_time(None, at + dt.timedelta(seconds=1))
        out.add(at.strftime("%a"))
    return out


@pytest.mark.parametrize("expr, days", [
    ("0", {"Sun"}), ("7", {"Sun"}), ("1-5", {"Mon", "Tue", "Wed", "Thu", "Fri"}), ("*/2", {"Sun", "Tue", "Thu", "Sat"}),
    ("sat,sun", {"Sat", "Sun"}), ("5-7", {"Fri", "Sat", "Sun"}), ("1/3", {"Mon", "Thu"}), ("*", {"Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"}),
])
def test_weekdays_mean_what_they_mean_in_crontab(expr, days):
    assert _weekdays(expr) == days


def test_six_fields_have_seconds_and_the_time_zone_is_honoured_across_daylight_saving():
    t = cron.trigger("*/5 * * * * *", UTC)
    first = t.get_next_fire_time(None, MONDAY + dt.timedelta(seconds=1))
    assert first == MONDAY + dt.timedelta(seconds=5)
    ny = cron.trigger("0 2 * * *", zoneinfo.ZoneInfo("America/New_York"))
    assert ny.get_next_fire_time(None, dt.datetime(2026, 1, 10, tzinfo=UTC)).astimezone(UTC).hour == 7  # EST
    assert ny.get_next_fire_time(None, dt.datetime(2026, 7, 10, tzinfo=UTC)).astimezone(UTC).hour == 6  # EDT


@pytest.mark.parametrize("job, key, message", [
    ('cron = "0 2 * *"', "schedule.jobs[0].cron", "has 4 fields"),
    ('cron = "0 2 1 * mon"', "schedule.jobs[0].cron", "restricts both the day of the month and the weekday"),
    ('cron = "0 25 * * *"', "schedule.jobs[0].cron", "'0 25 * * *'"),
    ('cron = "0 2 * * 8"', "schedule.jobs[0].cron", "weekday '8' is not 0-7"),
    ('cron = "0 2 * * *"\ntimezone = "Mars/Olympus"', "schedule.jobs[0].timezone", "unknown time zone 'Mars/Olympus'"),
    ('cron = "0 2 * * *"\nrun_missed = "yes"', "schedule.jobs[0].run_missed", "must be bool"),
    ('cron = "0 2 * * *"\nentitys = ["x"]', "schedule.jobs[0].entitys", "unknown key"),
    ('cron = ""', "schedule.jobs[0].cron", "is required"),
])
def test_schedule_errors_name_the_file_and_the_key(tmp_path, job, key, message):
    cfg = tmp_path / "r.toml"
    cfg.write_text(f'[[schedule.jobs]]\nname = "nightly"\n{job}\n')
    with pytest.raises(ConfigError) as err:
        load_settings(cfg, env={})
    assert str(err.value).startswith(f"{cfg}: {key}: ") and message in str(err.value)


def test_duplicate_job_names_and_history_types_are_errors(tmp_path):
    cfg = tmp_path / "r.toml"
    cfg.write_text('[[schedule.jobs]]\nname = "a"\ncron = "* * * * *"\n[[schedule.jobs]]\nname = "a"\ncron = "* * * * *"\n')
    with pytest.raises(ConfigError, match=r"schedule.jobs: two jobs are named 'a'"):
        load_settings(cfg, env={})
    cfg.write_text("[history]\nenabled = 1\n")
    with pytest.raises(ConfigError, match=r"history.enabled: must be bool"):
        load_settings(cfg, env={})


def test_a_run_is_missed_when_a_scheduled_time_passed_since_the_last_run():
    daily = cron.trigger("0 2 * * *", UTC)
    last = dt.datetime(2026, 1, 5, 2, 0, 3, tzinfo=UTC)
    assert not missed(daily, last, dt.datetime(2026, 1, 6, 1, 59, tzinfo=UTC))
    assert missed(daily, last, dt.datetime(2026, 1, 6, 2, 0, 1, tzinfo=UTC))
    assert missed(daily, dt.datetime(2026, 1, 5, 1, 59, tzinfo=UTC), dt.datetime(2026, 1, 5, 9, tzinfo=UTC))
    assert not missed(daily, None, dt.datetime(2026, 1, 6, 9, tzinfo=UTC))  # no history: nothing known missed


def _settings(tmp_path: Path, jobs: str, dsn: str = "", project: str = ""):
    cfg = tmp_path / "reconciler.toml"
    cfg.write_text(f'[postgres]\ndsn = "{dsn}"\n' + (f'[firestore]\nproject = "{project}"\n' if project else "")
                   + f'[audit]\nrules_dir = "{ROOT / "rules"}"\nentities = ["customers"]\n' + jobs)
    return load_settings(cfg, env={}), cfg


class Recorder:
    """A job function that takes `seconds` for real and records (job, entities, start, finish)."""

    def __init__(self, seconds: float, then=None) -> None:
        self.seconds, self.then = seconds, then
        self.runs: list[tuple[str, tuple[str, ...], float, float]] = []
        self.lock = threading.Lock()

    def __call__(self, settings, entities, name):
        start = time.monotonic()
        if self.then is not None:
            self.then(settings, entities, name)
        time.sleep(self.seconds)
        with self.lock:
            self.runs.append((name, tuple(entities), start, time.monotonic()))


def _disjoint(intervals) -> bool:
    intervals = sorted(intervals)
    return all(b[0] >= a[1] for a, b in zip(intervals, intervals[1:]))


def test_a_short_cron_fires_and_a_slow_run_is_never_overlapped_not_even_by_another_job(tmp_path):
    settings, _ = _settings(tmp_path, '[[schedule.jobs]]\nname = "fast"\ncron = "* * * * * *"\nentities = ["things"]\n'
                                      '[[schedule.jobs]]\nname = "both"\ncron = "* * * * * *"\n'
                                      'entities = ["things", "other"]\n[history]\nenabled = false\n')
    slow = Recorder(2.2)
    s = Scheduler(settings, slow)
    s.start()
    time.sleep(7.5)
    s.shutdown()
    fast = [(a, b) for name, _, a, b in slow.runs if name == "fast"]
    things = [(a, b) for _, ents, a, b in slow.runs if "things" in ents]
    assert len(things) >= 2 and sum("other" in e for _, e, _, _ in slow.runs) >= 2  # it fired, again and again
    assert _disjoint(things) and _disjoint(fast)  # fires every second, runs take 2.2 s: never two at once
    assert len(things) <= 4  # 7.5 s of 2.2 s runs: the firings during a run were skipped, not queued up


def _runs(dsn: str) -> list[tuple[str, dt.datetime, dt.datetime]]:
    with psycopg.connect(dsn) as conn:
        if conn.execute("SELECT to_regclass('reconciler_runs')").fetchone()[0] is None:
            return []
        return conn.execute("SELECT job, started_at, finished_at FROM reconciler_runs ORDER BY started_at").fetchall()


def _wait(predicate, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.2)


def test_real_runs_on_a_short_cron_are_recorded_and_never_overlap(customers_loaded, tmp_path):
    loaded, _ = customers_loaded
    settings, _ = _settings(tmp_path, '[[schedule.jobs]]\nname = "every-second"\ncron = "* * * * * *"\n',
                            loaded.postgres.dsn, loaded.firestore.project)
    slow = Recorder(1.0, then=lambda st, ents, name: run_job(st, ents, job=name))  # a real run, then 1 s more
    s = Scheduler(settings, slow)
    s.start()
    _wait(lambda: len(_runs(loaded.postgres.dsn)) >= 3)
    s.shutdown()
    runs = _runs(loaded.postgres.dsn)
    assert {job for job, _, _ in runs} == {"every-second"} and len(runs) == len(slow.runs)
    assert _disjoint([(a, b) for _, a, b in runs]) and _disjoint([(a, b) for _, _, a, b in slow.runs])


def test_a_missed_run_is_run_once_at_start_up(customers_loaded, tmp_path):
    loaded, _ = customers_loaded
    dsn = loaded.postgres.dsn
    run_job(loaded, ["customers"], job="nightly")
    with psycopg.connect(dsn) as conn:  # the last run was two days ago: last night's 03:00 was missed
        conn.execute("UPDATE reconciler_runs SET started_at = started_at - interval '2 days', "
                     "finished_at = finished_at - interval '2 days'")
    jobs = '[[schedule.jobs]]\nname = "nightly"\ncron = "0 3 * * *"\nrun_missed = {}\n'
    settings, _ = _settings(tmp_path, jobs.format("false"), dsn, loaded.firestore.project)
    off = Scheduler(settings)
    off.start()
    time.sleep(3)
    off.shutdown()
    assert len(_runs(dsn)) == 1  # not configured: not run

    settings, _ = _settings(tmp_path, jobs.format("true"), dsn, loaded.firestore.project)
    on = Scheduler(settings)
    on.start()
    _wait(lambda: len(_runs(dsn)) == 2)
    time.sleep(3)
    on.shutdown()
    runs = _runs(dsn)
    assert len(runs) == 2 and runs[1][0] == "nightly"  # once, not once per missed night
    assert runs[1][1] > dt.datetime.now(UTC) - dt.timedelta(minutes=5)

    again = Scheduler(settings)  # now the history is fresh: nothing was missed
    again.start()
    time.sleep(3)
    again.shutdown()
    assert len(_runs(dsn)) == 2


def test_sigterm_lets_the_running_job_finish_then_serve_exits_0(customers_loaded, tmp_path):
    loaded, _ = customers_loaded
    _, cfg = _settings(tmp_path, '[[schedule.jobs]]\nname = "nightly"\ncron = "* * * * * *"\n',
                       loaded.postgres.dsn, loaded.firestore.project)
    exe = shutil.which("reconcile", path=str(Path(sys.executable).parent))
    proc = subprocess.Popen([exe, "--config", str(cfg), "serve"], stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path, env=os.environ.copy())
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
    log: list[str] = []
    try:
        # the engine's own "run started" line (JSON: stderr is a pipe) comes after the run's started_at is taken;
        # the scheduler's line comes before it, so a signal sent on that one could race the run's start time
        while not any('"logger": "reconciler.engine", "msg": "run started"' in line for line in log):
            log.append(lines.get(timeout=60))
        proc.send_signal(signal.SIGTERM)
        sent = dt.datetime.now(UTC)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(0.2)
    while not lines.empty():
        log.append(lines.get())
    text = "".join(log)
    order = [text.index(s) for s in ("job nightly: run started", "SIGTERM received: no new runs will start",
                                     "waiting for the running job(s) nightly to finish", "job nightly: run finished",
                                     "scheduler stopped cleanly")]
    assert order == sorted(order), text
    runs = _runs(loaded.postgres.dsn)
    assert runs and all(started < sent for _, started, _ in runs)  # no run started after the signal
    assert runs[-1][2] > sent  # and the one that was running finished (and was recorded) after it


def test_serve_without_jobs_is_a_usage_error(tmp_path):
    from click.testing import CliRunner

    from reconciler.cli import main

    cfg = tmp_path / "none.toml"
    cfg.write_text("[schedule]\ntimezone = 'UTC'\n")
    r = CliRunner().invoke(main, ["--config", str(cfg), "serve"])
    assert r.exit_code == 2 and f"{cfg}: no [[schedule.jobs]] configured" in r.output
