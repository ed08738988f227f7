"""Ordered, paged streams of raw records for one entity, one module per database, and their writes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Sides:
    """Open connections to both databases for one run, and the live schema of the tables the rules name."""

    pg: Any  # psycopg.Connection
    fs: Any  # google.cloud.firestore.Client
    schema: dict[str, dict[str, str]] = field(default_factory=dict)  # table -> column -> udt name
