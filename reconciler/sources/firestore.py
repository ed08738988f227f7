"""Firestore side: client, and key-ordered streams of documents.

Root documents stream from `collection.order_by("__name__")`; subcollection documents from one
collection-group query ordered by `__name__` and started at the root collection's first possible path,
which yields them in (parent ID, child ID) order, the same order as the Postgres child table's
(parent, key); it stops at the first document under another root collection. Long streams are cheaper than short pages on Firestore, so pages
are large; after a transient error the stream resumes at the last document it delivered.

A reader with a `read_time` trusts an answer only while the server still serves that instant. A server can lose
it: the emulator restarted from an export gives every document the import instant as its create and update time,
so as of an earlier instant it has no documents at all, and a resumed stream would end there, silently, and every
record after it would look missing. History cannot disappear on a healthy server (a document deleted later still
exists as of an earlier instant), so a document delivered as of the instant vouches for it: each page after the
first starts *at* the last document delivered, which must come back first; an answer that ends a stream in its
first page, or that lacks some of the documents asked for by ID, is checked by reading an earlier delivered
document again as of the instant (one get). When the instant is lost, the reader moves to the server's current
instant (with a warning) and reads on from there; the re-read after the settle delay sorts out what changed in
between. After `retries` such moves it fails instead.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal, NamedTuple

from google.api_core import exceptions as gexc
from google.api_core import retry
from google.cloud import firestore
from google.cloud.firestore_v1 import GeoPoint
from google.cloud.firestore_v1 import _helpers as fs_helpers
from google.cloud.firestore_v1.base_document import DocumentSnapshot
from google.cloud.firestore_v1.base_query import FieldFilter
from google.cloud.firestore_v1.document import DocumentReference
from google.cloud.firestore_v1.field_path import FieldPath
from google.protobuf.timestamp_pb2 import Timestamp
from proto.datetime_helpers import DatetimeWithNanoseconds

from reconciler import backoff
from reconciler.errors import RuntimeFailure, one_line
from reconciler.keys import Key, Scope, sort_key
from reconciler.rules.model import DocumentSpec
from reconciler.values import PostgresOnly, identical

log = logging.getLogger(__name__)


def _short_line(exc: BaseException) -> str:
    return one_line(exc, 300)  # an API error may quote a whole request

LOWEST_ID = "__id-9223372036854775808__"  # Firestore's first document ID in key order
TRANSIENT = (gexc.ServiceUnavailable, gexc.DeadlineExceeded, gexc.InternalServerError, gexc.Aborted,
             gexc.TooManyRequests)


class FsDoc(NamedTuple):
    fields: dict[str, Any]
    update_time: Any  # the server's update time (DatetimeWithNanoseconds): the version repair checks against


class _Hit(NamedTuple):
    """One document of a query's results, as `FirestoreReader._paged` decodes it."""

    path: str  # relative to the database: collection/ID[/subcollection/ID]
    doc: FsDoc


@dataclass(frozen=True)
class FsWrite:
    """One document write. `update_time` is the version the diff read: the write only lands if the
    document still has it (create: only if the document still does not exist)."""

    path: str
    op: Literal["create", "update", "delete"]
    fields: dict[str, Any]  # create: the document; update: field path -> value or DELETE_FIELD; delete: {}
    update_time: Any = None


# Our own retries resume a stream after its last document; the client's built-in mid-stream retry is off
# (with its default retry it fails with an AttributeError of its own, google-cloud-firestore 2.34).
NO_RETRY = retry.Retry(predicate=lambda exc: False)
MAX_READ_AGE_S = 3000.0  # Firestore keeps versions for 1 hour (7 days with point-in-time recovery): margin kept
Instant = dt.datetime | None  # None: the latest version of every document
# "unknown": an ambiguous error, and the document could not be read back to settle it
WriteOutcome = tuple[Literal["applied", "changed", "failed", "unknown"], str]
CHANGED = (gexc.FailedPrecondition, gexc.NotFound, gexc.AlreadyExists)  # a precondition did not hold
# A commit that raised one of these may have been applied all the same (the reply was lost): read back.
AMBIGUOUS = (*TRANSIENT, gexc.Unknown, gexc.Cancelled, gexc.GatewayTimeout)
# Refused as a whole: by the server, or by the client while encoding a value (nothing was sent)
REFUSED = (gexc.GoogleAPICallError, ValueError, TypeError)
# One commit's deadline; and the window after a write's trail row is recorded in which all its attempts are sent and
# answered (or abandoned): past it (and a margin) nothing of it can land, so another run may settle its row.
COMMIT_TIMEOUT_S = 30.0
WRITE_WINDOW_S = 120.0
TEXT_SLACK = dt.timedelta(hours=14)  # a local time is at most 12 h behind UTC (offsets -12:00 to +14:00): margin kept


