"""Properties of the mapping: a canonical customer mapped to either side's shape and back is unchanged,
and the diff of identical data is empty."""

import datetime as dt
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.diff import diff_records
from reconciler.mapping import (Branch, canon, FirestoreMapper, KeyedMap, Leaf, PostgresMapper, set_sort_key,
                                shape_of, to_firestore, to_postgres)
from reconciler.rules import load_entity
from reconciler.values import Geo

RULES = load_entity(Path(__file__).parents[1] / "rules", "customers")

json_scalars = st.one_of(st.integers(-10**12, 10**12), st.floats(allow_nan=False, allow_infinity=False),
                         st.text(max_size=8), st.booleans())
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(min_size=1, max_size=5), inner, min_size=1, max_size=3)),
    max_leaves=6)
timestamps = st.datetimes(min_value=dt.datetime(1970, 1, 1), max_value=dt.datetime(2100, 1, 1),
                          timezones=st.just(dt.timezone.utc))
scalars = st.one_of(st.integers(-10**12, 10**12), st.floats(allow_nan=False, allow_infinity=False),
                    st.text(max_size=12), st.booleans(), timestamps, st.lists(st.text(max_size=5), max_size=3),
                    st.dictionaries(st.text(min_size=1, max_size=5), json_values, min_size=1, max_size=3))
geos = st.builds(Geo, st.floats(-90, 90), st.floats(-180, 180))


def records(node: Any, required: tuple[str, ...] = ()) -> st.SearchStrategy[Any]:
    """Canonical values of a shape: absent fields left out, maps never empty, sets sorted by their key."""
    if isinstance(node, Leaf):
        return geos if node.geo else scalars.map(canon)  # canonical scalars: bools as values.Bool
    if isinstance(node, Branch):
        names = sorted(node.children)
        return st.fixed_dictionaries(
            {n: records(node.children[n]) for n in names if n in required},
            optional={n: records(node.children[n]) for n in names if n not in required},
        ).filter(bool)
    if isinstance(node, KeyedMap):
        return st.dictionaries(st.text(min_size=1, max_size=6), records(node.element), min_size=1, max_size=3)
    keys = node.key_fields
    elements = st.lists(records(node.element, required=keys), min_size=1, max_size=3,
                        unique_by=lambda e: set_sort_key(e, keys))
    return elements.map(lambda es: sorted(es, key=lambda e: set_sort_key(e, keys)))


def draw_record(data, doc) -> dict:
    """A canonical record of `doc`; a mapped key column holds the document ID, as in real data."""
    record = data.draw(records(shape_of(doc)), label=doc.collection)
    key_column = next((c for c in doc.columns if c.name == doc.key), None)
    if key_column is not None:
        record[key_column.path[0]] = "k"
    return record


def _rows_to_raw(doc, key: str, rows: dict[str, list[dict]]):
    """to_postgres()'s rows, laid out as the Postgres reader delivers them."""
    root = (key, *(rows[doc.table][0].get(c) for c in doc.select_columns))
    embedded = tuple([(key, *(r.get(c) for c in e.select_columns)) for r in rows.get(e.table, [])] for e in doc.embeds)
    return root, embedded


FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.data())
def test_canonical_to_postgres_rows_and_back_is_identity(data):
    for doc in RULES.documents:
        record = draw_record(data, doc)
        rows = to_postgres(doc, "k", record)
        assert PostgresMapper(doc, RULES.compare).record(*_rows_to_raw(doc, "k", rows)) == record


@FAST
@given(st.data())
def test_canonical_to_firestore_document_and_back_is_identity(data):
    for doc in RULES.documents:
        shape = shape_of(doc)
        record = draw_record(data, doc)
        document = to_firestore(shape, record)
        assert FirestoreMapper(doc, RULES.compare).record(document) == record


@FAST
@given(st.data())
def test_diff_of_identical_data_is_empty(data):
    for doc in RULES.documents:
        shape = shape_of(doc)
        record = draw_record(data, doc)
        pg = PostgresMapper(doc, RULES.compare).record(*_rows_to_raw(doc, "k", to_postgres(doc, "k", record)))
        fs = FirestoreMapper(doc, RULES.compare).record(to_firestore(shape, record))
        assert diff_records(shape, pg, fs, RULES.compare) == ()
