"""The result of a run: built once by the engine, rendered separately (JSON, HTML, e-mail, history)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class FindingKind(str, Enum):
    MISSING_IN_FIRESTORE = "missing_in_firestore"
    MISSING_IN_POSTGRES = "missing_in_postgres"
    MISMATCH = "mismatch"


@dataclass(frozen=True)
class FieldDiff:
    """One differing field. Values are canonical (see values.py); `None` means NULL or absent."""

    path: str
    postgres: Any
    firestore: Any
    pattern: str = ""  # the path with data-dependent parts generalised ("sources.*.id"), for per-field counts
    kind: str = "value"  # "value": the values differ; "type_mismatch": a value of another kind than the other
    #                      side's or than the rules expect (a string for a number, a map for an array...)


class RepairAction(str, Enum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    SKIP = "skip"


class RepairStatus(str, Enum):
    APPLIED = "applied"
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass(frozen=True)
class Repair:
    """What repair did (or, in a dry run, would do) about one finding."""

    action: RepairAction
    status: RepairStatus
    reason: str = ""
    writes: tuple[dict[str, Any], ...] = ()  # the exact writes, as JSON-ready dicts (see repair.py)
    deleted: Any = None  # a deleted record's full copy (every field or column, mapped or not)


@dataclass(frozen=True)
class Finding:
    key: str  # the Firestore document path, e.g. "<collection>/<id>/<subcollection>/<id>"
    kind: FindingKind
    fields: tuple[FieldDiff, ...] = ()
    repair: Repair | None = None  # set in repair mode


@dataclass(frozen=True)
class Counts:
    postgres: int = 0
    firestore: int = 0
    matched: int = 0
    mismatched: int = 0
    missing_in_firestore: int = 0
    missing_in_postgres: int = 0
    in_flight: int = 0  # differed, but were being written during the run (see settle.py): not drift yet

    @property
    def drifted(self) -> int:
        return self.mismatched + self.missing_in_firestore + self.missing_in_postgres


@dataclass(frozen=True)
class Resolved:
    """A row of the audit trail that an apply found at its start instead of writing it: a write another run left
    `pending` (it died between sending the write and recording what happened), settled by reading the document
    back; or (RepairSummary.earlier) a write of this run's own, made before its Postgres connection was lost and
    the repair started over."""

    run_id: str  # the run that sent the write
    key: str  # the document path
    action: RepairAction
    # applied | failed | skipped, as recorded; or settled from pending: applied | not_applied (it did not land) |
    # unknown (the document changed in another way since); pending: too recent to settle (a commit may still land)
    status: str
    reason: str


@dataclass(frozen=True)
class RepairSummary:
    target: str  # the side written: the one that is not the source of truth
    applied: bool  # False: a dry run, nothing written
    planned: int = 0
    done: int = 0  # records this run wrote (status applied), also before a lost connection (`earlier`)
    skipped: int = 0  # drifted records left as they are
    failed: int = 0  # records whose write failed or whose outcome is unknown, also before a lost connection
    refused: str | None = None  # why nothing was repaired (blast-radius guard); the run then fails
    duration_s: float = 0.0  # planning and applying, after the audit
    resolved: tuple[Resolved, ...] = ()  # pending trail rows of other runs, settled by this one (or still pending)
    earlier: tuple[Resolved, ...] = ()  # this run's own trail rows from before a lost connection, once each

    @property
    def clean(self) -> bool:
        """Every drifted record was repaired."""
        return self.applied and self.refused is None and self.skipped == 0 and self.failed == 0


@dataclass(frozen=True)
class Sweep:
    """What part of an entity a run covered, so that shard reports can be checked and merged."""

    rules_sha256: str  # of the rules file: shards audited under other rules do not merge
    documents: tuple[str, ...]  # the entity's collections, root first: the order findings are listed in
    max_findings: int
    start: str | None = None  # the key range [start, end); None: open on that side
    end: str | None = None
    shard: tuple[int, int] | None = None  # (index, count), index 0-based
    changed_since: str | None = None  # only root records changed since this instant (ISO 8601)
    workers: int = 1


@dataclass(frozen=True)
class EntityResult:
    entity: str
    source_of_truth: str  # "postgres" | "firestore"
    counts: Counts
    findings: tuple[Finding, ...]  # at most the configured maximum, in key order
    findings_truncated: bool
    field_counts: dict[str, int] = field(default_factory=dict)  # drifted field path pattern -> records
    duration_s: float = 0.0
    error: str | None = None  # set when this entity failed; counts are then partial
    repair: RepairSummary | None = None  # set in repair mode
    sweep: Sweep | None = None  # set when the run covered a key range, a shard or changed records only
    skipped: str | None = None  # why the run left this entity out (--all --changed-since, rules without `changed:`)

    @property
    def has_drift(self) -> bool:
        return self.counts.drifted > 0

    @property
    def failed(self) -> bool:
        return self.error is not None or (self.repair is not None and
                                          (self.repair.refused is not None or self.repair.failed > 0))

    @property
    def drift_left(self) -> bool:
        """Drift that is still there after this run (all of it unless repair applied every write)."""
        return self.has_drift and not (self.repair is not None and self.repair.clean)


@dataclass(frozen=True)
class RunResult:
    run_id: str
    mode: str  # "audit" | "repair"
    started_at: dt.datetime
    finished_at: dt.datetime
    entities: tuple[EntityResult, ...]

    @property
    def has_drift(self) -> bool:
        return any(e.has_drift for e in self.entities)

    @property
    def failed(self) -> bool:
        return any(e.failed for e in self.entities)

    @property
    def drift_left(self) -> bool:
        return any(e.drift_left for e in self.entities)
