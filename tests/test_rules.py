"""Rules files: the customers rules load; broken files give errors that name the file and the line."""

from pathlib import Path

import pytest

from reconciler.errors import RulesError
from reconciler.rules import load_entity
from reconciler.rules.loader import parse_entity
from reconciler.rules.schema_check import check_against_schema

RULES = Path(__file__).parents[1] / "rules"

MINIMAL = """\
entity: things
source_of_truth: postgres
collection: things
table: things
key: id
columns:
  id:
  display_name:
"""


def test_customers_rules_load_with_every_section():
    r = load_entity(RULES, "customers")
    assert r.source_of_truth == "postgres"
    assert {e.table: e.kind for e in r.root.embeds} == {
        "customer_sources": "map", "customer_metrics": "one", "customer_demographics": "one",
        "customer_risk_assessments": "latest", "customer_engagement": "one", "customer_segments": "set"}
    assert [s.collection for s in r.subcollections] == ["addresses", "ipAddresses", "activities"]
    risk = next(e for e in r.root.embeds if e.into == ("risk",))
    assert next(c for c in risk.columns if c.name == "sift_score").path == ("externalScores", "sift")


def test_default_naming_is_camel_case_and_identity_is_one_line():
    r = parse_entity(MINIMAL, "things.yaml")
    assert [c.path for c in r.root.columns] == [("id",), ("displayName",)]
    r = parse_entity(MINIMAL.replace("key: id", "key: id\nnaming: identity"), "things.yaml")
    assert [c.path for c in r.root.columns] == [("id",), ("display_name",)]


@pytest.mark.parametrize("text, line, words", [
    (MINIMAL + "colour: red\n", 9, "unknown key 'colour'"),
    (MINIMAL.replace("  display_name:\n", "  display_name: {feild: x}\n"), 8, "unknown key 'feild'"),
    (MINIMAL + "  title: displayName\n", 9, "mapped twice (first at line 8)"),
    (MINIMAL + "  id:\n", 9, "duplicate"),
    (MINIMAL + "  nested: displayName.first\n", 9, "inside 'displayName'"),
    (MINIMAL.replace("source_of_truth: postgres", "source_of_truth: both"), 2, "source_of_truth"),
    (MINIMAL + "embed:\n  - table: t2\n    join: thing_id\n    as: many\n    into: x\n", 12, "as must be one of"),
    (MINIMAL + "embed:\n  - table: t2\n    join: thing_id\n    as: set\n    into: x\n    columns: {a: }\n", 10,
     "needs 'set_key'"),
    (MINIMAL.replace("  display_name:\n", "  display_name: {tolerance: -1}\n"), 8, "non-negative"),
    ("entity: things\n  bad: [indent\n", 2, "invalid YAML"),
])
def test_broken_rules_name_file_and_line(text, line, words):
    with pytest.raises(RulesError) as exc:
        parse_entity(text, "rules/things.yaml")
    assert exc.value.file == "rules/things.yaml"
    assert exc.value.line == line, str(exc.value)
    assert words.lower() in str(exc.value).lower()
    assert str(exc.value).startswith(f"rules/things.yaml:{line}:")


def test_entity_name_must_match_the_file(tmp_path):
    (tmp_path / "widgets.yaml").write_text(MINIMAL)
    with pytest.raises(RulesError, match="named for 'widgets'"):
        load_entity(tmp_path, "widgets")
    with pytest.raises(RulesError, match="no rules for entity 'nope'"):
        load_entity(tmp_path, "nope")


def test_schema_check_names_unknown_tables_and_columns_with_lines():
    r = parse_entity(MINIMAL, "things.yaml")
    assert check_against_schema(r, {"things": {"id": "uuid", "display_name": "text"}}) == []
    problems = check_against_schema(r, {"things": {"id": "uuid"}})
    assert [(p.line, "things.display_name does not exist" in str(p)) for p in problems] == [(8, True)]
    problems = check_against_schema(r, {})
    assert "table 'things' does not exist" in str(problems[0])



# ---------------------------------------------------------------- references, where, parent_collection

