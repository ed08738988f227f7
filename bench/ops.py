"""Operations: the nightly job's cost beyond the audit, explain's latency, history queries after a year.

    ./run bench ops [--customers 3000] [--explains 10] [--runs 365]

Loads N seed-000 customers (with the demo's drift) into a throwaway Postgres and the emulator, then times:
run_job (audit + reports + history) against the audit alone; History.record of that run; `explain` of
single records (median) against the sweep; and, with --runs recorded nightly runs in the history,
first_seen and the report's 30-run trend query.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import psycopg
from google.cloud import firestore

from demo import customers
from reconciler import sandbox
from reconciler.config import load_settings
from reconciler.engine import run_audit
from reconciler.explain import explain
from reconciler.history import History
from reconciler.runner import run_job

PROJECT = "bench-ops"
ROOT = Path(__file__).resolve().parents[1]


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="./run bench ops", description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--customers", type=int, default=3000)
    ap.add_argument("--explains", type=int, default=10)
    ap.add_argument("--runs", type=int, default=365)
    args = ap.parse_args(argv)
    with sandbox.sandbox() as (pg, fs), tempfile.TemporaryDirectory() as out:
        dsn = pg.create_database("bench_ops", icu_locale="en-US")
        os.environ["FIRESTORE_EMULATOR_HOST"] = fs.host
        client = firestore.Client(project=PROJECT)
        people = customers.generate(args.customers, seed=1)
        with psycopg.connect(dsn) as conn:
            customers.load(conn, client, people)
            customers.inject_demo_drift(conn, client, people, seed=3)
        settings = load_settings(None, env={"RECONCILER_PG_DSN": dsn, "GOOGLE_CLOUD_PROJECT": PROJECT,
                                            "RECONCILER_RULES_DIR": str(ROOT / "rules"), "RECONCILER_REPORT_DIR": out})
        audit, t_audit = _timed(lambda: run_audit(settings, ["customers"]))
        records = audit.entities[0].counts.matched + audit.entities[0].counts.drifted
        job, t_job = _timed(lambda: run_job(settings, ["customers"], job="bench"))
        print(f"{records:,} records, {audit.entities[0].counts.drifted:,} drifted")
        print(f"audit alone:                      {t_audit:7.2f} s")
        print(f"run_job (audit, reports, history): {t_job:6.2f} s  ({t_job / t_audit:.2f}x the audit)")
        with History.open(settings) as h:
            _, t_rec = _timed(lambda: h.record(dataclasses.replace(job, run_id="again"), "bench"))
            print(f"History.record of that run:       {t_rec * 1000:7.1f} ms")
            ids = random.Random(4).sample([p.id for p in people], min(args.explains, len(people)))
            times = [_timed(lambda i=i: explain(settings, "customers", i))[1] for i in ids]
            med = statistics.median(times)
            print(f"explain, one record (median of {len(ids)}): {med * 1000:5.0f} ms  "
                  f"(the sweep takes {t_audit / med:,.0f}x as long)")
            start = job.started_at
            for day in range(args.runs):
                when = start - dt.timedelta(days=day + 1)
                h.record(dataclasses.replace(job, run_id=f"past{day}", started_at=when,
                                             finished_at=when + dt.timedelta(seconds=t_job)), "bench")
            key = job.entities[0].findings[0].key
            _, t_seen = _timed(lambda: h.first_seen("customers", key))
            _, t_trend = _timed(lambda: h.trend("customers", 30))
            print(f"with {args.runs + 2} runs recorded: first_seen {t_seen * 1000:.1f} ms, "
                  f"30-run trend {t_trend * 1000:.1f} ms")