_RESERVED_ID = re.compile(r"__.*__", re.DOTALL)
_NUMERIC_ID = re.compile(r"__id(-?[1-9][0-9]*|0)__")


def id_problem(doc_id: str) -> str | None:
    """Why Firestore would refuse this as a document ID (so as the bound of a key range too), or None when it
    takes it. Numeric IDs must be int64, written without leading zeros. A Postgres-only key may be no ID: its
    record can never exist in Firestore."""
    if doc_id == "":
        return "is empty"
    if doc_id in (".", ".."):
        return "is '.' or '..'"
    if "/" in doc_id:
        return "contains '/'"
    if len(doc_id.encode()) > 1500:
        return "is longer than 1,500 bytes"
    if _RESERVED_ID.fullmatch(doc_id):
        m = _NUMERIC_ID.fullmatch(doc_id)
        if m is None or len(m.group(1)) > 20 or not -(2**63) <= int(m.group(1)) < 2**63:  # over "-" + 19 digits: no int64
            return "is reserved (__.*__, other than __id<int64>__)"
    return None


def is_document_id(doc_id: str) -> bool:
    return id_problem(doc_id) is None


def key_problem(key: Key) -> str | None:
    """Why no Firestore document can have this record key (an ID of it is no document ID), or None."""
    for doc_id in key:
        problem = id_problem(doc_id)
        if problem is not None:
            shown = doc_id if len(doc_id) <= 60 else doc_id[:57] + "..."
            return f"cannot be a Firestore document ID: {shown!r} {problem}"
    return None


def connect(project: str | None, *, timeout: float = 10.0) -> firestore.Client:
    """A client for the project (FIRESTORE_EMULATOR_HOST is honoured by the client), checked reachable."""
    try:
        client = firestore.Client(project=project) if project else firestore.Client()
    except Exception as exc:  # google.auth's DefaultCredentialsError and friends: one line, no traceback
        raise RuntimeFailure(f"firestore: cannot create a client: {_short_line(exc)}") from None
    where = os.environ.get("FIRESTORE_EMULATOR_HOST") or "Google Cloud"
    try:  # fail fast with a clear cause instead of retrying for minutes against nothing
        list(client.collections(retry=None, timeout=timeout))
    except Exception as exc:
        raise RuntimeFailure(f"firestore: cannot reach {where} (project {client.project!r}): {_short_line(exc)}") from None
    return client


def _doc(snap: Any) -> FsDoc:
    when = snap.update_time
    if isinstance(when, Timestamp):  # collection-group snapshots carry the raw protobuf, others a datetime
        when = DatetimeWithNanoseconds.from_timestamp_pb(when)
    return FsDoc(_fields(snap), when)


def _fields(snap: Any) -> dict[str, Any]:
    """The document's fields. DocumentSnapshot.to_dict() deep-copies them (a fifth of the read cost, measured);
    the mapping only reads them, so take the decoded dict as it is when the client has one."""
    data = getattr(snap, "_data", None)
    return data if isinstance(data, dict) else (snap.to_dict() or {})


def _text_after(value: Any, since: dt.datetime) -> bool:
    """Whether an ISO 8601 text is an instant after `since` (without a zone: UTC; not a time: no)."""
    try:
        when = dt.datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return False
    return (when if when.tzinfo is not None else when.replace(tzinfo=dt.timezone.utc)) > since


def _rfc3339(when: Instant) -> str:
    return "latest" if when is None else stamp(when)


