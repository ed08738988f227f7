"""`rules new`'s pure part: columns matched to fields, types guessed, the rest listed; the result parses."""

from reconciler.rules.loader import parse_entity
from reconciler.rules.scaffold import new_rules

COLUMNS = {"id": "uuid", "doc_id": "text", "owner_id": "uuid", "display_name": "text", "unit_price": "numeric",
           "seen_at": "timestamptz", "ship_city": "text", "ship_zip": "text", "notes": "text", "created_at": "timestamptz"}
DOCS = [(f"w{i}", {"docId": f"w{i}", "ownerId": f"person_{i}", "displayName": "W", "unitPrice": "12.50",
                   "seenAt": "2025-01-01T00:00:00Z", "ship": {"city": "Oslo", "zipCode": "0150"},
                   "createdAt": None, "legacyFlag": True}) for i in range(3)]


def test_camel_case_is_guessed_and_every_decision_is_written_down():
    text = new_rules(entity="widgets", table="widgets", collection="widgets", columns=COLUMNS, documents=DOCS,
                     key="doc_id")
    assert "naming: camelCase" in text and "key: doc_id" in text
    lines = text.splitlines()
    assert "  doc_id:" in lines  # camelCase of the key column already names the field holding the ID
    assert "  display_name:" in lines
    assert "  unit_price: {type: decimal_string}   # money/numbers as strings" in lines
    assert "  seen_at: {type: timestamp}   # ISO-8601 strings" in lines
    assert "  ship_city: ship.city" in lines  # a flattened map path
    assert any(line.startswith("  # owner_id: {references: TABLE.COLUMN}") for line in lines)  # a TODO, not a guess
    assert "  #   id, ship_zip, notes" in lines  # unmatched columns (ship.zipCode flattens to ship_zip_code)
    assert "#   legacyFlag" in lines  # unmatched fields
    parse_entity(text, "widgets.yaml")  # what it writes is a valid rules file as it is


def test_identity_naming_and_the_id_field_mapped_to_the_key_column():
    docs = [(i, {"id": i, "display_name": "x", "notes": None}) for i in ("a", "b")]
    text = new_rules(entity="w", table="w", collection="w", columns=COLUMNS, documents=docs, key="doc_id")
    assert "naming: identity" in text and "  doc_id: id" in text.splitlines()
    assert "  id:" not in text.splitlines()  # the field `id` holds the document ID, not the UUID column
    parse_entity(text, "w.yaml")
