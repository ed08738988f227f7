"""Exit codes and one-line messages: usage/config/rules errors exit 2, unreachable databases exit 3."""

import socket
from pathlib import Path

from click.testing import CliRunner

from reconciler.cli import main

ROOT = Path(__file__).parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_entity_is_a_usage_error():
    r = CliRunner().invoke(main, [])
    assert r.exit_code == 2 and "--entity NAME" in r.output


def test_broken_rules_file_exits_2_with_file_and_line(tmp_path, monkeypatch):
    (tmp_path / "customers.yaml").write_text("entity: customers\nsource_of_truth: postgres\ncolour: red\n")
    monkeypatch.setenv("RECONCILER_RULES_DIR", str(tmp_path))
    r = CliRunner().invoke(main, ["--entity", "customers"])
    assert r.exit_code == 2
    assert f"{tmp_path / 'customers.yaml'}:3: unknown key 'colour'" in r.output
    assert "Traceback" not in r.output


def test_invalid_config_exits_2_naming_file_and_key(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[audit]\nmax_findings = 'lots'\n")
    r = CliRunner().invoke(main, ["--config", str(cfg), "--entity", "customers"])
    assert r.exit_code == 2 and f"{cfg}: audit.max_findings: must be int" in r.output
    cfg.write_text("[postgress]\n")
    r = CliRunner().invoke(main, ["--config", str(cfg), "--entity", "customers"])
    assert r.exit_code == 2 and "[postgress]: unknown section" in r.output


def test_env_var_set_but_empty_is_an_error_not_a_silent_default(monkeypatch):
    monkeypatch.setenv("RECONCILER_PG_DSN", "")
    r = CliRunner().invoke(main, ["--entity", "customers"])
    assert r.exit_code == 2 and "RECONCILER_PG_DSN: is set but empty" in r.output


def test_unreachable_postgres_exits_3_with_one_line(monkeypatch):
    monkeypatch.setenv("RECONCILER_PG_DSN", f"postgresql://nobody:s3cret-pw@127.0.0.1:{_free_port()}/x")
    monkeypatch.setenv("RECONCILER_RULES_DIR", str(ROOT / "rules"))
    r = CliRunner().invoke(main, ["--log-level", "warning", "--entity", "customers"])  # no info log lines
    assert r.exit_code == 3
    assert r.output.startswith("reconcile: error: postgres: cannot connect:") and r.output.count("\n") == 1
    assert "s3cret-pw" not in r.output


def test_unreachable_firestore_exits_3(pg_dsn, monkeypatch):
    monkeypatch.setenv("RECONCILER_PG_DSN", pg_dsn)
    monkeypatch.setenv("RECONCILER_RULES_DIR", str(ROOT / "rules"))
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", f"127.0.0.1:{_free_port()}")
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "nowhere")
    r = CliRunner().invoke(main, ["--entity", "customers"])
    assert r.exit_code == 3
    assert "firestore: cannot reach 127.0.0.1:" in r.output and "Traceback" not in r.output


def _drifted_audit(customers_loaded, fs_client, pg_dsn, tmp_path) -> list[str]:
    import sys

    _, people = customers_loaded
    fs_client.collection("customers").document(people[0].id).update({"lastName": "Drifted"})
    return [sys.executable, "-m", "reconciler.cli", "--pg-dsn", pg_dsn, "--entity", "customers",
            "--report-dir", str(tmp_path / "out")]


def test_a_reader_that_closes_the_pipe_early_ends_quietly_with_the_runs_exit_code(customers_loaded, fs_client,
                                                                                   pg_dsn, tmp_path):
    """stdout's reader gone before anything was printed: exit 1 (drift), the report written, no traceback."""
    import subprocess

    cmd = _drifted_audit(customers_loaded, fs_client, pg_dsn, tmp_path)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 1, err
    assert "unexpected error" not in err and "Traceback" not in err and "BrokenPipe" not in err, err
    assert (tmp_path / "out" / "report.json").is_file()


def test_reconcile_piped_into_head(customers_loaded, fs_client, pg_dsn, tmp_path):
    """`reconcile ... | head -1` in a shell: the first line, and the exit code the run earned (pipefail)."""
    import shlex
    import subprocess

    cmd = _drifted_audit(customers_loaded, fs_client, pg_dsn, tmp_path)
    # head is gone before the report's path is printed: the report is written (and named) after the summary
    shell = f"set -o pipefail; {shlex.join(cmd)} 2>{tmp_path / 'err'} | head -1"
    r = subprocess.run(["bash", "-c", shell], cwd=ROOT, capture_output=True, text=True, timeout=120)
    err = (tmp_path / "err").read_text()
    assert r.returncode == 1, (r.stdout, err)
    assert r.stdout.startswith("customers: ") and r.stdout.count("\n") == 1
    assert "unexpected error" not in err and "Traceback" not in err and "BrokenPipe" not in err, err
