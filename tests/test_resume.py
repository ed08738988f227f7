"""--resume after a failure at a known record: the resumed run gives exactly the uninterrupted result, and reads
only what was left. The failure is a real one, injected into the real checkpoint table: a trigger refuses the
checkpoint of one chosen key, so the run fails right there and its last checkpoint is the key before it.

What a run read is what each side's stream delivered, which the engine logs per stream at its end
("postgres addresses: 12 read"); the key ranges are pushed into the queries, so that is what the servers sent."""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from itertools import groupby

import psycopg
from psycopg import sql

from reconciler import checkpoint
from reconciler.engine import run_audit
from reconciler.errors import RuntimeFailure
from reconciler.keys import Key, Scope, id_sort_key, sort_key
from reconciler.rules import load_entity
from reconciler.sources import firestore as fs_source
from test_faults import _drift, _summary
from test_key_order_integration import widgets  # noqa: F401  (a fixture: text keys, numeric IDs)

FAIL_AT = "resume_test_fail_at"


def _inject_failure(dsn: str) -> None:
    """Saving the checkpoint of the (collection, key) in FAIL_AT fails, as a database refusing a write would."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(checkpoint.DDL)
        conn.execute(f"CREATE TABLE {FAIL_AT} (collection text, last_key text[])")
        conn.execute(f"""CREATE FUNCTION {FAIL_AT}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
            IF EXISTS (SELECT 1 FROM {FAIL_AT} f WHERE f.collection = NEW.collection AND f.last_key = NEW.last_key)
            THEN RAISE EXCEPTION 'injected failure'; END IF;
            RETURN NEW; END $$""")
        conn.execute(f"CREATE TRIGGER {FAIL_AT} BEFORE INSERT OR UPDATE ON {checkpoint.TABLE} "
                     f"FOR EACH ROW EXECUTE FUNCTION {FAIL_AT}()")


def _fail_at(dsn: str, collection: str | None, key: Key | None) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DELETE FROM {FAIL_AT}")
        if key is not None:
            conn.execute(f"INSERT INTO {FAIL_AT} VALUES (%s, %s)", [collection, list(key)])


def _reads(caplog) -> dict[str, int]:
    """Records delivered per stream ("postgres addresses" -> n) since caplog was last cleared."""
    found = (re.fullmatch(r"((?:postgres|firestore) \S+): (\d+) read", r.getMessage()) for r in caplog.records)
    return {m[1]: int(m[2]) for m in found if m}


def _keys(settings, entity: str, collection: str, pg_dsn: str, fs_client) -> tuple[list[Key], list[Key]]:
    """Every key of one document kind on each side, read directly from the servers."""
    rules = load_entity(settings.rules_dir, entity)
    doc = next(d for d in rules.documents if d.collection == collection)
    columns = [doc.key] if doc.parent is None else [doc.parent, doc.key]
    with psycopg.connect(pg_dsn) as conn:
        pg = [tuple(r) for r in conn.execute(sql.SQL("SELECT {} FROM {}").format(
            sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in columns),
            sql.Identifier(doc.table)))]
    if doc.parent is None:
        fs = [(d.id,) for d in fs_client.collection(collection).select([]).stream()]
    else:
        paths = [d.reference.path.split("/") for d in fs_client.collection_group(collection).select([]).stream()]
        fs = [(p[1], p[3]) for p in paths if len(p) == 4 and p[0] == rules.top_collection]
    return pg, fs


def _check_resume(settings, entity: str, collection: str, fail_key: Key, uninterrupted, full_reads, pg_dsn,
                  fs_client, caplog, from_start: bool = False) -> tuple[int, int]:
    """Fail the audit at `fail_key` of `collection`, resume it, and check the result and what the resumed run
    read (`from_start`: all of `collection`). Returns what it read of `collection` (Postgres, Firestore)."""
    kinds = [d.collection for d in load_entity(settings.rules_dir, entity).documents]
    _fail_at(pg_dsn, collection, fail_key)
    failed = run_audit(dataclasses.replace(settings, checkpoint_every=1), [entity])
    assert "injected failure" in (failed.entities[0].error or ""), failed.entities[0].error
    _fail_at(pg_dsn, None, None)
    with psycopg.connect(pg_dsn) as conn:
        saved, last_key = conn.execute(f"SELECT collection, last_key FROM {checkpoint.TABLE} WHERE run_id = %s",
                                       [failed.run_id]).fetchone()
    pg_keys, fs_keys = _keys(settings, entity, collection, pg_dsn, fs_client)
    merged = sorted(set(pg_keys) | set(fs_keys), key=sort_key)
    assert saved == collection and tuple(last_key) == merged[merged.index(fail_key) - 1]  # the record before

    caplog.clear()
    resumed = run_audit(settings, [entity], resume=failed.run_id)  # checkpoint_every 0: resuming needs no saves
    reads = _reads(caplog)
    assert _summary(resumed) == uninterrupted, (collection, fail_key)

    start = id_sort_key(last_key[0])  # the checkpoint's root (or parent) ID, inclusive
    expected = {f"postgres {collection}": sum(from_start or id_sort_key(k[0]) >= start for k in pg_keys),
                f"firestore {collection}": sum(from_start or id_sort_key(k[0]) >= start for k in fs_keys)}
    later = kinds[kinds.index(collection) + 1:]
    expected.update({s: n for s, n in full_reads.items() if s.split(" ", 1)[1] in later})  # read whole
    assert reads == expected, (collection, fail_key)  # and the kinds done before it: not read at all
    return expected[f"postgres {collection}"], expected[f"firestore {collection}"]


def _no_settle_wait(settings):
    """These fixtures' settings come from the shipped config (a settle wait of seconds, per run): no wait."""
    return dataclasses.replace(settings, settle_s=0)


