"""Canonical values are what the database says: for every Postgres type the rules can map, random values are
stored in a real PostgreSQL column (and in an array column of the type), read through our reader and mapping,
and compared with the server's own text of them (its output function, `concat(col)`), or with the documented
canonical form where that is not text: numbers as the nearest double, timestamps as instants (the server's
epoch), booleans, JSON as parsed. Values neither Python nor Firestore can hold are `values.PostgresOnly` with
the server's text. Then what repair would write to Firestore (`mapping.to_firestore`) is encoded by the
Firestore client: it must encode to that same value (a Timestamp for an instant, the text for an inet...),
and must be refused when Firestore cannot hold it."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import math
import uuid
from decimal import Decimal
from typing import Any

import pytest
from google.cloud.firestore_v1 import _helpers as fs_helpers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from reconciler.keys import Scope
from reconciler.mapping import PostgresMapper, shape_of, to_firestore
from reconciler.rules.loader import parse_entity
from reconciler.sources import postgres as pg_source
from reconciler.values import FALSE, TRUE, PostgresOnly

UTC = dt.timezone.utc
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)

# ------------------------------------------------------------------ value strategies: input text per type

_text_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")


def _two(n: int) -> str:
    return f"{n:02d}"


# days <= 28: valid in every year, BC years included (Postgres's 1 BC is a leap year, Python's year 1 is not)
_days = st.tuples(st.integers(1, 12), st.integers(1, 28))
_plain_date = st.dates(dt.date(1, 1, 1), dt.date(9999, 12, 31)).map(lambda d: d.isoformat())
_odd_date = st.one_of(
    st.sampled_from(["infinity", "-infinity"]),
    st.builds(lambda y, md: f"{y:04d}-{_two(md[0])}-{_two(md[1])} BC", st.integers(1, 4713), _days),
    st.builds(lambda y, md: f"{y}-{_two(md[0])}-{_two(md[1])}", st.integers(10000, 200000), _days),
)
_time = st.builds(lambda h, m, s, us: f"{_two(h)}:{_two(m)}:{_two(s)}.{us:06d}", st.integers(0, 23),
                  st.integers(0, 59), st.integers(0, 59), st.integers(0, 999999)) | st.just("24:00:00")
_offset = st.builds(lambda sign, h, m: f"{sign}{_two(h)}:{_two(m)}", st.sampled_from("+-"), st.integers(0, 14),
                    st.sampled_from([0, 30, 45]))


def _timestamp(zone: bool) -> st.SearchStrategy[str]:
    date = st.one_of(_plain_date, _odd_date.filter(lambda d: "infinity" not in d))
    stamp = st.builds(lambda d, t, z: (f"{d.removesuffix(' BC')} {t}{z}" + (" BC" if d.endswith(" BC") else "")),
                      date, _time.filter(lambda t: not t.startswith("24")), _offset if zone else st.just(""))
    return st.one_of(stamp, st.sampled_from(["infinity", "-infinity"]))


_ipv4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
_ipv6 = st.one_of(
    st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address),
    _ipv4.map(lambda a: ipaddress.IPv6Address(f"::ffff:{a}")),  # IPv4-mapped: what Node servers record
    _ipv4.map(lambda a: ipaddress.IPv6Address(f"::{a}")),  # IPv4-compatible (deprecated, still stored)
    st.integers(0, 2**16 - 1).map(lambda n: ipaddress.IPv6Address(n << 96)),  # one group, zeros around
)
_address = st.one_of(_ipv4, _ipv6)
_inet = st.one_of(_address.map(str), st.builds(lambda a, p: f"{a}/{p % (a.max_prefixlen + 1)}", _address,
                                               st.integers(0, 128)))
_cidr = st.builds(lambda a, p: str(ipaddress.ip_network(f"{a}/{p % (a.max_prefixlen + 1)}", strict=False)),
                  _address, st.integers(0, 128))


def _mac(n: int) -> st.SearchStrategy[str]:
    return st.builds(lambda b, sep: sep.join(f"{x:02x}" for x in b) if sep != "." else b.hex(),
                     st.binary(min_size=n, max_size=n), st.sampled_from([":", "-", "."]))


_interval = st.one_of(
    st.builds(lambda y, mo, d, h, mi, s, us: f"{y} years {mo} mons {d} days {h}:{_two(mi)}:{_two(s)}.{us:06d}",
              st.integers(-500, 500), st.integers(-30, 30), st.integers(-900, 900), st.integers(-200, 200),
              st.integers(0, 59), st.integers(0, 59), st.integers(0, 999999)),
    st.builds(lambda y, d, h: f"P{y}Y{d}DT{h}H", st.integers(0, 99), st.integers(0, 99), st.integers(0, 99)),
)
_numeric = st.one_of(
    st.builds(lambda sign, digits, exp: f"{sign}{digits}e{exp}", st.sampled_from(["", "-"]),
              st.integers(0, 10**40), st.integers(-420, 420)),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "0", "1e308", "2e308", "-1.7976931348623157e308"]),
)


def _float_text(f: float) -> str:
    return "NaN" if math.isnan(f) else ("Infinity" if f == math.inf else ("-Infinity" if f == -math.inf else repr(f)))


# JSON text with numbers of every size: beyond double range, beyond int64, tiny, ordinary
_json_number = st.one_of(st.integers(-(10**30), 10**30).map(str),
                         st.floats(allow_nan=False, allow_infinity=False).map(repr),
                         st.sampled_from(["1e400", "-1.5e309", "1e-400", "123456789012345678901234567890.5",
                                          "1" + "0" * 400 + ".5", "9223372036854775808", "0.1"]))
_json_text = st.recursive(
    st.one_of(_json_number, st.sampled_from(["true", "false", "null"]),
              st.text(_text_chars, max_size=6).map(lambda s: json.dumps(s))),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]"),
        st.dictionaries(st.text(_text_chars, max_size=4), inner, max_size=3).map(
            lambda d: "{" + ", ".join(f"{json.dumps(k)}: {v}" for k, v in d.items()) + "}")),
    max_leaves=8)

# SQL type -> (strategy of input text, kind of canonical form)
TYPES: dict[str, tuple[st.SearchStrategy[str], str]] = {
    "int2": (st.integers(-(2**15), 2**15 - 1).map(str), "int"),
    "int4": (st.integers(-(2**31), 2**31 - 1).map(str), "int"),
    "int8": (st.integers(-(2**63), 2**63 - 1).map(str), "int"),
    "numeric": (_numeric, "number"),
    "numeric(12,2)": (st.decimals(-(10**10) + 1, 10**10 - 1, places=2, allow_nan=False).map(str), "number"),
    "float4": (st.floats(width=32).map(_float_text), "float"),
    "float8": (st.floats().map(_float_text), "float"),
    "bool": (st.booleans().map(str), "bool"),
    "text": (st.text(_text_chars, max_size=20), "text"),
    "varchar(20)": (st.text(_text_chars, max_size=20), "text"),
    "char(5)": (st.text(_text_chars, max_size=5), "text"),
    "uuid": (st.uuids().map(lambda u: str(u).upper() if u.int % 2 else str(u)), "text"),
    "date": (st.one_of(_plain_date, _odd_date), "date"),
    "time": (_time, "text"),
    "timetz": (st.builds(lambda t, z: t + z, _time, _offset), "text"),
    "timestamp": (_timestamp(zone=False), "instant"),
    "timestamptz": (_timestamp(zone=True), "instant"),
    "interval": (_interval, "text"),
    "inet": (_inet, "text"),
    "cidr": (_cidr, "text"),
    "macaddr": (_mac(6), "text"),
    "macaddr8": (_mac(8), "text"),
    "money": (st.decimals(-(10**13), 10**13, places=2, allow_nan=False).map(str), "text"),
    "json": (_json_text, "json"),
    "jsonb": (_json_text, "json"),
    "bytea": (st.binary(max_size=16).map(lambda b: "\\x" + b.hex()), "bytes"),
}

# ------------------------------------------------------------------ the expected canonical form, from the server


def _number(text: str) -> Any:
    d = Decimal(text)
    f = float(d)
    return PostgresOnly(text, "numeric") if math.isinf(f) and d.is_finite() else f


def _python_holds(text: str) -> bool:
    """Whether a date/timestamp the server printed (ISO DateStyle, UTC) is within Python's years 1..9999."""
    return "infinity" not in text and not text.endswith(" BC") and text[4] == "-"


