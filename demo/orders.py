"""Seed-001-shaped orders: Firestore orders/{orderId} as Shopify webhooks write them, and the normalized
Postgres copy (schema/orders.sql) a correct sync would write. Both sides say the same thing.

Every document also carries webhook fields the rules do not map (token, admin_graphql_api_id, ...), and every
Postgres table columns Firestore does not have (synced_at, internal_note, warehouse): neither is compared.
"""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal
from typing import Any

from demo.dataset import Dataset

SCHEMA = "orders.sql"
UTC = dt.timezone.utc
TABLES = ("orders", "order_line_items", "order_addresses", "order_shipping_lines", "order_discount_applications",
          "order_discount_codes", "order_tax_lines", "order_refunds")
FIRST = ["Ana", "Ben", "Chloé", "Dmitri", "Eve", "Farah", "Gus", "Hana"]
LAST = ["Ng", "Okafor", "Pérez", "Quinn", "Rossi", "Sato", "Tan", "Ulrich"]
PRODUCTS = [("Ceramic Mug", "Kiln & Co"), ("Linen Apron", "Weft"), ("Pour-over Kettle", "Brewline"),
            ("Coffee Beans 1kg", "Roastery 9"), ("Tea Towel", "Weft")]


def _money(x: float) -> str:
    return f"{x:.2f}"


def _iso(t: dt.datetime | None) -> str | None:
    return None if t is None else t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _address(rng: random.Random, first: str, last: str) -> dict[str, Any]:
    city, province, code, zip_ = rng.choice([("Norfolk", "Virginia", "VA", "23510"), ("Austin", "Texas", "TX", "78701"),
                                             ("Portland", "Oregon", "OR", "97201")])
    return {"first_name": first, "last_name": last, "name": f"{first} {last}", "company": rng.choice([None, "Acme"]),
            "address1": f"{rng.randint(1, 999)} Main St", "address2": rng.choice([None, "Apt 2"]), "city": city,
            "province": province, "province_code": code, "country": "United States", "country_code": "US",
            "zip": zip_, "phone": rng.choice([None, "+15555550100"]),
            "latitude": round(rng.uniform(30, 45), 6), "longitude": round(rng.uniform(-122, -76), 6)}