class FirestoreReader:
    def __init__(self, client: firestore.Client, *, page_size: int = 10_000, retries: int = 5,
                 timeout: float = 300.0, read_time: dt.datetime | None = None,
                 max_read_age_s: float = MAX_READ_AGE_S) -> None:
        self.client = client
        self.page_size = page_size
        self.retries = retries
        self.timeout = timeout
        self.read_time = read_time  # None: the latest version of every document
        self.max_read_age_s = max_read_age_s
        self._witness: str | None = None  # a document delivered as of read_time: as of it, it must stay there
        self._doubt = False  # the server went away (a transient error) since a document was last delivered
        self.lost: list[tuple[dt.datetime, dt.datetime]] = []  # (read_time the server lost, the one moved to)

    def at(self) -> dt.datetime | None:
        """The instant to read as of. Firestore keeps old versions for an hour only: once the instant is
        older than max_read_age_s, it moves forward to now (so a long sweep reads page by page as of ever
        later instants; the re-read after the settle delay sorts out what changed in between)."""
        now = dt.datetime.now(dt.timezone.utc)
        if self.read_time is not None and (now - self.read_time).total_seconds() > self.max_read_age_s:
            self.read_time = now - dt.timedelta(seconds=1)  # never ahead of the server's clock
            self._witness = None
        return self.read_time

    def stream(self, doc: DocumentSpec, scope: Scope, root_collection: str) -> Iterator[tuple[Key, FsDoc]]:
        """(key, document) in key order: key = (ID,) for root documents, (parent ID, ID) for subdocuments."""
        if doc.parent is None:
            if scope.ids is not None:
                yield from self._root_by_ids(doc.collection, scope)
            else:
                yield from self._root(doc.collection, scope)
        elif scope.keys is not None:
            yield from self._children_by_keys(root_collection, doc.collection, scope)
        elif scope.ids is not None:
            yield from self._children_by_ids(root_collection, doc.collection, scope)
        else:
            yield from self._children(root_collection, doc.collection, scope)

    def changed_keys(self, collection: str, field: str, since: dt.datetime,
                     parent_collection: str | None = None) -> list[Key]:
        """The keys of the documents whose `field` (their update time) is after `since`, names only: (ID,) in a
        root collection; (parent ID, ID) for `collection` under `parent_collection`/{id}/, by a collection-group
        query (same-named collections elsewhere are dropped). The field may hold a Timestamp or, as webhooks
        write it, an ISO 8601 string, which the server compares as text: that query reaches back as far as a
        UTC offset can shift a local time, and each candidate's instant is compared here."""
        base = (self.client.collection(collection) if parent_collection is None
                else self.client.collection_group(collection))
        stamps = base.where(filter=FieldFilter(field, ">", since)).select([])
        floor = (since - TEXT_SLACK).astimezone(dt.timezone.utc).date().isoformat()  # "2026-11-22" < "2026-11-22T.."
        texts = base.where(filter=FieldFilter(field, ">", floor)).select([field])
        snaps = self.call(lambda: list(stamps.stream(timeout=self.timeout)))
        snaps += [s for s in self.call(lambda: list(texts.stream(timeout=self.timeout)))
                  if _text_after(s.get(field), since)]
        if parent_collection is None:
            return [(s.id,) for s in snaps]
        paths = (s.reference.path.split("/") for s in snaps)
        return [(p[1], p[3]) for p in paths if len(p) == 4 and p[0] == parent_collection]

    def _root(self, collection: str, scope: Scope) -> Iterator[tuple[Key, FsDoc]]:
        coll = self.client.collection(collection)

        def query() -> Any:  # a key range (--workers, --shard) is a range of __name__ on the server
            q = coll.order_by("__name__")
            if scope.start is not None:
                q = q.where(filter=FieldFilter("__name__", ">=", coll.document(scope.start)))
            if scope.end is not None:
                q = q.where(filter=FieldFilter("__name__", "<", coll.document(scope.end)))
            return q

        for hit in self._paged(query, f"{collection}/{LOWEST_ID}"):
            doc_id = hit.path.rpartition("/")[2]
            if scope.past_upper(doc_id):
                return
            yield (doc_id,), hit.doc

    def _children(self, root: str, name: str, scope: Scope) -> Iterator[tuple[Key, FsDoc]]:
        # Start at the lowest possible path under `root` (numeric IDs sort first, int64 at the least) and stop
        # at the first path under another root collection: same-named groups elsewhere are never read.
        # A key range applies to the parent's ID: from start's first child to before end's first child.
        first = self.client.document(f"{root}/{scope.start or LOWEST_ID}/{name}/{LOWEST_ID}")
        group = self.client.collection_group(name)

        def query() -> Any:
            q = group.where(filter=FieldFilter("__name__", ">=", first))
            if scope.end is not None:
                end = self.client.document(f"{root}/{scope.end}/{name}/{LOWEST_ID}")
                q = q.where(filter=FieldFilter("__name__", "<", end))
            return q.order_by("__name__")

        for hit in self._paged(query, first.path):
            parts = hit.path.split("/")
            if parts[0] != root:
                return
            if len(parts) != 4:
                continue  # a same-named collection deeper down, under another subcollection
            if scope.past_upper(parts[1]):
                return
            yield (parts[1], parts[3]), hit.doc

    # By ID, an ID that is no document ID is not asked for: no document has it (and the client or the server
    # would refuse the request, or "a/b/c" would name a document elsewhere).

    def _root_by_ids(self, collection: str, scope: Scope) -> Iterator[tuple[Key, FsDoc]]:
        ids = [i for i in scope.sorted_ids() if is_document_id(i)]
        refs = [self.client.collection(collection).document(i) for i in ids]
        snaps = {s.id: s for s in self._get_all(refs)}
        for i in ids:
            snap = snaps.get(i)
            if snap is not None and snap.exists:
                yield (i,), _doc(snap)

    def _children_by_ids(self, root: str, name: str, scope: Scope) -> Iterator[tuple[Key, FsDoc]]:
        for parent in filter(is_document_id, scope.sorted_ids()):
            query = self.client.collection(root).document(parent).collection(name).order_by("__name__")
            snaps = self._vouched(lambda at: list(query.stream(retry=NO_RETRY, timeout=self.timeout, read_time=at)),
                                  f"{root}/{parent}")
            for snap in snaps:
                yield (parent, snap.id), _doc(snap)

    def _children_by_keys(self, root: str, name: str, scope: Scope) -> Iterator[tuple[Key, FsDoc]]:
        assert scope.keys is not None
        keys = sorted((k for k in set(scope.keys) if scope.in_range(k[0]) and key_problem(k) is None), key=sort_key)
        paths = [f"{root}/{parent}/{name}/{doc_id}" for parent, doc_id in keys]
        refs = [self.client.document(p) for p in paths]
        snaps = {s.reference.path: s for s in self._get_all(refs)}
        for key, path in zip(keys, paths):
            snap = snaps.get(path)
            if snap is not None and snap.exists:
                yield key, _doc(snap)

    def sample(self, collection: str, n: int) -> list[tuple[str, dict[str, Any]]]:
        """The first n documents of a collection (ID, fields), in key order."""
        query = self.client.collection(collection).order_by("__name__").limit(n)
        return [(s.id, s.to_dict() or {}) for s in self.call(lambda: list(query.stream(timeout=self.timeout)))]

    def _get_all(self, refs: list[DocumentReference]) -> list[Any]:
        """The documents as of the instant, one snapshot per reference (exists=False: there is none)."""
        if not refs:
            return []
        return self._vouched(lambda at: self._get(refs, at), refs[0].path)

    def _get(self, refs: list[DocumentReference], at: Instant) -> list[Any]:
        """One snapshot per reference, as of `at`, asked once: our retries (call), not the client's hidden ones,
        which would hide that the server went away."""
        return list(self.client.get_all(refs, read_time=at, retry=NO_RETRY, timeout=self.timeout))

    def _vouched(self, read: Callable[[Instant], list[Any]], probe: str) -> list[Any]:
        """read(instant): snapshots. An answer that lacks a document asked for (or is empty) is believed once the
        instant is vouched for (_lost); otherwise it is read again as of a moved instant."""
        while True:
            at = self.at()
            witness = self._witness
            snaps = self.call(lambda: read(at))
            found = next((s.reference.path for s in snaps if s.exists), None)
            self._doubt = self._doubt and found is None
            whole = bool(snaps) and all(s.exists for s in snaps)
            lost = None if whole else self._lost(witness, at)
            if lost is None:
                if at is not None and at == self.read_time:
                    self._witness = self._witness or found
                return snaps
            self._move(probe, lost)

    def _paged(self, make_query: Callable[[], Any], probe: str) -> Iterator[_Hit]:
        """Every document of the query, in pages of page_size. Each page after the first starts at the last document
        delivered, which the server sends again first as long as it serves the instant (see the module doc); a
        transient error asks for the page again. `probe`: a path to ask the server's current instant with."""
        last: _Hit | None = None
        last_at: Instant = None  # the instant `last` was read as of
        attempt = 0
        while True:
            at, start, start_at = self.at(), last, last_at
            witness = self._witness
            limit = self.page_size + (start is not None)  # + the echo of `start`: every page makes progress
            query = make_query().limit(limit)
            if start is not None:  # the cursor needs only the reference: the query is ordered by __name__ alone
                query = query.start_at(DocumentSnapshot(self.client.document(start.path), {}, exists=True,
                                                        read_time=None, create_time=None, update_time=None))
            same_instant = start is not None and at is not None and at == start_at
            got, echoed, lost = 0, False, None
            try:
                for hit in self._results(query, at):
                    got += 1
                    if got == 1 and start is not None:
                        echoed = hit.path == start.path
                        if echoed:
                            continue
                        if same_instant:
                            break
                    last, last_at = hit, at
                    yield hit
            except TRANSIENT as exc:
                attempt += 1
                if attempt > self.retries:
                    raise RuntimeFailure(f"firestore: {_short_line(exc)} (after {self.retries} retries)") from None
                self._doubt = True
                self._wait(attempt, exc)
                continue
            except gexc.GoogleAPICallError as exc:
                raise RuntimeFailure(f"firestore: {_short_line(exc)}") from None
            attempt = 0
            self._doubt = self._doubt and got == 0
            if same_instant and not echoed:
                lost = f"{start.path}, delivered as of that instant, is no longer there as of it"
            elif start is None and got < limit:  # the stream ends in its first page
                lost = self._lost(witness, at)
            if lost is not None:
                self._move(probe, lost)
                continue
            if at is not None and at == self.read_time and last is not None:
                self._witness = self._witness or last.path
            if got < limit:
                return

    def _lost(self, witness: str | None, at: Instant) -> str | None:
        """Why the server may no longer serve instant `at`, or None. With `witness`, a document delivered as of it:
        precisely (one get; history cannot disappear). Without one, only after the server went away."""
        if at is None:
            return None
        if witness is None:
            return "after the server went away, it answered with nothing as of that instant" if self._doubt else None
        (snap,) = self.call(lambda: self._get([self.client.document(witness)], at))
        return None if snap.exists else f"{witness}, delivered as of that instant, is no longer there as of it"

    def _move(self, probe: str, why: str) -> None:
        """Read as of the server's current instant from now on: it lost `read_time` (why)."""
        lost = self.read_time
        if len(self.lost) >= self.retries:
            raise RuntimeFailure(f"firestore: the server no longer serves read instant {_rfc3339(lost)}: {why} (moved "
                                 f"on {len(self.lost)} times in this read already, retries={self.retries}); stopping "
                                 "rather than reporting the documents it no longer shows as missing")
        (snap,) = self.call(lambda: self._get([self.client.document(probe)], None))
        now = snap.read_time
        self.lost.append((lost, now))
        self.read_time, self._witness, self._doubt = now, None, False
        log.warning("firestore: the server no longer serves read instant %s: %s (restarted from an export?); "
                    "reading on as of %s, its current instant; the re-read after the settle delay sorts out what "
                    "changed in between", _rfc3339(lost), why, _rfc3339(now))

    def _results(self, query: Any, at: Instant) -> Iterator[_Hit]:
        """The query's documents as of `at`, decoded straight from the RunQuery responses. Query.stream() would wrap
        each in a DocumentSnapshot, whose constructor deep-copies the decoded fields: 40% of our read CPU (profiled).
        The request is the client's own (Query._get_stream_iterator), so filters, cursors and read_time mean
        exactly what they mean for stream()."""
        responses, _ = query._get_stream_iterator(transaction=None, retry=NO_RETRY, timeout=self.timeout, read_time=at)
        for response in responses:
            pb = response._pb
            if pb.HasField("document"):
                d = pb.document
                yield _Hit(d.name.partition("/documents/")[2], FsDoc(fs_helpers.decode_dict(d.fields, self.client),
                                                DatetimeWithNanoseconds.from_timestamp_pb(d.update_time)))

    def _wait(self, attempt: int, exc: BaseException) -> None:
        """Back off before retry `attempt`, saying so: a night of retries should not look like a hang."""
        wait = backoff.delay(attempt)
        log.warning("firestore: %s; retry %d of %d in %.1f s", _short_line(exc), attempt, self.retries, wait)
        time.sleep(wait)

    def call(self, fn: Callable[[], Any], passthrough: tuple[type[Exception], ...] = ()) -> Any:
        """fn(), retried on transient errors; other API errors become a RuntimeFailure, except `passthrough`."""
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except TRANSIENT as exc:
                if attempt == self.retries:
                    raise RuntimeFailure(f"firestore: {_short_line(exc)} (after {self.retries} retries)") from None
                self._doubt = True
                self._wait(attempt + 1, exc)
            except passthrough:
                raise
            except gexc.GoogleAPICallError as exc:
                raise RuntimeFailure(f"firestore: {_short_line(exc)}") from None
        raise AssertionError("unreachable")


