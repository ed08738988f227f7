"""Settings: a TOML file, then environment variables, then command-line flags (strongest last).

Every key is known and typed; an unknown key, a wrong type or an environment variable that is set but
empty is a ConfigError naming the file and the key (exit code 2).
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from reconciler import cron
from reconciler.errors import ConfigError
from reconciler.redact import dsn_password

DEFAULT_CONFIG = Path("config/reconciler.toml")


@dataclass(frozen=True)
class PostgresSettings:
    dsn: str = field(default="", repr=False)  # empty: libpq's own PG* variables (PGHOST, PGUSER, PGPASSWORD...)
    itersize: int = 2000  # rows per server-side cursor round trip
    reconnects: int = 3  # a lost connection: reconnect and redo the step, at most this many times (0: never)
    lock_timeout_s: float = 30.0  # a statement waiting longer for a lock fails (0: waits for ever)
    statement_timeout_s: float = 600.0  # a statement (one cursor FETCH) running longer fails (0: no limit)

    def timeouts(self) -> dict[str, float]:
        """The keyword arguments every connection of a run is made with (sources.postgres.connect)."""
        return {"lock_timeout_s": self.lock_timeout_s, "statement_timeout_s": self.statement_timeout_s}


@dataclass(frozen=True)
class FirestoreSettings:
    project: str | None = None  # None: the client's default (GOOGLE_CLOUD_PROJECT, credentials)
    page_size: int = 10_000  # documents per query; large pages stream faster than small ones
    timeout_s: float = 300.0


@dataclass(frozen=True)
class RepairSettings:
    max_repairs: int = 1000  # per entity and run; --max-repairs overrides
    max_drift_ratio: float = 0.10  # more drifted records than this share of an entity: refuse to repair it
    batch_size: int = 200  # records re-checked and written per round trip


SEND_POLICIES = ("always", "on_drift", "on_change")
# Generic words for personal data, matched against finding field paths (see masking.py); the config may add
# the exact names of an entity's personal fields.
DEFAULT_MASK = ("email", "phone", "name", "address", "street", "postal", "birth")


@dataclass(frozen=True)
class MailSettings:
    host: str = ""  # empty: no e-mail is sent
    port: int = 587
    starttls: bool = True
    username: str = ""  # empty: no SMTP AUTH
    password_env: str = "RECONCILER_SMTP_PASSWORD"  # the variable holding the password: never in the file
    password: str = field(default="", repr=False)  # read from password_env when the settings are loaded
    from_addr: str = ""  # TOML key `from`
    recipients: tuple[str, ...] = ()  # get one mail with every entity
    entity_recipients: dict[str, tuple[str, ...]] = field(default_factory=dict)  # get their entities' sections
    send: str = "on_drift"  # always | on_drift | on_change
    mask: tuple[str, ...] = DEFAULT_MASK  # field-path patterns masked in mailed reports; [] turns masking off
    ca_file: Path | None = None  # a CA bundle to verify the server's certificate (an internal CA)
    timeout_s: float = 30.0

    @property
    def enabled(self) -> bool:
        return bool(self.host)


@dataclass(frozen=True)
class SentrySettings:
    dsn: str = ""  # empty: nothing is sent and sentry-sdk is not initialised
    environment: str = ""
    min_drifted: int = 1  # an entity with at least this many drifted records ...
    min_drift_ratio: float = 0.0  # ... and at least this share of its records drifted raises one event


@dataclass(frozen=True)
class HistorySettings:
    enabled: bool = True
    dsn: str = ""  # empty: postgres.dsn (give another when the audit role may only read)


@dataclass(frozen=True)
class ScheduleJob:
    name: str
    cron: str  # 5 fields (crontab) or 6 (seconds first); validated with cron.trigger
    timezone: str
    entities: tuple[str, ...] = ()  # empty: audit.entities (what --all runs)
    run_missed: bool = False  # at start-up, run once if history shows the last scheduled run was missed


@dataclass(frozen=True)
class ScheduleSettings:
    timezone: str = "UTC"  # for jobs that name none
    jobs: tuple[ScheduleJob, ...] = ()


@dataclass(frozen=True)
class Settings:
    source: str  # the config file read, or "(defaults)"
    rules_dir: Path
    entities: tuple[str, ...] = ()  # what --all audits; empty: every rules file in rules_dir
    max_findings: int = 1000  # findings kept per entity in the report (counts always cover everything)
    # the same as config/reconciler.toml, which says why: no false drift at seed 000's own write order and pace
    settle_s: float = 5.0  # wait this long, then read every differing record again before calling it drift
    recent_s: float = 10.0  # a record still differing whose Firestore document was rewritten after the sweep and
    #                         this recently before the re-read is in flight
    checkpoint_every: int = 0  # save an audit's progress every N records (reconciler_checkpoints); 0: off
    report_dir: Path | None = None
    postgres: PostgresSettings = field(default_factory=PostgresSettings)
    firestore: FirestoreSettings = field(default_factory=FirestoreSettings)
    repair: RepairSettings = field(default_factory=RepairSettings)
    mail: MailSettings = field(default_factory=MailSettings)
    sentry: SentrySettings = field(default_factory=SentrySettings)
    history: HistorySettings = field(default_factory=HistorySettings)
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)

    @property
    def history_dsn(self) -> str:
        return self.history.dsn or self.postgres.dsn

    def secrets(self, env: Mapping[str, str] | None = None) -> tuple[str, ...]:
        """Every password these settings (or libpq's environment) hold: scrubbed from all output (redact.py)."""
        env = os.environ if env is None else env
        mail = getattr(self, "mail", None)  # the [mail] section's SMTP password, where there is one
        found = (dsn_password(self.postgres.dsn), env.get("PGPASSWORD"), getattr(mail, "password", None))
        return tuple(s for s in found if s)


_SCHEMA: dict[str, dict[str, type | tuple[type, ...]]] = {
    "postgres": {"dsn": str, "itersize": int, "reconnects": int, "lock_timeout_s": (int, float),
                 "statement_timeout_s": (int, float)},
    "firestore": {"project": str, "page_size": int, "timeout_s": (int, float)},
    "audit": {"rules_dir": str, "entities": list, "max_findings": int, "report_dir": str,
              "settle_s": (int, float), "recent_s": (int, float), "checkpoint_every": int},
    "repair": {"max_repairs": int, "max_drift_ratio": (int, float), "batch_size": int},
    "mail": {"host": str, "port": int, "starttls": bool, "username": str, "password_env": str, "from": str,
             "recipients": list, "entity_recipients": dict, "send": str, "mask": list, "ca_file": str,
             "timeout_s": (int, float)},
    "sentry": {"dsn": str, "environment": str, "min_drifted": int, "min_drift_ratio": (int, float)},
    "history": {"enabled": bool, "dsn": str},
    "schedule": {"timezone": str, "jobs": list},
}
_JOB: dict[str, type] = {"name": str, "cron": str, "entities": list, "timezone": str, "run_missed": bool}

_TIMEOUTS = {("postgres", "lock_timeout_s"), ("postgres", "statement_timeout_s")}
_MAY_BE_ZERO = {("audit", "settle_s"), ("audit", "recent_s"), ("audit", "checkpoint_every"), ("postgres", "reconnects"),
                *_TIMEOUTS}

ENV = {
    "RECONCILER_PG_DSN": ("postgres", "dsn"),
    "GOOGLE_CLOUD_PROJECT": ("firestore", "project"),
    "RECONCILER_RULES_DIR": ("audit", "rules_dir"),
    "RECONCILER_REPORT_DIR": ("audit", "report_dir"),
    "SENTRY_DSN": ("sentry", "dsn"),
    "RECONCILER_HISTORY_DSN": ("history", "dsn"),
    "RECONCILER_SETTLE_S": ("audit", "settle_s"),  # e.g. 0 during an incident: no wait before the re-read
}


def _env_value(var: str, section: str, key: str, text: str) -> Any:
    """An environment variable's text as the key's type: numbers parse, or the error names the variable."""
    if _SCHEMA[section][key] == (int, float):
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"must be a number, got {text!r}", key=var) from None
    return _from_cwd(key, text)


