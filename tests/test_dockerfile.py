"""The Dockerfile's own steps work: Docker cannot run here, so its instructions are replayed without it.

Each stage gets a directory standing in for its filesystem and a fresh virtualenv of Debian's Python 3.11
standing in for the python:3.11-slim base (pip included). COPY copies from the repository (or from the
other stage's directory), WORKDIR is the working directory, RUN runs in sh with the stage's absolute paths
moved under its directory and `pip` being the venv's pip; `--no-cache-dir` is dropped so pip's cache makes
the replay fast. `useradd` is not replayed (it would add a user to this machine): the USER the image runs
as is stood in for by `nobody`, who owns what COPY --chown gives the image's user. Then ENTRYPOINT + CMD
(`reconcile --help`), `rules check --offline` against the copied rules and a real audit run from the
installed wheel, as `nobody`, with the Dockerfile's ENV.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PYTHON = "/usr/bin/python3.11"  # Debian's: readable by `nobody` (pyenv's lives under /root)
RUN_AS = "nobody"


@dataclass
class Stage:
    name: str
    base: str
    steps: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, arguments)


def parse(text: str) -> list[Stage]:
    logical = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    stages: list[Stage] = []
    for line in logical.splitlines():
        if not line.strip():
            continue
        op, _, args = line.strip().partition(" ")
        op, args = op.upper(), args.strip()
        if op == "FROM":
            base, _, name = args.partition(" AS ")
            stages.append(Stage(name=name.strip() or str(len(stages)), base=base.strip()))
        else:
            stages[-1].steps.append((op, args))
    return stages


def _env(args: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in shlex.split(args))


@pytest.fixture(scope="module")
def dockerfile() -> list[Stage]:
    return parse((ROOT / "Dockerfile").read_text())


def test_the_image_is_small_and_runs_as_a_user(dockerfile):
    final = dockerfile[-1]
    ops = [op for op, _ in final.steps]
    assert final.base.startswith("python:3.11-slim") and len(dockerfile) == 2  # a build stage: no sources in the image
    users = [args for op, args in final.steps if op == "USER"]
    assert users and users[-1] not in ("root", "0") and ops.index("USER") < ops.index("ENTRYPOINT")
    assert any(op == "RUN" and "useradd" in args and users[-1] in args for op, args in final.steps)
    assert json.loads(dict(final.steps)["ENTRYPOINT"]) == ["reconcile"]
    runs = " ".join(args for op, args in final.steps if op == "RUN")
    for tool in ("gcc", "build-essential", "apt-get install", "pytest", "[dev]", "git "):
        assert tool not in runs
    copied = [args.split()[-2] for op, args in final.steps if op == "COPY" and "--from" not in args]
    assert sorted(copied) == ["config", "rules"]  # no sources, no tests in the final image


@pytest.fixture(scope="module")
def replayed(dockerfile):
    """Replay every stage; returns (final stage dir, venv, workdir, env)."""
    assert os.getuid() == 0, "replaying COPY --chown and running as another user needs root"
    top = Path(tempfile.mkdtemp(prefix="dockerfile-replay-"))
    top.chmod(0o755)
    try:
        dirs: dict[str, Path] = {}
        out = {}
        for stage in dockerfile:
            fs = dirs[stage.name] = top / f"stage-{stage.name}"
            fs.mkdir()
            version = stage.base.split(":")[1].split("-")[0]
            venv = fs / "venv"
            subprocess.run([PYTHON, "-m", "venv", str(venv)], check=True)
            got = subprocess.run([venv / "bin/python", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                 capture_output=True, text=True, check=True).stdout.strip()
            assert got == version, f"the base image's Python is {version}, the replay's {got}"
            cwd, env = fs, {}

            def inside(path: str) -> Path:
                return fs / path.lstrip("/") if path.startswith("/") else cwd / path

            for op, args in stage.steps:
                if op == "WORKDIR":
                    cwd = inside(args)
                    cwd.mkdir(parents=True, exist_ok=True)
                elif op == "COPY":
                    words = args.split()
                    flags = dict(w[2:].split("=", 1) for w in words if w.startswith("--"))
                    *sources, dest = [w for w in words if not w.startswith("--")]
                    origin = dirs[flags["from"]] if "from" in flags else ROOT
                    target = inside(dest)
                    for src in sources:
                        path = origin / src.lstrip("/")
                        to = target / path.name if dest.endswith("/") or len(sources) > 1 else target
                        if path.is_dir():
                            shutil.copytree(path, to, ignore=shutil.ignore_patterns("__pycache__"))
                        else:
                            to.parent.mkdir(parents=True, exist_ok=True)
                            shutil.copy2(path, to)
                        if "chown" in flags:
                            subprocess.run(["chown", "-R", RUN_AS, str(to)], check=True)
                elif op == "RUN":
                    if args.startswith("useradd"):
                        continue
                    cmd = re.sub(r"(?<=\s)/(?=\w)", f"{fs}/", " " + args).replace("--no-cache-dir", "")
                    cmd = re.sub(r"(^|&&|;)\s*pip ", rf"\1 {venv}/bin/pip --disable-pip-version-check ", cmd)
                    r = subprocess.run(["sh", "-c", cmd], cwd=cwd, capture_output=True, text=True, timeout=600)
                    assert r.returncode == 0, f"RUN {args}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
                elif op == "ENV":
                    env.update({k: str(inside(v)) if v.startswith("/") else v for k, v in _env(args).items()})
            out = {"fs": fs, "venv": venv, "cwd": cwd, "env": env, "steps": stage.steps}
        yield out
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _run_as_user(replayed, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    steps = replayed["steps"]
    entry = json.loads(dict(steps)["ENTRYPOINT"])
    cmd = list(args) if args else json.loads(dict(steps)["CMD"])
    path = f"{replayed['venv']}/bin:/usr/local/bin:/usr/bin:/bin"
    full_env = {"PATH": path, "HOME": "/nonexistent", "LANG": "C.UTF-8", **replayed["env"], **(env or {})}
    argv = ["runuser", "-u", RUN_AS, "--", "env", "-i", *(f"{k}={v}" for k, v in full_env.items()), *entry, *cmd]
    return subprocess.run(argv, cwd=replayed["cwd"], capture_output=True, text=True, timeout=300)


def test_the_replayed_image_starts_reconcile(replayed):
    assert not (replayed["fs"] / "wheels").exists()  # removed by the RUN that installed it
    assert not list((replayed["venv"] / "lib").glob("python3.11/site-packages/_pytest"))  # no dev tools
    r = _run_as_user(replayed)  # ENTRYPOINT + CMD: reconcile --help
    assert r.returncode == 0, r.stderr
    assert "Usage: reconcile" in r.stdout and "Examples:" in r.stdout
    r = _run_as_user(replayed, "rules", "check", "--offline")  # the config and rules copied into the image
    assert r.returncode == 0, r.stderr
    assert "customers.yaml: ok" in r.stdout


def test_the_replayed_image_audits_and_writes_its_report(replayed, customers_loaded, fs_client):
    settings, people = customers_loaded
    fs_client.collection("customers").document(people[0].id).update({"metrics.totalOrders": -1})
    out = Path(tempfile.mkdtemp(prefix="dockerfile-report-"))
    shutil.chown(out, RUN_AS)
    try:
        r = _run_as_user(replayed, "--all", "--report-dir", str(out),
                         env={"RECONCILER_PG_DSN": settings.postgres.dsn,
                              "GOOGLE_CLOUD_PROJECT": os.environ["GOOGLE_CLOUD_PROJECT"],
                              "FIRESTORE_EMULATOR_HOST": os.environ["FIRESTORE_EMULATOR_HOST"]})
        assert r.returncode == 1, r.stdout + r.stderr  # the drift was found ...
        assert all(json.loads(line)["run_id"] for line in r.stderr.splitlines())  # ... and logged as JSON lines
        report = json.loads((out / "report.json").read_text())
        assert report["entities"][0]["counts"]["mismatched"] == 1
        assert "metrics.totalOrders" in (out / "report.html").read_text()  # the template ships in the wheel
    finally:
        shutil.rmtree(out, ignore_errors=True)
