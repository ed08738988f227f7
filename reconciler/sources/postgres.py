"""Postgres side: connection, live schema, and key-ordered streams of raw rows.

Every stream is ordered exactly as Firestore sorts document IDs (see keys.py): UUID columns by their
native order (byte order, which equals the order of their lowercase text), other keys by their text
under COLLATE "C" with Firestore's numeric `__id<n>__` IDs first. Rows come through server-side
cursors, so memory stays flat however large the tables are. Child tables folded into the parent
document (embeds) are streamed in the same order and grouped to their parent as the parent streams by.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
import re
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

import psycopg
from psycopg import sql
from psycopg.adapt import Loader
from psycopg.pq import Format
from psycopg.types.json import Jsonb, set_json_loads
from psycopg.types.string import TextLoader

from reconciler.errors import ConfigError, RuntimeFailure, one_line
from reconciler.keys import Key, Scope, SortKey, numeric_id, order_text
from reconciler.rules.model import Column, DocumentSpec, Embed, Reference
from reconciler.values import PostgresOnly, map_strings

T = TypeVar("T")
Row = tuple[Any, ...]
Schema = dict[str, dict[str, str]]  # table -> column -> type name (udt_name: uuid, text, numeric, ...)
RawRecord = tuple[Row, tuple[list[Row], ...]]  # (row: key text + selected columns, embedded rows per embed)


def connect(dsn: str, *, application_name: str = "reconciler", lock_timeout_s: float = 0,
            statement_timeout_s: float = 0) -> psycopg.Connection:
    """Connect (an empty DSN means libpq's PG* environment variables) with UTC timestamps, ISO dates and the
    tool's loaders (register_loaders). `lock_timeout_s`/`statement_timeout_s` (0: off) bound, for every
    statement of the session, the wait for a lock and the time a statement may run: a lock held forever must
    fail the run with a cause, not hang it."""
    try:
        psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        # libpq quotes the pieces it could not parse, which may be (part of) a password: never repeated here
        masked = re.sub(r'"([^"]*)"', lambda m: m[0] if len(m[1]) <= 1 else '"..."', one_line(exc))
        raise ConfigError(f"not a valid connection string ({masked})", key="postgres.dsn") from None
    try:
        conn = psycopg.connect(dsn, connect_timeout=10, application_name=application_name)
    except psycopg.Error as exc:
        raise RuntimeFailure(f"postgres: cannot connect: {one_line(exc)}") from None
    register_loaders(conn)
    _TIMEOUTS[conn] = {"lock_timeout": lock_timeout_s, "statement_timeout": statement_timeout_s}
    # the text of dates, intervals and floats is the canonical form of some values: the same whatever the server's
    # defaults (extra_float_digits >= 1: floats print exactly, shortest form)
    settings = {"TimeZone": "UTC", "DateStyle": "ISO", "IntervalStyle": "postgres", "extra_float_digits": "1",
                "lock_timeout": _ms(lock_timeout_s), "statement_timeout": _ms(statement_timeout_s)}
    try:
        conn.execute("SELECT " + ", ".join(["set_config(%s, %s, false)"] * len(settings)),
                     [x for kv in settings.items() for x in kv])
        conn.commit()
    except psycopg.Error as exc:
        conn.close()
        raise RuntimeFailure(f"postgres: cannot set up the session: {one_line(exc)}") from None
    return conn


def _ms(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms" if seconds > 0 else "0"


# per connection, the timeouts it was opened with: named in the error when one fires
_TIMEOUTS: weakref.WeakKeyDictionary[psycopg.Connection, dict[str, float]] = weakref.WeakKeyDictionary()
_SETTING = {"lock_timeout": "postgres.lock_timeout_s", "statement_timeout": "postgres.statement_timeout_s"}


def failure(conn: psycopg.Connection, exc: psycopg.Error, doing: str = "") -> RuntimeFailure:
    """The RuntimeFailure for a failed statement; one cancelled by a timeout of ours says which, and how to raise it."""
    message = f"postgres: {doing + ': ' if doing else ''}{one_line(exc)}"
    fired = timeout_fired(exc)
    if fired is not None:
        limit = _TIMEOUTS.get(conn, {}).get(fired, 0)
        message += (f" ({_SETTING[fired]} = {limit:g} s fired: raise it in the config, or 0 to wait without limit)"
                    if limit else f" (the server's {fired} fired; {_SETTING[fired]} in the config sets our own)")
    return RuntimeFailure(message)


def timeout_fired(exc: BaseException) -> str | None:
    """"lock_timeout" or "statement_timeout" when that cancelled the statement, else None."""
    if isinstance(exc, psycopg.errors.LockNotAvailable) and "lock timeout" in str(exc):
        return "lock_timeout"
    if isinstance(exc, psycopg.errors.QueryCanceled) and "statement timeout" in str(exc):
        return "statement_timeout"
    return None


# ---------------------------------------------------------------- loading values

class _OrPostgresOnly(Loader):
    """psycopg's own loader of the type; a value it refuses (beyond Python's range: 'infinity', BC, year
    10000) becomes a values.PostgresOnly holding Postgres's text, a finding on its field, not a failed entity."""

    base: type[Loader]
    type_name: str

    def __init__(self, oid: int, context: Any = None) -> None:
        super().__init__(oid, context)
        self._load = self.base(oid, context).load

    def load(self, data: Any) -> Any:
        try:
            return self._load(data)
        except psycopg.DataError:
            return PostgresOnly(bytes(data).decode(), self.type_name)


