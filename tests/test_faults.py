"""Faults on real servers: a Postgres backend terminated in the middle of a stream, Firestore connections cut
in the middle of a sweep, SIGTERM in the middle of `--repair --apply`. Each run completes (or is re-run) to
the result of an uninterrupted run: no record skipped, none counted twice, no half-applied repair."""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from reconciler.engine import run_audit

RULES = Path(__file__).parents[1] / "rules"


def _summary(result):
    (e,) = result.entities
    assert e.error is None, e.error
    return e.counts, sorted((f.key, f.kind.value, tuple(d.path for d in f.fields)) for f in e.findings)


def _drift(people, fs_client, pg_dsn):
    fs_client.collection("customers").document(people[3].id).update({"lastName": "Drifted"})
    fs_client.collection("customers").document(people[-1].id).delete()
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("UPDATE customers SET phone = '+000' WHERE id = %s", (people[7].id,))


@contextlib.contextmanager
def _in_the_background(fn: Callable[[threading.Event], None]) -> Iterator[None]:
    """fn(stop) on a thread while the block runs; stop is set, and the thread joined, when it ends."""
    stop = threading.Event()
    thread = threading.Thread(target=fn, args=(stop,), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)


def _terminate_when_fetching(admin_dsn: str, killed: list[int], stop: threading.Event,
                             after_checkpoint: bool = False) -> None:
    """Terminate the audit's backend the first time it is seen fetching from a cursor (after a checkpoint
    was saved, if asked)."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        while after_checkpoint and not stop.is_set():
            if conn.execute("SELECT to_regclass('reconciler_checkpoints') IS NOT NULL").fetchone()[0] and \
                    conn.execute("SELECT count(*) FROM reconciler_checkpoints").fetchone()[0]:
                break
            time.sleep(0.001)
        while not stop.is_set() and not killed:
            row = conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = 'reconciler' "
                               "AND query ILIKE 'FETCH%' AND pid <> pg_backend_pid() LIMIT 1").fetchone()
            if row and conn.execute("SELECT pg_terminate_backend(%s)", row).fetchone()[0]:
                killed.append(row[0])
            time.sleep(0.001)


def test_postgres_backend_terminated_mid_stream(customers_loaded, fs_client, pg_dsn):
    settings, people = customers_loaded
    _drift(people, fs_client, pg_dsn)
    uninterrupted = _summary(run_audit(settings, ["customers"]))
    slow = dataclasses.replace(settings, postgres=dataclasses.replace(settings.postgres, itersize=1))
    killed: list[int] = []
    with _in_the_background(lambda stop: _terminate_when_fetching(pg_dsn, killed, stop)):
        interrupted = _summary(run_audit(slow, ["customers"]))
    assert killed, "the backend was never terminated: nothing was tested"
    assert interrupted == uninterrupted


@pytest.mark.parametrize("signum, exit_code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_during_repair_apply_leaves_no_half_applied_record(customers_loaded, fs_client, pg_dsn, tmp_path,
                                                                    signum, exit_code):
    """SIGTERM (a timeout, Kubernetes) and SIGINT (Ctrl-C) alike: the batch being written finishes, the report is
    written and lists what was applied and what was interrupted, stderr says so, no record is half-applied."""
    import json
    import os
    import subprocess
    import sys

    from reconciler.repair import LOG_TABLE

    settings, people = customers_loaded
    root = Path(__file__).parents[1]
    col = fs_client.collection("customers")
    drifted = [p for p in people if p.document.get("metrics")][:20]
    truth = {p.id: (p.document.get("lastName"), p.document["metrics"].get("totalOrders")) for p in drifted}
    for p in drifted:  # two fields per record: a half-applied repair would fix one and not the other
        col.document(p.id).update({"lastName": "Wrong", "metrics.totalOrders": -1})
    config = tmp_path / "reconciler.toml"
    config.write_text(f'[audit]\nrules_dir = "{root / "rules"}"\n[repair]\nbatch_size = 1\nmax_drift_ratio = 1.0\n')
    cmd = [sys.executable, "-m", "reconciler.cli", "--config", str(config), "--entity", "customers", "--repair",
           "--apply", "--report-dir", str(tmp_path / "out")]
    env = {**os.environ, "RECONCILER_PG_DSN": pg_dsn}
    proc = subprocess.Popen(cmd, env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def logged() -> int:
        with psycopg.connect(pg_dsn) as conn:
            if not conn.execute("SELECT to_regclass(%s)", [LOG_TABLE]).fetchone()[0]:
                return 0
            return conn.execute(f"SELECT count(*) FROM {LOG_TABLE}").fetchone()[0]

    deadline = time.monotonic() + 120
    while logged() < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == exit_code, (out, err)
    name = signal.Signals(signum).name
    assert f"stopped by {name}: " in err and "Traceback" not in err, err

    def state() -> tuple[set[str], set[str]]:
        fixed, untouched = set(), set()
        for p in drifted:
            d = col.document(p.id).get().to_dict()
            now = (d.get("lastName"), d["metrics"].get("totalOrders"))
            if now == truth[p.id]:
                fixed.add(p.id)
            else:
                assert now == ("Wrong", -1), (p.id, now)  # never one field repaired and the other not
                untouched.add(p.id)
        return fixed, untouched

    fixed, untouched = state()
    assert fixed and untouched, "the SIGTERM did not land in the middle of the repair: nothing was tested"
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute(f"SELECT entity_id, firestore_status FROM {LOG_TABLE}").fetchall()
    assert sorted(rows) == sorted((f"customers/{i}", "applied") for i in fixed)  # each applied write logged once
    assert f"{len(fixed)} records were repaired" in err and f"{len(untouched)} were not written (interrupted" in err
    (entity,) = json.loads((tmp_path / "out" / "report.json").read_text())["entities"]
    outcome = {f["key"].split("/")[1]: f["repair"] for f in entity["findings"]}
    assert {i for i, r in outcome.items() if r["status"] == "applied"} == fixed
    assert {i for i, r in outcome.items() if r["reason"].startswith("interrupted")} == untouched

    # run again: the rest is repaired, and the end state is that of an uninterrupted run
    again = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, (again.stdout, again.stderr)
    assert state() == (set(truth), set())
    assert not run_audit(settings, ["customers"]).has_drift


class _CuttingProxy:
    """A TCP proxy in front of the Firestore emulator that, once `after_bytes` have come back from it, cuts
    every connection and refuses new ones for `down_s` seconds: the emulator going away in the middle of a
    sweep, as the client sees it (the emulator keeps its data in memory, so the real process is not stopped)."""

    def __init__(self, upstream: str, after_bytes: int, down_s: float) -> None:
        import socket

        self.upstream = upstream.rsplit(":", 1)
        self.after_bytes, self.down_s = after_bytes, down_s
        self.received, self.cuts, self.refused = 0, 0, 0
        self.down_until = 0.0
        self.lock = threading.Lock()
        self.conns: list = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.host = f"127.0.0.1:{self.server.getsockname()[1]}"
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket

        while not self.closed:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if time.monotonic() < self.down_until:
                self.refused += 1
                client.close()
                continue
            up = socket.create_connection((self.upstream[0], int(self.upstream[1])))
            with self.lock:
                self.conns += [client, up]
            threading.Thread(target=self._pump, args=(client, up, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, client, True), daemon=True).start()

    def _pump(self, src, dst, from_server: bool) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
                if from_server:
                    with self.lock:
                        self.received += len(data)
                        cut = self.cuts == 0 and self.received >= self.after_bytes
                        if cut:
                            self.cuts += 1
                    if cut:
                        self._cut()
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def _cut(self) -> None:
        import socket

        self.down_until = time.monotonic() + self.down_s
        with self.lock:
            conns, self.conns = self.conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.closed = True
        self.server.close()
        self._cut()


def test_firestore_connections_cut_mid_sweep(customers_loaded, fs_client, pg_dsn, firestore_emulator, monkeypatch):
    settings, people = customers_loaded
    _drift(people, fs_client, pg_dsn)
    uninterrupted = _summary(run_audit(settings, ["customers"]))
    proxy = _CuttingProxy(firestore_emulator.host, after_bytes=40_000, down_s=2.0)
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", proxy.host)
    small_pages = dataclasses.replace(settings, firestore=dataclasses.replace(settings.firestore, page_size=4))
    try:
        interrupted = _summary(run_audit(small_pages, ["customers"]))
    finally:
        proxy.close()
    assert proxy.cuts == 1 and proxy.refused > 0, "the connection was never cut: nothing was tested"
    assert proxy.received > 100_000  # the sweep went on after the cut
    assert interrupted == uninterrupted


def test_a_failed_audit_resumes_from_its_checkpoint(customers_loaded, fs_client, pg_dsn):
    """The connection dies for good mid-stream (no reconnects): the run fails; --resume continues it from the
    checkpoint (not from the start: the restored counts are not counted again) to the uninterrupted result."""
    from reconciler import checkpoint

    settings, people = customers_loaded
    _drift(people, fs_client, pg_dsn)
    uninterrupted = _summary(run_audit(settings, ["customers"]))
    fragile = dataclasses.replace(settings, checkpoint_every=3,
                                  postgres=dataclasses.replace(settings.postgres, itersize=1, reconnects=0))
    killed: list[int] = []
    with _in_the_background(lambda stop: _terminate_when_fetching(pg_dsn, killed, stop, True)):
        failed = run_audit(fragile, ["customers"])
    assert killed and failed.entities[0].error  # "terminating connection..." or "server closed the connection..."
    with psycopg.connect(pg_dsn) as conn:
        collection, last_key, tally = conn.execute(
            f"SELECT collection, last_key, tally FROM {checkpoint.TABLE} WHERE run_id = %s", [failed.run_id]).fetchone()
    assert collection is not None and last_key and 0 < sum(tally["counts"].values())

    swept: dict[str, int] = {}
    resumed = run_audit(fragile, ["customers"], resume=failed.run_id,
                        progress=lambda entity, collection, n, drifted: swept.__setitem__(collection, n))
    assert resumed.run_id == failed.run_id
    assert _summary(resumed) == uninterrupted
    counts = uninterrupted[0]
    restored = sum(tally["counts"].get(k, 0) for k in ("matched", "mismatched", "missing_in_firestore",
                                                           "missing_in_postgres"))
    assert sum(swept.values()) == counts.matched + counts.drifted - restored  # compared: only what was left


def _terminate(dsn: str, application_name: str) -> list[int]:
    """pg_terminate_backend on this database's backends of `application_name`, waiting until they are gone."""
    with psycopg.connect(dsn, autocommit=True) as admin:
        mine = "datname = current_database() AND application_name = %s AND pid <> pg_backend_pid()"
        pids = [r[0] for r in admin.execute(f"SELECT pid FROM pg_stat_activity WHERE {mine}", [application_name])]
        for pid in pids:
            admin.execute("SELECT pg_terminate_backend(%s)", [pid])
        while admin.execute(f"SELECT count(*) FROM pg_stat_activity WHERE {mine}", [application_name]).fetchone()[0]:
            time.sleep(0.01)
    return pids


