"""The `reconcile` command: parses, calls the engine, maps outcomes to exit codes. No engine work here.

Exit codes: 0 no drift, 1 drift found, 2 usage/config/rules error, 3 runtime failure.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import click
import psycopg

from reconciler import alerts, engine, logs, parallel, runner, stop
from reconciler.config import Settings, load_settings
from reconciler.errors import ReconcilerError, UsageError
from reconciler.redact import LogFilter, dsn_password, scrub
from reconciler.repair import Options as RepairOptions
from reconciler.result import EntityResult, RepairStatus, RunResult
from reconciler.rules.naming import CONVENTIONS

EXIT_OK, EXIT_DRIFT, EXIT_USAGE, EXIT_FAILURE = 0, 1, 2, 3


_SECRETS: list[str] = []  # this invocation's passwords: scrubbed from everything it prints or writes


def _say(text: str, *, err: bool = False, nl: bool = True) -> None:
    """Every line the command prints goes through here. A reader that went away (`reconcile ... | head -1`)
    silences the stream, and the run goes on to its reports and the exit code it earns."""
    try:
        click.echo(scrub(text, _SECRETS), err=err, nl=nl)
    except BrokenPipeError:
        _to_devnull(sys.stderr if err else sys.stdout)


def _to_devnull(stream: Any) -> None:
    """What is still buffered, and everything after, goes nowhere (else the flush at exit fails again)."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, stream.fileno())
        os.close(null)
    except (OSError, ValueError):  # no file descriptor (a test's captured stream): nothing is left to flush
        pass


def _fail(exc: BaseException, debug: bool, code: int, message: str) -> None:
    if debug:  # the traceback, with the secrets scrubbed from it like from everything else
        _say(traceback.format_exc().rstrip(), err=True)
    _say(message, err=True)
    sys.exit(code)


def _to_sentry(exc: BaseException) -> None:
    """A runtime failure (not a usage error) goes to Sentry when a DSN is configured."""
    try:
        settings = _settings(click.get_current_context())
    except ReconcilerError:
        return  # the settings themselves are broken: nothing to send with
    alerts.capture_failure(settings, exc)


def _guard(fn: Callable[..., int]) -> Callable[..., None]:
    """The one error boundary: typed errors become one line and their exit code; --debug shows the traceback."""
    def wrapper(*args: Any, **kwargs: Any) -> None:
        root = click.get_current_context().find_root().params
        debug = bool(root.get("debug"))
        # known before the settings load (they may fail to): the flag's, the environment's
        _SECRETS[:] = [s for s in (dsn_password(root.get("pg_dsn")), dsn_password(os.environ.get("RECONCILER_PG_DSN")),
                                   os.environ.get("PGPASSWORD")) if s]
        try:
            code = fn(*args, **kwargs)
        except ReconcilerError as exc:
            if exc.exit_code == EXIT_FAILURE:
                _to_sentry(exc)
            _fail(exc, debug, exc.exit_code, f"reconcile: error: {exc}")
        except KeyboardInterrupt:
            _say("reconcile: interrupted", err=True)
            sys.exit(130)
        except psycopg.Error as exc:  # a Postgres step no layer below named: still a runtime failure, one line
            _to_sentry(exc)
            _fail(exc, debug, EXIT_FAILURE, f"reconcile: error: postgres: {' '.join(str(exc).split())}")
        except Exception as exc:  # a bug or an unexpected library error: still one line unless --debug
            _to_sentry(exc)
            _fail(exc, debug, EXIT_FAILURE, f"reconcile: unexpected error: {type(exc).__name__}: {exc}"
                                            f"{'' if debug else ' (run with --debug for the traceback)'}")
        sys.exit(code)
    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


def _settings(ctx: click.Context, **overrides: Any) -> Settings:
    root = ctx.find_root().params
    flat = {"postgres.dsn": root.get("pg_dsn"), "firestore.project": root.get("firestore_project")}
    flat.update(overrides)
    settings = load_settings(root.get("config"), overrides=flat)
    _SECRETS.extend(settings.secrets())
    return settings


