"""Compare two canonical records of one document kind.

Equal records take the fast path (`==` on the canonical dicts, which mapping makes exact for records
that mean the same thing). Only records already known to differ get the field-level walk below, which
applies the rules' tolerances, NULL == absent, and set semantics, and names every differing path.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from reconciler.mapping import Branch, KeyedMap, KeyedSet, Leaf, Node, set_sort_key
from reconciler.result import FieldDiff
from reconciler.rules.model import CompareOptions
from reconciler.values import Geo, PostgresOnly, type_name


def diff_records(shape: Branch, postgres: dict[str, Any] | None, firestore: dict[str, Any] | None,
                 compare: CompareOptions) -> tuple[FieldDiff, ...]:
    """Every differing field path with both values; () when the records are equal under the rules."""
    if postgres == firestore:
        return ()
    out: list[FieldDiff] = []
    _Walker(compare, out).node(shape, postgres, firestore, "", "")
    return tuple(out)


def same(node: Node, a: Any, b: Any, compare: CompareOptions) -> bool:
    """Whether two canonical values of one part of a shape (whole records: the document's shape) are equal under
    the rules: tolerances, NULL == absent, sets as sets, NaN == NaN, instants as instants. What repair asks of the
    source of truth re-read before it writes (`==` would call a record holding NaN changed)."""
    return not node_differs(node, a, b, compare)


def node_differs(node: Node, postgres: Any, firestore: Any, compare: CompareOptions) -> bool:
    """Whether two values of one part of the shape differ under the rules (repair asks this per subtree)."""
    if postgres == firestore:
        return False
    out: list[FieldDiff] = []
    _Walker(compare, out).node(node, postgres, firestore, "", "")
    return bool(out)


def _join(base: str, name: str) -> str:
    return f"{base}.{name}" if base else name


def _differs(a: Any, b: Any) -> bool:
    """Unequal, or equal only across types (8456 == 8456.0): worth a closer look. Absent reads as None."""
    return a != b or type(a) is not type(b)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _numbers_equal(a: int | float, b: int | float, tolerance: float) -> bool:
    if a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)):
        return True
    try:
        return abs(a - b) <= tolerance
    except OverflowError:  # an integer beyond double range (exact, from jsonb) against a double: not equal
        return False


class _Walker:
    def __init__(self, compare: CompareOptions, out: list[FieldDiff]) -> None:
        self.compare = compare
        self.out = out

    def report(self, path: str, pattern: str, a: Any, b: Any, expected: str | None = None) -> None:
        """`expected`: the kind of value the rules' shape wants here (map, array), when it wants one."""
        kinds = {type_name(a), type_name(b)} - {None}
        # a value Firestore cannot hold differs in kind from whatever it has there, also from nothing
        mismatch = (len(kinds) > 1 or (expected is not None and bool(kinds - {expected}))
                    or isinstance(a, PostgresOnly) or isinstance(b, PostgresOnly))
        self.out.append(FieldDiff(path=path, postgres=a, firestore=b, pattern=pattern,
                                  kind="type_mismatch" if mismatch else "value"))

    def node(self, node: Node, a: Any, b: Any, path: str, pattern: str) -> None:
        if isinstance(node, Leaf):
            self.value(a, b, path, pattern, node.tolerance, "geopoint" if node.geo else None)
        elif isinstance(node, Branch) and isinstance(a, dict | None) and isinstance(b, dict | None):
            a, b = a or {}, b or {}
            for name, child in node.children.items():
                if (name in a or name in b) and _differs(a.get(name), b.get(name)):
                    self.node(child, a.get(name), b.get(name), _join(path, name), _join(pattern, name))
        elif isinstance(node, KeyedMap) and isinstance(a, dict | None) and isinstance(b, dict | None):
            a, b = a or {}, b or {}
            for key in sorted(a.keys() | b.keys()):
                if key in a and key in b:
                    self.node(node.element, a[key], b[key], _join(path, key), _join(pattern, "*"))
                else:  # an element only one side has is one finding, not one per field
                    self.report(_join(path, key), _join(pattern, "*"), a.get(key), b.get(key))
        elif isinstance(node, KeyedSet) and isinstance(a, list | None) and isinstance(b, list | None):
            self.keyed_set(node, a or [], b or [], path, pattern)
        else:  # a value of another kind than the rules expect on one side
            self.report(path, pattern, a, b, "array" if isinstance(node, KeyedSet) else "map")

    def keyed_set(self, node: KeyedSet, a: list[Any], b: list[Any], path: str, pattern: str) -> None:
        def index(items: list[Any]) -> dict[tuple[str, ...], list[Any]]:
            out: dict[tuple[str, ...], list[Any]] = {}
            for item in items:
                out.setdefault(set_sort_key(item, node.key_fields), []).append(item)
            return out

        ia, ib = index(a), index(b)
        for key in sorted(ia.keys() | ib.keys()):
            ea, eb = ia.get(key, []), ib.get(key, [])
            label = ",".join(_plain(k) for k in key)
            epath, epattern = f"{path}[{label}]", f"{pattern}[]"
            if len(ea) == 1 and len(eb) == 1:
                if ea[0] != eb[0]:
                    self.node(node.element, ea[0], eb[0], epath, epattern)
            elif len(ea) > 1 or len(eb) > 1:  # duplicate keys: compare as a multiset, report whole
                if sorted(map(repr, ea)) != sorted(map(repr, eb)):
                    self.report(epath, epattern, ea, eb)
            else:
                self.report(epath, epattern, ea[0] if ea else None, eb[0] if eb else None)

    def value(self, a: Any, b: Any, path: str, pattern: str, tolerance: float | None,
              expected: str | None = None) -> None:
        """Free-form values (scalars, or JSON maps/lists below a mapped field)."""
        if a is None and b is None:
            return
        if _is_number(a) and _is_number(b):
            if _numbers_equal(a, b, self.compare.number_tolerance if tolerance is None else tolerance):
                return
        elif isinstance(a, dt.datetime) and isinstance(b, dt.datetime):
            if abs((a - b).total_seconds()) <= (tolerance or 0):
                return
        elif isinstance(a, Geo) and isinstance(b, Geo):
            tol = self.compare.number_tolerance if tolerance is None else tolerance
            if abs(a.latitude - b.latitude) <= tol and abs(a.longitude - b.longitude) <= tol:
                return
        elif isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(a.keys() | b.keys(), key=str):
                va, vb = a.get(key), b.get(key)
                if (key in a) != (key in b) and not self.compare.null_equals_absent:
                    self.report(_join(path, key), _join(pattern, key), va, vb)
                elif _differs(va, vb):
                    self.value(va, vb, _join(path, key), _join(pattern, key), tolerance)
            return
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (va, vb) in enumerate(zip(a, b)):
                if _differs(va, vb):
                    self.value(va, vb, f"{path}[{i}]", f"{pattern}[]", tolerance)
            return
        elif a == b and type(a) is type(b):
            return
        self.report(path, pattern, a, b, expected)


def _plain(sort_part: str) -> str:
    """set_sort_key parts are repr()s; show strings without their quotes."""
    return sort_part[1:-1] if len(sort_part) >= 2 and sort_part[0] == sort_part[-1] and sort_part[0] in "'\"" else sort_part