def _check(data: dict[str, Any], file: str) -> None:
    for section, values in data.items():
        if section not in _SCHEMA:
            raise ConfigError(f"unknown section (known: {', '.join(_SCHEMA)})", file=file, key=f"[{section}]")
        if not isinstance(values, dict):
            raise ConfigError("must be a table", file=file, key=section)
        for key, value in values.items():
            expected = _SCHEMA[section].get(key)
            if (section, key) == ("mail", "password"):
                raise ConfigError("the SMTP password is never read from the file: put it in the environment "
                                  "variable that mail.password_env names", file=file, key="mail.password")
            if expected is None:
                raise ConfigError(f"unknown key (known: {', '.join(_SCHEMA[section])})", file=file, key=f"{section}.{key}")
            if (isinstance(value, bool) and expected is not bool) or not isinstance(value, expected):
                names = " or ".join(t.__name__ for t in (expected if isinstance(expected, tuple) else (expected,)))
                raise ConfigError(f"must be {names}, got {value!r}", file=file, key=f"{section}.{key}")
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"must be a finite number, got {value!r}", file=file, key=f"{section}.{key}")
            if (section, key) in _TIMEOUTS and 0 < value < 0.001:  # Postgres counts milliseconds: 0 would be off
                raise ConfigError(f"must be 0 (off) or at least 0.001 (1 ms), got {value!r}", file=file,
                                  key=f"{section}.{key}")
            if (section, key) in _MAY_BE_ZERO:
                if value < 0:
                    raise ConfigError(f"must be 0 or more, got {value!r}", file=file, key=f"{section}.{key}")
            elif isinstance(value, (int, float)) and not isinstance(value, bool) and value <= 0 and key != "min_drift_ratio":
                raise ConfigError(f"must be positive, got {value!r}", file=file, key=f"{section}.{key}")
    ratio = data.get("repair", {}).get("max_drift_ratio")
    if ratio is not None and not 0 < ratio <= 1:
        raise ConfigError(f"must be a share of records in (0, 1], got {ratio!r}", file=file, key="repair.max_drift_ratio")
    for name in data.get("audit", {}).get("entities", []):
        if not isinstance(name, str) or not name:
            raise ConfigError(f"entity names must be non-empty strings, got {name!r}", file=file, key="audit.entities")
    schedule = data.get("schedule", {})
    if "timezone" in schedule:
        _checked(cron.timezone, schedule["timezone"], file, "schedule.timezone")
    for i, job in enumerate(schedule.get("jobs", [])):
        _check_job(job, file, f"schedule.jobs[{i}]", schedule.get("timezone", "UTC"))
    names = [j.get("name") for j in schedule.get("jobs", []) if isinstance(j, dict)]
    for name in {n for n in names if names.count(n) > 1}:
        raise ConfigError(f"two jobs are named {name!r}; names must be unique", file=file, key="schedule.jobs")
    _check_mail(data.get("mail", {}), file)
    ratio = data.get("sentry", {}).get("min_drift_ratio")
    if ratio is not None and not 0 <= ratio <= 1:
        raise ConfigError(f"must be a share of records in [0, 1], got {ratio!r}", file=file, key="sentry.min_drift_ratio")


