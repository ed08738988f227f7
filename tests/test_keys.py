"""The one key order (Firestore's) and the merge-join."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.errors import KeyOrderError
from reconciler.keys import Scope, id_sort_key, merge_join, sort_key

# What the real emulator returned for `order_by("__name__")` over these IDs (probed on this machine).
FIRESTORE_ORDER = ["__id-3__", "__id5__", "__id10__", "__id9223372036854775807__", "0", "B", "Z", "_", "a", "a b",
                   "aa", "é", "😀"]


def test_sort_key_reproduces_firestore_order():
    shuffled = sorted(FIRESTORE_ORDER, key=lambda s: hash(s))
    assert sorted(shuffled, key=id_sort_key) == FIRESTORE_ORDER


@given(st.lists(st.text(min_size=1), unique=True))
def test_string_ids_sort_by_utf8_bytes(ids):
    ids = [i for i in ids if not i.startswith("__id")]
    assert sorted(ids, key=id_sort_key) == sorted(ids, key=lambda s: s.encode("utf-8", "surrogatepass"))


def test_subcollection_keys_sort_parent_first():
    keys = [("b", "a"), ("a", "z"), ("__id2__", "x"), ("a", "B")]
    assert sorted(keys, key=sort_key) == [("__id2__", "x"), ("a", "B"), ("a", "z"), ("b", "a")]


def test_merge_join_full_outer():
    left = [(("a",), 1), (("b",), 2), (("d",), 4)]
    right = [(("b",), "B"), (("c",), "C"), (("d",), "D"), (("e",), "E")]
    assert list(merge_join(left, right, entity="t")) == [
        (("a",), 1, None), (("b",), 2, "B"), (("c",), None, "C"), (("d",), 4, "D"), (("e",), None, "E")]


@pytest.mark.parametrize("side", ["postgres", "firestore"])
def test_out_of_order_key_stops_the_run(side):
    bad = [(("a",), 1), (("c",), 1), (("b",), 1)]
    good = [(("a",), 1), (("b",), 1), (("c",), 1)]
    left, right = (bad, good) if side == "postgres" else (good, bad)
    with pytest.raises(KeyOrderError) as exc:
        list(merge_join(left, right, entity="customers"))
    assert exc.value.side == side and exc.value.current == ("b",)
    assert "customers" in str(exc.value) and side in str(exc.value)


def test_duplicate_key_is_out_of_order():
    with pytest.raises(KeyOrderError):
        list(merge_join([(("a",), 1), (("a",), 2)], [], entity="t"))


@given(st.sets(st.text(min_size=1, max_size=5)), st.sets(st.text(min_size=1, max_size=5)))
def test_merge_join_sees_every_key_once(a, b):
    left = [((k,), k) for k in sorted(a, key=id_sort_key)]
    right = [((k,), k) for k in sorted(b, key=id_sort_key)]
    out = list(merge_join(left, right, entity="t"))
    assert [k[0] for k, _, _ in out] == sorted(a | b, key=id_sort_key)
    assert all((x is not None) == (k[0] in a) and (y is not None) == (k[0] in b) for k, x, y in out)


def test_scope_upper_bound_uses_firestore_order():
    scope = Scope(upper="__id10__")
    assert not scope.past_upper("__id9__") and scope.past_upper("a") and scope.past_upper("__id11__")