def _uninterrupted(settings, entity: str, caplog):
    caplog.clear()
    result = _summary(run_audit(settings, [entity]))
    return result, _reads(caplog)


def test_resume_reads_only_what_was_left_of_the_root_kind_and_of_a_subcollection_kind(
        customers_loaded, fs_client, pg_dsn, caplog):
    settings, people = customers_loaded
    settings = _no_settle_wait(settings)
    _drift(people, fs_client, pg_dsn)
    caplog.set_level(logging.DEBUG, logger="reconciler.engine")
    uninterrupted, full = _uninterrupted(settings, "customers", caplog)
    assert uninterrupted[0].drifted == 3
    _inject_failure(pg_dsn)
    for collection in ("customers", "addresses"):  # the root kind; a subcollection kind, the root kind done
        pg_keys, fs_keys = _keys(settings, "customers", collection, pg_dsn, fs_client)
        merged = sorted(set(pg_keys) | set(fs_keys), key=sort_key)
        assert full[f"postgres {collection}"] == len(pg_keys) > 20  # the uninterrupted run read every one
        fail_key = merged[len(merged) * 9 // 10]  # dies at 90%
        pg, fs = _check_resume(settings, "customers", collection, fail_key, uninterrupted, full, pg_dsn,
                               fs_client, caplog)
        assert 0 < pg <= len(pg_keys) // 5 and fs <= len(fs_keys) // 5, (pg, fs)  # the last 10%, a root's worth more


def test_resume_starts_both_sides_at_the_same_key_among_numeric_ids_and_icu_sorted_text(
        widgets, fs_client, caplog):  # noqa: F811
    """Every root of the widgets (numeric __id<n>__ IDs, text keys that ICU and byte order sort apart) as the
    checkpoint's, in the root kind and in the subcollection kind (mid-parent and at a parent's last child)."""
    settings = _no_settle_wait(widgets)
    pg_dsn = settings.postgres.dsn
    col = fs_client.collection("widgets")
    col.document("__id10__").delete()
    col.document("B").update({"label": "changed"})
    col.document("é").collection("parts").document("__id20__").update({"qty": 1000})
    col.document("Ab").collection("parts").document("new").set({"qty": 1})
    caplog.set_level(logging.DEBUG, logger="reconciler.engine")
    uninterrupted, full = _uninterrupted(settings, "widgets", caplog)
    _inject_failure(pg_dsn)
    for collection in ("widgets", "parts"):
        pg_keys, fs_keys = _keys(settings, "widgets", collection, pg_dsn, fs_client)
        merged = sorted(set(pg_keys) | set(fs_keys), key=sort_key)
        if collection == "widgets":
            fail_keys = merged[1:]
        else:  # the 1st child of each parent (the checkpoint at the previous parent's end), and the 3rd (mid-parent)
            by_parent = [list(g) for _, g in groupby(merged, key=lambda k: k[0])]
            fail_keys = [g[0] for g in by_parent[1:]] + [g[2] for g in by_parent if len(g) > 2]
        for fail_key in fail_keys:
            _check_resume(settings, "widgets", collection, fail_key, uninterrupted, full, pg_dsn, fs_client, caplog)


def test_a_checkpoint_at_a_key_firestore_refuses_as_a_bound_resumes_from_the_start_of_its_kind(
        widgets, fs_client, caplog):  # noqa: F811
    """A Postgres-only key such as "x/y" cannot be a Firestore document ID, nor a query's bound: the kind it
    was the checkpoint of is read from its start again (and what was done skipped), still to the exact result."""
    settings = _no_settle_wait(widgets)
    pg_dsn = settings.postgres.dsn
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO widgets (code, label) VALUES ('x/y', 'only in Postgres')")
        conn.execute("INSERT INTO widget_parts VALUES ('x/y', 'p', 1)")
    caplog.set_level(logging.DEBUG, logger="reconciler.engine")
    uninterrupted, full = _uninterrupted(settings, "widgets", caplog)
    assert uninterrupted[0].missing_in_firestore == 2
    _inject_failure(pg_dsn)
    for collection, last in (("widgets", ("x/y",)), ("parts", ("x/y", "p"))):
        pg_keys, fs_keys = _keys(settings, "widgets", collection, pg_dsn, fs_client)
        merged = sorted(set(pg_keys) | set(fs_keys), key=sort_key)
        fail_key = merged[merged.index(last) + 1]
        _check_resume(settings, "widgets", collection, fail_key, uninterrupted, full, pg_dsn, fs_client, caplog,
                      from_start=True)


def test_is_document_id_says_what_the_emulator_takes_as_a_range_bound(fs_client):
    rules = load_entity(Path(__file__).parent / "fixtures" / "rules", "widgets")
    fs_client.collection("widgets").document("a").set({"label": "a"})
    reader = fs_source.FirestoreReader(fs_client, retries=0)
    ids = ["a", "é" * 750, "é" * 751, "a/b", ".", "..", "..a", "__x", "__x__", "__id__", "__id7__", "__id007__",
           "__id-0__", "__id-3__", f"__id{2**63 - 1}__", f"__id{2**63}__", f"__id{-2**63}__", f"__id{-2**63 - 1}__"]
    for doc_id in ids:
        try:
            list(reader.stream(rules.root, Scope(start=doc_id), "widgets"))
            taken = True
        except (ValueError, RuntimeFailure):
            taken = False
        assert fs_source.is_document_id(doc_id) == taken, doc_id