class FirestoreWriter:
    """Reads documents by path and commits writes with their preconditions, reporting each write's outcome.

    A commit is sent once, never retried blindly: an error that leaves its outcome open (a deadline, an
    unavailable server, a reset connection: AMBIGUOUS) may come after the server applied it, and a blind retry
    would then fail its own precondition and call our write someone else's. After such an error the documents
    are read back: one that holds exactly the write landed; one still at the version the write required did
    not, and is sent again; any other changed since it was read.

    Every commit has a deadline (COMMIT_TIMEOUT_S), and no attempt of a write is sent after WRITE_WINDOW_S from
    `since` (when its trail row was written): after that window, nothing this writer sent can still land, which
    is what lets another run settle a trail row this one left pending (see repair.resolve_dead)."""

    def __init__(self, client: firestore.Client, *, retries: int = 5) -> None:
        self.client = client
        self.retries = retries
        self.reader = FirestoreReader(client, retries=retries)

    def read(self, paths: list[str]) -> dict[str, FsDoc | None]:
        """The current version of each document (None: it does not exist). A path made of a key that is no
        document ID (key_problem) names no such document, or another one: leave it out, it is absent."""
        refs = [self.client.document(p) for p in paths]
        snaps = self.reader.call(lambda: list(self.client.get_all(refs))) if refs else []
        found = {s.reference.path: s for s in snaps}
        return {p: (_doc(found[p]) if p in found and found[p].exists else None) for p in paths}

    def commit(self, writes: list[FsWrite], since: float | None = None) -> list[WriteOutcome]:
        """All writes in one atomic batch; if Firestore (or the client, encoding them) refuses the batch, each
        write alone, so that one document that changed since it was read, or one value the client cannot
        encode, does not hold back the others. `since`: time.monotonic() before their trail rows were written."""
        until = (time.monotonic() if since is None else since) + WRITE_WINDOW_S
        if len(writes) <= 1:
            return [self._one(w, until) for w in writes]
        ambiguous: Exception | None = None
        for attempt in range(1, self.retries + 2):
            try:
                self._send(writes, until)
                return [("applied", _confirmed(ambiguous))] * len(writes)
            except AMBIGUOUS as exc:
                ambiguous = exc
            except _OutOfTime:
                break
            except REFUSED:
                return [self._one(w, until, ambiguous) for w in writes]
            now = self._read_back(writes)
            if now is None:
                return [_unknown(ambiguous)] * len(writes)
            held = [holds(w, now[w.path]) for w in writes]
            if all(held):
                return [("applied", _confirmed(ambiguous))] * len(writes)
            if not all(untouched(w, now[w.path]) for w in writes):  # not one batch's outcome: settle each alone
                return [("applied", _confirmed(ambiguous)) if h else self._one(w, until, ambiguous)
                        for w, h in zip(writes, held)]
            if attempt <= self.retries:
                self.reader._wait(attempt, ambiguous)
        return [_gave_up(ambiguous, self.retries)] * len(writes)

    def _one(self, write: FsWrite, until: float, ambiguous: Exception | None = None) -> WriteOutcome:
        """`ambiguous`: an error after which an earlier attempt of this write may have landed."""
        for attempt in range(1, self.retries + 2):
            try:
                self._send([write], until)
                return ("applied", _confirmed(ambiguous))
            except AMBIGUOUS as exc:
                ambiguous = exc
            except _OutOfTime:
                break
            except REFUSED as exc:
                if ambiguous is None:
                    return ("changed" if isinstance(exc, CHANGED) else "failed", _short_line(exc))
                now = self._read_back([write])  # our own earlier attempt may be what changed the document
                if now is None:
                    return _unknown(ambiguous)
                if holds(write, now[write.path]):
                    return ("applied", _confirmed(ambiguous))
                return ("changed" if isinstance(exc, CHANGED) else "failed", _short_line(exc))
            now = self._read_back([write])
            if now is None:
                return _unknown(ambiguous)
            if holds(write, now[write.path]):
                return ("applied", _confirmed(ambiguous))
            if not untouched(write, now[write.path]):
                return ("changed", f"changed since it was read; read back after {_short_line(ambiguous)}")
            if attempt <= self.retries:
                self.reader._wait(attempt, ambiguous)
        return _gave_up(ambiguous, self.retries)

    def _read_back(self, writes: list[FsWrite]) -> dict[str, FsDoc | None] | None:
        """The documents now; None when they cannot be read either (the outcome then stays open)."""
        try:
            return self.read([w.path for w in writes])
        except RuntimeFailure:
            return None

    def _send(self, writes: list[FsWrite], until: float) -> None:
        timeout = min(COMMIT_TIMEOUT_S, until - time.monotonic())
        if timeout <= 0:
            raise _OutOfTime()
        batch = self.client.batch()
        for w in writes:  # the client encodes each value here: a value it cannot encode raises before sending
            ref = self.client.document(w.path)
            option = self.client.write_option(last_update_time=w.update_time) if w.update_time else None
            if w.op == "create":
                batch.create(ref, w.fields)
            elif w.op == "update":
                batch.update(ref, w.fields, option=option)
            else:
                batch.delete(ref, option=option)
        batch.commit(retry=None, timeout=timeout)  # the client's own retry would resend after an ambiguous error


