"""Throwaway servers for the demo and the tests: a PostgreSQL server and the real Firestore emulator.

Nothing here knows about tables or entities. Each server lives in a temporary directory, listens on
127.0.0.1 on a free port, and is stopped (and its directory removed) by ``stop()``. Three safety nets
make sure no ``postgres`` or ``java`` process outlives the Python process that started it:

* an ``atexit`` hook stops every server still running (normal exit, an uncaught exception, Ctrl-C);
* SIGTERM and SIGHUP, when nothing else handles them, stop the servers and then end the process;
* a tiny watchdog process per server waits on a pipe from this process: if this process dies without
  stopping the server (``kill -9``, a crash), the pipe closes and the watchdog stops the server.

Run ``python -m reconciler.sandbox`` to start both servers by hand and print how to reach them.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote

from reconciler.errors import RuntimeFailure

__all__ = [
    "BinaryNotFound",
    "ExistingPostgres",
    "FirestoreEmulator",
    "PostgresServer",
    "Sandbox",
    "SandboxError",
    "ServerStartError",
    "find_gcloud",
    "find_postgres_bindir",
    "free_port",
    "is_listening",
    "sandbox",
    "start_firestore_emulator",
    "start_postgres",
]

LOG_TAIL_LINES = 30


# --------------------------------------------------------------------------------------------- errors


class SandboxError(RuntimeFailure):
    """A throwaway server could not be found, started or used. ``log_tail`` holds the end of its log."""

    def __init__(self, message: str, *, log: Path | None = None, log_tail: str = "") -> None:
        self.log, self.log_tail = log, log_tail
        if log_tail:
            message = f"{message}\n--- the end of its {'log' if log else 'output'} ---\n{log_tail.rstrip()}"
        super().__init__(message)


class BinaryNotFound(SandboxError):
    """A program the sandbox needs (initdb, pg_ctl, gcloud, java) is not installed."""


class ServerStartError(SandboxError):
    """A server did not come up (in time)."""


def _tail(path: Path | None, lines: int = LOG_TAIL_LINES) -> str:
    if path is None:
        return ""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# -------------------------------------------------------------------------------------------- helpers


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_listening(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _version_key(path: str) -> tuple[int, ...]:
    # /usr/lib/postgresql/15/bin -> (15,)
    part = Path(path).parent.name
    return tuple(int(p) for p in part.split(".") if p.isdigit()) or (0,)


def find_postgres_bindir() -> Path:
    """The directory holding initdb, pg_ctl and postgres: $PG_BINDIR, then PATH, then the newest
    /usr/lib/postgresql/*/bin."""
    needed = ("initdb", "pg_ctl", "postgres")
    candidates: list[Path] = []
    if os.environ.get("PG_BINDIR"):
        candidates.append(Path(os.environ["PG_BINDIR"]))
    for name in ("pg_ctl", "initdb"):
        found = shutil.which(name)
        if found:
            candidates.append(Path(os.path.realpath(found)).parent)
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)]
    for d in candidates:
        if all(os.access(d / n, os.X_OK) for n in needed):
            return d
    raise BinaryNotFound(
        "PostgreSQL server programs (initdb, pg_ctl, postgres) were not found on PATH, in $PG_BINDIR or in "
        "/usr/lib/postgresql/*/bin. Install them (Debian: apt-get install postgresql-15) or set PG_BINDIR."
    )


def find_gcloud() -> str:
    """The gcloud command: $GCLOUD, then PATH, then the usual install places."""
    for cand in (os.environ.get("GCLOUD"), shutil.which("gcloud"), "/usr/lib/google-cloud-sdk/bin/gcloud",
                 os.path.expanduser("~/google-cloud-sdk/bin/gcloud")):
        if cand and os.access(cand, os.X_OK):
            return cand
    raise BinaryNotFound(
        "gcloud was not found: the Google Cloud CLI with its Firestore emulator is needed "
        "(Debian: apt-get install google-cloud-cli google-cloud-cli-firestore-emulator from Google's apt "
        "repository, or `gcloud components install cloud-firestore-emulator`), plus Java 11 or newer."
    )


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C")
    env.update(extra)
    return env


# ---------------------------------------------------------------------- safety nets: atexit, signals


_LIVE: list[Any] = []  # servers started by this process and not yet stopped
_LIVE_LOCK = threading.Lock()
_OWNER_PID = os.getpid()
_SIGNALS_INSTALLED = False


