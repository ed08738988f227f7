"""Least privilege, on real Postgres roles: an audit needs only SELECT; `--repair --apply` without the rights
to write fails before writing anything, naming every missing privilege; the README's grants are enough."""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from psycopg.conninfo import make_conninfo
from test_repair_orders import FIXTURES, orders_loaded  # noqa: F401  (a fixture)

from reconciler.cli import main
from reconciler.repair import LOG_DDL, LOG_TABLE

ROOT = Path(__file__).parents[1]
ORDER_TABLES = ("orders", "order_line_items", "order_customers", "order_fulfillments")
FIRESTORE_TRAIL_GRANTS = (f"GRANT SELECT, INSERT, UPDATE ON {LOG_TABLE} TO {{role}}",
                          f"GRANT USAGE ON SEQUENCE {LOG_TABLE}_id_seq TO {{role}}")


@pytest.fixture
def make_role(pg_dsn):
    """make_role(*grants) -> the DSN of a new LOGIN role with only these grants (and PUBLIC's)."""
    made = []

    def make(*grants: str) -> str:
        role = f"rc_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {role} LOGIN")
            for g in grants:
                conn.execute(g.format(role=role))
        made.append(role)
        return make_conninfo(pg_dsn, user=role)

    yield make
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for role in made:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


def _grant(conn_dsn: str, *statements: str) -> None:
    with psycopg.connect(conn_dsn, autocommit=True) as conn:
        for s in statements:
            conn.execute(s)


def _invoke(dsn: str, rules_dir: Path, *args: str):
    return CliRunner(env={"RECONCILER_PG_DSN": dsn, "RECONCILER_RULES_DIR": str(rules_dir)}).invoke(
        main, [*args, "--no-progress"])


def _dump(dsn: str, tables: tuple[str, ...]) -> dict[str, list]:
    with psycopg.connect(dsn) as conn:
        return {t: conn.execute(f"SELECT to_jsonb(t)::text FROM {t} AS t ORDER BY 1").fetchall() for t in tables}


def _log_exists(dsn: str) -> bool:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT to_regclass(%s) IS NOT NULL", [LOG_TABLE]).fetchone()[0]


def test_select_only_role_audits_and_cannot_repair_toward_firestore(customers_loaded, fs_client, pg_dsn, make_role):
    settings, people = customers_loaded
    ref = fs_client.collection("customers").document(people[0].id)
    ref.update({"metrics.totalOrders": -1})
    rules = ROOT / "rules"
    ro = make_role("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")

    audit = _invoke(ro, rules, "--entity", "customers")
    assert audit.exit_code == 1 and "1 mismatched" in audit.output, audit.output

    # no audit table yet, and no right to create one
    res = _invoke(ro, rules, "--entity", "customers", "--repair", "--apply")
    assert res.exit_code == 3, res.output
    assert "lacks CREATE on schema public" in res.output and "Nothing was written" in res.output
    assert ref.get().to_dict()["metrics"]["totalOrders"] == -1 and not _log_exists(pg_dsn)

    # the audit table exists (an owner created it), but the role may not insert into it
    _grant(pg_dsn, LOG_DDL)
    res = _invoke(ro, rules, "--entity", "customers", "--repair", "--apply")
    assert res.exit_code == 3, res.output
    assert f"INSERT on table {LOG_TABLE}" in res.output and f"USAGE on sequence public.{LOG_TABLE}_id_seq" in res.output
    assert "CREATE" not in res.output and "table customers" not in res.output  # Postgres is not written
    assert ref.get().to_dict()["metrics"]["totalOrders"] == -1

    # the README's grants for a repair toward Firestore are enough (its trail is written ahead, then settled)
    repairer = make_role("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}", *FIRESTORE_TRAIL_GRANTS)
    res = _invoke(repairer, rules, "--entity", "customers", "--repair", "--apply")
    assert res.exit_code == 0, res.output
    assert ref.get().to_dict()["metrics"]["totalOrders"] != -1
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute(f"SELECT count(*) FROM {LOG_TABLE}").fetchone()[0] == 1