class _OutOfTime(Exception):
    """The write window is over: no attempt may be sent any more (see FirestoreWriter)."""


def _confirmed(ambiguous: Exception | None) -> str:
    return "" if ambiguous is None else f"confirmed by reading the document back after {_short_line(ambiguous)}"


def _unknown(ambiguous: Exception | None) -> WriteOutcome:
    return ("unknown", f"outcome unknown: {_short_line(ambiguous) if ambiguous else 'no reply'}, and the document "
                       "could not be read back")


def _gave_up(ambiguous: Exception | None, retries: int) -> WriteOutcome:
    """Every attempt ended without a reply while the document showed none of them: the last one may still land."""
    return ("unknown", f"outcome unknown: {_short_line(ambiguous) if ambiguous else 'no reply'} (after {retries} "
                       "retries, or the write window closed); the document showed no write yet, and the last attempt "
                       "may still land")


def holds(write: FsWrite, doc: FsDoc | None) -> bool:
    """Whether the document holds exactly what the write wrote (a delete: it is gone), as Firestore stores
    it: an integer is no double and no boolean, NaN is NaN (values.identical)."""
    if write.op == "delete":
        return doc is None
    if doc is None:
        return False
    if write.op == "create":
        return identical(write.fields, doc.fields)
    for path, value in write.fields.items():
        found, got = field_at(doc.fields, path)
        if value is firestore.DELETE_FIELD:
            if found:
                return False
        elif not found or not identical(value, got):
            return False
    return True


