"""The typed rules model. Built only by the loader; every object is frozen and knows its source line."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

EmbedKind = Literal["one", "latest", "map", "set"]
Path = tuple[str, ...]


@dataclass(frozen=True)
class CompareOptions:
    null_equals_absent: bool = True
    number_tolerance: float = 1e-9  # absolute; a column's own `tolerance` overrides it


@dataclass(frozen=True)
class Reference:
    """A foreign-key column compared through the referenced row: `table.join = column`, and the value that
    stands for it is `table.column` (e.g. a UUID foreign key <-> the referenced document's ID)."""

    table: str
    column: str  # the referenced table's column whose value the other side holds (its document ID)
    join: str  # the referenced table's column the foreign key holds (its primary key)
    line: int


@dataclass(frozen=True)
class Column:
    """One Postgres column mapped to one Firestore field path (relative to its section)."""

    name: str
    path: Path
    line: int
    ignore: bool = False  # mapped (known to both sides) but never compared: server-set values
    tolerance: float | None = None  # numbers: absolute; timestamps: seconds
    type: str | None = None  # an explicit conversion (see mapping.CONVERSIONS); None: by value type
    references: Reference | None = None
    json_timestamps: Literal["iso"] | None = None  # `json: {timestamps: iso}`: ISO text inside it is an instant


@dataclass(frozen=True)
class GeoPointRule:
    """Two numeric columns <-> one Firestore GeoPoint."""

    path: Path
    latitude: str
    longitude: str
    line: int
    tolerance: float | None = None


@dataclass(frozen=True)
class Embed:
    """A child table folded into the parent document at `into`.

    one:    a 1:1 row -> a nested map
    latest: the first row by `order_by` (descending) -> a nested map
    map:    rows -> a map keyed by the `map_key` column
    set:    rows -> an array compared as a set keyed by the `set_key` columns
    """

    table: str
    join: str  # the child column holding the parent's key
    kind: EmbedKind
    into: Path
    columns: tuple[Column, ...]
    line: int
    geopoints: tuple[GeoPointRule, ...] = ()
    order_by: str | None = None
    map_key: str | None = None
    set_key: tuple[str, ...] = ()
    join_references: Reference | None = None  # `join` holds the parent's primary key, not its document ID
    where: tuple[tuple[str, str], ...] = ()  # only rows with these column values (text); repair sets them

    @property
    def row_key(self) -> tuple[str, ...]:
        """The columns that identify one of a parent's rows besides `join` (repair writes by them)."""
        own = {"map": (self.map_key,), "set": self.set_key, "latest": (self.order_by,)}.get(self.kind, ())
        return tuple(c for c, _ in self.where) + tuple(c for c in own if c)

    @property
    def select_columns(self) -> tuple[str, ...]:
        """Columns read from the table, after the parent key: the rules' order, each once; ignored ones never."""
        return _unique(
            ((self.map_key,) if self.map_key else ())
            + tuple(c.name for c in self.columns if not c.ignore)
            + tuple(n for g in self.geopoints for n in (g.latitude, g.longitude))
        )

    @property
    def set_key_fields(self) -> tuple[str, ...]:
        """The element field names that identify a set element (the set_key columns' paths)."""
        by_name = {c.name: c for c in self.columns}
        return tuple(".".join(by_name[k].path) for k in self.set_key)


@dataclass(frozen=True)
class DocumentSpec:
    """A Postgres table <-> a Firestore collection (root) or subcollection (with a `parent` column)."""

    collection: str
    table: str
    key: str  # the column whose text is the document ID
    columns: tuple[Column, ...]
    line: int
    parent: str | None = None  # subcollections: the column holding the root document's key
    parent_references: Reference | None = None  # `parent` holds the parent's primary key, not its document ID
    parent_collection: str | None = None  # a root that is itself a subcollection: its parents' collection
    geopoints: tuple[GeoPointRule, ...] = ()
    embeds: tuple[Embed, ...] = ()

    @property
    def select_columns(self) -> tuple[str, ...]:
        return _unique(tuple(c.name for c in self.columns if not c.ignore)
                       + tuple(n for g in self.geopoints for n in (g.latitude, g.longitude)))


@dataclass(frozen=True)
class Changed:
    """Where each side keeps a root record's last update time (for --changed-since)."""

    column: str  # a timestamp column of the root table
    field: str  # a field of the root document: a Timestamp, or an ISO 8601 string (as webhooks write times)


@dataclass(frozen=True)
class EntityRules:
    entity: str
    file: str
    source_of_truth: Literal["postgres", "firestore"]
    naming: str
    compare: CompareOptions
    root: DocumentSpec
    subcollections: tuple[DocumentSpec, ...] = field(default=())
    changed: Changed | None = None  # `changed: {column: ..., field: ...}`: what --changed-since compares

    @property
    def documents(self) -> tuple[DocumentSpec, ...]:
        """Every stream of records of this entity: the root collection first, then the subcollections."""
        return (self.root, *self.subcollections)

    @property
    def top_collection(self) -> str:
        """The collection at the top of every document path of this entity."""
        return self.root.parent_collection or self.root.collection

    @property
    def written_side(self) -> Literal["postgres", "firestore"]:
        """The side repair writes: the one that is not the source of truth."""
        return "firestore" if self.source_of_truth == "postgres" else "postgres"

    def tables(self) -> tuple[str, ...]:
        """Every table the rules read: the documents', the embeds' and the referenced ones."""
        return _unique(tuple(t for d in self.documents for t in (d.table, *(e.table for e in d.embeds)))
                       + tuple(r.table for r in self.references()))

    def references(self) -> tuple[Reference, ...]:
        out: list[Reference | None] = []
        for d in self.documents:
            out += [d.parent_references, *(c.references for c in d.columns)]
            for e in d.embeds:
                out += [e.join_references, *(c.references for c in e.columns)]
        return tuple(r for r in out if r is not None)


def _unique(names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))
