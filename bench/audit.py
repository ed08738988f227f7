"""Audit throughput against the time it takes just to read both sides, and against the naive baseline.

    ./run bench audit --customers 10000 [--workers W] [--baseline-customers 1000] [--phases abcd]

Loads N seed-000 customers (every table filled, subcollections included) with 1% drift into Postgres
(COPY) and the Firestore emulator (batched writes from threads), unless that dataset is already loaded,
then runs each phase in its own process (so each has its own peak memory), with the same --workers:
  a  stream the Firestore side alone (root documents and subcollections, decoded, not mapped)
  b  stream the Postgres side alone (root rows with their embeds, and the child tables)
  c  the full audit (read, map, diff both sides)
  d  the baseline a user would otherwise write: load both sides into memory and DeepDiff them. It is a
     generous baseline: it reads with our own key-ordered streams and maps with our own rules, so only the
     in-memory load and DeepDiff differ from c. It covers the whole dataset unless --baseline-customers N
     (a quick look only: a prefix still costs the emulator whole pages and per-query sorts of the full
     collection groups, which makes d look slower per record than it is)
and prints records/s, the peak RSS of each phase (all its processes) and the ratios c/max(a,b) and d/c,
d/c both in elapsed time and in our own CPU per record (the part of the work that is ours).

Datasets are reused: set BENCH_PG_DSN (an admin DSN) and FIRESTORE_EMULATOR_HOST to servers that stay up
(`python -m reconciler.sandbox`), and a second run with the same --customers skips the load. Without
them, a throwaway sandbox is started (and the load is paid every time).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import time
from itertools import islice
from typing import Any, Iterator

import psutil
import psycopg
from google.cloud import firestore

from demo import customers
from reconciler import sandbox
from reconciler.keys import Scope

SEED = 0
CHUNK = 2000  # customers generated and loaded at a time: memory stays flat while loading 100k


# ---------------------------------------------------------------- servers and data

@contextlib.contextmanager
def _servers() -> Iterator[tuple[str, str]]:
    """(admin DSN, emulator host): the ones named in the environment, or a throwaway sandbox."""
    if os.environ.get("BENCH_PG_DSN") and os.environ.get("FIRESTORE_EMULATOR_HOST"):
        yield os.environ["BENCH_PG_DSN"], os.environ["FIRESTORE_EMULATOR_HOST"]
        return
    with sandbox.sandbox() as (pg, fs):
        yield pg.dsn(), fs.host


def _names(n: int) -> tuple[str, str]:
    return f"bench_audit_{n}", f"bench-audit-{n}"


def ensure_dataset(admin_dsn: str, host: str, n: int) -> tuple[str, str]:
    """The dataset of n customers (database DSN, Firestore project), loaded now unless it already is."""
    db, project = _names(n)
    os.environ["FIRESTORE_EMULATOR_HOST"] = host
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [db]).fetchone()
    dsn = psycopg.conninfo.make_conninfo(admin_dsn, dbname=db)
    if exists:
        with psycopg.connect(dsn) as conn:
            row = conn.execute("SELECT to_regclass('bench_meta') IS NOT NULL").fetchone()
            done = row[0] and conn.execute("SELECT customers, note FROM bench_meta").fetchone()
        if done and done[0] == n:
            print(f"bench audit: reusing the loaded dataset of {n:,} customers ({done[1]})")
            return dsn, project
        sandbox.drop_database(admin_dsn, db)
    sandbox.create_database(admin_dsn, db, icu_locale="en-US")
    client = firestore.Client(project=project)
    t_pg = t_fs = 0.0
    docs = drifted = 0
    with psycopg.connect(dsn) as conn:
        customers.create_schema(conn)
        people = customers.iter_customers(n, seed=SEED)
        for i in range(0, n, CHUNK):
            chunk = list(islice(people, CHUNK))
            t0 = time.monotonic()
            customers.load_postgres(conn, chunk)
            t1 = time.monotonic()
            customers.load_firestore(client, chunk)
            t2 = time.monotonic()
            drifted += len(customers.inject_demo_drift(conn, client, chunk, seed=SEED + 1 + i))
            t_pg, t_fs = t_pg + t1 - t0, t_fs + t2 - t1
            docs += sum(1 + sum(len(s) for s in c.subcollections.values()) for c in chunk)
            print(f"\rbench audit: loaded {i + len(chunk):,}/{n:,} customers ({docs:,} documents; Postgres "
                  f"{t_pg:.0f} s, Firestore {t_fs:.0f} s = {docs / max(t_fs, 1e-9):,.0f} documents/s)",
                  end="", flush=True)
        note = (f"{docs:,} documents, {drifted:,} drifted records; loaded Postgres in {t_pg:.0f} s, Firestore in "
                f"{t_fs:.0f} s = {docs / max(t_fs, 1e-9):,.0f} documents/s")
        conn.execute("CREATE TABLE bench_meta (customers int, note text)")
        conn.execute("INSERT INTO bench_meta VALUES (%s, %s)", [n, note])
        conn.execute("ANALYZE")
        conn.commit()
    print(f"\nbench audit: {note}")
    return dsn, project


# ---------------------------------------------------------------- phases (each in its own process)

def _settings(dsn: str, project: str) -> Any:
    from reconciler.config import load_settings

    return load_settings(None, env={"RECONCILER_PG_DSN": dsn, "GOOGLE_CLOUD_PROJECT": project,
                                    "RECONCILER_RULES_DIR": str(customers.SCHEMA.parents[1] / "rules")})


def _read_range(task: tuple[Any, Any, Any, str]) -> int:
    """Phase a or b over one key range: every record of the entity on one side, counted."""
    from reconciler import engine
    from reconciler.sources import firestore as fs_source
    from reconciler.sources import postgres as pg_source

    settings, rules, scope, side = task
    sides = engine.open_sides(settings, rules.tables())
    n = 0
    try:
        if side == "firestore":
            reader = fs_source.FirestoreReader(sides.fs, page_size=settings.firestore.page_size)
            for doc in rules.documents:
                n += sum(1 for _ in reader.stream(doc, scope, rules.top_collection))
        else:
            pg_source.begin_snapshot(sides.pg)
            reader = pg_source.PostgresReader(sides.pg, sides.schema, itersize=settings.postgres.itersize)
            for doc in rules.documents:
                n += sum(1 for _ in reader.stream(doc, scope))
    finally:
        sides.pg.close()
    return n


def _phase(name: str, dsn: str, project: str, workers: int, baseline: int) -> dict[str, Any]:
    from reconciler import engine, parallel

    settings = _settings(dsn, project)
    rules = engine.load_rules(settings, ["customers"])[0]
    t0 = time.monotonic()
    if name in ("a", "b"):
        side = "firestore" if name == "a" else "postgres"
        sides = engine.open_sides(settings, rules.tables())
        scopes = parallel.key_ranges(rules, sides, workers)
        sides.pg.close()
        tasks = [(settings, rules, s, side) for s in scopes]
        n = sum(parallel.map_ranges(_read_range, tasks, workers) if workers > 1 else map(_read_range, tasks))
        return {"records": n, "seconds": time.monotonic() - t0}
    if name == "c":
        planner = parallel.Planner(settings, workers=workers) if workers > 1 else None
        e = engine.run_audit(settings, ["customers"], planner=planner).entities[0]
        return {"records": e.counts.matched + e.counts.drifted, "seconds": time.monotonic() - t0,
                "drifted": e.counts.drifted}
    return _baseline(settings, rules, baseline, t0)


def _baseline(settings: Any, rules: Any, limit: int, t0: float) -> dict[str, Any]:
    """What one writes without this tool: every record of both sides in a dict, then one DeepDiff."""
    from deepdiff import DeepDiff

    from reconciler import engine, settle
    from reconciler.mapping import FirestoreMapper, PostgresMapper
    from reconciler.sources import firestore as fs_source
    from reconciler.sources import postgres as pg_source

    sides = engine.open_sides(settings, rules.tables())
    scope = engine.limit_scope(rules, sides, limit) if limit else Scope()
    pg_all: dict[str, Any] = {}
    fs_all: dict[str, Any] = {}
    pg_source.begin_snapshot(sides.pg)
    pg_reader = pg_source.PostgresReader(sides.pg, sides.schema)
    fs_reader = fs_source.FirestoreReader(sides.fs)
    for doc in rules.documents:
        pg_map, fs_map = PostgresMapper(doc, rules.compare), FirestoreMapper(doc, rules.compare)
        for key, raw in pg_reader.stream(doc, scope):
            pg_all[settle.document_path(rules, doc, key)] = pg_map.record(*raw)
        for key, d in fs_reader.stream(doc, scope, rules.top_collection):
            fs_all[settle.document_path(rules, doc, key)] = fs_map.record(d.fields)
    sides.pg.close()
    t_load = time.monotonic() - t0
    diff = DeepDiff(pg_all, fs_all, significant_digits=6, ignore_numeric_type_changes=True)
    return {"records": len(set(pg_all) | set(fs_all)), "seconds": time.monotonic() - t0, "load_seconds": t_load,
            "differences": sum(len(v) for v in diff.values())}


# ---------------------------------------------------------------- the driver

def _emulator_cpu() -> float:
    """CPU seconds the Firestore emulator (a JVM) has used so far: where the time goes when we wait."""
    port = os.environ.get("FIRESTORE_EMULATOR_HOST", "").rpartition(":")[2]
    total = 0.0
    for p in psutil.process_iter(["name", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            cmd = " ".join(p.info["cmdline"] or ())
            if "java" in (p.info["name"] or "") and "firestore" in cmd.lower() and port and port in cmd:
                t = p.cpu_times()
                total += t.user + t.system
    return total


def _machine_busy() -> tuple[float, float]:
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0), sum(t)


def _measured(argv: list[str]) -> tuple[dict[str, Any], float]:
    """Run a phase process; its JSON result and the peak RSS (MiB) of it and all its children together,
    with the CPU seconds it, the emulator and the whole machine spent meanwhile."""
    emulator, (busy, total) = _emulator_cpu(), _machine_busy()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        with contextlib.suppress(psutil.Error):
            rss = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
            peak = max(peak, rss)
        time.sleep(0.05)
    out = proc.stdout.read() if proc.stdout else ""
    if proc.returncode != 0:
        raise SystemExit(f"bench audit: phase {argv[-1]} failed (exit {proc.returncode})")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the phase's processes, workers included
    result = json.loads(out.strip().splitlines()[-1])
    result["cpu_s"] = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    result["emulator_cpu_s"] = _emulator_cpu() - emulator
    busy2, total2 = _machine_busy()
    result["machine_busy"] = f"{(busy2 - busy) / max(total2 - total, 1e-9):.0%} of {psutil.cpu_count()} cores"
    return result, peak / 2**20


LABELS = {"a": "a  Firestore alone", "b": "b  Postgres alone", "c": "c  full audit", "d": "d  load + DeepDiff"}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="./run bench audit", description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--customers", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=1, help="processes (key ranges) for phases a, b and c")
    ap.add_argument("--baseline-customers", type=int, default=0,
                    help="customers the baseline d covers [default: 0 = all of them]")
    ap.add_argument("--phases", default="abcd")
    ap.add_argument("--load-only", action="store_true", help="load the dataset (if needed) and stop")
    ap.add_argument("--phase", help=argparse.SUPPRESS)  # internal: run one phase, print its JSON
    ap.add_argument("--dsn", help=argparse.SUPPRESS)
    ap.add_argument("--project", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.phase:
        print(json.dumps(_phase(args.phase, args.dsn, args.project, args.workers, args.baseline_customers)))
        return
    with _servers() as (admin_dsn, host):
        dsn, project = ensure_dataset(admin_dsn, host, args.customers)
        if args.load_only:
            return
        results: dict[str, tuple[dict[str, Any], float]] = {}
        print(f"bench audit: {args.customers:,} customers, --workers {args.workers}")
        for phase in args.phases:
            argv_ = [sys.executable, "-m", "bench", "audit", "--customers", str(args.customers), "--workers",
                     str(args.workers), "--baseline-customers", str(args.baseline_customers), "--dsn", dsn,
                     "--project", project, "--phase", phase]
            r, peak = results[phase] = _measured(argv_)
            extra = ", ".join(f"{k} {v:,.1f}" if isinstance(v, float) else f"{k} {v:,}" if isinstance(v, int)
                              else f"{k} {v}" for k, v in r.items()
                              if k not in ("records", "seconds"))
            print(f"  {LABELS[phase]:<20} {r['records']:>9,} records in {r['seconds']:7.1f} s = "
                  f"{r['records'] / r['seconds']:>8,.0f} records/s, peak RSS {peak:6.0f} MiB"
                  + (f"  ({extra})" if extra else ""), flush=True)
        if {"a", "b", "c"} <= set(results):
            a, b, c = (results[p][0]["seconds"] for p in "abc")
            print(f"  c/max(a,b) = {c / max(a, b):.2f}   (target <= 1.2)")
        if {"c", "d"} <= set(results):
            rate_c = results["c"][0]["records"] / results["c"][0]["seconds"]
            rate_d = results["d"][0]["records"] / results["d"][0]["seconds"]
            print(f"  d/c = {rate_c / rate_d:.1f}   (elapsed time per record; target >= 50)")
            cpu_c, cpu_d = (results[p][0]["cpu_s"] / results[p][0]["records"] for p in "cd")
            print(f"  d/c = {cpu_d / cpu_c:.1f}   (our CPU per record: {cpu_d * 1e3:.2f} ms against {cpu_c * 1e3:.2f} ms)")
            print(f"  peak RSS d/c = {results['d'][1] / results['c'][1]:.1f}   (d holds both sides in memory)")


if __name__ == "__main__":
    main()