def _register(server: Any) -> None:
    with _LIVE_LOCK:
        _LIVE.append(server)
    _install_signal_handlers()


def _unregister(server: Any) -> None:
    with _LIVE_LOCK:
        if server in _LIVE:
            _LIVE.remove(server)


def _stop_all() -> None:
    if os.getpid() != _OWNER_PID:  # a forked child must not stop its parent's servers
        return
    with _LIVE_LOCK:
        servers = list(reversed(_LIVE))
    for server in servers:
        with contextlib.suppress(BaseException):
            server.stop()


atexit.register(_stop_all)


def _on_fatal_signal(signum: int, frame: Any) -> None:
    _stop_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_signal_handlers() -> None:
    """SIGTERM/SIGHUP would end Python without running atexit: stop the servers first. Only where no
    one else has set a handler, and only from the main thread. (Ctrl-C raises KeyboardInterrupt, which
    unwinds normally and runs atexit.)"""
    global _SIGNALS_INSTALLED
    if _SIGNALS_INSTALLED or threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(ValueError, OSError):
            if signal.getsignal(sig) == signal.SIG_DFL:
                signal.signal(sig, _on_fatal_signal)
    _SIGNALS_INSTALLED = True


# The watchdog: a separate process, in its own session (so Ctrl-C does not reach it), that blocks
# reading a pipe from us. We write "disarm" before closing it on an orderly stop; if the pipe closes
# without it, we died without cleaning up, and it carries out the plan.
def _watchdog(plan_json: str) -> None:
    """The watchdog process's body (run as `python -c`, see _start_watchdog)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    plan = json.loads(plan_json)
    try:
        data = sys.stdin.buffer.read()
    except BaseException:
        data = b""
    if b"disarm" in data:
        return
    for action in plan:
        with contextlib.suppress(Exception):
            if action["do"] == "killpg":
                pgid = action["pgid"]
                for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
                    try:
                        os.killpg(pgid, sig)
                    except ProcessLookupError:
                        break
                    end = time.time() + wait
                    while time.time() < end and _group_alive(pgid):
                        time.sleep(0.1)
                    if not _group_alive(pgid):
                        break
            elif action["do"] == "run":
                kw: dict[str, Any] = {}
                if action.get("uid") is not None:
                    kw = dict(user=action["uid"], group=action["gid"], extra_groups=[])
                subprocess.run(action["cmd"], cwd=action.get("cwd") or "/", stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60, **kw)
            elif action["do"] == "rmtree":
                shutil.rmtree(action["path"], ignore_errors=True)


_WATCHDOG_CODE = "import sys; from reconciler.sandbox import _watchdog; _watchdog(sys.argv[1])"


def _start_watchdog(plan: list[dict[str, Any]]) -> subprocess.Popen[bytes] | None:
    try:
        return subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG_CODE, json.dumps(plan)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, cwd="/", env=_clean_env(PYTHONPATH=str(Path(__file__).resolve().parents[1])),
        )
    except OSError:  # the watchdog is a safety net, not a requirement
        return None


def _disarm_watchdog(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None:
        return
    with contextlib.suppress(OSError, ValueError):
        assert proc.stdin is not None
        proc.stdin.write(b"disarm\n")
        proc.stdin.close()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _group_alive(pgid: int) -> bool:
    """Is any non-zombie process left in process group pgid?"""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if not os.path.isdir("/proc"):
        return True
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def _kill_group(proc: subprocess.Popen[bytes], *, grace: float = 10) -> None:
    """SIGTERM the process group led by proc, then SIGKILL what is left; reap proc."""
    pgid = proc.pid
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        end = time.monotonic() + wait
        while time.monotonic() < end:
            proc.poll()
            if not _group_alive(pgid):
                break
            time.sleep(0.05)
        if not _group_alive(pgid):
            break
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


# ------------------------------------------------------------------------------------------ PostgreSQL


def create_database(admin_dsn: str, name: str, *, icu_locale: str | None = None) -> str:
    """CREATE DATABASE name on the server admin_dsn points to; returns the new database's DSN.

    With icu_locale (e.g. "en-US") the database is made from template0 with LOCALE_PROVIDER icu, so
    text sorts by that ICU collation rather than by bytes."""
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    if icu_locale:
        query = sql.SQL(
            "CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8' LOCALE_PROVIDER icu ICU_LOCALE {}"
        ).format(sql.Identifier(name), sql.Literal(icu_locale))
    else:
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    try:
        with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute(query)
    except psycopg.Error as exc:
        raise SandboxError(f"could not create database {name!r}: {exc}".strip()) from exc
    return make_conninfo(admin_dsn, dbname=name)


def drop_database(admin_dsn: str, name: str) -> None:
    """DROP DATABASE IF EXISTS name, closing any connection still open to it."""
    import psycopg
    from psycopg import sql

    try:
        with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    except psycopg.Error as exc:
        raise SandboxError(f"could not drop database {name!r}: {exc}".strip()) from exc


@dataclass
class ExistingPostgres:
    """A server someone else runs (e.g. $TEST_PG_DSN): the same database helpers, and stop() does nothing."""

    admin_dsn: str

    def dsn(self, dbname: str | None = None) -> str:
        from psycopg.conninfo import make_conninfo

        return make_conninfo(self.admin_dsn, dbname=dbname) if dbname else self.admin_dsn

    def create_database(self, name: str, *, icu_locale: str | None = None) -> str:
        return create_database(self.admin_dsn, name, icu_locale=icu_locale)

    def drop_database(self, name: str) -> None:
        drop_database(self.admin_dsn, name)

    def stop(self) -> None:
        pass


@dataclass
class PostgresServer:
    """A PostgreSQL server of our own in a temporary directory; superuser `user` over TCP, no password."""

    host: str
    port: int
    user: str
    datadir: Path
    socket_dir: Path | None = field(default=None, repr=False)
    log_path: Path | None = field(default=None, repr=False)
    startup_seconds: float = field(default=0.0, repr=False)
    _base: Path | None = field(default=None, repr=False)
    _extra_dirs: list[Path] = field(default_factory=list, repr=False)
    _bindir: Path | None = field(default=None, repr=False)
    _owner: tuple[int, int] | None = field(default=None, repr=False)  # (uid, gid) to run pg_ctl as
    _watchdog: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _stopped: bool = field(default=False, repr=False)

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{quote(self.user, safe='')}@{self.host}:{self.port}/{quote(dbname, safe='')}"

    def create_database(self, name: str, *, icu_locale: str | None = None) -> str:
        create_database(self.dsn(), name, icu_locale=icu_locale)
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        drop_database(self.dsn(), name)

    @property
    def running(self) -> bool:
        return not self._stopped

    def stop(self) -> None:
        """Fast shutdown, then remove the directory. Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        try:
            if self._bindir is not None and (self.datadir / "postmaster.pid").exists():
                res = _run_pg([str(self._bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w",
                               "-t", "30", "stop"], self._owner, cwd=self._base, timeout=40)
                if res.returncode != 0:
                    _run_pg([str(self._bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "immediate", "-w",
                             "stop"], self._owner, cwd=self._base, timeout=40)
                    _kill_postmaster(self.datadir)
        finally:
            for d in [self._base, *self._extra_dirs]:
                if d is not None:
                    shutil.rmtree(d, ignore_errors=True)
            _disarm_watchdog(self._watchdog)
            self._watchdog = None
            _unregister(self)

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _kill_postmaster(datadir: Path) -> None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int((datadir / "postmaster.pid").read_text().splitlines()[0])
        os.kill(pid, signal.SIGKILL)


def _postgres_owner() -> tuple[int, int] | None:
    """PostgreSQL refuses to run as root: as root, run it as the `postgres` OS user."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        pw = pwd.getpwnam("postgres")
    except KeyError:
        raise SandboxError(
            "running as root, and PostgreSQL refuses to run as root, but there is no 'postgres' OS user to "
            "run it as: create one (useradd --system postgres) or run as a normal user"
        ) from None
    return pw.pw_uid, pw.pw_gid


def _reachable(path: Path, uid: int, gid: int) -> bool:
    """Can user uid (group gid) traverse every directory from / down to path?"""
    import stat

    for d in [path, *path.parents]:
        try:
            st = os.stat(d)
        except OSError:
            return False
        bit = stat.S_IXUSR if st.st_uid == uid else stat.S_IXGRP if st.st_gid == gid else stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def _run_pg(cmd: list[str], owner: tuple[int, int] | None, *, cwd: Path | None,
            timeout: float) -> subprocess.CompletedProcess[str]:
    kwargs: dict[str, Any] = {}
    if owner is not None:
        kwargs = dict(user=owner[0], group=owner[1], extra_groups=[])
    # Own process group: initdb runs `postgres --boot` as a child, which must die with it if we give up.
    proc = subprocess.Popen(cmd, cwd=str(cwd) if cwd else "/", env=_clean_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            **kwargs)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except BaseException as exc:  # timeout, Ctrl-C
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        if not isinstance(exc, subprocess.TimeoutExpired):
            raise
        return subprocess.CompletedProcess(cmd, 124, (out or "") + f"\n(timed out after {timeout:.0f} s)")
    return subprocess.CompletedProcess(cmd, proc.returncode, out or "")


def _conf_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def start_postgres(workdir: Path | None = None, port: int | None = None, *, timeout: float = 60) -> PostgresServer:
    """initdb a throwaway cluster in a new temp dir and start it on 127.0.0.1; stop() removes the dir.

    The dir goes under workdir if given (as root: only if the `postgres` OS user can reach workdir,
    else in the system temp dir). Tuned for speed, not durability (fsync, synchronous_commit and
    full_page_writes off)."""
    t0 = time.monotonic()
    bindir = find_postgres_bindir()
    owner = _postgres_owner()
    if port is not None and is_listening("127.0.0.1", port):
        raise ServerStartError(f"cannot start PostgreSQL on 127.0.0.1:{port}: something already listens there")
    if workdir is not None:
        workdir = Path(workdir).absolute()
        workdir.mkdir(parents=True, exist_ok=True)
        if owner is not None and not _reachable(workdir, *owner):
            workdir = None  # e.g. under /root or pytest's 0700 temp dirs
    base = Path(tempfile.mkdtemp(prefix="postgres-", dir=str(workdir) if workdir else None))
    extra_dirs: list[Path] = []
    try:
        datadir, log_path = base / "data", base / "postgres.log"
        sock = base / "sock"
        sock.mkdir()
        if len(str(sock / ".s.PGSQL.65535.lock")) > 100:  # unix socket paths are limited to ~107 bytes
            sock = Path(tempfile.mkdtemp(prefix="pgsock-"))
            extra_dirs.append(sock)
        if owner is not None:
            for d in (base, sock):
                os.chown(d, *owner)
        os.chmod(base, 0o700)

        res = _run_pg([str(bindir / "initdb"), "-D", str(datadir), "-U", "postgres", "-A", "trust",
                       "--encoding", "UTF8", "--locale", "C", "--no-sync", "--no-instructions"],
                      owner, cwd=base, timeout=timeout)
        if res.returncode != 0:
            hint = ""
            if "ermission denied" in res.stdout and owner is not None:
                hint = (f" (the 'postgres' OS user must be able to reach {base}: every parent directory "
                        "needs the x permission for others)")
            raise ServerStartError(f"initdb failed{hint}", log_tail="\n".join(res.stdout.splitlines()[-LOG_TAIL_LINES:]))

        settings = {
            "listen_addresses": _conf_str("127.0.0.1"),
            "unix_socket_directories": _conf_str(str(sock)),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "100",
            "logging_collector": "off",
        }
        with open(datadir / "postgresql.conf", "a") as f:
            f.write("\n# reconciler.sandbox: a throwaway server, tuned for speed\n")
            f.writelines(f"{k} = {v}\n" for k, v in settings.items())

        attempts = 1 if port is not None else 3
        for attempt in range(attempts):
            p = port if port is not None else free_port()
            res = _run_pg([str(bindir / "pg_ctl"), "-D", str(datadir), "-l", str(log_path), "-o", f"-p {p}",
                           "-w", "-t", str(int(max(timeout, 1))), "start"], owner, cwd=base, timeout=timeout + 10)
            if res.returncode == 0:
                break
            _kill_postmaster(datadir)  # pg_ctl may have given up on a postmaster that is still starting
            log_tail = _tail(log_path) or res.stdout
            if attempt + 1 < attempts and "could not bind" in log_tail:
                continue  # someone took the port between free_port() and the bind: try another
            raise ServerStartError(f"PostgreSQL did not start on 127.0.0.1:{p}", log=log_path, log_tail=log_tail)

        server = PostgresServer(host="127.0.0.1", port=p, user="postgres", datadir=datadir, socket_dir=sock,
                                log_path=log_path, _base=base, _extra_dirs=extra_dirs, _bindir=bindir,
                                _owner=owner)
    except BaseException:
        _kill_postmaster(base / "data")
        for d in (base, *extra_dirs):
            shutil.rmtree(d, ignore_errors=True)
        raise
    uid, gid = owner if owner else (None, None)
    server._watchdog = _start_watchdog([
        {"do": "run", "cmd": [str(bindir / "pg_ctl"), "-D", str(datadir), "-m", "immediate", "-w", "stop"],
         "uid": uid, "gid": gid, "cwd": str(base)},
        {"do": "rmtree", "path": str(base)},
        *({"do": "rmtree", "path": str(d)} for d in extra_dirs),
    ])
    _register(server)
    server.startup_seconds = time.monotonic() - t0
    return server


# ------------------------------------------------------------------------------------------ Firestore


@dataclass
class FirestoreEmulator:
    """The Firestore emulator at `host` ("127.0.0.1:PORT"). Made with only a host (an emulator someone
    else runs), reset() works and stop() does nothing."""

    host: str
    log_path: Path | None = field(default=None, repr=False)
    startup_seconds: float = field(default=0.0, repr=False)
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _logdir: Path | None = field(default=None, repr=False)
    _watchdog: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _stopped: bool = field(default=False, repr=False)

    @property
    def port(self) -> int:
        return int(self.host.rsplit(":", 1)[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def reset(self, project: str, database: str = "(default)") -> None:
        """Delete every document of project (in that database)."""
        url = f"{self.url}/emulator/v1/projects/{quote(project, safe='')}/databases/{quote(database, safe='()')}/documents"
        req = urllib.request.Request(url, method="DELETE")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                resp.read()
        except (urllib.error.URLError, OSError) as exc:
            raise SandboxError(f"could not reset Firestore emulator project {project!r} at {self.host}: {exc}") from exc

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/", timeout=2) as resp:
                return resp.read().strip() == b"Ok"
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def stop(self) -> None:
        """Kill the whole process group (gcloud, its shell wrapper and java). Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        try:
            if self._proc is not None:
                _kill_group(self._proc)
        finally:
            if self._logdir is not None:
                shutil.rmtree(self._logdir, ignore_errors=True)
            _disarm_watchdog(self._watchdog)
            self._watchdog = None
            _unregister(self)

    def __enter__(self) -> FirestoreEmulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _EarlyExit(Exception):
    pass


def _launch_emulator(gcloud: str, port: int, logdir: Path, args: tuple[str, ...] = ()) -> FirestoreEmulator:
    log_path = logdir / f"firestore-emulator-{port}.log"
    log = open(log_path, "wb")
    try:
        proc = subprocess.Popen(
            [gcloud, "emulators", "firestore", "start", f"--host-port=127.0.0.1:{port}", *args],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=str(logdir),
            env=_clean_env(CLOUDSDK_CORE_DISABLE_PROMPTS="1", LC_ALL="C.UTF-8", LANG="C.UTF-8"),
        )
    finally:
        log.close()
    emu = FirestoreEmulator(host=f"127.0.0.1:{port}", log_path=log_path, _proc=proc)
    emu._watchdog = _start_watchdog([{"do": "killpg", "pgid": proc.pid}, {"do": "rmtree", "path": str(logdir)}])
    _register(emu)
    return emu


class _Cancelled(Exception):
    pass


def _wait_ready(emu: FirestoreEmulator, deadline: float, cancel: threading.Event | None) -> None:
    assert emu._proc is not None
    while time.monotonic() < deadline:
        if cancel is not None and cancel.is_set():
            raise _Cancelled
        if emu.is_ready():
            return
        if emu._proc.poll() is not None:
            raise _EarlyExit(f"the Firestore emulator exited with status {emu._proc.returncode} before it was ready")
        time.sleep(0.2)
    raise TimeoutError


def start_firestore_emulator(port: int | None = None, timeout: float = 60, *, workdir: Path | None = None,
                             args: tuple[str, ...] = (), _cancel: threading.Event | None = None) -> FirestoreEmulator:
    """Start `gcloud emulators firestore start` on 127.0.0.1 and wait until it answers "Ok" on GET /.
    `args`: more options of that command (e.g. --export-on-exit=DIR, --import-data=DIR)."""
    t0 = time.monotonic()
    gcloud = find_gcloud()
    if not os.environ.get("JAVA_HOME") and not shutil.which("java"):
        raise BinaryNotFound("java was not found: the Firestore emulator needs Java 11 or newer on PATH (or JAVA_HOME)")
    if port is not None and is_listening("127.0.0.1", port):
        raise ServerStartError(f"cannot start the Firestore emulator on 127.0.0.1:{port}: something already listens there")
    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
    logdir = Path(tempfile.mkdtemp(prefix="firestore-emulator-", dir=str(workdir) if workdir else None))
    deadline = t0 + timeout
    attempts = 1 if port is not None else 3
    for attempt in range(attempts):
        p = port if port is not None else free_port()
        emu = _launch_emulator(gcloud, p, logdir, args)
        try:
            _wait_ready(emu, deadline, _cancel)
        except _EarlyExit as exc:
            log_tail = _tail(emu.log_path)
            emu.stop()
            port_taken = "BindException" in log_tail or "already in use" in log_tail
            if attempt + 1 < attempts and port_taken:
                continue  # someone took the port between free_port() and the bind: try another
            shutil.rmtree(logdir, ignore_errors=True)
            why = f": port {p} is already in use" if port_taken else ""
            raise ServerStartError(f"{exc}{why}", log=emu.log_path, log_tail=log_tail) from None
        except TimeoutError:
            log_tail = _tail(emu.log_path)
            emu.stop()
            shutil.rmtree(logdir, ignore_errors=True)
            raise ServerStartError(f"the Firestore emulator did not answer on http://127.0.0.1:{p}/ within "
                                   f"{timeout:.0f} s", log=emu.log_path, log_tail=log_tail) from None
        except BaseException:  # _Cancelled, KeyboardInterrupt
            emu.stop()
            shutil.rmtree(logdir, ignore_errors=True)
            raise
        emu._logdir = logdir
        emu.startup_seconds = time.monotonic() - t0
        return emu
    raise AssertionError("unreachable")


# -------------------------------------------------------------------------------------------- both


class Sandbox(NamedTuple):
    postgres: PostgresServer
    firestore: FirestoreEmulator


@contextlib.contextmanager
def sandbox(workdir: Path | None = None, *, pg_port: int | None = None, firestore_port: int | None = None,
            timeout: float = 60) -> Iterator[Sandbox]:
    """Both servers, started side by side; both stopped on leaving the block (also on an exception).

        with sandbox() as (pg, fs):
            dsn = pg.create_database("demo", icu_locale="en-US")
            os.environ["FIRESTORE_EMULATOR_HOST"] = fs.host
    """
    _install_signal_handlers()
    cancel = threading.Event()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="firestore-emulator") as pool:
        fs_future = pool.submit(start_firestore_emulator, firestore_port, timeout, workdir=workdir, _cancel=cancel)
        pg: PostgresServer | None = None
        fs: FirestoreEmulator | None = None
        try:
            pg = start_postgres(workdir, pg_port, timeout=timeout)
            fs = fs_future.result()
        except BaseException:
            cancel.set()  # the emulator thread stops what it started and returns within ~0.2 s
            if pg is not None:
                pg.stop()
            with contextlib.suppress(BaseException):
                fs_future.result().stop()
            raise
    try:
        yield Sandbox(pg, fs)
    finally:
        try:
            fs.stop()
        finally:
            pg.stop()


def main(argv: list[str] | None = None) -> int:
    """python -m reconciler.sandbox: start both servers, print how to reach them, wait for Ctrl-C."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m reconciler.sandbox", description=main.__doc__)
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--pg-port", type=int)
    ap.add_argument("--firestore-port", type=int)
    args = ap.parse_args(argv)
    try:
        with sandbox(args.workdir, pg_port=args.pg_port, firestore_port=args.firestore_port) as (pg, fs):
            print(f"PostgreSQL: {pg.dsn()}   (started in {pg.startup_seconds:.1f} s, data in {pg.datadir})")
            print(f"Firestore emulator: export FIRESTORE_EMULATOR_HOST={fs.host}   "
                  f"(started in {fs.startup_seconds:.1f} s)")
            print("Ctrl-C stops both.", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(3600)
    except SandboxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
