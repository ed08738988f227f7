"""Field-level diff of canonical records: tolerances, NULL == absent, sets, maps, type changes."""

import copy
import datetime as dt

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.diff import diff_records, same
from reconciler.mapping import FirestoreMapper, PostgresMapper, shape_of
from reconciler.rules.loader import parse_entity
from reconciler.rules.model import CompareOptions
from reconciler.values import TRUE, Geo, PostgresOnly

RULES = """\
entity: things
source_of_truth: postgres
collection: things
table: things
key: id
compare: {number_tolerance: 0.001}
columns:
  id:
  price:
  age: {tolerance: 1}
  seen_at:
  seen_late_at: {tolerance: 2}
  payload:
  active:
geopoints:
  - {field: location.geo, latitude: lat, longitude: lon}
embed:
  - {table: tag_rows, join: thing_id, as: set, set_key: [kind, name], into: tags,
     columns: {kind: , name: , weight: }}
  - {table: src_rows, join: thing_id, as: map, map_key: source, into: sources, columns: {external_id: id}}
"""
R = parse_entity(RULES, "things.yaml")
SHAPE = shape_of(R.root)
CMP = R.compare
T0 = dt.datetime(2025, 1, 1, 12, 0, 0, 123456, tzinfo=dt.timezone.utc)


def paths(a, b, compare=CMP):
    return {f.path: (f.postgres, f.firestore) for f in diff_records(SHAPE, a, b, compare)}


def test_identical_records_have_no_diff():
    rec = {"id": "x", "price": 1.5, "tags": [{"kind": "a", "name": "b", "weight": 1}]}
    assert diff_records(SHAPE, rec, dict(rec), CMP) == ()


def test_numbers_within_tolerance_are_equal_and_beyond_are_not():
    assert paths({"price": 10.0}, {"price": 10.0005}) == {}
    assert paths({"price": 10}, {"price": 10.0}) == {}
    assert paths({"price": 8456.0}, {"price": 8465.0}) == {"price": (8456.0, 8465.0)}
    assert paths({"age": 7}, {"age": 8}) == {}
    assert paths({"age": 7}, {"age": 9}) == {"age": (7, 9)}


def test_a_boolean_never_equals_the_number_one():
    """Python says True == 1; the canonical records must not, or the == fast path would hide the drift."""
    pg = PostgresMapper(R.root, CMP).record(("x", "x", None, None, None, None, None, True, None, None))
    fs = FirestoreMapper(R.root, CMP).record({"id": "x", "active": 1})
    assert paths(pg, fs) == {"active": (TRUE, 1)}
    assert paths(pg, FirestoreMapper(R.root, CMP).record({"id": "x", "active": True})) == {}


def test_timestamps_compare_as_instants_with_declared_tolerance():
    other_tz = T0.astimezone(dt.timezone(dt.timedelta(hours=5)))
    assert paths({"seenAt": T0}, {"seenAt": other_tz}) == {}
    assert paths({"seenAt": T0}, {"seenAt": T0 + dt.timedelta(microseconds=1)}) != {}
    assert paths({"seenLateAt": T0}, {"seenLateAt": T0 + dt.timedelta(seconds=2)}) == {}


def test_geopoints_with_tolerance():
    assert paths({"location": {"geo": Geo(34.0522, -118.2437)}}, {"location": {"geo": Geo(34.0522001, -118.2437)}}) == {}
    assert paths({"location": {"geo": Geo(34.0522, -118.2437)}}, {"location": {"geo": Geo(35.0, -118.2437)}}) == {
        "location.geo": (Geo(34.0522, -118.2437), Geo(35.0, -118.2437))}


def test_null_and_absent_are_equal_by_default_but_not_when_the_rules_say_so():
    assert paths({"payload": {"a": 1, "b": None}}, {"payload": {"a": 1}}) == {}
    strict = CompareOptions(null_equals_absent=False, number_tolerance=0.001)
    assert paths({"payload": {"a": 1, "b": None}}, {"payload": {"a": 1}}, strict) == {"payload.b": (None, None)}


def test_json_maps_report_the_deep_path():
    assert paths({"payload": {"a": {"b": [1, 2, 3]}}}, {"payload": {"a": {"b": [1, 5, 3]}}}) == {"payload.a.b[1]": (2, 5)}


def test_sets_match_elements_by_key_whatever_the_order():
    a = [{"kind": "k", "name": "n1", "weight": 1}, {"kind": "k", "name": "n2", "weight": 2}]
    assert paths({"tags": a}, {"tags": list(reversed(a))}) == {}
    b = [{"kind": "k", "name": "n1", "weight": 1}, {"kind": "k", "name": "n2", "weight": 3}]
    assert paths({"tags": a}, {"tags": b}) == {"tags[k,n2].weight": (2, 3)}
    assert paths({"tags": a}, {"tags": a[:1]}) == {"tags[k,n2]": (a[1], None)}


def test_keyed_maps_report_the_key():
    assert paths({"sources": {"shopify": {"id": "1"}}}, {"sources": {"shopify": {"id": "2"}}}) == {
        "sources.shopify.id": ("1", "2")}
    assert paths({"sources": {"shopify": {"id": "1"}}}, {}) == {"sources.shopify": ({"id": "1"}, None)}


