"""Sweeps larger than one stream: key ranges audited in parallel processes (--workers), one range of many
(--shard, one machine each), only the records changed lately (--changed-since), and the merge of the parts.

One Firestore stream decodes on one core under the GIL, so parallelism means processes, each with its own
connections. Ranges live in `keys.Scope` ([start, end) in key order); `keys.ranges` makes them cover the
key space exactly once. A merged result equals a single run's: counts and per-field counts add up,
findings are listed by collection then key, and cut to max_findings as one run would cut them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import multiprocessing
import os
import re
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
import dataclasses
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, TypeVar

from reconciler import engine, stop
from reconciler.config import Settings
from reconciler.errors import RulesError, RuntimeFailure, UsageError
from reconciler.keys import Scope, ranges, sort_key, uuid_split_points
from reconciler.repair import Options
from reconciler.result import Counts, EntityResult, Finding, Sweep
from reconciler.rules import EntityRules
from reconciler.sources import Sides
from reconciler.sources import firestore as fs_source
from reconciler.sources import postgres as pg_source

T = TypeVar("T")
log = logging.getLogger(__name__)
COUNT_FIELDS = tuple(f.name for f in dataclasses.fields(Counts))  # in_flight too: every count adds up across ranges


# ---------------------------------------------------------------- shards

@dataclass(frozen=True)
class Shard:
    index: int  # 0-based, like CLOUD_RUN_TASK_INDEX and JOB_COMPLETION_INDEX
    count: int

    @classmethod
    def parse(cls, text: str, env: Mapping[str, str] | None = None) -> Shard:
        """`K/N` (K from 0 to N-1), or `auto`: Cloud Run Jobs' CLOUD_RUN_TASK_INDEX/CLOUD_RUN_TASK_COUNT, or a
        Kubernetes Indexed Job's JOB_COMPLETION_INDEX with the count in RECONCILER_SHARD_COUNT."""
        env = os.environ if env is None else env
        if text == "auto":
            for index_var, count_var in (("CLOUD_RUN_TASK_INDEX", "CLOUD_RUN_TASK_COUNT"),
                                         ("JOB_COMPLETION_INDEX", "RECONCILER_SHARD_COUNT")):
                if env.get(index_var, "").strip():
                    if not env.get(count_var, "").strip():
                        raise UsageError(f"--shard auto: {index_var} is set but {count_var} is not")
                    return cls._checked(env[index_var].strip(), env[count_var].strip(), f"{index_var}/{count_var}")
            raise UsageError("--shard auto: neither CLOUD_RUN_TASK_INDEX (Cloud Run Jobs) nor JOB_COMPLETION_INDEX "
                             "(Kubernetes Indexed Job) is set")
        m = re.fullmatch(r"\s*(\S+)\s*/\s*(\S+)\s*", text)
        if not m:
            raise UsageError(f"--shard must be K/N (K from 0 to N-1) or auto, got {text!r}")
        return cls._checked(m.group(1), m.group(2), "--shard")

    @classmethod
    def _checked(cls, index: str, count: str, what: str) -> Shard:
        if not (index.isdigit() and count.isdigit()) or not 0 <= int(index) < int(count):
            raise UsageError(f"{what}: shard {index}/{count} is not K/N with 0 <= K < N (shards count from 0)")
        return cls(int(index), int(count))


# ---------------------------------------------------------------- changed since

