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


@dataclass(frozen=True)
class Finding:
    key: str  # the Firestore document path, e.g. "customers/<id>/addresses/<addressId>"
    kind: FindingKind
    fields: tuple[FieldDiff, ...] = ()


@dataclass(frozen=True)
class Counts:
    postgres: int = 0
    firestore: int = 0
    matched: int = 0
    mismatched: int = 0
    missing_in_firestore: int = 0
    missing_in_postgres: int = 0

    @property
    def drifted(self) -> int:
        return self.mismatched + self.missing_in_firestore + self.missing_in_postgres


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

    @property
    def has_drift(self) -> bool:
        return self.counts.drifted > 0


@dataclass(frozen=True)
class RunResult:
    run_id: str
    mode: str  # "audit"
    started_at: dt.datetime
    finished_at: dt.datetime
    entities: tuple[EntityResult, ...]

    @property
    def has_drift(self) -> bool:
        return any(e.has_drift for e in self.entities)

    @property
    def failed(self) -> bool:
        return any(e.error for e in self.entities)
