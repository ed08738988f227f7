"""Rules files fuzzed with hypothesis: any text, any bytes (a file need not be UTF-8), and any structure near the
valid grammar, either loads or gives a RulesError that names the file and a line. Never another exception (a
traceback for the user)."""

from __future__ import annotations

import copy
import io
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from reconciler.errors import RulesError
from reconciler.rules.loader import parse_entity

FILE = "fuzzed.yaml"

VALID: dict[str, Any] = {
    "entity": "things",
    "description": "a thing",
    "source_of_truth": "postgres",
    "naming": "camelCase",
    "compare": {"null_equals_absent": True, "number_tolerance": 0.001},
    "collection": "things",
    "table": "things",
    "key": "id",
    "columns": {"id": None, "name": "display.name", "price": {"tolerance": 0.01, "type": "number"},
                "updated_at": {"ignore": True}},
    "geopoints": [{"field": "where", "latitude": "lat", "longitude": "lon"}],
    "embed": [
        {"table": "thing_stats", "join": "thing_id", "as": "one", "into": "stats", "columns": {"views": None}},
        {"table": "thing_tags", "join": "thing_id", "as": "set", "set_key": ["tag"], "into": "tags",
         "columns": {"tag": None, "weight": None}},
        {"table": "thing_src", "join": "thing_id", "as": "map", "map_key": "source", "into": "sources",
         "columns": {"external_id": "id"}},
        {"table": "thing_risk", "join": "thing_id", "as": "latest", "order_by": "at", "into": "risk",
         "columns": {"score": None}},
    ],
    "subcollections": [{"collection": "parts", "table": "thing_parts", "key": "id", "parent": "thing_id",
                        "columns": {"label": None}}],
}

# The vocabulary of the grammar, so that mutations often land on almost-valid files.
WORDS = ["entity", "table", "key", "columns", "embed", "as", "one", "set", "map", "latest", "into", "join",
         "set_key", "map_key", "order_by", "field", "ignore", "tolerance", "type", "number", "timestamp", "postgres",
         "firestore", "subcollections", "collection", "parent", "geopoints", "latitude", "longitude", "compare",
         "null_equals_absent", "number_tolerance", "naming", "identity", "a.b", ".", "a..b", "", " ", "\x00", "🙂"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**20), st.floats(allow_nan=True),
                    st.sampled_from(WORDS), st.text(max_size=8))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.sampled_from(WORDS), st.text(max_size=5)), inner,
                                                 max_size=4)), max_leaves=12)


def _check(text: str | bytes) -> None:
    try:
        parse_entity(text, FILE)
    except RulesError as exc:
        assert exc.file == FILE and exc.line is not None and exc.line >= 1, (str(exc), text)
        assert str(exc).startswith(f"{FILE}:{exc.line}: ")


def _dump(data: Any) -> str:
    out = io.StringIO()
    YAML(typ="rt").dump(data, out)
    return out.getvalue()


def test_the_valid_base_loads():
    rules = parse_entity(_dump(VALID), FILE)
    assert [d.collection for d in rules.documents] == ["things", "parts"]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300))
def test_any_text(text):
    _check(text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_any_bytes(data):
    _check(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_a_valid_file_with_bytes_spliced_in(data):
    """Mostly valid UTF-8 around a few stray bytes: lone continuation bytes, truncated sequences, overlongs."""
    base = _dump(VALID).encode()
    at = data.draw(st.integers(0, len(base)))
    junk = data.draw(st.one_of(st.binary(min_size=1, max_size=4),
                               st.sampled_from([b"\x80", b"\xc3", b"\xe2\x82", b"\xc0\xaf", b"\xed\xa0\x80", b"\xff",
                                                b"\xef\xbb\xbf", b"\x00"])))
    _check(base[:at] + junk + base[at:])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(WORDS + [":", "- ", "\n", "  ", "{", "}", "[", "]", ",", "&a ", "*a", "!!int ",
                                         "? ", "|", ">", "#", "'", '"', "%YAML 1.2\n---\n"]), max_size=60))
def test_yaml_like_token_soup(tokens):
    _check("".join(tokens))


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, prefix + (i,))
    return out


PATHS = _paths(VALID)[1:]


@st.composite
def mutated(draw) -> dict[str, Any]:
    """The valid base with a few subtrees replaced, removed or given an extra key."""
    data = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS))
        parent = data
        try:
            for part in path[:-1]:
                parent = parent[part]
            action = draw(st.sampled_from(["replace", "delete", "add"]))
            if action == "replace":
                parent[path[-1]] = draw(values)
            elif action == "delete":
                del parent[path[-1]]
            elif isinstance(parent[path[-1]], dict):
                parent[path[-1]][draw(st.sampled_from(WORDS))] = draw(values)
            elif isinstance(parent[path[-1]], list):
                parent[path[-1]].append(draw(values))
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or reshaped this path
    return data


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_structures_near_the_grammar(data):
    _check(_dump(data))


SWAPS = [None, 0, -1, 1.5, float("nan"), True, "", "x", "a..b", [], {}, [1], [[]], {"x": 1}, {"as": "set"}]


def test_every_place_of_the_grammar_with_a_value_of_every_kind():
    """Exhaustive where hypothesis is a lottery: each path of the valid file, deleted or given each odd value."""
    for path in PATHS:
        for swap in ["<delete>", *SWAPS]:
            data = copy.deepcopy(VALID)
            parent = data
            for part in path[:-1]:
                parent = parent[part]
            if swap == "<delete>":
                del parent[path[-1]]
            else:
                parent[path[-1]] = copy.deepcopy(swap)
            _check(_dump(data))