def _or_postgres_only(type_name: str) -> type[Loader]:
    base = psycopg.adapters.get_loader(psycopg.adapters.types[type_name].oid, Format.TEXT)
    return type(f"{type_name}_or_postgres_only", (_OrPostgresOnly,), {"base": base, "type_name": type_name})


# The canonical form of these is Postgres's own text: Python's types print some of them otherwise
# (str(IPv6Address) writes ::ffff:1.2.3.4 in hex, a timedelta has no months, time() no 24:00:00)
_TEXT_TYPES = ("inet", "cidr", "interval", "time", "timetz", "int4range", "int8range", "numrange", "daterange",
               "tsrange", "tstzrange", "int4multirange", "int8multirange", "nummultirange", "datemultirange",
               "tsmultirange", "tstzmultirange")
_OR_POSTGRES_ONLY = tuple(_or_postgres_only(t) for t in ("date", "timestamp", "timestamptz"))
def _json_float(text: str) -> Any:
    value = float(text)
    return PostgresOnly(text, "numeric") if math.isinf(value) else value


# json.loads would make a number beyond double range float inf, a value Postgres does not hold (jsonb prints
# 1e400 whole, 401 digits, an exact int; 1e400 + 0.5, or json's own text "1e400", would be inf). The float hook
# costs a call per non-integer number; a decoder built once, on text, is still faster than json.loads(bytes)
# for the documents here (measured: 0.9-1.7 us against 1.6-2.3 us; +0.3 us with 8 floats)
_JSON = json.JSONDecoder(parse_float=_json_float)


def json_loads(data: bytes) -> Any:
    """JSON as the database holds it: integers exact (any size), other numbers the nearest double, a number
    beyond double range a PostgresOnly."""
    return _JSON.decode(data.decode())


def register_loaders(conn: psycopg.Connection) -> None:
    """Every value loader of the tool, for every connection it opens (connect() calls this)."""
    for name in _TEXT_TYPES:
        conn.adapters.register_loader(name, TextLoader)
    for loader in _OR_POSTGRES_ONLY:
        conn.adapters.register_loader(loader.type_name, loader)
    set_json_loads(json_loads, conn)


def lost(conn: psycopg.Connection) -> bool:
    """Whether the connection is gone (server restart, pg_terminate_backend, network): worth a reconnect."""
    return conn.closed or conn.broken