def test_a_value_of_the_wrong_kind_is_reported_not_crashed_on():
    fs = FirestoreMapper(R.root, CMP).record({"location": "nowhere", "tags": {"not": "a list"}, "price": "12"})
    assert paths({"location": {"geo": Geo(1.0, 2.0)}, "price": 12.0}, fs) == {
        "location": ({"geo": Geo(1.0, 2.0)}, "nowhere"), "tags": (None, {"not": "a list"}), "price": (12.0, "12")}


def test_patterns_generalise_data_dependent_parts():
    out = diff_records(SHAPE, {"sources": {"a": {"id": "1"}}, "tags": [{"kind": "k", "name": "n", "weight": 1}]},
                       {"sources": {"a": {"id": "2"}}, "tags": [{"kind": "k", "name": "n", "weight": 2}]}, CMP)
    assert sorted(f.pattern for f in out) == ["sources.*.id", "tags[].weight"]


# ---------------------------------------------------------------- NaN, huge integers, values Firestore cannot hold,
# and `same` (what repair asks before it writes)

NAN = float("nan")


def test_nan_equals_nan_on_both_sides_wherever_it_is():
    """numeric 'NaN' and float8 'NaN' load as float NaN, as Firestore's NaN does: equal, though NaN != NaN."""
    for a, b in (({"price": NAN}, {"price": float("nan")}),
                 ({"payload": {"a": [1, NAN]}}, {"payload": {"a": [1, float("nan")]}}),
                 ({"tags": [{"kind": "k", "name": "n", "weight": NAN}]},
                  {"tags": [{"kind": "k", "name": "n", "weight": float("nan")}]}),
                 ({"tags": [{"kind": "k", "name": "n", "weight": NAN}] * 2},
                  {"tags": [{"kind": "k", "name": "n", "weight": float("nan")}] * 2})):
        assert diff_records(SHAPE, a, b, CMP) == (), a
        assert same(SHAPE, a, b, CMP) and same(SHAPE, a, copy.deepcopy(a), CMP)
    assert not same(SHAPE, {"price": NAN}, {"price": 1.0}, CMP)
    assert not same(SHAPE, {"price": NAN}, {}, CMP)


def test_an_integer_beyond_double_range_is_compared_not_crashed_on():
    """jsonb keeps 1e400 as an exact integer; against a double, `a - b` would raise OverflowError."""
    for other in (1.0, float("inf"), 1e308):
        assert paths({"payload": {"big": 10**400}}, {"payload": {"big": other}}) == {
            "payload.big": (10**400, other)}
        assert paths({"price": 10**400}, {"price": other}) == {"price": (10**400, other)}
    assert paths({"payload": {"big": 10**400}}, {"payload": {"big": 10**400}}) == {}
    assert paths({"payload": {"big": 10**400}}, {"payload": {"big": 10**400 + 1}}) != {}


def test_a_value_firestore_cannot_hold_is_a_type_mismatch_whatever_firestore_has():
    inf = PostgresOnly("infinity", "timestamptz")
    for fs in ({"seenAt": T0}, {"seenAt": "infinity"}, {"seenAt": None}, {}):
        out = diff_records(SHAPE, {"seenAt": inf}, fs, CMP)
        assert [(d.path, d.kind) for d in out] == [("seenAt", "type_mismatch")], fs
    assert same(SHAPE, {"seenAt": inf}, {"seenAt": PostgresOnly("infinity", "timestamptz")}, CMP)
    assert not same(SHAPE, {"seenAt": inf}, {"seenAt": PostgresOnly("-infinity", "timestamptz")}, CMP)


def test_same_applies_the_rules_tolerances_null_equals_absent_and_sets():
    a = {"price": 10.0, "payload": {"x": None}, "tags": [{"kind": "a", "name": "1"}, {"kind": "b", "name": "2"}]}
    b = {"price": 10.0005, "payload": {}, "tags": [{"kind": "b", "name": "2"}, {"kind": "a", "name": "1"}]}
    assert same(SHAPE, a, b, CMP)
    assert not same(SHAPE, a, {**b, "price": 10.1}, CMP)
    assert same(SHAPE, None, None, CMP) and not same(SHAPE, a, None, CMP)


canonical_numbers = st.one_of(st.floats(), st.integers(-(10**30), 10**30), st.just(10**400))
json_like = st.recursive(st.one_of(canonical_numbers, st.text(max_size=3), st.none()),
                         lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                 st.dictionaries(st.text(min_size=1, max_size=3), inner, max_size=3)),
                         max_leaves=8)


@settings(max_examples=200, deadline=None)
@given(price=canonical_numbers, payload=st.dictionaries(st.text(min_size=1, max_size=3), json_like, max_size=3))
def test_a_record_is_the_same_as_its_copy_whatever_its_numbers(price, payload):
    record = {"id": "x", "price": price, "payload": payload} if payload else {"id": "x", "price": price}
    assert diff_records(SHAPE, record, copy.deepcopy(record), CMP) == ()
    assert same(SHAPE, record, copy.deepcopy(record), CMP)