def test_select_only_role_cannot_repair_toward_postgres(orders_loaded, fs_client, pg_dsn, make_role):  # noqa: F811
    settings, data = orders_loaded
    fs_client.collection("orders").document("ord_1000").update({"email": "new@example.com"})
    fs_client.collection("orders").document("ord_1003").delete()  # an orphan row (no fulfillments under it)
    rules = FIXTURES / "rules"
    _grant(pg_dsn, LOG_DDL)
    ro = make_role("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}",
                   f"GRANT INSERT ON {LOG_TABLE} TO {{role}}", f"GRANT USAGE ON SEQUENCE {LOG_TABLE}_id_seq TO {{role}}")
    before = _dump(pg_dsn, ORDER_TABLES)

    audit = _invoke(ro, rules, "--entity", "orders")
    assert audit.exit_code == 1, audit.output
    res = _invoke(ro, rules, "--entity", "orders", "--repair", "--apply", "--delete-orphans", "--force")
    assert res.exit_code == 3, res.output
    for table in ORDER_TABLES:
        for privilege in ("INSERT", "UPDATE", "DELETE"):
            assert f"{privilege} on table {table}" in res.output, res.output
    assert "SELECT on" not in res.output and LOG_TABLE not in res.output
    assert _dump(pg_dsn, ORDER_TABLES) == before
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute(f"SELECT count(*) FROM {LOG_TABLE}").fetchone()[0] == 0

    tables = ", ".join(ORDER_TABLES)
    writer = make_role(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {tables} TO {{role}}",
                       f"GRANT INSERT ON {LOG_TABLE} TO {{role}}", f"GRANT USAGE ON SEQUENCE {LOG_TABLE}_id_seq TO {{role}}")
    res = _invoke(writer, rules, "--entity", "orders", "--repair", "--apply", "--delete-orphans", "--force")
    assert res.exit_code == 0, res.output
    assert _invoke(writer, rules, "--entity", "orders").exit_code == 0


def test_a_read_only_session_is_refused_before_anything_is_written(customers_loaded, fs_client, pg_dsn, make_role,
                                                                   tmp_path):
    """A role with every grant whose sessions are read-only (a replica's DSN, default_transaction_read_only):
    the privilege check alone passes it; proving a write of the trail does not."""
    settings, people = customers_loaded
    refs = [fs_client.collection("customers").document(p.id) for p in people[:3]]
    for ref in refs:
        ref.update({"metrics.totalOrders": -1})
    before = [ref.get().update_time for ref in refs]
    _grant(pg_dsn, LOG_DDL)
    ro = make_role("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}", *FIRESTORE_TRAIL_GRANTS,
                   "ALTER ROLE {role} SET default_transaction_read_only = on")
    res = _invoke(ro, ROOT / "rules", "--entity", "customers", "--repair", "--apply", "--force")
    assert res.exit_code == 3, res.output
    assert f"cannot write the repair audit trail {LOG_TABLE}" in res.output, res.output
    assert "read-only" in res.output and "Nothing was written" in res.output
    assert [ref.get().update_time for ref in refs] == before  # Firestore untouched
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute(f"SELECT count(*) FROM {LOG_TABLE}").fetchone()[0] == 0

    # no trail table yet: the check creates one inside the transaction it rolls back, and is refused the same way
    _grant(pg_dsn, f"DROP TABLE {LOG_TABLE}", "GRANT CREATE ON SCHEMA public TO PUBLIC")
    res = _invoke(ro, ROOT / "rules", "--entity", "customers", "--repair", "--apply", "--force")
    assert res.exit_code == 3 and "read-only" in res.output, res.output
    assert [ref.get().update_time for ref in refs] == before and not _log_exists(pg_dsn)
