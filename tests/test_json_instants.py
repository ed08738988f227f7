"""`json: {timestamps: iso}`: inside a JSON column, ISO-8601 text with a zone and a Firestore Timestamp are the same
instant (seed 000: demographics.sources.clearbit.enrichedAt is a Timestamp in the document, the Date's ISO text in
the jsonb). Both ways back keep each side's type: Postgres gets text (the text it had, else ISO-8601 UTC), Firestore
a Timestamp. Real Postgres for the round trips, the real emulator for the seed-shaped audit."""

from __future__ import annotations

import datetime as dt
import json

import psycopg
import pytest
from google.cloud.firestore_v1 import _helpers as fs_helpers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

from reconciler import engine
from reconciler.diff import diff_records, same
from reconciler.errors import RulesError
from reconciler.keys import Scope
from reconciler.mapping import FirestoreMapper, PostgresMapper, shape_of, to_firestore, to_postgres
from reconciler.rules.loader import parse_entity
from reconciler.rules.schema_check import check_against_schema
from reconciler.sources import postgres as pg_source
from reconciler.values import TextInstant

UTC = dt.timezone.utc
RULES_TEXT = """\
entity: things
source_of_truth: postgres
collection: things
table: things
key: id
columns:
  id:
  sources: {json: {timestamps: iso}}
  plain_json:
"""
RULES = parse_entity(RULES_TEXT, "things.yaml")
DOC, SHAPE, CMP = RULES.root, shape_of(RULES.root), RULES.compare
T = dt.datetime(2024, 3, 1, 12, 30, 5, 123000, tzinfo=UTC)


def _pg(sources, plain=None) -> dict:
    return PostgresMapper(DOC, CMP).record(("k", "k", sources, plain))


def _fs(sources, plain=None) -> dict:
    return FirestoreMapper(DOC, CMP).record({"id": "k", "sources": sources, **({"plainJson": plain} if plain else {})})


def _kinds(pg, fs) -> dict[str, str]:
    return {d.path: d.kind for d in diff_records(SHAPE, pg, fs, CMP)}


def test_iso_text_with_a_zone_equals_the_timestamp_of_that_instant():
    for text in ("2024-03-01T12:30:05.123Z", "2024-03-01T14:30:05.123+02:00", "2024-03-01 12:30:05.123+00",
                 "2024-03-01T12:30:05.123000z", "2024-03-01T07:30:05,123-0500"):
        pg, fs = _pg({"clearbit": {"enrichedAt": text, "data": {}}}), _fs({"clearbit": {"enrichedAt": T, "data": {}}})
        assert _kinds(pg, fs) == {}, text
        assert same(SHAPE, pg, fs, CMP)
    # both sides holding the text: the same instant too
    assert _kinds(_pg({"a": "2024-03-01T12:30:05.123Z"}), _fs({"a": "2024-03-01T13:30:05.123+01:00"})) == {}


def test_text_that_is_no_instant_stays_text():
    for text in ("2024-03-01", "2024-03-01T12:30:05", "12:30:05Z", "2024-03-01T24:00:00Z", "2024-13-01T00:00:00Z",
                 "yesterday"):
        pg, fs = _pg({"clearbit": {"enrichedAt": text}}), _fs({"clearbit": {"enrichedAt": T}})
        assert _kinds(pg, fs) == {"sources.clearbit.enrichedAt": "type_mismatch"}, text


def test_another_instant_is_a_value_difference_and_the_option_is_per_column():
    later = "2024-03-01T12:30:06.123Z"
    assert _kinds(_pg({"a": later}), _fs({"a": T})) == {"sources.a": "value"}
    # without the option, text and a Timestamp are of different kinds, as before
    assert _kinds(_pg(None, {"a": "2024-03-01T12:30:05.123Z"}), _fs(None, {"a": T})) == {"plainJson.a": "type_mismatch"}


def test_the_way_back_keeps_each_sides_type():
    text = "2024-03-01T14:30:05.123+02:00"
    pg = _pg({"clearbit": {"enrichedAt": text, "at": [text]}})
    # toward Firestore: a Timestamp (a plain datetime the client encodes as one)
    value = to_firestore(SHAPE, pg)["sources"]["clearbit"]["enrichedAt"]
    assert type(value) is dt.datetime and value == T
    encoded = fs_helpers.encode_value(value)
    assert type(encoded).pb(encoded).WhichOneof("value_type") == "timestamp_value"
    # toward Postgres: the text it was read from, unchanged
    row = to_postgres(DOC, "k", pg)["things"][0]
    assert row["sources"] == {"clearbit": {"enrichedAt": text, "at": [text]}}
    # a Timestamp from Firestore: ISO-8601 UTC, microseconds when it has them
    row = to_postgres(DOC, "k", _fs({"a": T, "b": T.replace(microsecond=0), "c": [T]}))["things"][0]
    assert row["sources"] == {"a": "2024-03-01T12:30:05.123000Z", "b": "2024-03-01T12:30:05Z",
                              "c": ["2024-03-01T12:30:05.123000Z"]}
    assert isinstance(pg["sources"]["clearbit"]["enrichedAt"], TextInstant)


