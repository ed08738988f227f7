"""./run demo: a throwaway Postgres and the Firestore emulator, sample customers with known drift, an audit.

    ./run demo                      3,000 customers, report in out/demo/
    ./run demo --customers 20000    a bigger sweep
    ./run demo --repair             then repair the drift (--repair --apply --delete-orphans) and audit again
    ./run demo --keep               leave both servers running afterwards, to try `reconcile` by hand
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil
import psycopg
from google.cloud import firestore

from demo import catalog, conversations, customers, dataset, orders
from reconciler import sandbox

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "demo-reconciler"


def _load(dsn: str, client: firestore.Client, n: int, seed: int) -> list[dict]:
    t0 = time.monotonic()
    people = customers.generate(n, seed=seed)
    with psycopg.connect(dsn) as conn:
        customers.create_schema(conn)
        customers.load_postgres(conn, people)
    t1 = time.monotonic()
    customers.load_firestore(client, people)
    t2 = time.monotonic()
    print(f"demo: loaded {n:,} customers into Postgres in {t1 - t0:.1f} s and into Firestore in {t2 - t1:.1f} s")
    with psycopg.connect(dsn) as conn:
        drift = customers.inject_demo_drift(conn, client, people, seed=seed + 1)
    kinds = Counter(d["kind"] for d in drift)
    print(f"demo: injected {len(drift)} drifted records: " + ", ".join(f"{v} {k}" for k, v in sorted(kinds.items())))
    return drift


ENTITIES = ["orders", "customer_preferences", "conversations", "service_categories", "services", "service_packages"]


def _load_entities(dsn: str, client: firestore.Client, seed: int) -> None:
    """The seed 001/002 entities, in sync on both sides (their drift is shown by the tests, not the demo)."""
    t0 = time.monotonic()
    sets = ((orders.SCHEMA, orders.generate(300, seed)), (conversations.SCHEMA, conversations.generate(150, seed)),
            (catalog.SCHEMA, catalog.generate(12, seed)))
    with psycopg.connect(dsn) as conn:
        for schema, data in sets:
            dataset.load(conn, client, data, schema)
    n = sum(len(data.docs) for _, data in sets)
    print(f"demo: loaded {n:,} documents of {', '.join(ENTITIES)} (and their rows) in {time.monotonic() - t0:.1f} s")


def _run_measured(argv: list[str]) -> tuple[int, float]:
    """Run a command; its exit code and its peak resident memory in MiB (sampled every 50 ms)."""
    proc = subprocess.Popen(argv)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        with contextlib.suppress(psutil.Error):
            peak = max(peak, ps.memory_info().rss)
        time.sleep(0.05)
    return proc.returncode, peak / 2**20


def _compare(injected: list[dict], report: Path) -> None:
    """Did the audit find exactly the drift the demo injected?"""
    if not report.is_file():
        return
    (entity,) = json.loads(report.read_text())["entities"]
    found = {f["key"] for f in entity["findings"]}
    expected = {d["key"] for d in injected}
    if found == expected:
        print(f"demo: the audit found all {len(expected)} injected drifted records, and nothing else")
    else:
        print(f"demo: injected but not found: {sorted(expected - found)}; found but not injected: {sorted(found - expected)}")


def _repair(cmd: list[str], report_dir: Path) -> int:
    """Repair what the audit found, then audit again: the second audit must be clean (exit 0)."""
    repair = [*cmd[:2], "--report-dir", str(report_dir / "repair"), "--repair", "--apply", "--delete-orphans"]
    print(f"demo: reconcile {' '.join(repair)}")
    code, _ = _run_measured([sys.executable, "-m", "reconciler.cli", *repair])
    (entity,) = json.loads((report_dir / "repair" / "report.json").read_text())["entities"]
    r = entity["repair"]
    rate = r["done"] / r["duration_s"] if r["duration_s"] else 0.0
    print(f"demo: repair exited with {code}: {r['done']} records repaired in {r['duration_s']:.2f} s "
          f"after the audit ({rate:,.0f} records/s), {r['skipped']} skipped, {r['failed']} failed")
    code, _ = _run_measured([sys.executable, "-m", "reconciler.cli", *cmd[:2]])
    print(f"demo: the audit after the repair exited with {code} ({'clean' if code == 0 else 'NOT clean'})")
    return code


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="./run demo", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--customers", type=int, default=3000, help="how many sample customers (default 3000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--report-dir", type=Path, default=ROOT / "out" / "demo")
    ap.add_argument("--repair", action="store_true",
                    help="after the audit, repair the drift toward Firestore and audit again (should be clean)")
    ap.add_argument("--keep", action="store_true", help="keep the servers running until Ctrl-C")
    args = ap.parse_args(argv)

    print("demo: starting a throwaway PostgreSQL server and the Firestore emulator...")
    with sandbox.sandbox() as (pg, fs):
        dsn = pg.create_database("reconciler_demo", icu_locale="en-US")
        os.environ.update({"FIRESTORE_EMULATOR_HOST": fs.host, "GOOGLE_CLOUD_PROJECT": PROJECT,
                           "RECONCILER_PG_DSN": dsn, "RECONCILER_CONFIG": str(ROOT / "config" / "reconciler.toml")})
        client = firestore.Client(project=PROJECT)
        injected = _load(dsn, client, args.customers, args.seed)
        cmd = ["--entity", "customers", "--report-dir", str(args.report_dir)]
        print(f"demo: reconcile {' '.join(cmd)}")
        t0 = time.monotonic()
        code, peak_mib = _run_measured([sys.executable, "-m", "reconciler.cli", *cmd])  # as a user runs it
        took = time.monotonic() - t0
        print(f"demo: reconcile exited with {code} ({ {0: 'no drift', 1: 'drift found'}.get(code, 'error') }) "
              f"in {took:.1f} s, peak memory {peak_mib:.0f} MiB")
        _compare(injected, args.report_dir / "report.json")
        print(f"demo: open {args.report_dir / 'report.html'}")
        _load_entities(dsn, client, args.seed)
        others = [a for e in ENTITIES for a in ("--entity", e)] + ["--report-dir", str(args.report_dir / "entities")]
        print(f"demo: reconcile {' '.join(others)}")
        other_code, _ = _run_measured([sys.executable, "-m", "reconciler.cli", *others])
        print(f"demo: reconcile exited with {other_code} ({'clean' if other_code == 0 else 'NOT clean'})")
        code = code if other_code == 0 else max(code, other_code)
        if args.repair:
            code = _repair(cmd, args.report_dir)
        if args.keep:
            print("demo: servers are up; in another shell:\n"
                  f"  export FIRESTORE_EMULATOR_HOST={fs.host} GOOGLE_CLOUD_PROJECT={PROJECT} RECONCILER_PG_DSN='{dsn}'\n"
                  "  .venv/bin/reconcile --entity customers --limit 10\n"
                  "Ctrl-C stops them.")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
    return 0 if code in (0, 1) else code


if __name__ == "__main__":
    sys.exit(main())