def _order(data: Dataset, i: int, rng: random.Random) -> None:
    oid = 5_100_000_000_000 + i * 1000 + rng.randrange(1000)
    created = dt.datetime(2025, 3, 1, tzinfo=UTC) + dt.timedelta(hours=i * 7, seconds=rng.randrange(3600))
    first, last = rng.choice(FIRST), rng.choice(LAST)
    email = f"{first.lower().replace('é', 'e')}.{last.lower().replace('é', 'e')}{i}@example.com"
    tax_rate = rng.choice([0.06, 0.0825, 0.0])
    items, rows_items = [], []
    for k in range(rng.randint(1, 4)):
        title, vendor = rng.choice(PRODUCTS)
        price = rng.randint(500, 9000) / 100
        qty = rng.randint(1, 3)
        item_tax = [{"title": "State Tax", "rate": tax_rate, "price": _money(price * qty * tax_rate)}] if tax_rate else []
        allocs = [{"amount": "1.00", "discount_application_index": 0}] if k == 0 and i % 3 == 0 else []
        props = [{"name": "gift_wrap", "value": "yes"}] if rng.random() < 0.3 else []
        item = {"id": 13_000_000_000_000 + i * 10 + k, "product_id": 7_000_000 + rng.randrange(500),
                "variant_id": 40_000_000 + rng.randrange(5000), "title": title, "variant_title": rng.choice([None, "Large"]),
                "sku": f"SKU-{rng.randrange(10000):04d}", "vendor": vendor, "quantity": qty, "price": _money(price),
                "total_discount": _money(1.0 if allocs else 0.0), "grams": rng.randint(100, 2000),
                "requires_shipping": True, "taxable": bool(tax_rate), "gift_card": False,
                "fulfillment_status": rng.choice([None, "fulfilled"]), "fulfillable_quantity": qty,
                "supplier": rng.choice(["Kiln & Co", "Weft"]), "supplier_sku": f"SUP-{k}{i}",
                "supply_price": _money(price * 0.55), "handling_cost": _money(rng.choice([0, 1.5, 2.25])),
                "tax_lines": item_tax, "discount_allocations": allocs, "properties": props}
        items.append(item)
        rows_items.append({**item, "order_id": oid, "price": Decimal(item["price"]),
                           "total_discount": Decimal(item["total_discount"]),
                           "supply_price": Decimal(item["supply_price"]), "handling_cost": Decimal(item["handling_cost"]),
                           "warehouse": rng.choice(["norfolk", "austin"])})
    subtotal = sum(float(x["price"]) * x["quantity"] for x in items)
    shipping = [{"id": 4_200_000_000 + i * 10 + k, "title": t, "code": c, "source": "shopify",
                 "carrier_identifier": rng.choice([None, "ups"]), "price": p, "discounted_price": p,
                 "tax_lines": []}
                for k, (t, c, p) in enumerate(rng.sample([("Standard", "STD", "5.99"), ("Express", "EXP", "14.50")],
                                                         rng.randint(0, 1) + (i % 2)))]
    discounts = []
    if i % 3 == 0:
        discounts.append({"type": "discount_code", "title": "SPRING10", "description": None, "value": "10.00",
                          "value_type": "percentage", "allocation_method": "across", "target_selection": "all",
                          "target_type": "line_item"})
    if i % 5 == 0:
        discounts.append({"type": "manual", "title": "Loyalty", "description": "thank you", "value": "5.00",
                          "value_type": "fixed_amount", "allocation_method": "across", "target_selection": "all",
                          "target_type": "line_item"})
    codes = [{"code": "SPRING10", "amount": _money(subtotal * 0.1), "type": "percentage"}] if i % 3 == 0 else []
    total_discounts = sum(float(c["amount"]) for c in codes)
    tax = subtotal * tax_rate
    tax_lines = ([{"title": "State Tax", "rate": tax_rate, "price": _money(tax), "channel_liable": False}]
                 if tax_rate else [])
    if tax_rate and i % 4 == 0:
        tax_lines.append({"title": "City Tax", "rate": 0.01, "price": _money(subtotal * 0.01), "channel_liable": False})
    total = subtotal - total_discounts + tax + sum(float(s["price"]) for s in shipping)
    refunds = []
    if i % 6 == 5:
        refunds.append({"id": 9_000_000_000 + i, "note": "damaged", "restock": False, "user_id": 800_000 + i,
                        "refund_line_items": [{"line_item_id": items[0]["id"], "quantity": 1}],
                        "transactions": [{"kind": "refund", "amount": items[0]["price"], "status": "success"}],
                        "order_adjustments": [], "created_at": _iso(created + dt.timedelta(days=3)),
                        "processed_at": _iso(created + dt.timedelta(days=3, minutes=5))})
    financial = "partially_refunded" if refunds else rng.choice(["paid", "paid", "pending", "authorized"])
    customer = {"id": 6_000_000_000 + rng.randrange(10**6), "email": email, "first_name": first, "last_name": last,
                "orders_count": rng.randint(1, 12), "tags": "", "accepts_marketing": False,
                "created_at": _iso(created - dt.timedelta(days=30))}
    billing = _address(rng, first, last)
    shipping_address = billing if rng.random() < 0.7 else _address(rng, first, last)
    has_shipping = bool(shipping)
    doc: dict[str, Any] = {
        "id": oid, "admin_graphql_api_id": f"gid://shopify/Order/{oid}", "token": f"tok{oid:x}",
        "order_number": 1000 + i, "name": f"#{1000 + i}", "email": email, "phone": None,
        "financial_status": financial, "fulfillment_status": rng.choice([None, "fulfilled", "partial"]),
        "currency": "USD", "presentment_currency": "USD",
        "current_total_price": _money(total), "current_subtotal_price": _money(subtotal - total_discounts),
        "current_total_tax": _money(tax), "current_total_discounts": _money(total_discounts),
        "total_price": _money(total), "subtotal_price": _money(subtotal - total_discounts), "total_tax": _money(tax),
        "total_discounts": _money(total_discounts), "total_weight": sum(x["grams"] * x["quantity"] for x in items),
        "taxes_included": False, "confirmed": True, "test": False, "buyer_accepts_marketing": i % 2 == 0,
        "source_name": rng.choice(["web", "pos", "shopify_draft_order"]), "payment_gateway_names": ["shopify_payments"],
        "payment_terms": {"payment_terms_name": "Net 30", "due_in_days": 30} if i % 7 == 0 else None,
        "tags": rng.choice(["", "vip", "vip, wholesale"]), "note": rng.choice([None, "leave at the door"]),
        "note_attributes": [{"name": "source", "value": "instagram"}] if i % 2 else [],
        "customer": customer, "billing_address": billing,
        "line_items": items, "shipping_lines": shipping, "discount_applications": discounts,
        "discount_codes": codes, "tax_lines": tax_lines, "refunds": refunds,
        "cancel_reason": None, "cancelled_at": None, "closed_at": None,
        "processed_at": _iso(created + dt.timedelta(seconds=2)), "created_at": _iso(created),
        "updated_at": _iso(created + dt.timedelta(minutes=rng.randint(1, 600))),
    }
    if has_shipping:
        doc["shipping_address"] = shipping_address
    data.docs[f"orders/{oid}"] = doc

    def ts(v: str | None) -> dt.datetime | None:
        return None if v is None else dt.datetime.fromisoformat(v.replace("Z", "+00:00"))

    money = ("current_total_price", "current_subtotal_price", "current_total_tax", "current_total_discounts",
             "total_price", "subtotal_price", "total_tax", "total_discounts")
    plain = ("id", "order_number", "name", "email", "phone", "financial_status", "fulfillment_status", "currency",
             "total_weight", "taxes_included", "confirmed", "test", "buyer_accepts_marketing", "source_name",
             "payment_gateway_names", "payment_terms", "tags", "note", "note_attributes", "cancel_reason")
    row = {k: doc[k] for k in plain} | {k: Decimal(doc[k]) for k in money}
    row |= {k: ts(doc[k]) for k in ("cancelled_at", "closed_at", "processed_at", "created_at", "updated_at")}
    row |= {"customer_id": customer["id"], "customer_email": email, "customer_first_name": first,
            "customer_last_name": last, "customer_orders_count": customer["orders_count"],
            "internal_note": rng.choice([None, "checked by ops"])}
    data.add_row("orders", row)
    for x in rows_items:
        data.add_row("order_line_items", x)
    for kind, a in (("billing", billing), ("shipping", shipping_address if has_shipping else None)):
        if a is not None:
            data.add_row("order_addresses", {"order_id": oid, "address_type": kind, **a})
    for s in shipping:
        data.add_row("order_shipping_lines", {**s, "order_id": oid, "price": Decimal(s["price"]),
                                              "discounted_price": Decimal(s["discounted_price"])})
    for d in discounts:
        data.add_row("order_discount_applications", {**d, "order_id": oid, "value": Decimal(d["value"])})
    for c in codes:
        data.add_row("order_discount_codes", {**c, "order_id": oid, "amount": Decimal(c["amount"])})
    for t in tax_lines:
        data.add_row("order_tax_lines", {**t, "order_id": oid, "price": Decimal(t["price"])})
    for r in refunds:
        data.add_row("order_refunds", {**r, "order_id": oid, "created_at": ts(r["created_at"]),
                                       "processed_at": ts(r["processed_at"])})


def generate(n: int, seed: int = 0) -> Dataset:
    """n orders, the same on both sides."""
    rng = random.Random(seed)
    data = Dataset()
    data.tables(*TABLES)
    for i in range(n):
        _order(data, i, rng)
    return data