def test_rules_errors_name_the_file_and_line():
    for bad, message in (("{json: {timestamps: isoo}}", "json.timestamps must be one of iso"),
                         ("{json: {zone: utc}}", "unknown key 'zone'"),
                         ("{json: iso}", "json must be a mapping"),
                         ("{json: {timestamps: iso}, type: number}", "applies to JSON values")):
        with pytest.raises(RulesError) as err:
            parse_entity(RULES_TEXT.replace("{json: {timestamps: iso}}", bad), "things.yaml")
        assert str(err.value).startswith("things.yaml:8: ") and message in str(err.value), str(err.value)
    errors = check_against_schema(RULES, {"things": {"id": "text", "sources": "text", "plain_json": "jsonb"}})
    assert [str(e) for e in errors] == [
        "things.yaml:8: columns: things.sources is text, not json or jsonb: `json:` does not apply"]


# ---------------------------------------------------------------- round trips through a real jsonb column

instants = st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30),
                        timezones=st.sampled_from([UTC, dt.timezone(dt.timedelta(hours=5, minutes=30)),
                                                   dt.timezone(dt.timedelta(hours=-8))]))


@pytest.fixture
def things(pg_dsn):
    conn = pg_source.connect(pg_dsn)
    conn.execute("CREATE TABLE things (id text PRIMARY KEY, sources jsonb, plain_json jsonb)")
    conn.commit()
    yield conn, pg_source.fetch_schema(conn, ("things",))
    conn.close()


def _write_and_read(conn, schema, record: dict) -> dict:
    """The record's row written as repair writes it (upsert_row), then read back through the reader."""
    row = to_postgres(DOC, "k", record)["things"][0]
    pg_source.upsert_row(conn, "things", {"id": "k"}, {c: v for c, v in row.items() if c != "id"}, schema["things"])
    conn.commit()
    return _read(conn, schema)


def _read(conn, schema) -> dict:
    """The one row of `things`, read and mapped as the sweep does."""
    pg_source.begin_snapshot(conn)
    try:
        (key, raw), = pg_source.PostgresReader(conn, schema).stream(DOC, Scope())
    finally:
        conn.rollback()
    return PostgresMapper(DOC, CMP).record(*raw)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(when=instants, nested=st.booleans())
def test_a_firestore_timestamp_written_to_jsonb_reads_back_as_exactly_that_instant(things, when, nested):
    conn, schema = things
    fs = _fs({"x": {"at": when}} if nested else {"at": [when, "not a time"]})
    back = _write_and_read(conn, schema, fs)
    assert back == fs and diff_records(SHAPE, back, fs, CMP) == ()
    at = back["sources"]["x"]["at"] if nested else back["sources"]["at"][0]
    assert at.text.endswith("Z") and dt.datetime.fromisoformat(at.text) == when


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(when=instants, style=st.sampled_from(["js", "offset", "space"]))
def test_text_read_from_jsonb_is_written_back_unchanged(things, when, style):
    conn, schema = things
    text = {"js": when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "offset": when.isoformat(), "space": when.isoformat(sep=" ")}[style]
    conn.execute("INSERT INTO things VALUES ('k', %s, NULL) ON CONFLICT (id) DO UPDATE SET sources = excluded.sources",
                 [Jsonb({"at": text})])
    conn.commit()
    record = _read(conn, schema)
    assert record["sources"]["at"] == (when.replace(microsecond=when.microsecond // 1000 * 1000) if style == "js"
                                       else when)
    back = _write_and_read(conn, schema, record)
    assert back["sources"]["at"].text == text
    assert conn.execute("SELECT sources->>'at' FROM things").fetchone()[0] == text


# ---------------------------------------------------------------- seed 000: the demo data and the shipped rules

def test_seed_shaped_customers_with_timestamps_inside_jsonb_audit_clean(customers_loaded, fs_client):
    settings, people = customers_loaded
    # the demo writes what the seed's app writes: a Timestamp in the document, the Date's ISO text in the jsonb
    with_sources = [p for p in people if p.document.get("demographics", {}).get("sources")]
    assert with_sources
    p = with_sources[0]
    stored = fs_client.collection("customers").document(p.id).get().to_dict()["demographics"]["sources"]
    source, value = next(iter(stored.items()))
    assert isinstance(value["enrichedAt"], dt.datetime)
    with psycopg.connect(settings.postgres.dsn) as conn:
        text = conn.execute("SELECT demographic_sources::text FROM customer_demographics WHERE customer_id = %s",
                            [p.id]).fetchone()[0]
    assert isinstance(json.loads(text)[source]["enrichedAt"], str)

    (e,) = engine.run_audit(settings, ["customers"]).entities
    assert e.error is None, e.error
    assert e.findings == () and e.counts.drifted == 0, [f.fields for f in e.findings][:3]