def _check_mail(mail: dict[str, Any], file: str) -> None:
    if mail.get("send", "on_drift") not in SEND_POLICIES:
        raise ConfigError(f"must be one of {', '.join(SEND_POLICIES)}, got {mail['send']!r}", file=file, key="mail.send")
    lists = {"mail.recipients": mail.get("recipients", []), "mail.mask": mail.get("mask", [])}
    for entity, recipients in mail.get("entity_recipients", {}).items():
        if not isinstance(recipients, list):
            raise ConfigError(f"must be a list of e-mail recipients, got {recipients!r}", file=file,
                              key=f"mail.entity_recipients.{entity}")
        lists[f"mail.entity_recipients.{entity}"] = recipients
    for key, values in lists.items():
        for v in values:
            if not isinstance(v, str) or not v.strip() or (key != "mail.mask" and "@" not in v):
                what = "patterns" if key == "mail.mask" else "e-mail recipients (name@domain)"
                raise ConfigError(f"must be a list of {what}, got {v!r}", file=file, key=key)
    if mail.get("host"):
        if "@" not in mail.get("from", ""):
            raise ConfigError("an e-mail address to send from is needed when mail.host is set", file=file,
                              key="mail.from")
        if not lists["mail.recipients"] and not mail.get("entity_recipients"):
            raise ConfigError("mail.host is set but nobody would get the report: set recipients or "
                              "entity_recipients", file=file, key="mail.recipients")


def _checked(fn: Any, value: Any, file: str, key: str) -> Any:
    try:
        return fn(value)
    except ValueError as exc:
        raise ConfigError(str(exc), file=file, key=key) from None


def _check_job(job: Any, file: str, where: str, default_tz: str) -> None:
    if not isinstance(job, dict):
        raise ConfigError("must be a table ([[schedule.jobs]])", file=file, key=where)
    for key, value in job.items():
        expected = _JOB.get(key)
        if expected is None:
            raise ConfigError(f"unknown key (known: {', '.join(_JOB)})", file=file, key=f"{where}.{key}")
        if not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool):
            raise ConfigError(f"must be {expected.__name__}, got {value!r}", file=file, key=f"{where}.{key}")
    for key in ("name", "cron"):
        if not job.get(key, "").strip():
            raise ConfigError("is required and must not be empty", file=file, key=f"{where}.{key}")
    if any(not isinstance(e, str) or not e for e in job.get("entities", [])):
        raise ConfigError("entity names must be non-empty strings", file=file, key=f"{where}.entities")
    tz = _checked(cron.timezone, job.get("timezone", default_tz), file, f"{where}.timezone")
    _checked(lambda expr: cron.trigger(expr, tz), job["cron"], file, f"{where}.cron")


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}", file=str(path)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=str(path)) from None