def untouched(write: FsWrite, doc: FsDoc | None) -> bool:
    """Whether the document is still at the version the write required: then the write did not land."""
    if write.op == "create":
        return doc is None
    return doc is not None and stamp(doc.update_time) == stamp(write.update_time)  # to the nanosecond


def stamp(update_time: Any) -> str:
    """An update time as RFC 3339 text, to the nanosecond (the form the trail keeps a precondition in)."""
    if isinstance(update_time, DatetimeWithNanoseconds):
        return update_time.rfc3339()
    return update_time.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def field_at(fields: dict[str, Any], path: str) -> tuple[bool, Any]:
    """(whether the document has the field at this field path (API form: `a.b`, quoted parts), its value)."""
    value: Any = fields
    for part in FieldPath.from_api_repr(path).parts:
        if not isinstance(value, dict) or part not in value:
            return False, None
        value = value[part]
    return True, value


# ------------------------------------------------------------------------------------------ what Firestore holds

INT64 = range(-(2**63), 2**63)


def value_problem(value: Any) -> str | None:
    """Why Firestore cannot hold this value as the client would send it, or None. An allow-list of what it
    holds (None, bool, int64, float, str, bytes, an aware datetime, GeoPoint, DocumentReference, arrays, maps);
    anything else (a Decimal, a date, a type for Postgres-only values, values.Geo and values.Ref, which the
    client would send as arrays) is refused, naming where in the value and why."""
    return _problem(value, "")


