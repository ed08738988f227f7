"""Key ranges (--workers), shards (--shard, merge-reports) and incremental audits (--changed-since)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import signal
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from demo import customers
from reconciler import engine, parallel, stop
from reconciler.cli import main
from reconciler.errors import RulesError, UsageError
from reconciler.keys import Scope, id_sort_key, order_text, ranges, uuid_split_points
from reconciler.result import Counts, EntityResult, FindingKind
from test_key_order_integration import IDS as WIDGET_IDS
from test_key_order_integration import widgets  # noqa: F401  (a fixture: text keys, numeric IDs)

# ------------------------------------------------------------------------------------------ ranges (unit)

NUMERIC = st.integers(-(2**63), 2**63 - 1).map(lambda n: f"__id{n}__")
UUIDS = st.uuids().map(str)
TEXT = st.text(st.characters(blacklist_characters="/", blacklist_categories=("Cs",)), min_size=1, max_size=6)
# numeric IDs Firestore refuses but a Postgres key may be: leading zeros, any size
BIG_NUMERIC = st.builds(lambda n, zeros: f"__id{'-' if n < 0 else ''}{'0' * zeros}{abs(n)}__",
                        st.integers(-(10**50), 10**50), st.integers(0, 2))
IDS = st.one_of(NUMERIC, BIG_NUMERIC, UUIDS, TEXT, st.sampled_from(["__id__", "__idx__", "_", "0", "g", "ffffffff"]))


@given(st.lists(IDS, max_size=8), st.lists(IDS, min_size=1, max_size=30))
def test_ranges_cover_the_key_space_exactly_once(points, keys):
    scopes = ranges(points)
    assert scopes[0].start is None and scopes[-1].end is None
    assert all(a.end == b.start for a, b in zip(scopes, scopes[1:]))  # end to end, no gap, no overlap
    for key in keys:
        assert sum(s.contains(key) for s in scopes) == 1, key


@given(st.lists(IDS, max_size=8), IDS, IDS, st.lists(IDS, min_size=1, max_size=30))
def test_ranges_inside_a_range_cover_that_range_exactly_once(points, a, b, keys):
    if id_sort_key(a) == id_sort_key(b):
        return
    lo, hi = sorted((a, b), key=id_sort_key)
    within = Scope(start=lo, end=hi)
    scopes = ranges(points, within)
    assert scopes[0].start == lo and scopes[-1].end == hi
    for key in keys:
        assert sum(s.contains(key) for s in scopes) == within.contains(key)


@given(st.integers(1, 40), UUIDS, UUIDS)
def test_uuid_split_points_are_ordered_uuids_inside_the_range(n, a, b):
    lo, hi = sorted((a, b))
    if lo == hi:
        return
    points = uuid_split_points(n, Scope(start=lo, end=hi))
    assert len(points) == n - 1
    assert all(str(uuid.UUID(p)) == p for p in points)
    assert all(lo <= p < hi for p in points) and points == sorted(points)
    whole = uuid_split_points(4)
    assert whole == ["40000000-0000-0000-0000-000000000000", "80000000-0000-0000-0000-000000000000",
                     "c0000000-0000-0000-0000-000000000000"]


@given(IDS, IDS)
def test_order_text_sorts_as_firestore_does(a, b):
    assert (order_text(a) < order_text(b)) == (id_sort_key(a) < id_sort_key(b))


def test_shard_parsing_and_environment():
    assert parallel.Shard.parse("2/3") == parallel.Shard(2, 3)
    assert parallel.Shard.parse("auto", {"CLOUD_RUN_TASK_INDEX": "4", "CLOUD_RUN_TASK_COUNT": "10"}) == \
        parallel.Shard(4, 10)
    assert parallel.Shard.parse("auto", {"JOB_COMPLETION_INDEX": "0", "RECONCILER_SHARD_COUNT": "3"}) == \
        parallel.Shard(0, 3)
    for bad in ("3/3", "-1/3", "1", "a/b", "1/0"):
        with pytest.raises(UsageError, match="shard"):
            parallel.Shard.parse(bad, {})
    with pytest.raises(UsageError, match="RECONCILER_SHARD_COUNT"):
        parallel.Shard.parse("auto", {"JOB_COMPLETION_INDEX": "1"})
    with pytest.raises(UsageError, match="neither"):
        parallel.Shard.parse("auto", {})


def test_changed_since_parsing():
    now = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.timezone.utc)
    assert parallel.parse_since("2h", now) == now - dt.timedelta(hours=2)
    assert parallel.parse_since("90s", now) == now - dt.timedelta(seconds=90)
    assert parallel.parse_since("2026-11-23T00:00:00Z", now) == dt.datetime(2026, 11, 23, tzinfo=dt.timezone.utc)
    assert parallel.parse_since("2026-11-23T01:00:00+01:00", now) == dt.datetime(2026, 11, 23, tzinfo=dt.timezone.utc)
    with pytest.raises(UsageError, match="time zone"):
        parallel.parse_since("2026-11-23T00:00:00", now)
    with pytest.raises(UsageError, match="duration"):
        parallel.parse_since("yesterday", now)


# ------------------------------------------------------------------------------------------ workers (integration)

ODD_IDS = ["__id7__", "__id-2__", "ghost", "Zed", "0000", "zzzz", "ffffffff-ffff-ffff-ffff-fffffffffffg"]


@pytest.fixture
def drifted(customers_loaded, fs_client, pg_dsn):
    """30 customers with the demo's drift, plus orphans with IDs that are no UUIDs (numeric, text before and
    after every UUID) and an orphan subdocument under a customer that does not exist."""
    settings, people = customers_loaded
    with psycopg.connect(pg_dsn) as conn:
        injected = customers.inject_demo_drift(conn, fs_client, people, seed=3, ratio=0.34)
    col = fs_client.collection("customers")
    for odd in ODD_IDS:
        col.document(odd).set({"email": f"{odd}@example.com"})
    col.document("nobody").collection("addresses").document("a1").set({"city": "x"})
    assert len(injected) >= 10
    return settings


def _same(a, b):
    assert a.error is None and b.error is None, (a.error, b.error)
    assert a.counts == b.counts
    assert a.findings == b.findings
    assert a.field_counts == b.field_counts and list(a.field_counts) == list(b.field_counts)
    assert a.findings_truncated == b.findings_truncated


@pytest.mark.parametrize("max_findings", [1000, 7])
def test_three_workers_find_what_one_finds(drifted, max_findings):
    settings = dataclasses.replace(drifted, max_findings=max_findings)
    one = engine.run_audit(settings, ["customers"]).entities[0]
    three = engine.run_audit(settings, ["customers"], planner=parallel.Planner(settings, workers=3)).entities[0]
    _same(one, three)
    assert three.sweep.workers == 3
    assert one.counts.missing_in_postgres >= len(ODD_IDS) + 1
    assert one.findings_truncated == (max_findings == 7)


def test_workers_write_no_checkpoints_and_do_not_resume(drifted, pg_dsn, monkeypatch):
    """Ranges of one entity would share its checkpoint: a planned run keeps none, and --resume refuses one."""
    from reconciler import checkpoint

    settings = dataclasses.replace(drifted, checkpoint_every=5)
    one = engine.run_audit(settings, ["customers"])
    three = engine.run_audit(settings, ["customers"], planner=parallel.Planner(settings, workers=3))
    _same(one.entities[0], three.entities[0])
    with psycopg.connect(pg_dsn) as conn:
        saved = {r[0] for r in conn.execute(f"SELECT run_id FROM {checkpoint.TABLE}")}
    assert one.run_id in saved and three.run_id not in saved
    with pytest.raises(UsageError, match="--workers, --shard or --changed-since"):
        engine.run_audit(settings, ["customers"], resume=one.run_id, planner=parallel.Planner(settings, workers=3))
    monkeypatch.setenv("RECONCILER_PG_DSN", drifted.postgres.dsn)
    monkeypatch.setenv("RECONCILER_RULES_DIR", str(drifted.rules_dir))
    r = CliRunner().invoke(main, ["--entity", "customers", "--shard", "0/2", "--resume", one.run_id])
    assert r.exit_code == 2 and "--resume" in r.output, r.output


def test_merged_ranges_add_up_every_count_in_flight_included(drifted):
    rules = engine.load_rules(drifted, ["customers"])[0]
    parts = [EntityResult(entity="customers", source_of_truth="postgres", findings=(), findings_truncated=False,
                          counts=Counts(postgres=n, firestore=n, matched=n - 1, in_flight=1)) for n in (3, 4)]
    merged = parallel.merge_results(rules, parts, max_findings=10, duration_s=0.0)
    assert merged.counts == Counts(postgres=7, firestore=7, matched=5, in_flight=2)


def test_sigterm_starts_no_further_range():
    done = []
    try:
        with stop.on_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            with pytest.raises(stop.Interrupted, match="key ranges"):
                parallel.map_ranges(abs, [-1, -2, -3, -4], workers=1, on_done=done.append)
    finally:
        stop._requested.clear()  # the request outlives the block (the CLI reads it after); not the next test's
    assert done == [1]




def _stop_requested_then_killed(task: int) -> int:
    """In a worker: what a SIGTERM to the process group does to a worker that is still starting up (before its
    handler is in place): the stop is requested (the parent's handler) and the worker dies."""
    stop._requested.set()
    os.kill(os.getpid(), signal.SIGKILL)
    return task


def test_a_worker_killed_by_the_sigterm_that_stops_the_run_is_a_stop_not_a_crash():
    try:
        with pytest.raises(stop.Interrupted, match="while the workers were starting"):
            parallel.map_ranges(_stop_requested_then_killed, [1, 2], workers=2)
        assert stop.requested()  # the request outlives the pool: the CLI exits 143
    finally:
        stop._requested.clear()

@pytest.mark.parametrize("to", ["the process group", "the parent alone"])
def test_sigterm_stops_the_workers_in_the_middle_of_their_ranges(to, pg_dsn, fs_client):
    """Kubernetes and systemd signal the whole process group, `kill PID` the parent alone: either way each worker
    stops at its next safe point (its message names the entity, not the parent's "key ranges"), and the run exits
    143 without a traceback, long before the ranges were done."""
    import subprocess
    import sys

    people = customers.generate(3000, seed=3)  # ~1,500 root documents per worker: checks at every 1,000
    with psycopg.connect(pg_dsn) as conn:
        customers.load(conn, fs_client, people)
    root = Path(__file__).parents[1]
    env = {**os.environ, "RECONCILER_PG_DSN": pg_dsn, "RECONCILER_RULES_DIR": str(root / "rules")}
    cmd = [sys.executable, "-m", "reconciler.cli", "--entity", "customers", "--workers", "2", "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while _worker_connections(pg_dsn) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # both workers connected: their SIGTERM handlers are in place (installed before)
    assert proc.poll() is None, proc.communicate()
    if to == "the process group":
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, (out, err)
    assert "stopped by SIGTERM while auditing customers" in err, err
    assert "Traceback" not in err


def _worker_connections(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                            "AND application_name = 'reconciler'").fetchone()[0] - 1  # the parent's own


def test_sampled_split_points_for_text_keys(widgets, fs_client):  # noqa: F811
    """Non-UUID keys: split points sampled from Postgres, and workers equal one run, numeric IDs included."""
    settings = widgets
    fs_client.collection("widgets").document("__id5__").update({"label": "changed"})
    fs_client.collection("widgets").document("é").collection("parts").document("P").update({"qty": -1})
    fs_client.collection("widgets").document("__id2__").set({"label": "orphan"})
    rules = engine.load_rules(settings, ["widgets"])[0]
    sides = engine.open_sides(settings, rules.tables())
    try:
        scopes = parallel.key_ranges(rules, sides, 3)
    finally:
        sides.pg.close()
    assert len(scopes) == 3
    assert all(s.start in WIDGET_IDS for s in scopes[1:])
    assert sum(1 for i in WIDGET_IDS if scopes[0].contains(i)) == len(WIDGET_IDS) // 3
    one = engine.run_audit(settings, ["widgets"]).entities[0]
    three = engine.run_audit(settings, ["widgets"], planner=parallel.Planner(settings, workers=3)).entities[0]
    _same(one, three)
    assert {f.key for f in one.findings} == {"widgets/__id5__", "widgets/é/parts/P", "widgets/__id2__"}


# ------------------------------------------------------------------------------------------ shards (integration)

def _comparable(report: dict) -> dict:
    """A report without what differs between runs by nature: ids, times, how it was split."""
    out = {k: v for k, v in report.items() if k not in ("run_id", "started_at", "finished_at", "duration_s",
                                                        "merged_from")}
    out["entities"] = [{k: v for k, v in e.items() if k not in ("duration_s", "sweep")} for e in report["entities"]]
    return out


def _full_run_and_shards(settings, entity: str, n: int, tmp_path: Path, monkeypatch) -> CliRunner:
    """The CLI audits the entity whole (report in tmp_path/full, drift expected) and as shards 0..n-1 of n
    (tmp_path/K); the runner, for more commands in the same environment."""
    monkeypatch.setenv("RECONCILER_PG_DSN", settings.postgres.dsn)
    monkeypatch.setenv("RECONCILER_RULES_DIR", str(settings.rules_dir))
    runner = CliRunner()
    full = runner.invoke(main, ["--entity", entity, "--report-dir", str(tmp_path / "full")])
    assert full.exit_code == 1, full.output
    for k in range(n):
        r = runner.invoke(main, ["--entity", entity, "--shard", f"{k}/{n}", "--report-dir", str(tmp_path / str(k))])
        assert r.exit_code in (0, 1), r.output
    return runner


def test_three_shards_find_what_one_run_finds_and_merge_into_its_report(drifted, tmp_path, monkeypatch):
    runner = _full_run_and_shards(drifted, "customers", 3, tmp_path, monkeypatch)
    # the same shard from the environment, as a Cloud Run Jobs task sees it
    monkeypatch.setenv("CLOUD_RUN_TASK_INDEX", "1")
    monkeypatch.setenv("CLOUD_RUN_TASK_COUNT", "3")
    r = runner.invoke(main, ["--entity", "customers", "--shard", "auto", "--report-dir", str(tmp_path / "auto")])
    assert r.exit_code in (0, 1), r.output
    load = lambda d: json.loads((tmp_path / d / "report.json").read_text())  # noqa: E731
    assert _comparable(load("auto")) == _comparable(load("1"))
    full_report = load("full")
    shard_findings = [f for k in range(3) for f in load(str(k))["entities"][0]["findings"]]
    assert sorted(f["key"] for f in shard_findings) == sorted(f["key"] for f in full_report["entities"][0]["findings"])
    assert all(load(str(k))["entities"][0]["findings"] for k in range(3))  # each shard found some of it

    merged = runner.invoke(main, ["merge-reports", str(tmp_path / "merged"), *(str(tmp_path / str(k)) for k in range(3))])
    assert merged.exit_code == 1, merged.output
    assert _comparable(load("merged")) == _comparable(full_report)
    assert (tmp_path / "merged" / "report.html").read_text().count("customers/") >= len(shard_findings)

    def refused(dirs, match):
        r = runner.invoke(main, ["merge-reports", str(tmp_path / "bad"), *map(str, dirs)])
        assert r.exit_code == 2 and match in r.output, r.output

    refused([tmp_path / "0", tmp_path / "1"], "shards 2 of 3 are missing")
    refused([tmp_path / "0", tmp_path / "1", tmp_path / "auto"], "given twice")
    refused([tmp_path / "full"], "not a shard report")
    for key, value, match in (("rules_sha256", "0" * 64, "differ in rules_sha256"),
                              ("start", "00000000-0000-0000-0000-000000000001", "overlap or leave a gap")):
        other = load("2")
        other["entities"][0]["sweep"][key] = value
        (tmp_path / "edited").mkdir(exist_ok=True)
        (tmp_path / "edited" / "report.json").write_text(json.dumps(other))
        refused([tmp_path / "0", tmp_path / "1", tmp_path / "edited"], match)
    assert not (tmp_path / "bad").exists()



def test_more_shards_than_keys_leave_the_last_shards_empty_and_still_merge(widgets, fs_client, tmp_path, monkeypatch):  # noqa: F811
    """13 text keys in 20 shards: the sampled split points cannot make 20 ranges. Every shard still runs (the
    extra ones audit nothing), together they find what one run finds, and their reports merge."""
    fs_client.collection("widgets").document("__id5__").update({"label": "changed"})
    runner = _full_run_and_shards(widgets, "widgets", 20, tmp_path, monkeypatch)
    load = lambda d: json.loads((tmp_path / d / "report.json").read_text())  # noqa: E731
    counts = [load(str(k))["entities"][0]["counts"] for k in range(20)]
    assert sum(c["postgres"] for c in counts) == load("full")["entities"][0]["counts"]["postgres"] == len(WIDGET_IDS) * 6
    assert counts[-1]["postgres"] == counts[-1]["firestore"] == 0  # an extra shard
    merged = runner.invoke(main, ["merge-reports", str(tmp_path / "merged"), *(str(tmp_path / str(k)) for k in range(20))])
    assert merged.exit_code == 1, merged.output
    assert _comparable(load("merged")) == _comparable(load("full"))

# ------------------------------------------------------------------------------------------ --changed-since

def test_changed_since_audits_exactly_the_records_updated_on_either_side(customers_loaded, fs_client, pg_dsn):
    settings, people = customers_loaded
    everyone = engine.run_audit(settings, ["customers"],
                                planner=parallel.Planner(settings, since=parallel.parse_since("1h"))).entities[0]
    full = engine.run_audit(settings, ["customers"]).entities[0]
    assert everyone.counts == full.counts  # just loaded: every Firestore document's updatedAt is recent

    with psycopg.connect(pg_dsn) as conn:
        since = conn.execute("SELECT now()").fetchone()[0]
    time.sleep(0.05)
    a, b, c = people[0], people[1], people[2]
    with psycopg.connect(pg_dsn) as conn:  # the updated_at trigger stamps the row
        conn.execute("UPDATE customers SET email = 'changed@example.com' WHERE id = %s", [a.id])
    col = fs_client.collection("customers")
    col.document(b.id).update({"status": "tampered", "updatedAt": customers.SERVER})  # as the app writes
    col.document(c.id).update({"status": "silent"})  # drift without an update time: invisible here
    result = engine.run_audit(settings, ["customers"], planner=parallel.Planner(settings, since=since)).entities[0]
    subdocs = sum(len(d) for p in (a, b) for d in p.subcollections.values())
    assert result.counts.postgres == 2 + subdocs and result.counts.firestore == 2 + subdocs
    assert [(f.key, f.kind, [d.path for d in f.fields]) for f in result.findings] == sorted(
        [(f"customers/{a.id}", FindingKind.MISMATCH, ["email", "emailLowercase"]),  # a generated column too
         (f"customers/{b.id}", FindingKind.MISMATCH, ["status"])], key=lambda t: id_sort_key(t[0].split("/")[1]))
    assert result.sweep.changed_since == since.astimezone(dt.timezone.utc).isoformat()
    later = engine.run_audit(settings, ["customers"],
                             planner=parallel.Planner(settings, since=dt.datetime.now(dt.timezone.utc)))
    assert later.entities[0].counts.postgres == 0 and not later.entities[0].findings


def test_changed_since_needs_the_rules_to_say_where_update_times_are(drifted, tmp_path, monkeypatch):
    rules = (Path(drifted.rules_dir) / "customers.yaml").read_text()
    (tmp_path / "customers.yaml").write_text(rules.replace("changed: {column: updated_at, field: updatedAt}", ""))
    settings = dataclasses.replace(drifted, rules_dir=tmp_path)
    with pytest.raises(RulesError, match="changed: {column: ..., field: ...}"):
        engine.run_audit(settings, ["customers"], planner=parallel.Planner(settings, since=parallel.parse_since("1h")))


def test_a_shard_of_changed_records_is_a_range_of_them():
    ids = tuple(str(uuid.UUID(int=i << 124)) for i in range(16))  # 0..., 1..., ..., f... in the first hex digit
    parts = ranges(uuid_split_points(4), Scope(ids=ids))
    assert len(parts) == 4 and all(p.ids == ids for p in parts)
    assert [len(p.sorted_ids()) for p in parts] == [4, 4, 4, 4]
    assert sorted(i for p in parts for i in p.sorted_ids()) == sorted(ids)
    keys = tuple((i, "pref") for i in ids)  # a root collection that is a subcollection: its records' keys ride along
    assert all(p.keys == keys for p in ranges(uuid_split_points(4), Scope(ids=ids, keys=keys)))
