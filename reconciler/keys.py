"""THE key order shared by both streams (Firestore's), and the merge-join that relies on it.

Firestore sorts document IDs by their UTF-8 bytes, except IDs of the form `__id<n>__` ("numeric IDs"),
which sort as integers before every string ID. Python compares `str` by code point, which is the same
order as UTF-8 bytes, so only the numeric IDs need special handling. A record key is a tuple of IDs
(parent ID, then child ID for subcollections), compared segment by segment like a document path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Iterable, Iterator, TypeVar

from reconciler.errors import KeyOrderError

Key = tuple[str, ...]
SortKey = tuple[str, ...]
A = TypeVar("A")
B = TypeVar("B")

_NUMERIC_ID = re.compile(r"__id(-?[0-9]+)__")


def numeric_id(doc_id: str) -> str | None:
    """The integer of a numeric ID `__id<n>__`, as written (any size, leading zeros kept); None for other IDs."""
    m = _NUMERIC_ID.fullmatch(doc_id) if doc_id.startswith("__id") else None
    return m.group(1) if m else None


def id_sort_key(doc_id: str) -> tuple[int, str, str] | tuple[int, str]:
    """An ID's place in key order. Numeric IDs of any size sort by value, then (written with leading zeros,
    which only a Postgres key can be) by their text, as the Postgres streams sort them (order_terms)."""
    number = numeric_id(doc_id)
    # not int(): Python refuses over 4,300 digits
    return (0, _integer_text(number), doc_id) if number is not None else (1, doc_id)


_COMPLEMENT = str.maketrans("0123456789", "9876543210")


def order_text(doc_id: str) -> str:
    """id_sort_key as one string, which is cheaper to build and to compare (the merge-join does it per
    record): numeric IDs as "\0" + an order-preserving form of the integer + the ID, others "\1" + ID."""
    number = numeric_id(doc_id)
    return "\0" + _integer_text(number) + doc_id if number is not None else "\1" + doc_id


def _integer_text(number: str) -> str:
    """A decimal integer as text that sorts like its value, whatever its size (a Postgres key may hold any,
    Firestore's numeric IDs are int64): sign, digit count, digits (complemented when negative). Prefix-free."""
    digits = number.lstrip("-").lstrip("0") or "0"
    if number.startswith("-") and digits != "0":
        return "0" + f"{999_999 - len(digits):06d}" + digits.translate(_COMPLEMENT)
    return "1" + f"{len(digits):06d}" + digits


def sort_key(key: Key) -> SortKey:
    """A record key's place in Firestore's order, as a tuple of order_text()s (compared in C)."""
    return tuple(map(order_text, key))


def ordered(pairs: Iterable[tuple[Key, A]], *, entity: str, side: str) -> Iterator[tuple[SortKey, Key, A]]:
    """Attach sort keys, and stop with KeyOrderError at the first key not strictly after the previous one."""
    prev: SortKey | None = None
    prev_key: Key = ()
    for key, value in pairs:
        sk = tuple(map(order_text, key))
        if prev is not None and sk <= prev:
            raise KeyOrderError(entity=entity, side=side, previous=prev_key, current=key)
        prev, prev_key = sk, key
        yield sk, key, value


def merge_join(left: Iterable[tuple[Key, A]], right: Iterable[tuple[Key, B]], *, entity: str,
               left_side: str = "postgres", right_side: str = "firestore") -> Iterator[tuple[Key, A | None, B | None]]:
    """Full outer join of two key-ordered streams: (key, left or None, right or None), in key order."""
    end = object()
    lit = ordered(left, entity=entity, side=left_side)
    rit = ordered(right, entity=entity, side=right_side)
    lcur = next(lit, end)
    rcur = next(rit, end)
    while lcur is not end or rcur is not end:
        if rcur is end or (lcur is not end and lcur[0] < rcur[0]):  # type: ignore[index]
            yield lcur[1], lcur[2], None  # type: ignore[index]
            lcur = next(lit, end)
        elif lcur is end or rcur[0] < lcur[0]:  # type: ignore[index]
            yield rcur[1], None, rcur[2]  # type: ignore[index]
            rcur = next(rit, end)
        else:
            yield lcur[1], lcur[2], rcur[2]  # type: ignore[index]
            lcur = next(lit, end)
            rcur = next(rit, end)


@dataclass(frozen=True)
class Scope:
    """Which root documents a run covers. Subcollection documents follow their parent's ID.

    `start`/`end` make a key range [start, end) in key order: the unit of --workers and --shard. Ranges
    made by `ranges()` cover the whole key space exactly once, whatever IDs exist on either side.
    """

    ids: tuple[str, ...] | None = None  # exactly these root IDs (--ids, --changed-since); () is none at all
    upper: str | None = None  # every root ID up to and including this one, in key order (--limit)
    start: str | None = None  # root IDs from this one on (inclusive); None: from the first
    end: str | None = None  # root IDs before this one (exclusive); None: to the last
    # exactly these (parent ID, ID) records of a document kind with a parent, `ids` holding their parents:
    # --changed-since of an entity whose root collection is itself a subcollection (parents/{id}/children)
    keys: tuple[Key, ...] | None = None

    def __post_init__(self) -> None:
        if self.start is not None and self.end is not None and id_sort_key(self.start) >= id_sort_key(self.end):
            raise ValueError(f"empty key range [{self.start!r}, {self.end!r})")

    def past_upper(self, root_id: str) -> bool:
        """True once a stream in key order has passed the scope: nothing after this ID is in it."""
        sk = id_sort_key(root_id)
        return ((self.upper is not None and sk > id_sort_key(self.upper))
                or (self.end is not None and sk >= id_sort_key(self.end)))

    def contains(self, root_id: str) -> bool:
        return (self.ids is None or root_id in self.ids) and self.in_range(root_id)

    def in_range(self, root_id: str) -> bool:
        """Inside start/end/upper (whatever `ids` says)."""
        return not self.past_upper(root_id) and (self.start is None or id_sort_key(root_id) >= id_sort_key(self.start))

    def from_id(self, root_id: str) -> Scope:
        """This scope without the root IDs before `root_id` (which stays in: inclusive, like `start`)."""
        if self.start is not None and id_sort_key(self.start) >= id_sort_key(root_id):
            return self
        return replace(self, start=root_id)

    def sorted_ids(self) -> list[str]:
        return sorted({i for i in self.ids or () if self.in_range(i)}, key=id_sort_key)

    @property
    def is_range(self) -> bool:
        return self.start is not None or self.end is not None


def ranges(points: Iterable[str], within: Scope = Scope()) -> list[Scope]:
    """The ranges between split points, inside `within` (its start/end kept): together they cover
    `within` exactly once. Points outside it or repeated are dropped."""
    inner = sorted({p for p in points if within.in_range(p) and p != within.start}, key=id_sort_key)
    bounds: list[str | None] = [within.start, *inner, within.end]
    return [replace(within, start=a, end=b) for a, b in zip(bounds, bounds[1:])]


def uuid_split_points(n: int, within: Scope = Scope()) -> list[str]:
    """n-1 points that split the UUID range of `within` (lowercase hex text, which sorts like the UUIDs)
    into n equal parts. Bounds that are not UUIDs count as the ends of the UUID space."""
    lo = _uuid_int(within.start, 0)
    hi = _uuid_int(within.end, 1 << 128)
    return [_uuid_text(lo + (hi - lo) * i // n) for i in range(1, n)] if hi > lo else []


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _uuid_int(text: str | None, default: int) -> int:
    return int(text.replace("-", ""), 16) if text is not None and _UUID.fullmatch(text) else default


def _uuid_text(value: int) -> str:
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