def _kill_while_connecting_firestore(monkeypatch, dsn: str) -> list[int]:
    """Firestore's connect (slow on Google Cloud) lets the Postgres connection made before it die: the real
    connect, then the tool's backend terminated before the run goes on."""
    from reconciler.sources import firestore as fs_source

    real, killed = fs_source.connect, []

    def connect(*args, **kwargs):
        client = real(*args, **kwargs)
        if not killed:
            killed.extend(_terminate(dsn, "reconciler"))
        return client

    monkeypatch.setattr(fs_source, "connect", connect)
    return killed


def test_backend_terminated_while_the_sides_are_opened(customers_loaded, fs_client, pg_dsn, monkeypatch):
    settings, people = customers_loaded
    _drift(people, fs_client, pg_dsn)
    uninterrupted = _summary(run_audit(settings, ["customers"]))
    killed = _kill_while_connecting_firestore(monkeypatch, pg_dsn)
    assert _summary(run_audit(settings, ["customers"])) == uninterrupted
    assert killed, "the backend was never terminated: nothing was tested"


def test_a_lost_connection_without_reconnects_is_a_runtime_failure_naming_the_step(customers_loaded, pg_dsn,
                                                                                  monkeypatch, tmp_path):
    """No reconnects left: exit 3 with what was being done, not 'unexpected error: AdminShutdown'."""
    from click.testing import CliRunner

    from reconciler.cli import main

    config = tmp_path / "reconciler.toml"
    config.write_text(f'[postgres]\nreconnects = 0\n[audit]\nrules_dir = "{RULES}"\n')
    monkeypatch.setenv("RECONCILER_PG_DSN", pg_dsn)
    killed = _kill_while_connecting_firestore(monkeypatch, pg_dsn)
    r = CliRunner().invoke(main, ["--config", str(config), "--log-level", "error", "--entity", "customers"])
    assert killed, r.output
    assert r.exit_code == 3, r.output
    assert r.output.startswith("reconcile: error: postgres: reading the live schema: "), r.output
    assert "unexpected" not in r.output and "Traceback" not in r.output


