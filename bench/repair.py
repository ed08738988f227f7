"""Repair throughput: records repaired per second toward Firestore (customers), after the audit.

    ./run bench repair [--customers 3000] [--drifted 600]

Loads N seed-000 customers into a throwaway Postgres and the emulator, changes a mapped field of
`--drifted` customer documents (and of one subcollection document each where there is one) in
Firestore, then runs `--repair --apply` in-process and prints the repair phase's rate (the audit sweep
before it is timed separately), then audits again to check that the repair left no drift.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import time

import psycopg
from google.cloud import firestore

from demo import customers
from reconciler import sandbox
from reconciler.config import load_settings
from reconciler.engine import run_audit
from reconciler.repair import Options

PROJECT = "bench-repair"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="./run bench repair", description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--customers", type=int, default=3000)
    ap.add_argument("--drifted", type=int, default=600)
    args = ap.parse_args(argv)
    with sandbox.sandbox() as (pg, fs):
        dsn = pg.create_database("bench_repair", icu_locale="en-US")
        os.environ.update({"FIRESTORE_EMULATOR_HOST": fs.host})
        client = firestore.Client(project=PROJECT)
        people = customers.generate(args.customers, seed=1)
        with psycopg.connect(dsn) as conn:
            customers.load(conn, client, people)
        drifted = 0
        batch = client.batch()
        for i, p in enumerate(random.Random(2).sample(people, args.drifted)):
            ref = client.collection("customers").document(p.id)
            batch.update(ref, {"metrics.totalSpent": -1.0, "status": "tampered"})
            drifted += 1
            for name, docs in p.subcollections.items():
                if docs:
                    batch.update(ref.collection(name).document(next(iter(docs))), {"appTouched": True, "id": "x"})
                    drifted += 1
                    break
            if i % 100 == 99:
                batch.commit()
                batch = client.batch()
        batch.commit()
        settings = load_settings(None, env={"RECONCILER_PG_DSN": dsn, "GOOGLE_CLOUD_PROJECT": PROJECT})
        settings = dataclasses.replace(settings, repair=dataclasses.replace(
            settings.repair, max_repairs=drifted, max_drift_ratio=1.0))
        t0 = time.monotonic()
        e = run_audit(settings, ["customers"], repair=Options(apply=True)).entities[0]
        total = time.monotonic() - t0
        r = e.repair
        print(f"bench repair: {args.customers:,} customers, {e.counts.postgres:,} records, {e.counts.drifted:,} drifted")
        print(f"  audit sweep          {total - r.duration_s:7.1f} s")
        print(f"  repair (toward Firestore) {r.done:,} applied, {r.skipped} skipped, {r.failed} failed in "
              f"{r.duration_s:.1f} s = {r.done / r.duration_s:,.0f} records/s")
        after = run_audit(settings, ["customers"]).entities[0]
        print(f"  audit after repair: {after.counts.drifted} drifted")


if __name__ == "__main__":
    main()