def _from_cwd(key: str, value: Any) -> Any:
    """Paths from the environment or the command line are relative to where the user is, not to the file."""
    return str(Path(value).resolve()) if key.endswith("_dir") and isinstance(value, str) else value


def load_settings(config: Path | None = None, env: Mapping[str, str] | None = None,
                  overrides: Mapping[str, Any] | None = None) -> Settings:
    """config: --config; else RECONCILER_CONFIG; else config/reconciler.toml if it exists; else defaults.

    overrides: flags from the command line, as {"postgres.dsn": ..., "firestore.project": ...}.
    Relative paths in the file are relative to the file's directory.
    """
    env = os.environ if env is None else env
    if config is None and env.get("RECONCILER_CONFIG") is not None:
        if not env["RECONCILER_CONFIG"].strip():
            raise ConfigError("is set but empty", key="RECONCILER_CONFIG")
        config = Path(env["RECONCILER_CONFIG"])
    if config is None and DEFAULT_CONFIG.is_file():
        config = DEFAULT_CONFIG
    data: dict[str, Any] = {}
    base = Path.cwd()
    source = "(defaults)"
    if config is not None:
        if not config.is_file():
            raise ConfigError("no such file", file=str(config))
        data = _read(config)
        _check(data, str(config))
        base, source = config.resolve().parent, str(config)
    for var, (section, key) in ENV.items():
        if var in env:
            if not env[var].strip():
                raise ConfigError("is set but empty: unset it or give a value", key=var)
            data.setdefault(section, {})[key] = _env_value(var, section, key, env[var])
    for dotted, value in (overrides or {}).items():
        if value is not None:
            section, key = dotted.split(".", 1)
            data.setdefault(section, {})[key] = _from_cwd(key, value)
    _check(data, source)
    pg, fs, audit = data.get("postgres", {}), data.get("firestore", {}), data.get("audit", {})
    repair = {k: float(v) if k == "max_drift_ratio" else v for k, v in data.get("repair", {}).items()}
    report_dir = audit.get("report_dir")
    sentry = data.get("sentry", {})
    return Settings(
        source=source,
        rules_dir=base / audit.get("rules_dir", "rules"),
        entities=tuple(audit.get("entities", ())),
        max_findings=audit.get("max_findings", Settings.max_findings),
        settle_s=float(audit.get("settle_s", Settings.settle_s)),
        recent_s=float(audit.get("recent_s", Settings.recent_s)),
        checkpoint_every=audit.get("checkpoint_every", Settings.checkpoint_every),
        report_dir=base / report_dir if report_dir else None,
        postgres=replace(PostgresSettings(), **{k: float(v) if k.endswith("_s") else v for k, v in pg.items()}),
        firestore=replace(FirestoreSettings(), **{k: float(v) if k == "timeout_s" else v for k, v in fs.items()}),
        repair=replace(RepairSettings(), **repair),
        mail=_mail(data.get("mail", {}), base, env, source),
        sentry=replace(SentrySettings(), **{k: float(v) if k == "min_drift_ratio" else v for k, v in sentry.items()}),
        history=replace(HistorySettings(), **data.get("history", {})),
        schedule=_schedule(data.get("schedule", {})),
    )


def _mail(mail: dict[str, Any], base: Path, env: Mapping[str, str], source: str) -> MailSettings:
    settings = MailSettings(
        host=mail.get("host", ""), port=mail.get("port", MailSettings.port),
        starttls=mail.get("starttls", MailSettings.starttls), username=mail.get("username", ""),
        password_env=mail.get("password_env", MailSettings.password_env), from_addr=mail.get("from", ""),
        recipients=tuple(mail.get("recipients", ())),
        entity_recipients={e: tuple(a) for e, a in mail.get("entity_recipients", {}).items()},
        send=mail.get("send", MailSettings.send), mask=tuple(mail.get("mask", DEFAULT_MASK)),
        ca_file=base / mail["ca_file"] if mail.get("ca_file") else None,
        timeout_s=float(mail.get("timeout_s", MailSettings.timeout_s)),
    )
    if settings.host and settings.username:
        password = env.get(settings.password_env, "")
        if not password:
            raise ConfigError(f"mail.username is set, so the SMTP password must be in ${settings.password_env} "
                              "(mail.password_env names the variable; it is never read from the file)",
                              file=source, key="mail.password_env")
        settings = replace(settings, password=password)
    return settings


def _schedule(data: dict[str, Any]) -> ScheduleSettings:
    tz = data.get("timezone", ScheduleSettings.timezone)
    jobs = tuple(ScheduleJob(name=j["name"], cron=j["cron"], timezone=j.get("timezone", tz),
                             entities=tuple(j.get("entities", ())), run_missed=j.get("run_missed", False))
                 for j in data.get("jobs", ()))
    return ScheduleSettings(timezone=tz, jobs=jobs)