def test_the_checkpoint_connection_terminated_mid_audit(customers_loaded, fs_client, pg_dsn):
    """The checkpoints' own connection dies between two saves: it is made again and the audit goes on to the
    uninterrupted result (and its checkpoints are still saved)."""
    from reconciler import checkpoint

    settings, people = customers_loaded
    _drift(people, fs_client, pg_dsn)
    uninterrupted = _summary(run_audit(settings, ["customers"]))
    every3 = dataclasses.replace(settings, checkpoint_every=3,
                                 postgres=dataclasses.replace(settings.postgres, itersize=1))
    killed: list[int] = []

    def kill_after_the_first_save(stop: threading.Event) -> None:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            while not stop.is_set():
                if conn.execute("SELECT to_regclass(%s) IS NOT NULL", [checkpoint.TABLE]).fetchone()[0] and \
                        conn.execute(f"SELECT count(*) FROM {checkpoint.TABLE}").fetchone()[0]:
                    killed.extend(_terminate(pg_dsn, "reconciler-checkpoint"))
                    return
                time.sleep(0.001)

    with _in_the_background(kill_after_the_first_save):
        result = run_audit(every3, ["customers"])
    assert killed, "the checkpoint backend was never terminated: nothing was tested"
    assert _summary(result) == uninterrupted
    with psycopg.connect(pg_dsn) as conn:
        (collection,) = conn.execute(f"SELECT collection FROM {checkpoint.TABLE} WHERE run_id = %s",
                                     [result.run_id]).fetchone()
    assert collection is None  # the entity's last save, after the kill: done


