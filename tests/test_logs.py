"""Structured logs of a real `reconcile` run (a subprocess whose stderr is a pipe, as in cron or a container)."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from reconciler import logs

ROOT = Path(__file__).parents[1]


def _reconcile(settings, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "reconcile"
    env = {**os.environ, "RECONCILER_PG_DSN": settings.postgres.dsn, "RECONCILER_RULES_DIR": str(ROOT / "rules"),
           **(env or {})}
    return subprocess.run([str(exe), *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


def test_json_lines_with_the_run_id_on_every_line_of_a_real_run(customers_loaded, fs_client, tmp_path):
    settings, people = customers_loaded
    fs_client.collection("customers").document(people[0].id).update({"metrics.totalOrders": -1})
    out = _reconcile(settings, "--entity", "customers", "--report-dir", str(tmp_path), "--log-level", "debug")
    assert out.returncode == 1, out.stderr
    run_id = json.loads((tmp_path / "report.json").read_text())["run_id"]
    lines = [json.loads(line) for line in out.stderr.splitlines()]  # every line is a JSON object
    assert [l["msg"] for l in lines if l["logger"].startswith("reconciler.") and "thread" not in l] == [
        "run started", "customers audited", "run finished", "report written"]
    threads = {l["thread"].split()[0] for l in lines if "thread" in l}  # "postgres customers", "firestore addresses"
    assert {"postgres", "firestore"} <= threads  # the streams' threads log with the run id too
    for line in lines:
        assert line["run_id"] == run_id, line
        assert {"ts", "level", "logger", "msg"} <= set(line)
    audited = [line for line in lines if line["msg"] == "customers audited"]
    assert audited and audited[0]["entity"] == "customers" and audited[0]["drifted"] == 1
    assert "customers: " in out.stdout and not out.stdout.lstrip().startswith("{")  # the summary stays plain


def test_text_lines_and_levels(customers_loaded):
    settings, _ = customers_loaded
    out = _reconcile(settings, "--entity", "customers", "--log-format", "text")
    assert out.returncode == 0, out.stderr
    lines = out.stderr.splitlines()
    assert lines and all(" [run " in line and " INFO " in line for line in lines), lines
    quiet = _reconcile(settings, "--entity", "customers", env={"RECONCILER_LOG_LEVEL": "warning"})
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_extras_exceptions_and_the_run_id_in_threads():
    stream = io.StringIO()
    logs.configure("json", "info", stream=stream)
    try:
        import contextvars
        import threading

        logs.bind_run("r-1")
        log = logging.getLogger("reconciler.test")
        log.info("hello %s", "you", extra={"entity": "things"})
        t = threading.Thread(target=contextvars.copy_context().run, args=(log.warning, "from a thread"))
        t.start()
        t.join()
        try:
            raise ValueError("bad")
        except ValueError:
            log.exception("failed")
    finally:
        logging.getLogger().handlers = [h for h in logging.getLogger().handlers if h.get_name() != "reconciler"]
    a, b, c = (json.loads(line) for line in stream.getvalue().splitlines())
    assert a["msg"] == "hello you" and a["entity"] == "things" and a["run_id"] == "r-1" and a["level"] == "info"
    assert b["run_id"] == "r-1" and b["level"] == "warning"
    assert c["level"] == "error" and "ValueError: bad" in c["exc"]
