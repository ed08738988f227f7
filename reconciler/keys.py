"""THE key order shared by both streams (Firestore's), and the merge-join that relies on it.

Firestore sorts document IDs by their UTF-8 bytes, except IDs of the form `__id<n>__` ("numeric IDs"),
which sort as integers before every string ID. Python compares `str` by code point, which is the same
order as UTF-8 bytes, so only the numeric IDs need special handling. A record key is a tuple of IDs
(parent ID, then child ID for subcollections), compared segment by segment like a document path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Iterator, TypeVar

from reconciler.errors import KeyOrderError

Key = tuple[str, ...]
SortKey = tuple[tuple[int, int | str], ...]
A = TypeVar("A")
B = TypeVar("B")

_NUMERIC_ID = re.compile(r"__id(-?[0-9]+)__")


def id_sort_key(doc_id: str) -> tuple[int, int | str]:
    if doc_id.startswith("__id"):
        m = _NUMERIC_ID.fullmatch(doc_id)
        if m:
            return (0, int(m.group(1)))
    return (1, doc_id)


def sort_key(key: Key) -> SortKey:
    return tuple(id_sort_key(s) for s in key)


def ordered(pairs: Iterable[tuple[Key, A]], *, entity: str, side: str) -> Iterator[tuple[SortKey, Key, A]]:
    """Attach sort keys, and stop with KeyOrderError at the first key not strictly after the previous one."""
    prev: SortKey | None = None
    prev_key: Key = ()
    for key, value in pairs:
        sk = sort_key(key)
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
    """Which root documents a run covers. Subcollection documents follow their parent's ID."""

    ids: tuple[str, ...] | None = None  # exactly these root IDs (--ids)
    upper: str | None = None  # every root ID up to and including this one, in key order (--limit)

    def __post_init__(self) -> None:
        if self.ids is not None and not self.ids:
            raise ValueError("Scope.ids must not be empty; use None for every record")

    def past_upper(self, root_id: str) -> bool:
        return self.upper is not None and id_sort_key(root_id) > id_sort_key(self.upper)

    def sorted_ids(self) -> list[str]:
        return sorted(set(self.ids or ()), key=id_sort_key)