class _Progress:
    """A one-line progress display on a terminal; silent in cron (stderr not a TTY)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.started = time.monotonic()
        self.last = 0.0

    def __call__(self, entity: str, collection: str, records: int, drifted: int) -> None:
        now = time.monotonic()
        if not self.enabled or now - self.last < 0.25:
            return
        self.last = now
        rate = records / max(now - self.started, 1e-6)
        _say(f"\r{entity}/{collection}: {records:,} records, {drifted:,} drifted, {rate:,.0f}/s   ", nl=False, err=True)

    def done(self) -> None:
        if self.enabled:
            _say("\r" + " " * 78 + "\r", nl=False, err=True)


def _summary(result: RunResult) -> str:
    lines = []
    for e in result.entities:
        c = e.counts
        if e.error:
            lines.append(f"{e.entity}: FAILED: {e.error}")
            continue
        if e.skipped:
            lines.append(f"{e.entity}: skipped: {e.skipped}")
            continue
        lines.append(f"{e.entity}: {c.postgres:,} in Postgres, {c.firestore:,} in Firestore, {c.matched:,} matched, "
                     f"{c.mismatched:,} mismatched, {c.missing_in_firestore:,} missing in Firestore, "
                     f"{c.missing_in_postgres:,} missing in Postgres"
                     f"{f', {c.in_flight:,} in flight (being written: not drift yet)' if c.in_flight else ''}"
                     f" ({e.duration_s:.1f} s)")
        for field, n in list(e.field_counts.items())[:5]:
            lines.append(f"    {n:,} x {field}")
        if e.repair is not None:
            lines.extend(_repair_lines(e))
    return "\n".join(lines)


def _what_was_written(result: RunResult) -> str:
    """After a stop: what the repair wrote and what it did not (the report lists each record)."""
    summaries = [e.repair for e in result.entities if e.repair is not None and e.repair.applied]
    if not summaries:
        return "nothing was written"
    left = sum(1 for e in result.entities for f in e.findings
               if f.repair is not None and f.repair.reason.startswith("interrupted"))
    done, failed = sum(r.done for r in summaries), sum(r.failed for r in summaries)
    return (f"{done:,} records were repaired (written, each recorded in reconciler_repairs), {failed:,} failed, "
            f"{left:,} were not written (interrupted, listed above and in the report); no record was written in "
            "part. Run again to finish")


def _repair_lines(e: EntityResult) -> list[str]:
    r = e.repair
    assert r is not None
    if r.refused:
        return [f"  repair toward {r.target}: {r.refused}"]
    if r.applied:
        lines = [f"  repair toward {r.target}: {r.done:,} records repaired, {r.skipped:,} skipped, {r.failed:,} failed "
                 f"({r.duration_s:.1f} s)"]
    else:
        lines = [f"  repair toward {r.target}: {r.planned:,} records would be written (dry run: nothing written; "
                 "--apply writes)"]
    for f in e.findings:
        if f.repair is None:
            continue
        if not r.applied or f.repair.status != RepairStatus.APPLIED:
            reason = f" ({f.repair.reason})" if f.repair.reason else ""
            lines.append(f"    {f.repair.action.value} {f.key}: {f.repair.status.value}{reason}")
        if not r.applied:
            lines.extend(f"      {_write_line(w)}" for w in f.repair.writes)
    if r.earlier:  # this run's own writes before its Postgres connection was lost (the repair started over)
        lines.append(f"    {sum(x.status == 'applied' for x in r.earlier):,} of them written before the Postgres "
                     "connection was lost and the repair started over")
        lines.extend(f"    {x.action.value} {x.key}: {x.status} before the reconnect ({x.reason})"
                     for x in r.earlier if x.status != "applied")
    for x in r.resolved:  # trail rows another run left pending (it died between a write and its outcome)
        verb = "not yet settled" if x.status == "pending" else "settled"
        lines.append(f"    {verb} {x.action.value} {x.key} (left pending by run {x.run_id}): {x.status} ({x.reason})")
    return lines


def _write_line(w: dict[str, Any]) -> str:
    """One planned write, as a person reads it."""

    def js(v: Any) -> str:
        text = json.dumps(v, ensure_ascii=False, sort_keys=True)
        return text if len(text) <= 200 else text[:197] + "..."

    if w["side"] == "firestore":
        if w["op"] == "update":
            parts = [f"set {k} = {js(v)}" for k, v in w["set"].items()] + [f"delete {k}" for k in w["delete"]]
            return f"firestore update {w['path']}: " + "; ".join(parts)
        if w["op"] == "create":
            return f"firestore create {w['path']}: {js(w['document'])}"
        return f"firestore delete {w['path']}"
    key = ", ".join(f"{k}={v}" for k, v in w["key"].items())
    if w["op"] == "upsert":
        return f"postgres upsert {w['table']} ({key}): {js(w['values'])}"
    return f"postgres delete {w['table']} ({key})"


def _split_ids(values: tuple[str, ...]) -> tuple[str, ...] | None:
    ids = tuple(i for v in values for i in v.replace(",", " ").split())
    return ids or None


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", type=click.Path(path_type=Path),
              help="TOML settings file [default: config/reconciler.toml if present; env RECONCILER_CONFIG].")
@click.option("--entity", "entities", multiple=True, metavar="NAME",
              help="Audit this entity (repeatable). Its rules are RULES_DIR/NAME.yaml.")
@click.option("--all", "all_entities", is_flag=True, help="Audit every entity in the config's audit.entities.")
@click.option("--report-dir", type=click.Path(path_type=Path),
              help="Write report.json and report.html here [env RECONCILER_REPORT_DIR].")
@click.option("--limit", type=click.IntRange(min=1), metavar="N",
              help="A quick look: only the first N records (in key order) of each entity, with their subdocuments.")
@click.option("--ids", multiple=True, metavar="ID[,ID...]", help="Audit only these document IDs (repeatable).")
@click.option("--pg-dsn", help="Postgres connection string [env RECONCILER_PG_DSN; else libpq's PG* variables].")
@click.option("--firestore-project", help="Google Cloud project [env GOOGLE_CLOUD_PROJECT]. "
                                          "FIRESTORE_EMULATOR_HOST selects the emulator.")
@click.option("--repair", is_flag=True,
              help="After the audit, plan the writes that make the side that is not the source of truth agree. "
                   "A dry run unless --apply is given.")
@click.option("--dry-run/--apply", "dry_run", default=True,
              help="With --repair: only list the writes (default), or perform them.")
@click.option("--delete-orphans", is_flag=True,
              help="With --repair: also delete records that exist only on the side being repaired.")
@click.option("--max-repairs", type=click.IntRange(min=0), metavar="N",
              help="With --repair: repair at most N records per entity [config repair.max_repairs, 1000].")
@click.option("--force", is_flag=True,
              help="With --repair: repair even when more records differ than repair.max_drift_ratio allows.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, metavar="W",
              help="Split the key space into W ranges and audit them in W processes at once (audit only).")
@click.option("--shard", metavar="K/N|auto",
              help="Audit only range K of N (K from 0 to N-1), e.g. one task of a Kubernetes Indexed Job or Cloud "
                   "Run Job; auto reads CLOUD_RUN_TASK_INDEX/CLOUD_RUN_TASK_COUNT or JOB_COMPLETION_INDEX/"
                   "RECONCILER_SHARD_COUNT. Combine the shards' reports with `reconcile merge-reports`.")
@click.option("--changed-since", metavar="DURATION|TIMESTAMP",
              help="Only root records updated (on either side) after this: 2h, 30m, 7d or 2026-11-23T00:00:00Z. "
                   "Needs `changed:` in the entity's rules; --all skips (with a warning) entities without it.")
@click.option("--resume", metavar="RUN_ID",
              help="Continue the audit run RUN_ID from its checkpoints (audit.checkpoint_every) instead of "
                   "starting over; give the same entities.")
@click.option("--progress/--no-progress", default=None, help="Progress line on stderr [default: when it is a terminal].")
@click.option("--log-format", type=click.Choice(logs.FORMATS), default="auto", envvar="RECONCILER_LOG_FORMAT",
              show_default=True, help="Log lines on stderr: JSON lines, or text; auto: text on a terminal, else JSON "
                                      "[env RECONCILER_LOG_FORMAT].")
@click.option("--log-level", type=click.Choice(logs.LEVELS, case_sensitive=False), default="info",
              envvar="RECONCILER_LOG_LEVEL", show_default=True,
              help="The least severe log lines shown [env RECONCILER_LOG_LEVEL].")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.pass_context
def main(ctx: click.Context, config: Path | None, entities: tuple[str, ...], all_entities: bool,
         report_dir: Path | None, limit: int | None, ids: tuple[str, ...], pg_dsn: str | None,
         firestore_project: str | None, progress: bool | None, log_format: str, log_level: str, debug: bool,
         workers: int, shard: str | None, changed_since: str | None, **repair_flags: Any) -> None:
    """Audit (and repair) drift between PostgreSQL and Firestore.

    \b
    Examples:
      reconcile --entity ENTITY                       audit one entity (rules: RULES_DIR/ENTITY.yaml)
      reconcile --all --report-dir out/               every enabled entity, JSON + HTML report
      reconcile --entity ENTITY --limit 100           a quick look at the first 100 records
      reconcile --entity ENTITY --ids ID1,ID2         just these records (incident triage)
      reconcile --entity ENTITY --repair              list the writes a repair would make
      reconcile --entity ENTITY --repair --apply      make them (toward the side that is not the truth)
      reconcile --entity ENTITY --workers 4           four key ranges in four processes
      reconcile --entity ENTITY --shard 0/3 --report-dir out/0
                                                      one third of the keys (a job task each)
      reconcile merge-reports out/all out/0 out/1 out/2
                                                      one report from the three shards
      reconcile --entity ENTITY --changed-since 2h    only records updated in the last two hours
      reconcile rules check --entity ENTITY           validate rules against the live schema
      reconcile rules new --table T --collection C    start a rules file from the live schema and documents
      reconcile explain --entity ENTITY ID            one record on both sides, and since when it drifts
      reconcile run-once                              the nightly job: audit, reports, history
      reconcile serve                                 run the configured schedules
      reconcile history --entity ENTITY               the drift trend, one line per run

    \b
    Repair writes only to the side that is not the entity's source of truth, only the fields the rules
    map, and skips a record that changed since it was read. It refuses an entity when more than
    repair.max_drift_ratio of its records differ (--force overrides), and deletes orphans only with
    --delete-orphans. Every write is logged in the Postgres table reconciler_repairs.

    \b
    Exit codes: 0 no drift (or all of it repaired), 1 drift found (and not all repaired),
    2 usage/config/rules error, 3 runtime failure (unreachable database, a failed or refused repair).

    \b
    After a run, the report is e-mailed ([mail] in the config; personal data masked) and drift above
    [sentry] min_drifted raises one Sentry event per entity (with a DSN: [sentry] dsn or SENTRY_DSN).
    Logs go to stderr as JSON lines with the run id (text on a terminal); the summary goes to stdout.
    """
    logs.configure(log_format, log_level)
    for handler in logging.getLogger().handlers:  # the log leaves the machine too: no passwords in it
        handler.addFilter(LogFilter(_SECRETS))
    if ctx.invoked_subcommand is not None:
        return
    repair = None
    if ctx.params["repair"]:
        repair = RepairOptions(apply=not ctx.params["dry_run"], delete_orphans=ctx.params["delete_orphans"],
                               max_repairs=ctx.params["max_repairs"], force=ctx.params["force"])
    _guard(_audit)(ctx, entities, all_entities, report_dir, limit, ids, progress, repair,
                   (workers, shard, changed_since))


def _repair_flags_alone(ctx: click.Context) -> list[str]:
    """Repair flags given without --repair: a mistake worth stopping for, not ignoring."""
    p = ctx.find_root().params
    flags = {"--apply": not p["dry_run"], "--delete-orphans": p["delete_orphans"],
             "--max-repairs": p["max_repairs"] is not None, "--force": p["force"]}
    return [name for name, given in flags.items() if given] if not p["repair"] else []


def _planner(settings: Settings, sweep: tuple[int, str | None, str | None], limit: int | None,
             ids: tuple[str, ...], repair: RepairOptions | None, all_entities: bool) -> parallel.Planner | None:
    workers, shard, changed_since = sweep
    if workers == 1 and shard is None and changed_since is None:
        return None
    if changed_since is not None and (limit or ids):
        raise UsageError("--changed-since does not combine with --limit or --ids: it chooses the records itself")
    if shard is not None and (limit or ids):
        raise UsageError("--shard does not combine with --limit or --ids")
    if workers > 1 and repair is not None:
        raise UsageError("--repair runs with one worker: drop --workers (or audit with --workers, then repair)")
    return parallel.Planner(settings, workers=workers, shard=parallel.Shard.parse(shard) if shard else None,
                            since=parallel.parse_since(changed_since) if changed_since else None,
                            skip_unchanged=all_entities)


def _audit(ctx: click.Context, entities: tuple[str, ...], all_entities: bool, report_dir: Path | None,
           limit: int | None, ids: tuple[str, ...], progress: bool | None, repair: RepairOptions | None,
           sweep: tuple[int, str | None, str | None] = (1, None, None)) -> int:
    if not entities and not all_entities:
        raise UsageError("say which entities to audit: --entity NAME (repeatable) or --all (see --help)")
    if limit and ids:
        raise UsageError("--limit and --ids do not combine: --ids already names the records")
    if _repair_flags_alone(ctx):
        raise UsageError(f"{', '.join(_repair_flags_alone(ctx))} only work with --repair")
    if repair is not None and repair.force:
        _say("reconcile: WARNING: --force: the drift-ratio guard is off; every drifted record up to "
                   "--max-repairs will be written", err=True)
    settings = _settings(ctx, **{"audit.report_dir": str(report_dir) if report_dir else None})
    names = list(entities)
    if all_entities:
        names += settings.entities or sorted(p.stem for p in settings.rules_dir.glob("*.yaml"))
    planner = _planner(settings, sweep, limit, ids, repair, all_entities)
    show = _Progress(sys.stderr.isatty() if progress is None else progress)
    with stop.on_signals():
        result = engine.run_audit(settings, names, ids=_split_ids(ids), limit=limit, progress=show, repair=repair,
                                  resume=ctx.params.get("resume"), planner=planner)
    show.done()
    _say(_summary(result))
    if settings.report_dir is not None:
        from reconciler.report import write_reports

        paths = write_reports(result, settings.report_dir, secrets=_SECRETS)
        _say(f"report: {paths.html}\n        {paths.json}")
    runner.deliver(settings, result)  # no run history here: on_change compares with a run without drift
    if stop.requested():
        _say(f"reconcile: stopped by {stop.signal_name()}: {_what_was_written(result)}", err=True)
        return stop.exit_code()
    if result.failed:
        if settings.checkpoint_every and repair is None and not ids and not limit and planner is None:
            _say(f"reconcile: run {result.run_id} failed; continue it with --resume {result.run_id}", err=True)
        return EXIT_FAILURE
    return EXIT_DRIFT if result.drift_left else EXIT_OK


@main.command("merge-reports")
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.argument("shard_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
def merge_reports(out_dir: Path, shard_dirs: tuple[Path, ...]) -> None:
    """Combine the report.json of every shard of one sweep (--shard K/N) into OUT_DIR/report.json and
    report.html, as one run over all of them would have written it.

    \b
    Refuses (exit 2) reports of different entities, rules or shard counts, and missing, repeated or
    overlapping shards. Exit code as an audit: 0 no drift, 1 drift found, 3 a shard failed.

    \b
    Example:
      reconcile merge-reports out/all out/shard-0 out/shard-1 out/shard-2
    """
    _guard(_merge_reports)(out_dir, shard_dirs)


def _merge_reports(out_dir: Path, shard_dirs: tuple[Path, ...]) -> int:
    from reconciler.report import write_report_dict

    reports = []
    for d in shard_dirs:
        path = d / "report.json" if d.is_dir() else d
        try:
            reports.append((str(path), json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, ValueError) as exc:
            raise UsageError(f"merge-reports: cannot read {path}: {exc}") from None
    merged = parallel.merge_reports(reports)
    paths = write_report_dict(merged, out_dir)
    for e in merged["entities"]:
        c = e["counts"]
        _say(f"{e['entity']}: {c['postgres']:,} in Postgres, {c['firestore']:,} in Firestore, "
             f"{c['matched']:,} matched, {c['mismatched']:,} mismatched, {c['missing_in_firestore']:,} missing "
             f"in Firestore, {c['missing_in_postgres']:,} missing in Postgres ({len(reports)} shards)")
    _say(f"report: {paths.html}\n        {paths.json}")
    if any(e["error"] for e in merged["entities"]):
        return EXIT_FAILURE
    return EXIT_DRIFT if merged["has_drift"] else EXIT_OK


@main.group()
def rules() -> None:
    """Work with the mapping rules (RULES_DIR/<entity>.yaml)."""


@rules.command("check")
@click.option("--entity", "entities", multiple=True, metavar="NAME", help="Check this entity (default: all).")
@click.option("--offline", is_flag=True, help="Only parse and validate the files; do not connect to Postgres.")
@click.pass_context
def rules_check(ctx: click.Context, entities: tuple[str, ...], offline: bool) -> None:
    """Validate rules files, and (unless --offline) every table and column they name against the live schema."""
    _guard(_rules_check)(ctx, entities, offline)


def _rules_check(ctx: click.Context, entities: tuple[str, ...], offline: bool) -> int:
    settings = _settings(ctx)
    names = list(entities) or sorted(p.stem for p in settings.rules_dir.glob("*.yaml"))
    if not names:
        raise UsageError(f"no rules files in {settings.rules_dir}")
    loaded = engine.load_rules(settings, names)
    if not offline:
        engine.check_rules(loaded, engine.live_schema(settings, [t for r in loaded for t in r.tables()]))
    for r in loaded:
        n = sum(len(d.columns) + len(d.geopoints) + sum(len(e.columns) for e in d.embeds) for d in r.documents)
        _say(f"{r.file}: ok ({r.entity}: {n} mapped columns, {len(r.subcollections)} subcollections"
                   f"{', checked against the live schema' if not offline else ''})")
    return EXIT_OK


@rules.command("new")
@click.option("--table", required=True, metavar="TABLE", help="The Postgres table (its live columns are read).")
@click.option("--collection", required=True, metavar="COLLECTION", help="The Firestore collection (a sample is read).")
@click.option("--key", metavar="COLUMN", help="The column whose text is the document ID [default: id].")
@click.option("--naming", type=click.Choice(sorted(CONVENTIONS)),
              help="Column -> field naming [default: the one that matches more columns].")
@click.option("--entity", metavar="NAME", help="The entity's name [default: the collection's].")
@click.option("--sample", type=click.IntRange(min=1), default=50, show_default=True, help="Documents to read.")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Write the file here (never over an existing "
                                                                      "file) [default: standard output].")
@click.pass_context
def rules_new(ctx: click.Context, **options: Any) -> None:
    """Write a starting rules file for a table and a collection, from the live schema and sample documents.

    \b
    Columns are matched to document fields by the naming convention (and flattened maps: billing_city <->
    billing.city), types are guessed from the documents (money as strings, ISO timestamps), and whatever
    could not be decided is listed as comments: unmatched columns, unmatched fields, TODO lines.

    \b
    Examples:
      reconcile rules new --table T --collection C -o rules/ENTITY.yaml
      reconcile rules new --table T --collection C --key COLUMN --naming identity
    """
    _guard(_rules_new)(ctx, **options)


def _rules_new(ctx: click.Context, table: str, collection: str, key: str | None, naming: str | None,
               entity: str | None, sample: int, output: Path | None) -> int:
    if output is not None and output.exists():
        raise UsageError(f"{output} exists; rules new never overwrites a file (remove it or choose another -o)")
    text = engine.scaffold_rules(_settings(ctx), table=table, collection=collection, key=key, naming=naming,
                                 entity=entity, sample=sample)
    if output is None:
        _say(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
        _say(f"{output}: written; review it, then: reconcile rules check --entity {entity or collection}",
                   err=True)
    return EXIT_OK


# ------------------------------------------------------------------------------------------ operations


@main.command("run-once")
@click.option("--entity", "entities", multiple=True, metavar="NAME",
              help="Run only this entity (repeatable) [default: audit.entities, like --all].")
@click.pass_context
def run_once(ctx: click.Context, entities: tuple[str, ...]) -> None:
    """What a cron container runs: audit every record, write the reports, record the run in the history.

    \b
    Examples:
      reconcile run-once                         every entity in audit.entities
      reconcile run-once --entity ENTITY         just this one
      reconcile --config /etc/reconciler.toml run-once

    \b
    Reports go to audit.report_dir (RECONCILER_REPORT_DIR), the history to history.dsn (default: postgres.dsn).
    Exit codes: 0 no drift, 1 drift, 2 usage/config/rules error, 3 runtime failure (unreachable database,
    report or history not written).
    """
    _guard(_run_once)(ctx, entities)


def _run_once(ctx: click.Context, entities: tuple[str, ...]) -> int:
    settings = _settings(ctx)
    show = _Progress(sys.stderr.isatty())
    result = runner.run_job(settings, runner.job_entities(settings, entities), progress=show)
    show.done()
    _say(_summary(result))
    if result.failed:
        return EXIT_FAILURE
    return EXIT_DRIFT if result.drift_left else EXIT_OK


@main.command()
@click.pass_context
def serve(ctx: click.Context) -> None:
    """Run the [[schedule.jobs]] of the config until SIGTERM (or Ctrl-C).

    \b
    Each job is a cron expression (5 fields, or 6 with seconds first) in its time zone and the entities it
    audits; runs of the same entity never overlap. With run_missed = true a job whose scheduled run was
    missed (per the history) runs once at start-up. SIGTERM lets the running job finish, then exits 0.

    \b
    Example config:
      [[schedule.jobs]]
      name = "nightly"
      cron = "0 2 * * *"
      timezone = "Europe/Berlin"
      entities = ["ENTITY"]
      run_missed = true
    """
    _guard(_serve)(ctx)


def _serve(ctx: click.Context) -> int:
    from reconciler.schedule import serve as serve_schedules

    serve_schedules(_settings(ctx))  # logging: configured by main (logs.configure), JSON lines off a terminal
    return EXIT_OK


@main.command()
@click.option("--entity", required=True, metavar="NAME", help="The entity whose runs to show.")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="The last N runs.")
@click.pass_context
def history(ctx: click.Context, entity: str, limit: int) -> None:
    """The trend of an entity: one line per recorded run, oldest first.

    \b
    Example:
      reconcile history --entity ENTITY --limit 30
    """
    _guard(_history)(ctx, entity, limit)


def _history(ctx: click.Context, entity: str, limit: int) -> int:
    from reconciler.history import History

    settings = _settings(ctx)
    if not settings.history.enabled:
        raise UsageError("history is disabled in the config ([history] enabled = false)")
    with History.open(settings) as h:
        runs = h.trend(entity, limit)
    if not runs:
        _say(f"no recorded runs of {entity}")
        return EXIT_OK
    _say(f"{'started (UTC)':<19}  {'run':<12}  {'job':<12}  {'postgres':>9}  {'firestore':>9}  {'matched':>9}  "
               f"{'drifted':>8}  {'duration':>8}  outcome")
    for r in runs:
        c = r.counts
        outcome = f"failed: {r.error}" if r.error else r.outcome
        _say(f"{r.started_at.astimezone(dt.timezone.utc):%Y-%m-%d %H:%M:%S}  {r.run_id:<12}  {r.job[:12]:<12}  "
                   f"{c.postgres:>9,}  {c.firestore:>9,}  {c.matched:>9,}  {r.drifted:>8,}  {r.duration_s:>6.1f} s  "
                   f"{outcome}")
    return EXIT_OK


@main.command()
@click.option("--entity", required=True, metavar="NAME", help="The entity the record belongs to.")
@click.argument("doc_id", metavar="ID")
@click.pass_context
def explain(ctx: click.Context, entity: str, doc_id: str) -> None:
    """Show one record on both sides: Postgres rows, Firestore document, both canonical, the differences,
    and since when it drifts (history). Reads only this record and its subcollection documents.

    \b
    Example:
      reconcile explain --entity ENTITY 6f1c2a4e-0b5d-4c7e-9a33-1f0e2d3c4b5a

    \b
    Exit codes: 0 in sync, 1 drift, 2 usage/config/rules error, 3 runtime failure.
    """
    _guard(_explain)(ctx, entity, doc_id)


def _explain(ctx: click.Context, entity: str, doc_id: str) -> int:
    from reconciler.explain import explain as explain_record, render

    found = explain_record(_settings(ctx), entity, doc_id)
    _say(render(found))
    return EXIT_DRIFT if found.drifted else EXIT_OK


@main.command("init-db")
@click.pass_context
def init_db(ctx: click.Context) -> None:
    """Create our own tables: the run history (in history.dsn) and the repair audit trail (postgres.dsn).
    Both are also created on first use; this is for a deployment step run with more rights."""
    _guard(_init_db)(ctx)


def _init_db(ctx: click.Context) -> int:
    from reconciler.history import History
    from reconciler.repair import ensure_log

    settings = _settings(ctx)
    if settings.history.enabled:
        with History.open(settings) as h:
            h.ensure_schema()
        _say("history tables: ready (reconciler_runs, reconciler_run_entities, reconciler_findings)")
    conn = engine.connect_postgres(settings)
    try:
        ensure_log(conn)
    finally:
        conn.close()
    _say("repair audit table: ready (reconciler_repairs)")
    return EXIT_OK


if __name__ == "__main__":
    main()