def end_snapshot(conn: psycopg.Connection) -> None:
    """End the read transaction; on a lost connection there is none left to end (and the loss is the error
    worth reporting, not a second one from here)."""
    if not lost(conn):
        conn.rollback()


def begin_snapshot(conn: psycopg.Connection) -> dt.datetime:
    """One REPEATABLE READ READ ONLY transaction: every stream of the run reads the same instant, which is
    returned (the snapshot is taken by the transaction's first statement, which reads the clock: Firestore
    is read as of that instant)."""
    conn.rollback()
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    return conn.execute("SELECT clock_timestamp()").fetchone()[0]


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


def _castable(ids: tuple[str, ...], udt: str) -> list[str]:
    """The IDs that can be values of a column of this type: the others cannot match any row (nor be sent: Postgres
    text cannot hold NUL, so an ID with one is no key of any row)."""
    pattern = _ID_PATTERNS.get(udt)
    return [i for i in ids if "\x00" not in i and (pattern is None or pattern.fullmatch(i))]


# a key's text is a document ID only in this form (uuid::text is lowercase), so other IDs match no row
_ID_PATTERNS = {
    "uuid": re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"),
    **{t: re.compile(r"-?[1-9][0-9]*|0") for t in ("int2", "int4", "int8", "numeric")},
}


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


def range_condition(column: str, udt: str, op: str, bound: str, alias: str = "t") -> tuple[sql.Composable, list[Any]]:
    """`key op bound` in Firestore's key order (op: ">=" or "<"), as order_terms sort: a UUID column
    compares natively (its index serves the range); other keys compare as the row of their sort terms.
    A bound with a NUL (a Firestore-only ID: Postgres text cannot hold one, nor be sent one) sorts right after
    its text before the NUL, and no key lies between them: `>= "a\\0b"` is `> "a"`, `< "a\\0b"` is `<= "a"`."""
    text = bound
    if "\x00" in bound:  # such a bound is neither a UUID nor a numeric ID: it compares as text
        text, op = bound[:bound.index("\x00")], {">=": ">", "<": "<="}[op]
    if udt == "uuid":
        if _ID_PATTERNS["uuid"].fullmatch(bound):
            return sql.SQL("{}.{} " + op + " %s::uuid").format(sql.Identifier(alias), sql.Identifier(column)), [bound]
        if numeric_id(bound) is not None:  # a numeric ID sorts before every UUID
            return sql.SQL("TRUE" if op == ">=" else "FALSE"), []
        return sql.SQL("{} " + op + ' %s COLLATE "C"').format(_text(column, alias)), [text]
    key = _text(column, alias)
    numeric = sql.SQL("{} ~ '^__id-?[0-9]+__$'").format(key)
    row = sql.SQL("(CASE WHEN {n} THEN 0 ELSE 1 END, "
                  "COALESCE(CASE WHEN {n} THEN substring({t} from 5 for length({t}) - 6)::numeric END, 0), "
                  '{t} COLLATE "C")').format(n=numeric, t=key)
    number = numeric_id(bound)
    cond = sql.SQL("{} " + op + " (%s::int, %s::numeric, %s::text)").format(row)
    return cond, [0, number, bound] if number is not None else [1, 0, text]


