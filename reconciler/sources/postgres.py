"""Postgres side: connection, live schema, and key-ordered streams of raw rows.

Every stream is ordered exactly as Firestore orders document IDs (see keys.py): UUID columns by their
native order (byte order, which equals the order of their lowercase text), other keys by their text
under COLLATE "C" with Firestore's numeric `__id<n>__` IDs first. Rows come through server-side
cursors, so memory stays flat however large the tables are. Child tables folded into the parent
document (embeds) are streamed in the same order and grouped to their parent as the parent streams by.
"""

from __future__ import annotations

from typing import Any, Iterator

import psycopg
from psycopg import sql

from reconciler.errors import RuntimeFailure
from reconciler.keys import Key, Scope, SortKey, id_sort_key
from reconciler.rules.model import DocumentSpec, Embed

Row = tuple[Any, ...]
Schema = dict[str, dict[str, str]]  # table -> column -> type name (udt_name: uuid, text, numeric, ...)
RawRecord = tuple[Row, tuple[list[Row], ...]]  # (row: key text + selected columns, embedded rows per embed)


def connect(dsn: str, *, application_name: str = "reconciler") -> psycopg.Connection:
    """Connect (an empty DSN means libpq's PG* environment variables) with UTC timestamps."""
    try:
        conn = psycopg.connect(dsn, connect_timeout=10, application_name=application_name)
    except psycopg.Error as exc:
        raise RuntimeFailure(f"postgres: cannot connect: {_one_line(exc)}") from None
    conn.execute("SET TIME ZONE 'UTC'")
    conn.commit()
    return conn


def begin_snapshot(conn: psycopg.Connection) -> None:
    """One REPEATABLE READ READ ONLY transaction: every stream of the run reads the same instant."""
    conn.rollback()
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")


def fetch_schema(conn: psycopg.Connection, tables: tuple[str, ...]) -> Schema:
    rows = conn.execute(
        "SELECT table_name, column_name, udt_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = ANY(%s) ORDER BY table_name, ordinal_position",
        [list(tables)],
    ).fetchall()
    schema: Schema = {}
    for table, column, udt in rows:
        schema.setdefault(table, {})[column] = udt
    return schema


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _text(column: str, alias: str = "t") -> sql.Composable:
    return sql.SQL("{}.{}::text").format(sql.Identifier(alias), sql.Identifier(column))


def order_terms(column: str, udt: str, alias: str = "t") -> list[sql.Composable]:
    """ORDER BY terms that sort a key column exactly as Firestore sorts document IDs."""
    if udt == "uuid":
        return [sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(column))]
    text = _text(column, alias)
    numeric = sql.SQL("{} ~ '^__id-?[0-9]+__$'").format(text)
    return [
        sql.SQL("(CASE WHEN {} THEN 0 ELSE 1 END)").format(numeric),
        sql.SQL("(CASE WHEN {n} THEN substring({t} from 5 for length({t}) - 6)::numeric END)").format(n=numeric, t=text),
        sql.SQL('{} COLLATE "C"').format(text),
    ]


class PostgresReader:
    def __init__(self, conn: psycopg.Connection, schema: Schema, *, itersize: int = 2000) -> None:
        self.conn = conn
        self.schema = schema
        self.itersize = itersize
        self._cursors = 0

    def _cursor_rows(self, query: sql.Composable, params: list[Any]) -> Iterator[Row]:
        self._cursors += 1
        try:
            with self.conn.cursor(name=f"reconciler_{self._cursors}") as cur:
                cur.itersize = self.itersize
                cur.execute(query, params)
                yield from cur
        except psycopg.Error as exc:
            raise RuntimeFailure(f"postgres: {_one_line(exc)}") from None

    def _select(self, table: str, keys: list[str], columns: tuple[str, ...], scope_column: str, scope: Scope,
                extra_order: list[sql.Composable] = ()) -> tuple[sql.Composable, list[Any]]:
        types = self.schema[table]
        select = [_text(k) for k in keys] + [sql.SQL("t.{}").format(sql.Identifier(c)) for c in columns]
        order = [term for k in keys for term in order_terms(k, types[k])] + list(extra_order)
        where, params = sql.SQL(""), []
        if scope.ids is not None:
            where = sql.SQL(" WHERE {} = ANY(%s)").format(_text(scope_column))
            params.append(list(scope.ids))
        query = sql.SQL("SELECT {} FROM {} AS t{} ORDER BY {}").format(
            sql.SQL(", ").join(select), sql.Identifier(table), where, sql.SQL(", ").join(order))
        return query, params

    def stream(self, doc: DocumentSpec, scope: Scope) -> Iterator[tuple[Key, RawRecord]]:
        """(key, (row, embedded rows)) in key order. Row = (document ID text, *doc.select_columns)."""
        if doc.parent is None:
            yield from self._stream_root(doc, scope)
        else:
            yield from self._stream_children(doc, scope)

    def _stream_root(self, doc: DocumentSpec, scope: Scope) -> Iterator[tuple[Key, RawRecord]]:
        query, params = self._select(doc.table, [doc.key], doc.select_columns, doc.key, scope)
        embeds = [_Grouped(self._embed_rows(e, scope)) for e in doc.embeds]
        for row in self._cursor_rows(query, params):
            root_id = row[0]
            if scope.past_upper(root_id):
                return
            sk = (id_sort_key(root_id),)
            yield (root_id,), (row, tuple(g.take(sk) for g in embeds))

    def _embed_rows(self, embed: Embed, scope: Scope) -> Iterator[tuple[SortKey, Row]]:
        extra = []
        if embed.order_by:  # `latest`: the newest row of each parent comes first
            extra = [sql.SQL("t.{} DESC NULLS LAST").format(sql.Identifier(embed.order_by))]
        query, params = self._select(embed.table, [embed.join], embed.select_columns, embed.join, scope, extra)
        for row in self._cursor_rows(query, params):
            yield (id_sort_key(row[0]),), row

    def _stream_children(self, doc: DocumentSpec, scope: Scope) -> Iterator[tuple[Key, RawRecord]]:
        assert doc.parent is not None
        query, params = self._select(doc.table, [doc.parent, doc.key], doc.select_columns, doc.parent, scope)
        for row in self._cursor_rows(query, params):
            if scope.past_upper(row[0]):
                return
            yield (row[0], row[1]), (row[1:], ())


class _Grouped:
    """Rows of a child table in parent-key order, handed out parent by parent as the parent stream advances."""

    def __init__(self, rows: Iterator[tuple[SortKey, Row]]) -> None:
        self.rows = rows
        self.head: tuple[SortKey, Row] | None = next(rows, None)

    def take(self, parent: SortKey) -> list[Row]:
        out: list[Row] = []
        while self.head is not None and self.head[0] <= parent:
            if self.head[0] == parent:
                out.append(self.head[1])
            prev = self.head[0]  # rows of parents not in the stream (outside the scope) are passed over
            self.head = next(self.rows, None)
            if self.head is not None and self.head[0] < prev:
                raise RuntimeFailure(f"postgres: child rows out of key order ({prev!r} then {self.head[0]!r})")
        return out