def parse_since(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """`90s`, `30m`, `2h`, `7d` before now, or an ISO 8601 instant with a time zone (`2026-11-23T00:00:00Z`)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smhd])\s*", text)
    if m:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[m.group(2)]
        return now - dt.timedelta(**{unit: float(m.group(1))})
    try:
        when = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--changed-since must be a duration (90s, 30m, 2h, 7d) or an ISO 8601 instant "
                         f"(2026-11-23T00:00:00Z), got {text!r}") from None
    if when.tzinfo is None:
        raise UsageError(f"--changed-since {text!r} has no time zone: add Z or an offset such as +01:00")
    return when.astimezone(dt.timezone.utc)


def changed_scope(rules: EntityRules, sides: Sides, since: dt.datetime, settings: Settings) -> Scope:
    """The root records whose update time is after `since` on either side: their IDs, or for a root collection
    that is itself a subcollection their (parent ID, ID) keys (and their parents' IDs)."""
    if rules.changed is None:
        raise RulesError(no_changed(rules), file=rules.file)
    root = rules.root
    pg_keys = pg_source.changed_keys(sides.pg, root, rules.changed.column, since)
    sides.pg.rollback()
    reader = fs_source.FirestoreReader(sides.fs, timeout=settings.firestore.timeout_s)
    fs_keys = reader.changed_keys(root.collection, rules.changed.field, since, root.parent_collection)
    keys = sorted(set(pg_keys) | set(fs_keys), key=sort_key)
    ids = tuple(dict.fromkeys(k[0] for k in keys))
    return Scope(ids=ids) if root.parent is None else Scope(ids=ids, keys=tuple(keys))


def no_changed(rules: EntityRules) -> str:
    return (f"--changed-since needs `changed: {{column: ..., field: ...}}` in the rules of {rules.entity!r}: "
            "where each side keeps a record's last update time")


# ---------------------------------------------------------------- ranges

def key_ranges(rules: EntityRules, sides: Sides, n: int, within: Scope = Scope()) -> list[Scope]:
    """`within` cut into at most n ranges: equal parts of the UUID space for a UUID key, else parts of
    about equal row counts sampled from the Postgres root table (Firestore cannot count cheaply)."""
    if n <= 1:
        return [within]
    root = rules.root
    udt = sides.schema.get(root.table, {}).get(root.key, "")
    if udt == "uuid":
        points = uuid_split_points(n, within)
    else:
        # a point bounds both sides' ranges: a Postgres key Firestore refuses as a document ID cannot be one
        points = pg_source.sample_split_points(sides.pg, root.table, root.key, udt, n, within.start, within.end,
                                               usable=fs_source.is_document_id)
        sides.pg.rollback()
    return ranges(points, within)


@dataclass(frozen=True)
class Planner:
    """engine.Planner for --workers, --shard and --changed-since."""

    settings: Settings
    workers: int = 1
    shard: Shard | None = None
    since: dt.datetime | None = None
    skip_unchanged: bool = False  # --all: leave out (with a warning) an entity whose rules have no `changed:`

    def skips(self, rules: EntityRules) -> str | None:
        """Why this run leaves the entity out: --all --changed-since cannot see what changed in it. Named on its
        own (--entity), the entity is a rules error instead: the user asked for what cannot be done."""
        if self.since is None or rules.changed is not None or not self.skip_unchanged:
            return None
        return f"{rules.file}: {no_changed(rules)}; only full sweeps audit it"

    def scope(self, rules: EntityRules, sides: Sides, scope: Scope) -> Scope:
        if self.skips(rules):
            return scope
        if self.since is not None:
            scope = changed_scope(rules, sides, self.since, self.settings)
        if self.shard is not None and self.shard.count > 1:
            parts = key_ranges(rules, sides, self.shard.count, scope)
            # fewer distinct keys than shards: the last shards get nothing, and merge-reports still sees the
            # ranges meet end to end (an empty range after the one that runs to the end of the key space)
            scope = parts[self.shard.index] if self.shard.index < len(parts) else Scope(ids=())
        return scope

    def audit(self, rules: EntityRules, sides: Sides, settings: Settings, scope: Scope, progress: engine.Progress,
              repair: Options | None, run_id: str) -> EntityResult:
        started = time.monotonic()
        skipped = self.skips(rules)
        parts = key_ranges(rules, sides, self.workers, scope) if scope.ids is None and not skipped else [scope]
        if skipped:
            log.warning("%s: skipped: %s", rules.entity, skipped, extra={"entity": rules.entity})
            result = replace(_empty(rules), skipped=skipped)
        elif scope.ids == ():
            result = _empty(rules)
        elif len(parts) == 1:
            result = engine.audit_entity(rules, sides, settings, scope, progress, repair, run_id)
        else:
            if repair is not None:
                raise UsageError("--repair runs with one worker: drop --workers (the audit before it can use them)")
            done: list[EntityResult] = []

            def tick(part: EntityResult) -> None:
                done.append(part)
                progress(rules.entity, f"{len(done)}/{len(parts)} ranges", sum(p.counts.postgres for p in done),
                         sum(p.counts.drifted for p in done))

            results = map_ranges(_audit_range, [(settings, rules, p) for p in parts], self.workers, tick)
            result = merge_results(rules, results, settings.max_findings, time.monotonic() - started)
        return replace(result, sweep=Sweep(
            rules_sha256=rules_digest(rules), documents=tuple(d.collection for d in rules.documents),
            max_findings=settings.max_findings, start=scope.start, end=scope.end,
            shard=(self.shard.index, self.shard.count) if self.shard else None,
            changed_since=self.since.astimezone(dt.timezone.utc).isoformat() if self.since else None,
            workers=self.workers))


def _empty(rules: EntityRules) -> EntityResult:
    return EntityResult(entity=rules.entity, source_of_truth=rules.source_of_truth, counts=Counts(), findings=(),
                        findings_truncated=False)


def rules_digest(rules: EntityRules) -> str:
    try:
        return hashlib.sha256(Path(rules.file).read_bytes()).hexdigest()
    except OSError:
        return ""


def map_ranges(fn: Callable[[Any], T], tasks: list[Any], workers: int,
               on_done: Callable[[T], None] = lambda r: None) -> list[T]:
    """fn(task) for each task in `workers` fresh processes (spawned: no forked gRPC or libpq state); the results
    in task order. The first error is raised once the others have stopped. After SIGTERM or SIGINT (stop.py), no further
    task starts, and the running ones stop at their next safe point (the request is shared with them, see stop.py)."""
    ctx = multiprocessing.get_context("spawn")
    with stop.shared(ctx) as requested, ProcessPoolExecutor(
            max_workers=min(workers, len(tasks)), mp_context=ctx, initializer=stop.in_worker,
            initargs=(requested,)) as pool:
        futures = [pool.submit(fn, t) for t in tasks]
        try:
            for f in futures:
                on_done(f.result())
                stop.check("while auditing key ranges")
        except BaseException as exc:
            for f in futures:
                f.cancel()
            if isinstance(exc, BrokenProcessPool) and stop.requested():  # the signal reached a worker still starting
                raise stop.interrupted("while the workers were starting") from None
            raise
    return [f.result() for f in futures]


def _audit_range(task: tuple[Settings, EntityRules, Scope]) -> EntityResult:
    """One range, in a worker process, with its own connections."""
    settings, rules, scope = task
    stop.check("before a key range")  # queued before the signal: not started
    try:
        sides = engine.open_sides(settings, rules.tables())
        try:  # no checkpoints: the ranges of an entity would share one (and --resume would have to redo the split)
            result, sides = engine.with_reconnects(settings, sides, lambda s: engine.audit_entity(rules, s, settings,
                                                                                                   scope),
                                                   f"auditing {rules.entity}")
            return result
        finally:
            sides.pg.close()
    except RuntimeFailure as exc:  # as a plain RuntimeFailure: subclasses with keyword-only fields do not unpickle
        raise RuntimeFailure(f"key range [{scope.start or 'first'}, {scope.end or 'last'}): {exc}") from None


# ---------------------------------------------------------------- merging the parts

def finding_order(documents: Iterable[str]) -> Callable[[str], int]:
    """A finding's place by collection (root first, then the subcollections in rules order), from its path.
    Within a collection, parts concatenated in range order are already in key order. A Postgres-only key may
    hold a "/" ("a/b", no document ID): the collection is found by name after the first ID, not by position."""
    names = list(documents)

    def rank(path: str) -> int:
        after = path.partition("/")[2]  # <first id>[/<subcollection>/<id>]
        return next((i for i, name in enumerate(names) if f"/{name}/" in after), 0)

    return rank


def merge_results(rules: EntityRules, parts: list[EntityResult], max_findings: int, duration_s: float) -> EntityResult:
    """The result of one run over the union of the parts' ranges (given in key order)."""
    errors = [p.error for p in parts if p.error]
    counts = Counts(**{k: sum(getattr(p.counts, k) for p in parts) for k in COUNT_FIELDS})
    fields: dict[str, int] = {}
    for p in parts:
        for name, n in p.field_counts.items():
            fields[name] = fields.get(name, 0) + n
    rank = finding_order(d.collection for d in rules.documents)
    findings: list[Finding] = sorted((f for p in parts for f in p.findings), key=lambda f: rank(f.key))
    return EntityResult(entity=rules.entity, source_of_truth=rules.source_of_truth, counts=counts,
                        findings=tuple(findings[:max_findings]), findings_truncated=counts.drifted > min(
                            len(findings), max_findings),
                        field_counts=dict(sorted(fields.items(), key=lambda kv: (-kv[1], kv[0]))),
                        duration_s=duration_s, error="; ".join(errors) or None)


# ---------------------------------------------------------------- merging shard reports

def merge_reports(reports: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """One report.json from the report.json of every shard of one sweep (given as (where, report)). Refuses
    reports that are not shards, of other entities, rules or shard counts, and missing, repeated or
    overlapping shards: a merged report that silently covered less than it says would be worse than none."""
    if not reports:
        raise UsageError("merge-reports: no shard reports given")
    shards: dict[int, tuple[str, dict[str, Any]]] = {}
    first_where, first = reports[0]
    names = [e["entity"] for e in first["entities"]]
    for where, report in reports:
        if [e["entity"] for e in report["entities"]] != names:
            raise UsageError(f"merge-reports: {where} audits {[e['entity'] for e in report['entities']]}, "
                             f"{first_where} audits {names}: not shards of one sweep")
        if report.get("mode") != "audit":
            raise UsageError(f"merge-reports: {where} is a {report.get('mode')} report; only audits merge")
        sweeps = [e.get("sweep") or {} for e in report["entities"]]
        if not sweeps or any(not s.get("shard") for s in sweeps):
            raise UsageError(f"merge-reports: {where} is not a shard report (run with --shard K/N)")
        index, count = sweeps[0]["shard"]
        if index in shards:
            raise UsageError(f"merge-reports: shard {index} of {count} is given twice ({shards[index][0]} and {where})")
        shards[index] = (where, report)
        for e, s, f in zip(report["entities"], sweeps, first["entities"]):
            fs = f["sweep"]
            for key in ("rules_sha256", "documents", "max_findings", "changed_since"):
                if s.get(key) != fs.get(key):
                    raise UsageError(f"merge-reports: {where} and {first_where} differ in {key} for entity "
                                     f"{e['entity']!r} ({s.get(key)!r} vs {fs.get(key)!r}): not shards of one sweep")
            if s["shard"][1] != fs["shard"][1]:
                raise UsageError(f"merge-reports: {where} is a shard of {s['shard'][1]}, {first_where} of "
                                 f"{fs['shard'][1]}")
    count = first["entities"][0]["sweep"]["shard"][1]
    missing = sorted(set(range(count)) - set(shards))
    if missing:
        raise UsageError(f"merge-reports: shards {', '.join(map(str, missing))} of {count} are missing "
                         f"(shards count from 0)")
    ordered = [shards[i] for i in range(count)]
    entities = [_merge_entity([r["entities"][n] for _, r in ordered], [w for w, _ in ordered])
                for n in range(len(names))]
    started = min(r["started_at"] for _, r in ordered)
    finished = max(r["finished_at"] for _, r in ordered)
    return {
        "run_id": "merged-" + hashlib.sha256(" ".join(r["run_id"] for _, r in ordered).encode()).hexdigest()[:12],
        "mode": "audit", "started_at": started, "finished_at": finished,
        "duration_s": round((dt.datetime.fromisoformat(finished) - dt.datetime.fromisoformat(started)).total_seconds(), 3),
        "has_drift": any(sum(e["counts"][k] for k in ("mismatched", "missing_in_firestore", "missing_in_postgres"))
                         for e in entities),
        "entities": entities,
        "merged_from": [{"shard": i, "report": w, "run_id": r["run_id"]} for i, (w, r) in enumerate(ordered)],
    }


def _merge_entity(parts: list[dict[str, Any]], wheres: list[str]) -> dict[str, Any]:
    """One entity's shards, in shard order; their key ranges must meet end to end and cover everything."""
    sweep = parts[0]["sweep"]
    expected = None
    for e, where in zip(parts, wheres):
        s = e["sweep"]
        if s["start"] != expected:
            raise UsageError(f"merge-reports: entity {e['entity']!r}: shard {s['shard'][0]} ({where}) starts at "
                             f"{s['start']!r} but the shard before it ends at {expected!r}: the key ranges overlap "
                             "or leave a gap (split points sampled from changing data? see deploy/README.md)")
        expected = s["end"]
    if expected is not None:
        raise UsageError(f"merge-reports: entity {parts[0]['entity']!r}: the last shard ends at {expected!r}, not at "
                         "the end of the key space")
    counts = {k: sum(e["counts"].get(k, 0) for e in parts) for k in COUNT_FIELDS}
    fields: dict[str, int] = {}
    for e in parts:
        for name, n in e["field_counts"].items():
            fields[name] = fields.get(name, 0) + n
    rank = finding_order(sweep["documents"])
    findings = sorted((f for e in parts for f in e["findings"]), key=lambda f: rank(f["key"]))
    drifted = counts["mismatched"] + counts["missing_in_firestore"] + counts["missing_in_postgres"]
    kept = findings[:sweep["max_findings"]]
    errors = [f"shard {e['sweep']['shard'][0]}: {e['error']}" for e in parts if e.get("error")]
    return {
        "entity": parts[0]["entity"], "source_of_truth": parts[0]["source_of_truth"], "counts": counts,
        "field_counts": dict(sorted(fields.items(), key=lambda kv: (-kv[1], kv[0]))),
        "error": "; ".join(errors) or None, "duration_s": max(e["duration_s"] for e in parts),
        "findings": kept, "findings_truncated": drifted > len(kept),
        "sweep": {**sweep, "start": None, "end": None, "shard": None},
        **({"skipped": parts[0]["skipped"]} if parts[0].get("skipped") else {}),
    }