def _json(text: str) -> Any:
    """The reference JSON parse: integers exact, other numbers the nearest double, beyond double range the
    number's own text as a PostgresOnly."""
    def number(s: str) -> Any:
        f = float(s)
        return PostgresOnly(s, "numeric") if math.isinf(f) else f
    def bools(v: Any) -> Any:  # canonical booleans are values.Bool, in JSON too
        if isinstance(v, bool):
            return TRUE if v else FALSE
        if isinstance(v, dict):
            return {k: bools(x) for k, x in v.items()}
        return [bools(x) for x in v] if isinstance(v, list) else v
    return bools(json.loads(text, parse_float=number))


def expected(kind: str, sqltype: str, text: str | None, epoch: str | None) -> Any:
    if text is None:
        return None
    if kind == "int":
        return int(text)
    if kind == "number":
        return _number(text)
    if kind == "float":
        return float(text)
    if kind == "bool":
        return TRUE if text == "t" else FALSE
    if kind == "date":
        return text if _python_holds(text) else PostgresOnly(text, "date")
    if kind == "instant":
        if not _python_holds(text):
            return PostgresOnly(text, sqltype)
        return EPOCH + dt.timedelta(microseconds=int(Decimal(epoch) * 10**6))
    if kind == "json":
        return _json(text)
    if kind == "bytes":
        return bytes.fromhex(text[2:])
    return text


