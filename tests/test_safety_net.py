"""The engine's safety net: an exception that is no ReconcilerError (a bug, a library's own error) inside one
entity's audit fails that entity with the exception's type and message; the other entities, the report and
the history go on, as for a RuntimeFailure."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import psycopg

from reconciler.runner import run_job

ROOT = Path(__file__).parents[1]


def test_an_unexpected_error_fails_one_entity_and_the_run_goes_on(customers_loaded, fs_client, tmp_path, caplog):
    settings, people = customers_loaded
    rules = tmp_path / "rules"
    rules.mkdir()
    customers = (ROOT / "rules" / "customers.yaml").read_text()
    (rules / "customers.yaml").write_text(customers)
    # valid rules, but the Firestore client itself refuses the collection path (an even number of segments):
    # a ValueError of google-cloud-firestore's, raised when the sweep asks for the collection
    (rules / "mirror.yaml").write_text(customers.replace("entity: customers", "entity: mirror", 1)
                                       .replace("\ncollection: customers\n", "\ncollection: customers/mirror\n", 1))
    fs_client.collection("customers").document(people[2].id).update({"lastName": "Drifted"})
    settings = dataclasses.replace(settings, rules_dir=rules, report_dir=tmp_path / "out")

    with caplog.at_level(logging.ERROR, logger="reconciler.engine"):
        result = run_job(settings, ["mirror", "customers"])
    mirror, audited = result.entities
    assert mirror.entity == "mirror" and mirror.failed and mirror.error.startswith("unexpected ValueError: ")
    assert audited.entity == "customers" and audited.error is None
    assert [f.key for f in audited.findings] == [f"customers/{people[2].id}"]
    (logged,) = [r for r in caplog.records if r.exc_info and r.levelno == logging.ERROR]
    assert logged.exc_info[0] is ValueError  # the traceback is in the log

    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [(e["entity"], bool(e["error"])) for e in report["entities"]] == [("mirror", True), ("customers", False)]
    with psycopg.connect(settings.postgres.dsn) as conn:
        rows = conn.execute("SELECT entity, outcome, error FROM reconciler_run_entities ORDER BY entity").fetchall()
    assert [(e, o) for e, o, _ in rows] == [("customers", "drift"), ("mirror", "failed")]
    assert "ValueError" in rows[1][2]