def test_every_rules_file_of_the_repo_loads():
    from reconciler.rules import load_rules_dir

    loaded = load_rules_dir(RULES)
    assert {"customers", "orders", "customer_preferences", "conversations", "service_categories", "services",
            "service_packages"} <= set(loaded)
    services = loaded["services"]
    category = next(c for c in services.root.columns if c.name == "category_id")
    assert (category.references.table, category.references.column, category.references.join) == (
        "service_categories", "firestore_id", "id")
    assert services.subcollections[0].parent_references.table == "services"
    prefs = loaded["customer_preferences"]
    assert prefs.top_collection == "customers" and prefs.root.parent == "customer_id"
    billing = next(e for e in loaded["orders"].root.embeds if e.into == ("billing_address",))
    assert billing.where == (("address_type", "billing"),) and billing.row_key == ("address_type",)


@pytest.mark.parametrize("text, line, message", [
    (MINIMAL + "  other_id: {references: nodot}\n", 9, "must be TABLE.COLUMN"),
    (MINIMAL + "  other_id: {references: {table: t}}\n", 9, "needs 'column'"),
    (MINIMAL + "  other_id: {references: {table: t, column: c, via: x}}\n", 9, "unknown key 'via'"),
    (MINIMAL + "embed:\n  - {table: kids, join: thing_id, as: one, into: kid, where: [a], columns: {age: }}\n",
     10, "where must be a non-empty mapping"),
    (MINIMAL + "embed:\n  - {table: kids, join: thing_id, as: one, into: kid, where: {age: 1}, columns: {age: }}\n",
     10, "where column 'age' is also mapped"),
    (MINIMAL.replace("key: id", "key: id\nparent: owner_id"), 6, "needs both `parent_collection`"),
    (MINIMAL.replace("key: id", "key: id\nparent_references: owners.doc_id"), 6, "parent_references needs `parent`"),
    (MINIMAL.replace("key: id", "key: id\nparent: o\nparent_collection: owners")
     + "subcollections:\n  - {collection: x, table: x, key: id, parent: t_id, columns: {id: }}\n",
     11, "cannot have subcollections"),
])
def test_new_keys_are_validated_with_file_and_line(text, line, message):
    with pytest.raises(RulesError) as err:
        parse_entity(text, "things.yaml")
    assert str(err.value).startswith(f"things.yaml:{line}:") and message in str(err.value)


def test_schema_check_names_missing_referenced_tables_and_columns():
    r = parse_entity(MINIMAL + "  other_id: {references: others.doc_id}\n"
                     + "embed:\n  - {table: kids, join: thing_id, as: one, into: kid, where: {kind: a}, "
                       "columns: {age: }}\n", "things.yaml")
    schema = {"things": {"id": "uuid", "display_name": "text", "other_id": "uuid"},
              "kids": {"thing_id": "uuid", "age": "int4"}}
    assert sorted(str(e) for e in check_against_schema(r, schema)) == [
        "things.yaml:11: embed 'kids' where: column kids.kind does not exist (columns: age, thing_id)",
        "things.yaml:9: references: table 'others' does not exist in the database's current schema"]
    schema["others"] = {"id": "uuid"}
    errors = [str(e) for e in check_against_schema(r, schema)]
    assert "things.yaml:9: references: column others.doc_id does not exist (columns: id)" in errors


def test_a_rules_file_that_is_not_utf8_is_a_rules_error_naming_the_file_line_and_byte(tmp_path):
    from click.testing import CliRunner

    from reconciler.cli import main

    (tmp_path / "things.yaml").write_bytes(MINIMAL.encode().replace(b"display_name", b"display_n\xe4me"))
    with pytest.raises(RulesError) as err:
        load_entity(tmp_path, "things")
    offset = MINIMAL.encode().index(b"display_name") + len("display_n")
    assert err.value.file == str(tmp_path / "things.yaml") and err.value.line == 8
    assert f"byte {offset} (0xe4)" in str(err.value)
    r = CliRunner(env={"RECONCILER_RULES_DIR": str(tmp_path)}).invoke(
        main, ["rules", "check", "--entity", "things", "--offline"])
    assert r.exit_code == 2, r.output
    assert f"things.yaml:8: not UTF-8: byte {offset}" in r.output and "UnicodeDecodeError" not in r.output