def sample_split_points(conn: psycopg.Connection, table: str, key: str, udt: str, n: int,
                        start: str | None, end: str | None, usable: Callable[[str], bool] = lambda k: True,
                        look_ahead: int = 100) -> list[str]:
    """The keys that cut the table's rows in [start, end) into n parts of about equal size, in key order. A key
    that is not `usable` as a bound gives way to the next usable one, at most `look_ahead` rows on (else that
    cut is left out: fewer, larger parts)."""
    conditions, params = [], []
    for bound, op in ((start, ">="), (end, "<")):
        if bound is not None:
            cond, values = range_condition(key, udt, op, bound)
            conditions.append(cond)
            params.extend(values)
    where = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conditions) if conditions else sql.SQL("")
    try:
        total = conn.execute(sql.SQL("SELECT count(*) FROM {} AS t{}").format(sql.Identifier(table), where),
                             params).fetchone()[0]
        query = sql.SQL("SELECT {} FROM {} AS t{} ORDER BY {} OFFSET %s LIMIT %s").format(
            _text(key), sql.Identifier(table), where, sql.SQL(", ").join(order_terms(key, udt)))
        cuts = [conn.execute(query, [*params, total * i // n, look_ahead]).fetchall() for i in range(1, n)]
    except psycopg.Error as exc:
        raise failure(conn, exc) from None
    points = (next((row[0] for row in rows if usable(row[0])), None) for rows in cuts)
    return [p for p in points if p is not None]


def changed_keys(conn: psycopg.Connection, doc: DocumentSpec, column: str, since: Any) -> list[Key]:
    """The keys of the document's rows whose `column` (an update timestamp) is after `since`: (ID,), or
    (parent ID, ID) for a document kind with a parent (its ID read through `parent_references` when given)."""
    key = _text(doc.key)
    joins: sql.Composable = sql.SQL("")
    if doc.parent is not None:
        ref = doc.parent_references
        parent = _text(doc.parent) if ref is None else _text(ref.column, "p")
        if ref is not None:
            joins = _join(ref, doc.parent, "p")
        key = sql.SQL("{}, {}").format(parent, key)
    query = sql.SQL("SELECT {} FROM {} AS t{} WHERE t.{} > %s").format(key, sql.Identifier(doc.table), joins,
                                                                       sql.Identifier(column))
    try:
        # a row whose referenced parent is gone has no document path: nothing to audit it against
        return [tuple(r) for r in conn.execute(query, [since]) if r[0] is not None]
    except psycopg.Error as exc:
        raise failure(conn, exc) from None


class PostgresReader:
    def __init__(self, conn: psycopg.Connection, schema: Schema, *, itersize: int = 2000,
                 server_side: bool = True) -> None:
        self.conn = conn
        self.schema = schema
        self.itersize = itersize
        self.server_side = server_side  # False: one round trip per query, for reads of a few records
        self._cursors = 0

    def _cursor_rows(self, query: sql.Composable, params: list[Any]) -> Iterator[Row]:
        self._cursors += 1
        name = f"reconciler_{self._cursors}" if self.server_side else None
        try:
            with self.conn.cursor(name=name) as cur:  # type: ignore[call-overload]
                if name:
                    cur.itersize = self.itersize
                cur.execute(query, params)
                yield from cur
        except psycopg.Error as exc:
            raise failure(self.conn, exc) from None

    def _select(self, table: str, keys: list[tuple[str, Reference | None]], columns: tuple[str, ...],
                mapped: tuple[Column, ...], scope: Scope, extra_order: list[sql.Composable] = (),
                where: tuple[tuple[str, str], ...] = ()) -> tuple[sql.Composable, list[Any]]:
        """SELECT keys (as text) and columns, in key order; the scope applies to the first key. A column with a
        Reference is read (and ordered, and scoped) as the referenced row's column, through a LEFT JOIN. A column
        the rules compare as `type: string` is read as Postgres's text of it (its output function: concat()),
        not as what Python would print of the loaded value."""
        refs = {c.name: c.references for c in mapped if c.references is not None}
        texts = {c.name for c in mapped if c.type == "string"}
        joins: list[sql.Composable] = []

        def term(column: str, ref: Reference | None) -> tuple[str, str, str]:  # (alias, column, type)
            if ref is None:
                return "t", column, self.schema[table][column]
            alias = f"r{len(joins)}"
            joins.append(_join(ref, column, alias))
            return alias, ref.column, self.schema[ref.table][ref.column]

        key_terms = [term(k, ref) for k, ref in keys]
        col_terms = [term(c, refs.get(c)) for c in columns]
        values = [sql.SQL("{}.{}").format(sql.Identifier(a), sql.Identifier(c)) for a, c, _ in col_terms]
        values = [sql.SQL("CASE WHEN {v} IS NULL THEN NULL ELSE concat({v}) END").format(v=v) if name in texts else v
                  for name, v in zip(columns, values)]
        select = [_text(c, a) for a, c, _ in key_terms] + values
        order = [t for a, c, udt in key_terms for t in order_terms(c, udt, a)] + list(extra_order)
        conditions, params = [], []
        for column, value in where:  # str parameters are sent untyped: Postgres reads them as the column's type
            conditions.append(sql.SQL("t.{} = %s").format(sql.Identifier(column)))
            params.append(value)
        if scope.ids is not None:  # compared in the column's own type, so that its index serves the lookup
            a, c, udt = key_terms[0]
            conditions.append(sql.SQL("{}.{} = ANY(%s::{}[])").format(sql.Identifier(a), sql.Identifier(c),
                                                                     sql.Identifier(udt)))
            params.append(_castable(scope.ids, udt))
        for bound, op in ((scope.start, ">="), (scope.end, "<")):  # a key range (--workers, --shard)
            if bound is not None:
                cond, values = range_condition(key_terms[0][1], key_terms[0][2], op, bound, key_terms[0][0])
                conditions.append(cond)
                params.extend(values)
        query = sql.SQL("SELECT {} FROM {} AS t{}{} ORDER BY {}").format(
            sql.SQL(", ").join(select), sql.Identifier(table), sql.SQL("").join(joins),
            sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conditions) if conditions else sql.SQL(""),
            sql.SQL(", ").join(order))
        return query, params

    def stream(self, doc: DocumentSpec, scope: Scope) -> Iterator[tuple[Key, RawRecord]]:
        """(key, (row, embedded rows)) in key order. Row = (document ID text, *doc.select_columns)."""
        if doc.parent is None:
            yield from self._stream_root(doc, scope)
        else:
            yield from self._stream_children(doc, scope)

    def _stream_root(self, doc: DocumentSpec, scope: Scope) -> Iterator[tuple[Key, RawRecord]]:
        query, params = self._select(doc.table, [(doc.key, None)], doc.select_columns, doc.columns, scope)
        embeds = [_Grouped(self._embed_rows(e, scope)) for e in doc.embeds]
        for row in self._cursor_rows(query, params):
            root_id = row[0]
            if scope.past_upper(root_id):
                return
            sk = (order_text(root_id),)
            yield (root_id,), (row, tuple(g.take(sk) for g in embeds))

    def _embed_rows(self, embed: Embed, scope: Scope) -> Iterator[tuple[SortKey, Row]]:
        extra = []
        if embed.order_by:  # `latest`: the newest row of each parent comes first
            extra = [sql.SQL("t.{} DESC NULLS LAST").format(sql.Identifier(embed.order_by))]
        query, params = self._select(embed.table, [(embed.join, embed.join_references)], embed.select_columns,
                                     embed.columns, scope, extra, embed.where)
        for row in self._cursor_rows(query, params):
            yield (order_text(row[0]),), row

    def _stream_children(self, doc: DocumentSpec, scope: Scope) -> Iterator[tuple[Key, RawRecord]]:
        assert doc.parent is not None
        query, params = self._select(doc.table, [(doc.parent, doc.parent_references), (doc.key, None)],
                                     doc.select_columns, doc.columns, scope)
        wanted = None if scope.keys is None else set(scope.keys)  # `ids` (the parents) narrowed the query
        for row in self._cursor_rows(query, params):
            if scope.past_upper(row[0]):
                return
            if wanted is None or (row[0], row[1]) in wanted:
                yield (row[0], row[1]), (row[1:], ())


def _join(ref: Reference, column: str, alias: str) -> sql.Composable:
    """The referenced row of t.column, as `alias` (LEFT: a dangling reference keeps its row, with NULLs)."""
    return sql.SQL(" LEFT JOIN {} AS {a} ON {a}.{} = t.{}").format(
        sql.Identifier(ref.table), sql.Identifier(ref.join), sql.Identifier(column), a=sql.Identifier(alias))


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


# ---------------------------------------------------------------- writes (repair)

def missing_privileges(conn: psycopg.Connection, tables: dict[str, tuple[str, ...]], log_table: str,
                       log_privileges: tuple[str, ...] = ("INSERT",)) -> list[str]:
    """What the connected role lacks to write `tables` (table -> privileges) and to record each write in
    `log_table` (`log_privileges` on it and USAGE on its id sequence; CREATE on the schema while it does not
    exist yet), as "PRIVILEGE on name" phrases. Read-only: asks has_*_privilege, so nothing is attempted
    before it is allowed."""
    missing = []
    for table, privileges in tables.items():
        for privilege in privileges:
            if not conn.execute("SELECT has_table_privilege(quote_ident(%s), %s)", [table, privilege]).fetchone()[0]:
                missing.append(f"{privilege} on table {table}")
    if conn.execute("SELECT to_regclass(quote_ident(%s)) IS NOT NULL", [log_table]).fetchone()[0]:
        for privilege in log_privileges:
            if not conn.execute("SELECT has_table_privilege(quote_ident(%s), %s)", [log_table, privilege]).fetchone()[0]:
                missing.append(f"{privilege} on table {log_table}")
        seq = conn.execute("SELECT pg_get_serial_sequence(quote_ident(%s), 'id')", [log_table]).fetchone()[0]
        if seq and not conn.execute("SELECT has_sequence_privilege(%s, 'USAGE')", [seq]).fetchone()[0]:
            missing.append(f"USAGE on sequence {seq}")
    elif not conn.execute("SELECT has_schema_privilege(current_schema(), 'CREATE')").fetchone()[0]:
        schema = conn.execute("SELECT current_schema()").fetchone()[0]
        missing.append(f"CREATE on schema {schema} (to create {log_table}; or create it beforehand)")
    conn.rollback()
    return missing


def begin_serializable(conn: psycopg.Connection) -> None:
    """A read-write transaction in which a concurrent commit to what we read aborts our commit."""
    conn.rollback()
    conn.execute("BEGIN ISOLATION LEVEL SERIALIZABLE")


@dataclass(frozen=True)
class Lookup:
    """A foreign-key value written as the key of the row whose `ref.column` is `value` (a document ID)."""

    ref: Reference
    value: Any


def _param(value: Any, udt: str) -> tuple[sql.Composable, Any]:
    if isinstance(value, Lookup):
        r = value.ref
        return sql.SQL("(SELECT {} FROM {} WHERE {} = %s)").format(
            sql.Identifier(r.join), sql.Identifier(r.table), sql.Identifier(r.column)), str(value.value)
    return sql.Placeholder(), _adapt(value, udt)


def _where(key: dict[str, Any]) -> tuple[sql.Composable, list[Any]]:
    # str parameters are sent untyped, so Postgres reads them as the column's type and can use its index
    terms, params = [], []
    for c, v in key.items():
        fragment, param = _param(v if isinstance(v, Lookup) else str(v), "")
        terms.append(sql.SQL("{} = {}").format(sql.Identifier(c), fragment))
        params.append(param)
    return sql.SQL(" AND ").join(terms), params


def text_safe(value: str) -> str:
    """Postgres text cannot hold NUL characters (a Firestore ID or field name may): written as the text \\u0000,
    for people to read; such text is never a key to look a row up by."""
    return value.replace("\x00", "\\u0000")


def jsonb_safe(value: Any) -> Any:
    """jsonb cannot hold NUL characters: they are written as the text \\u0000 (audit trails and checkpoints are
    for people to read; the value itself is never written back)."""
    return map_strings(value, text_safe)


def _adapt(value: Any, udt: str) -> Any:
    return Jsonb(value) if udt in ("json", "jsonb") and value is not None else value


def _naming_timeouts(fn: Callable[..., T]) -> Callable[..., T]:
    """A write cancelled by one of our timeouts fails as a RuntimeFailure that names it; other errors stay as they
    are (the repair tells a serialization failure, a concurrent change, from a failed write)."""
    @functools.wraps(fn)
    def wrapper(conn: psycopg.Connection, *args: Any, **kwargs: Any) -> T:
        try:
            return fn(conn, *args, **kwargs)
        except psycopg.Error as exc:
            if timeout_fired(exc) is None:
                raise
            raise failure(conn, exc) from None
    return wrapper


@_naming_timeouts
def upsert_row(conn: psycopg.Connection, table: str, key: dict[str, Any], values: dict[str, Any],
               types: dict[str, str]) -> str:
    """UPDATE the row with these key values, or INSERT it when there is none (no unique constraint needed).
    On INSERT, NULL values are left out so that column defaults apply. Returns "update" or "insert"."""
    table_id = sql.Identifier(table)
    where, params = _where(key)
    if values:
        sets = [(c, *_param(v, types.get(c, ""))) for c, v in values.items()]
        cur = conn.execute(sql.SQL("UPDATE {} SET {} WHERE {}").format(
            table_id, sql.SQL(", ").join(sql.SQL("{} = {}").format(sql.Identifier(c), f) for c, f, _ in sets), where),
            [p for _, _, p in sets] + params)
    else:
        cur = conn.execute(sql.SQL("SELECT 1 FROM {} WHERE {}").format(table_id, where), params)
    if cur.rowcount:
        return "update"
    row = [(c, *_param(v, types.get(c, ""))) for c, v in {**{c: v for c, v in values.items() if v is not None},
                                                             **key}.items()]
    conn.execute(sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
        table_id, sql.SQL(", ").join(sql.Identifier(c) for c, _, _ in row), sql.SQL(", ").join(f for _, f, _ in row)),
        [p for _, _, p in row])
    return "insert"


@_naming_timeouts
def delete_rows(conn: psycopg.Connection, table: str, key: dict[str, Any]) -> int:
    where, params = _where(key)
    return conn.execute(sql.SQL("DELETE FROM {} WHERE {}").format(sql.Identifier(table), where), params).rowcount


@_naming_timeouts
def copy_rows(conn: psycopg.Connection, table: str, key: dict[str, Any]) -> list[Any]:
    """Every column of the matching rows, as JSON: the copy a report keeps of what was deleted."""
    where, params = _where(key)
    query = sql.SQL("SELECT to_jsonb(t) FROM {} AS t WHERE {}").format(sql.Identifier(table), where)
    return [r[0] for r in conn.execute(query, params)]


# ---------------------------------------------------------------- triage (explain)

def rows_of(conn: psycopg.Connection, schema: Schema, table: str, column: str, doc_id: str,
            order_by: str | None = None) -> list[dict[str, Any]]:
    """Every column of the rows whose `column` is this document ID, as the database returns them (newest
    `order_by` first when given). An ID that cannot be a value of the column's type matches nothing."""
    udt = schema[table][column]
    if not _castable((doc_id,), udt):
        return []
    order = (sql.SQL("t.{} DESC NULLS LAST").format(sql.Identifier(order_by)) if order_by
             else sql.SQL('t::text COLLATE "C"'))
    query = sql.SQL("SELECT * FROM {} AS t WHERE t.{} = %s::{} ORDER BY {}").format(
        sql.Identifier(table), sql.Identifier(column), sql.Identifier(udt), order)
    try:
        with conn.cursor() as cur:
            cur.execute(query, [doc_id])
            names = [d.name for d in cur.description or ()]
            return [dict(zip(names, row)) for row in cur]
    except psycopg.Error as exc:
        raise failure(conn, exc) from None
