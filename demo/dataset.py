"""A seed-shaped data set for both sides (rows per table, documents per path) and how to load it.

The generators (demo/orders.py, demo/conversations.py, demo/catalog.py) build one; tests and the demo load it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from google.cloud import firestore
from psycopg import sql
from psycopg.types.json import Jsonb

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schema"


@dataclass
class Dataset:
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # table -> rows, tables in FK order
    docs: dict[str, dict[str, Any]] = field(default_factory=dict)  # document path -> fields

    def add_row(self, table: str, row: dict[str, Any]) -> dict[str, Any]:
        self.rows.setdefault(table, []).append(row)
        return row

    def tables(self, *names: str) -> None:
        """Fix the insert order (parents first) before any row is added."""
        for name in names:
            self.rows.setdefault(name, [])


def create_schema(conn: psycopg.Connection, schema_file: str) -> None:
    conn.execute((SCHEMA_DIR / schema_file).read_text())
    conn.commit()


def load_postgres(conn: psycopg.Connection, data: Dataset) -> None:
    """COPY per table (in the data set's table order), in one transaction; dicts and lists go to jsonb as JSON."""
    types = dict(conn.execute(
        "SELECT table_name || '.' || column_name, udt_name FROM information_schema.columns "
        "WHERE table_schema = current_schema()").fetchall())
    with conn.cursor() as cur:
        for table, rows in data.rows.items():
            if not rows:
                continue
            columns = list(rows[0])
            json_cols = {c for c in columns if types.get(f"{table}.{c}") in ("json", "jsonb")}
            stmt = sql.SQL("COPY {} ({}) FROM STDIN").format(sql.Identifier(table),
                                                             sql.SQL(", ").join(map(sql.Identifier, columns)))
            with cur.copy(stmt) as copy:
                for row in rows:
                    copy.write_row([Jsonb(row[c]) if c in json_cols and row[c] is not None else row[c]
                                    for c in columns])
    conn.commit()


def load_firestore(client: firestore.Client, data: Dataset, workers: int = 4) -> None:
    """Batched writes (500 per batch) from a small pool of threads."""
    writes = list(data.docs.items())

    def commit(chunk: list[tuple[str, dict[str, Any]]]) -> None:
        batch = client.batch()
        for path, doc in chunk:
            batch.set(client.document(path), doc)
        batch.commit()

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(commit, [writes[i:i + 500] for i in range(0, len(writes), 500)]))


def load(conn: psycopg.Connection, client: firestore.Client, data: Dataset, schema_file: str) -> None:
    create_schema(conn, schema_file)
    load_postgres(conn, data)
    load_firestore(client, data)