def _same(a: Any, b: Any) -> bool:
    """==, with NaN equal to NaN and the value's kind compared too (1 is not 1.0, a datetime is not its text)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b if not isinstance(a, dt.datetime) else isinstance(b, dt.datetime) and a == b


# ------------------------------------------------------------------ the database side

RULES = parse_entity("entity: v\nsource_of_truth: postgres\ncollection: v\ntable: vals\nkey: id\n"
                     "compare: {null_equals_absent: false}\ncolumns:\n  c:\n  arr:\n", "v.yaml")
DOC = RULES.root
SHAPE = shape_of(DOC)


@pytest.fixture(scope="module")
def server(pg_server):
    """One database for the module: (a connection for setting up and asking the server, the tool's own reading one)."""
    name = f"canon_{uuid.uuid4().hex[:12]}"
    dsn = pg_server.create_database(name)
    admin, reader = pg_source.connect(dsn), pg_source.connect(dsn)
    admin.autocommit = True
    yield admin, reader
    admin.close()
    reader.close()
    pg_server.drop_database(name)


def _read(conn, doc, table: str) -> dict[str, Any]:
    """The table's canonical records through the tool's reader and mapping, by key."""
    schema = pg_source.fetch_schema(conn, (table,))
    pg_source.begin_snapshot(conn)
    try:
        mapper = PostgresMapper(doc, RULES.compare)
        return {k[0]: mapper.record(*raw) for k, raw in pg_source.PostgresReader(conn, schema).stream(doc, Scope())}
    finally:
        conn.rollback()


def _roundtrip(server, sqltype: str, kind: str, values: list[str | None]) -> None:
    conn, reader = server
    conn.execute("DROP TABLE IF EXISTS vals")
    conn.execute(sql.SQL("CREATE TABLE vals (id text PRIMARY KEY, c {t}, arr {t}[])").format(t=sql.SQL(sqltype)))
    for i, v in enumerate(values):
        arr = [values[(i + j) % len(values)] for j in range(3)]
        conn.execute(sql.SQL("INSERT INTO vals VALUES (%s, %s::{t}, %s::text[]::{t}[])").format(t=sql.SQL(sqltype)),
                     [f"{i:03d}", v, arr])
    epoch = "NULL" if kind != "instant" else "extract(epoch FROM {e})::text"
    elem = ("ARRAY(SELECT CASE WHEN e IS NULL THEN NULL ELSE concat(e) END FROM unnest(arr) WITH ORDINALITY "
            "AS u(e, n) ORDER BY n)")
    elem_epoch = (f"ARRAY(SELECT {epoch.format(e='e')} FROM unnest(arr) WITH ORDINALITY AS u(e, n) ORDER BY n)"
                  if kind == "instant" else "NULL")
    server_text = {row[0]: row[1:] for row in conn.execute(
        f"SELECT id, CASE WHEN c IS NULL THEN NULL ELSE concat(c) END, {epoch.format(e='c')}, {elem}, {elem_epoch} "
        "FROM vals").fetchall()}

    records = _read(reader, DOC, "vals")

    base = sqltype.partition("(")[0]
    for key, (text, epoch_text, elems, elem_epochs) in server_text.items():
        record = records[key]
        want_c = expected(kind, base, text, epoch_text)
        want_arr = [expected(kind, base, t, e) for t, e in zip(elems, elem_epochs or [None] * len(elems))]
        assert _same(record["c"], want_c), (sqltype, text, record["c"], want_c)
        assert _same(record["arr"], want_arr), (sqltype, elems, record["arr"], want_arr)
        _check_firestore_encoding(kind, record, want_c, want_arr)


# ------------------------------------------------------------------ what repair would write to Firestore

def _has(value: Any, test) -> bool:
    if isinstance(value, dict):
        return any(_has(v, test) for v in value.values())
    if isinstance(value, list):
        return any(_has(v, test) for v in value)
    return test(value)


def _firestore_holds(value: Any) -> bool:
    return not _has(value, lambda v: isinstance(v, PostgresOnly)
                    or (isinstance(v, int) and not isinstance(v, bool) and not -(2**63) <= v < 2**63))


def _as_firestore_reads_it(value: Any) -> Any:
    """The value Firestore should hold, as its client decodes it (Bool as bool: the client's own type)."""
    if value is TRUE or value is FALSE:
        return value.value
    if isinstance(value, dict):
        return {k: _as_firestore_reads_it(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_firestore_reads_it(v) for v in value]
    return value


def _check_firestore_encoding(kind: str, record: dict, want_c: Any, want_arr: list) -> None:
    document = to_firestore(SHAPE, record)
    for name, want in (("c", want_c), ("arr", want_arr)):
        value = document[name]
        if not _firestore_holds(want):
            # no Firestore type can hold it: the client must refuse it (never an approximation of it)
            with pytest.raises((TypeError, ValueError)):
                fs_helpers.encode_value(value)
            continue
        decoded = fs_helpers.decode_value(fs_helpers.encode_value(value), None)
        assert _same(_plain_datetimes(decoded), _as_firestore_reads_it(want)), (name, value, decoded, want)
        if kind == "instant" and isinstance(want, dt.datetime):
            assert type(fs_helpers.encode_value(value)).pb(fs_helpers.encode_value(value)).WhichOneof(
                "value_type") == "timestamp_value"


def _plain_datetimes(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return dt.datetime.fromisoformat(value.isoformat())
    if isinstance(value, dict):
        return {k: _plain_datetimes(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_datetimes(v) for v in value]
    return value


PER_TYPE = settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.mark.parametrize("sqltype", list(TYPES))
def test_canonical_value_is_what_postgres_says_and_firestore_gets_it(server, sqltype):
    strategy, kind = TYPES[sqltype]

    @PER_TYPE
    @given(st.lists(st.one_of(st.none(), strategy), min_size=1, max_size=6))
    def check(values):
        _roundtrip(server, sqltype, kind, values)

    check()


@pytest.mark.parametrize("sqltype, text, want", [
    ("inet", "::ffff:173.252.84.1", "::ffff:173.252.84.1"),  # str(IPv6Address) says ::ffff:adfc:5401
    ("inet", "173.252.84.1/32", "173.252.84.1"),
    ("inet", "10.1.2.3/8", "10.1.2.3/8"),
    ("interval", "1 mon 2 days 03:04:05", "1 mon 2 days 03:04:05"),  # a timedelta has no months
    ("time", "24:00", "24:00:00"),  # datetime.time refuses it
    ("time", "12:00:00.5", "12:00:00.5"),  # time.isoformat() says 12:00:00.500000
    ("timetz", "12:00+02", "12:00:00+02"),  # time.isoformat() says 12:00:00+02:00
    ("timestamptz", "infinity", PostgresOnly("infinity", "timestamptz")),
    ("timestamp", "-infinity", PostgresOnly("-infinity", "timestamp")),
    ("date", "0044-03-15 BC", PostgresOnly("0044-03-15 BC", "date")),
    ("date", "10000-01-01", PostgresOnly("10000-01-01", "date")),
    ("numeric", "1e400", PostgresOnly("1" + "0" * 400, "numeric")),  # float() says inf
    ("numeric", "NaN", math.nan),
    ("json", '{"a": 1e400}', {"a": PostgresOnly("1e400", "numeric")}),  # json.loads says inf
    ("jsonb", '{"a": 10000000000000000000000000.5}', {"a": 1e25}),
    ("jsonb", '{"a": 1e400}', {"a": 10**400}),  # jsonb prints it whole: an exact integer
])
def test_known_cases(server, sqltype, text, want):
    """The cases that were wrong before: each named with what Python alone makes of it."""
    conn, reader = server
    conn.execute("DROP TABLE IF EXISTS one")
    conn.execute(sql.SQL("CREATE TABLE one (id text PRIMARY KEY, c {})").format(sql.SQL(sqltype)))
    conn.execute(sql.SQL("INSERT INTO one VALUES ('k', %s::{})").format(sql.SQL(sqltype)), [text])
    rules = parse_entity("entity: one\nsource_of_truth: postgres\ncollection: one\ntable: one\nkey: id\n"
                         "columns:\n  c:\n", "one.yaml")
    got = _read(reader, rules.root, "one")["k"]["c"]
    assert _same(got, want), (got, want)


STRING_RULES = parse_entity("entity: v\nsource_of_truth: postgres\ncollection: v\ntable: vals\nkey: id\n"
                            "columns:\n  c: {type: string}\n  arr: {type: string}\n", "v.yaml")


@pytest.mark.parametrize("sqltype", ["numeric(12,2)", "float8", "bool", "inet", "timestamptz", "date", "interval",
                                     "jsonb", "bytea", "uuid", "money"])
def test_type_string_is_the_text_postgres_prints(server, sqltype):
    """`type: string` compares a column as text: Postgres's text of it (12.50, not Python's 12.5; t; the inet
    without its /32; the timestamptz as the server prints it), arrays as Postgres's array literal."""
    conn, reader = server
    strategy, _ = TYPES[sqltype]

    @PER_TYPE
    @given(st.lists(st.one_of(st.none(), strategy), min_size=1, max_size=4))
    def check(values):
        conn.execute("DROP TABLE IF EXISTS vals")
        conn.execute(sql.SQL("CREATE TABLE vals (id text PRIMARY KEY, c {t}, arr {t}[])").format(t=sql.SQL(sqltype)))
        for i, v in enumerate(values):
            conn.execute(sql.SQL("INSERT INTO vals VALUES (%s, %s::{t}, %s::text[]::{t}[])").format(
                t=sql.SQL(sqltype)), [f"{i:03d}", v, values])
        want = {r[0]: (r[1], r[2]) for r in conn.execute(
            "SELECT id, CASE WHEN c IS NULL THEN NULL ELSE concat(c) END, concat(arr) FROM vals")}
        got = _read(reader, STRING_RULES.root, "vals")
        for key, (c, arr) in want.items():
            assert got[key].get("c") == c and got[key].get("arr") == arr, (got[key], c, arr)

    check()
