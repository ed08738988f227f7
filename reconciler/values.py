"""Canonical scalar types shared by both sides, and their JSON form for reports."""

from __future__ import annotations

import base64
import datetime as dt
from decimal import Decimal
from typing import Any, Callable, NamedTuple


class Bool:
    """A canonical boolean. Python's `True == 1` would let a boolean column equal an integer field in the
    diff's `==` fast path; a Bool equals only a Bool."""

    __slots__ = ("value",)

    def __init__(self, value: bool) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Bool) and other.value is self.value

    def __hash__(self) -> int:
        return hash((Bool, self.value))

    def __copy__(self) -> Bool:  # immutable: copies stay the TRUE/FALSE singletons, so == stays an identity check
        return TRUE if self.value else FALSE

    def __deepcopy__(self, memo: dict[int, Any]) -> Bool:
        return self.__copy__()

    def __repr__(self) -> str:
        return "true" if self.value else "false"


TRUE, FALSE = Bool(True), Bool(False)


class PostgresOnly:
    """A value Postgres holds and neither Python's types nor Firestore can (timestamptz 'infinity', a BC date,
    year 10000, a number beyond double range), as Postgres prints it. Equal only to the same text of the same
    type, so a field holding one never matches Firestore; no write path may store it (plain() keeps it)."""

    __slots__ = ("text", "type")

    def __init__(self, text: str, type: str) -> None:
        self.text, self.type = text, type

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PostgresOnly) and other.text == self.text and other.type == self.type

    def __hash__(self) -> int:
        return hash((PostgresOnly, self.text, self.type))

    def __repr__(self) -> str:
        return f"{self.type} {self.text!r}"

    def __str__(self) -> str:
        return self.text


class TextInstant(dt.datetime):
    """An instant read from ISO-8601 text inside JSON (rules: `json: {timestamps: iso}`), which remembers
    that text so that a write back to JSON keeps it. Equal to any datetime of the same instant.
    Arithmetic and replace() give instances without text (`text` None)."""

    text: str | None = None

    def __reduce_ex__(self, protocol: Any) -> Any:  # datetime's own would drop the text (copy, pickle)
        return (text_instant, (self.text, dt.datetime.fromisoformat(self.isoformat())))


def text_instant(text: str | None, value: dt.datetime) -> TextInstant:
    out = TextInstant(value.year, value.month, value.day, value.hour, value.minute, value.second,
                      value.microsecond, value.tzinfo, fold=value.fold)
    out.text = text
    return out


def plain(value: Any) -> Any:
    """Canonical value -> the plain Python value a database client writes (Bool -> bool), recursively.
    A PostgresOnly stays what it is: no client type can hold it, and the write paths refuse it."""
    if isinstance(value, Bool):
        return value.value
    if isinstance(value, TextInstant):
        return dt.datetime.fromisoformat(value.isoformat())
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, Ref):
        return value.path
    return value


class Geo(NamedTuple):
    """A point, whichever side it came from (Firestore GeoPoint, or two Postgres columns)."""

    latitude: float
    longitude: float


class Ref(NamedTuple):
    """A Firestore document reference, by its path: a type of its own, never equal to a string."""

    path: str


def type_name(value: Any) -> str | None:
    """The kind of a canonical value, as a person names it; None for NULL/absent."""
    if value is None:
        return None
    for kind, name in _TYPE_NAMES:
        if isinstance(value, kind):
            return name
    return type(value).__name__


def identical(a: Any, b: Any) -> bool:
    """Whether two values are the same value, which Python's == does not say: NaN is NaN (== says no, and a dict
    holding it unequal to a copy of itself), an instant is an instant whatever its Python type (a TextInstant, a
    DatetimeWithNanoseconds), while an integer is no float and True no 1 (== says they are). For canonical values
    and what a database client reads or writes alike."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(identical(v, b[k]) for k, v in a.items())
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(identical, a, b))
    if isinstance(a, dt.datetime) and isinstance(b, dt.datetime):
        return a == b
    if isinstance(a, float) and isinstance(b, float) and a != a:
        return b != b
    if isinstance(a, tuple) and type(a) is type(b):  # Geo, Ref: their parts, NaN included
        return len(a) == len(b) and all(map(identical, a, b))
    return type(a) is type(b) and a == b


def map_strings(value: Any, fn: Callable[[str], str]) -> Any:
    """`value` (JSON-shaped) with fn applied to every string in it, map keys included."""
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, dict):
        return {map_strings(k, fn): map_strings(v, fn) for k, v in value.items()}
    if isinstance(value, list):
        return [map_strings(v, fn) for v in value]
    return value


def to_json(value: Any) -> Any:
    """Canonical value -> JSON value: timestamps as ISO-8601 (UTC), GeoPoints as {latitude, longitude}."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, Bool):
        return value.value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else repr(value)
    if isinstance(value, Geo):
        return {"latitude": to_json(value.latitude), "longitude": to_json(value.longitude)}
    if isinstance(value, Ref):
        return {"reference": value.path}
    if isinstance(value, PostgresOnly):
        return value.text
    if isinstance(value, TextInstant) and value.text is not None:
        return value.text
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.timezone.utc)
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return to_json(float(value))
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, bytes):
        return {"bytes_base64": base64.b64encode(value).decode()}
    return str(value)


# Geo and Ref before tuple; Bool is not an int. Dates are canonical strings and so "string".
_TYPE_NAMES: tuple[tuple[type, str], ...] = (
    (PostgresOnly, "postgres_only"), (Bool, "boolean"), (bool, "boolean"), (Geo, "geopoint"), (Ref, "reference"),
    (int, "number"), (float, "number"), (Decimal, "number"), (str, "string"), (dt.datetime, "timestamp"),
    (bytes, "bytes"),
    (dict, "map"), (list, "array"), (tuple, "array"),
)