def _two_entities(tmp_path: Path) -> Path:
    """A rules directory with customers twice (the second as `customers2`, the same tables and collection)."""
    rules = tmp_path / "rules"
    rules.mkdir()
    text = (RULES / "customers.yaml").read_text()
    (rules / "customers.yaml").write_text(text)
    (rules / "customers2.yaml").write_text(text.replace("entity: customers", "entity: customers2", 1))
    return rules


def test_a_signal_after_one_entity_was_repaired_still_writes_the_report(customers_loaded, fs_client, pg_dsn,
                                                                         tmp_path, monkeypatch):
    """Ctrl-C once the first of two entities was repaired: the second is not audited, and the report (with the
    first's writes) is written all the same; exit 130. (The signal is sent by a wrapper around the real repair.)"""
    import json
    import os

    from click.testing import CliRunner

    from reconciler import engine
    from reconciler.cli import main
    from reconciler.repair import LOG_TABLE

    settings, people = customers_loaded
    col = fs_client.collection("customers")
    for p in people[:5]:
        col.document(p.id).update({"lastName": "Wrong"})
    real = engine.repair_entity

    def then_ctrl_c(rules, *args, **kwargs):
        outcome = real(rules, *args, **kwargs)
        if rules.entity == "customers":
            os.kill(os.getpid(), signal.SIGINT)
        return outcome

    monkeypatch.setattr(engine, "repair_entity", then_ctrl_c)
    config = tmp_path / "reconciler.toml"
    config.write_text(f'[audit]\nrules_dir = "{_two_entities(tmp_path)}"\nsettle_s = 0\n'
                      '[repair]\nmax_drift_ratio = 1.0\n')
    r = CliRunner(env={"RECONCILER_PG_DSN": pg_dsn}).invoke(
        main, ["--config", str(config), "--entity", "customers", "--entity", "customers2", "--repair", "--apply",
               "--report-dir", str(tmp_path / "out"), "--no-progress"])
    assert r.exit_code == 130, r.output
    assert "stopped by SIGINT: 5 records were repaired" in r.output, r.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    first, second = report["entities"]
    assert first["repair"]["done"] == 5 and second["skipped"].startswith("not audited: stopped by SIGINT")
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute(f"SELECT entity_id, firestore_status FROM {LOG_TABLE}").fetchall()
    assert sorted(rows) == sorted((f"customers/{p.id}", "applied") for p in people[:5])


def test_a_signal_in_the_middle_of_the_second_entitys_sweep_keeps_the_first(pg_dsn, fs_client, fs_project, tmp_path):
    """A stop at the second entity's next thousand records: that entity is reported as not audited (its partial
    counts would mislead), the first one's result stands, and run_audit returns, so the report can be written."""
    import os

    from demo import customers
    from reconciler import stop
    from reconciler.config import load_settings

    people = customers.generate(1100, seed=5)  # more than 1,000 root documents: a stop check within the sweep
    with psycopg.connect(pg_dsn) as conn:
        customers.load(conn, fs_client, people)
    settings = load_settings(None, env={"RECONCILER_PG_DSN": pg_dsn, "GOOGLE_CLOUD_PROJECT": fs_project,
                                        "RECONCILER_RULES_DIR": str(_two_entities(tmp_path)),
                                        "RECONCILER_SETTLE_S": "0"})
    seen = []

    def progress(entity: str, collection: str, n: int, drifted: int) -> None:
        seen.append((entity, n))
        if entity == "customers2" and n >= 1000:
            os.kill(os.getpid(), signal.SIGINT)

    try:
        with stop.on_signals():
            result = run_audit(settings, ["customers", "customers2"], progress=progress)
    finally:
        stop._requested.clear()  # the request outlives the block (the CLI reads it after); not the next test's
    first, second = result.entities
    assert any(e == "customers2" and n >= 1000 for e, n in seen), "the sweep never got that far: nothing tested"
    assert first.error is None and first.skipped is None and first.counts.matched > 1000
    assert second.skipped == "not audited: stopped by SIGINT while auditing customers2", second
    assert second.counts.matched == 0 and not second.findings
