"""A tiny run of the benchmark scripts: they work end to end and measure what they say (not how fast)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_bench_audit_runs_every_phase_and_the_audit_finds_the_loaded_drift(pg_server, firestore_emulator):
    env = {"BENCH_PG_DSN": pg_server.dsn("postgres"), "FIRESTORE_EMULATOR_HOST": firestore_emulator.host,
           "PATH": "/usr/bin:/bin"}
    try:
        out = subprocess.run([sys.executable, "-m", "bench", "audit", "--customers", "40", "--workers", "2",
                              "--baseline-customers", "10"], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=300)
        assert out.returncode == 0, out.stderr
        loaded = int(re.search(r"([0-9]+(?:,[0-9]{3})*) drifted records", out.stdout).group(1))
        found = int(re.search(r"c  full audit .*drifted ([0-9]+(?:,[0-9]{3})*)", out.stdout).group(1))
        assert found == loaded >= 10
        counts = {p: int(n.replace(",", "")) for p, n in re.findall(r"^ +([abcd])  .*? ([0-9,]+) records in", out.stdout,
                                                                   re.MULTILINE)}
        assert set(counts) == set("abcd")
        assert counts["a"] > 40 and counts["b"] > 40 and abs(counts["a"] - counts["b"]) <= loaded
        assert counts["c"] >= max(counts["a"], counts["b"]) and counts["d"] < counts["c"]  # d: 10 customers only
        assert re.search(r"c/max\(a,b\) = [0-9.]+", out.stdout) and re.search(r"d/c = [0-9.]+", out.stdout)
        again = subprocess.run([sys.executable, "-m", "bench", "audit", "--customers", "40", "--phases", "b"],
                               cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0 and "reusing the loaded dataset of 40 customers" in again.stdout, again.stderr
    finally:
        pg_server.drop_database("bench_audit_40")
        firestore_emulator.reset("bench-audit-40")


def test_bench_core_counts_the_drift_it_made():
    out = subprocess.run([sys.executable, "-m", "bench", "core", "--records", "3000"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "3,000 canonical customer records, 30 drifted" in out.stdout
    assert re.search(r"= [0-9,]+ records per CPU-second", out.stdout)