def _problem(v: Any, where: str) -> str | None:
    at = f" at {where}" if where else ""
    if v is None or isinstance(v, (bool, float, bytes, GeoPoint, DocumentReference)):
        return None
    if isinstance(v, int):
        return None if v in INT64 else f"integer {_short(v)}{at} is outside Firestore's 64-bit range"
    if isinstance(v, str):
        return _text_problem(v, at)
    if isinstance(v, dt.datetime):
        return None if v.tzinfo is not None else f"timestamp {v.isoformat()}{at} has no time zone"
    if isinstance(v, list):
        for i, item in enumerate(v):
            if isinstance(item, list):
                return f"an array{at}[{i}] is inside an array"
            problem = _problem(item, f"{where}[{i}]")
            if problem:
                return problem
        return None
    if isinstance(v, dict):
        for k, item in v.items():
            problem = name_problem(k, where) or _problem(item, f"{where}.{k}" if where else k)
            if problem:
                return problem
        return None
    if isinstance(v, PostgresOnly):
        return f"{v!r}{at} is a value only Postgres holds (no Firestore type can hold it)"
    return f"{type(v).__name__} {_short(v)}{at} is not a value Firestore holds"


def name_problem(name: Any, where: str) -> str | None:
    """Why Firestore refuses this as a field name (a map key) at `where`, or None."""
    at = f" at {where}" if where else ""
    if not isinstance(name, str) or not name:
        return f"map key {name!r}{at} is not a field name (empty, or not text)"
    if _RESERVED_ID.fullmatch(name):
        return f"map key {name!r}{at} is reserved (__.*__)"
    return _text_problem(name, at)


def _text_problem(text: str, at: str) -> str | None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return f"text {_short(text)}{at} is not valid Unicode (a lone surrogate)"
    return None


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def write_problem(write: FsWrite) -> str | None:
    """Why Firestore would refuse this write's values (the field path and why), or None. An update's field paths
    are checked as they are made (FieldPath refuses an empty part with an error naming neither part nor path)."""
    if write.op == "delete":
        return None
    if write.op == "create":
        return _problem(write.fields, "")
    return next(filter(None, (_problem(v, path) for path, v in write.fields.items()
                              if v is not firestore.DELETE_FIELD)), None)
