"""Seed-000-shaped sample customers, written to both sides by hand, as the dual-writing app would.

This is deliberately NOT derived from rules/customers.yaml: it is an independent, hand-written reading
of the seed (the Postgres tables and the Firestore document shape), so that the rules can be tested
against it. Each column spec says how a value is made and where the app puts it in the document.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import random
import unicodedata
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import psycopg
from google.cloud import firestore
from psycopg import sql
from psycopg.types.json import Jsonb

SCHEMA = Path(__file__).resolve().parents[1] / "schema" / "customers.sql"
SERVER = firestore.SERVER_TIMESTAMP  # what the app writes for server-set fields (updatedAt, ...)
UTC = dt.timezone.utc
JSONB = {"custom_attributes", "source_data", "sync_errors", "social_profiles", "demographic_sources", "push_tokens",
         "validation_result", "event_data", "data_snapshot"}
GENERATED = {"email_lowercase", "full_name"}  # generated columns: never inserted

FIRST = ["Pauline", "José", "Zoë", "Li", "Ana", "Björn", "Amara", "Kenji", "O'Neil", "Ssebo", "Émile", "Noor"]
LAST = ["Eldeeb", "García", "Müller", "Nakamura", "Okafor", "Smith", "Łukasz", "D'Souza", "Ng", "Ferreira"]
CITIES = [("Beverly Hills", "California", "CA", "US", "United States", "America/Los_Angeles"),
          ("Lagos", "Lagos", "LA", "NG", "Nigeria", "Africa/Lagos"),
          ("München", "Bayern", "BY", "DE", "Germany", "Europe/Berlin"),
          ("São Paulo", "São Paulo", "SP", "BR", "Brazil", "America/Sao_Paulo")]
WORDS = ["vip", "loyal", "high-value", "verified", "new", "churn-risk", "wholesale", "émigré", "🎉"]


@dataclass
class Customer:
    id: str
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    document: dict[str, Any] = field(default_factory=dict)
    subcollections: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)


class _Gen:
    """Value makers on one seeded Random."""

    def __init__(self, rng: random.Random, aside: random.Random | None = None) -> None:
        self.r = rng
        # values added to the data later draw from a stream of their own, so every value drawn before stays put
        # (tests pick their customers by what they hold)
        self.aside = aside or random.Random(0)

    def uuid(self) -> uuid.UUID:
        return uuid.UUID(int=self.r.getrandbits(128), version=4)

    def ts(self) -> dt.datetime:
        start = dt.datetime(2019, 1, 1, tzinfo=UTC)
        return start + dt.timedelta(seconds=self.r.randrange(0, 7 * 365 * 86400), microseconds=self.r.randrange(10**6))

    def date(self) -> dt.date:
        return dt.date(2019, 1, 1) + dt.timedelta(days=self.r.randrange(0, 2500))

    def dec(self, hi: float, scale: int = 2, lo: float = 0) -> Decimal:
        return Decimal(str(round(self.r.uniform(lo, hi), scale))).quantize(Decimal(1).scaleb(-scale))

    def int(self, hi: int = 1000, lo: int = 0) -> int:
        return self.r.randint(lo, hi)

    def bool(self) -> bool:
        return self.r.random() < 0.5

    def pick(self, options: list[Any]) -> Any:
        return self.r.choice(options)

    def text(self, n: int = 3) -> str:
        return " ".join(self.r.choice(WORDS) for _ in range(self.r.randint(1, n)))

    def words(self, k: int = 3) -> list[str]:
        return self.r.sample(WORDS, self.r.randint(0, k))

    def json(self) -> dict[str, Any]:
        return {"preferredContactTime": self.pick(["morning", "evening"]), "birthdayMonth": self.int(12, 1),
                "score": self.r.choice([0.5, 439.69, 12.0]), "flags": {"beta": self.bool(), "tags": self.words(2)}}

    def inet(self) -> Any:
        kind = self.r.random()
        if kind < 0.2:
            return ipaddress.IPv6Address(self.r.getrandbits(128))
        v4 = ipaddress.IPv4Address(self.r.getrandbits(32))
        # Node servers record IPv4 clients on a dual-stack socket as IPv4-mapped IPv6 addresses
        return ipaddress.IPv6Address(f"::ffff:{v4}") if kind < 0.3 else v4

    def app_ts(self) -> dt.datetime:
        """A time as the app's JavaScript Date holds it: milliseconds (drawn aside)."""
        start = dt.datetime(2019, 1, 1, tzinfo=UTC)
        return start + dt.timedelta(milliseconds=self.aside.randrange(0, 7 * 365 * 86400 * 1000))


def ip_text(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """An address as the app writes it to both sides (and as Postgres prints it): an IPv4-mapped IPv6 address
    with its IPv4 part dotted, which Python's str() would write in hex."""
    mapped = getattr(ip, "ipv4_mapped", None)
    return f"::ffff:{mapped}" if mapped is not None else str(ip)


def app_json(value: Any) -> str:
    """JSON as the app's JSON.stringify writes it into jsonb: a Date as its toISOString()."""
    def default(v: Any) -> str:
        if isinstance(v, dt.datetime):
            return v.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        raise TypeError(f"not JSON: {type(v).__name__}")
    return json.dumps(value, default=default)


# A spec row: (column, maker, document path or None for Postgres-only, nullable).
# Document path "!" + path: the app writes serverTimestamp() there instead of the column's value.
Spec = list[tuple[str, Callable[[_Gen], Any], str | None, bool]]


def _to_firestore(value: Any, rng: random.Random) -> Any:
    """What the app writes for a Postgres value."""
    if isinstance(value, Decimal):
        if value == value.to_integral_value() and rng.random() < 0.5:
            return int(value)  # the app writes `totalRefunded: 0`, not 0.0
        return float(value)
    if isinstance(value, (dt.datetime,)):
        return value
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return ip_text(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, list):
        return [_to_firestore(v, rng) for v in value]
    return value


def _put(doc: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    for p in parts[:-1]:
        doc = doc.setdefault(p, {})
    doc[parts[-1]] = value


def _fill(g: _Gen, spec: Spec, row: dict[str, Any], doc: dict[str, Any]) -> None:
    """Make each column's value into the row, and the app's version of it into the document."""
    for column, make, path, nullable in spec:
        value = None if nullable and g.r.random() < 0.2 else make(g)
        row[column] = value
        if path is None:
            continue
        if path.startswith("!"):
            _put(doc, path[1:], SERVER)
        elif value is not None:
            _put(doc, path, _to_firestore(value, g.r))
        elif g.r.random() < 0.5:  # NULL: the app writes null or leaves the field out
            _put(doc, path, None)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.capitalize() for p in rest)


def _s(column: str, make: Callable[[_Gen], Any], path: str | None = "", nullable: bool = True,
       prefix: str = "") -> tuple[str, Callable[[_Gen], Any], str | None, bool]:
    """A spec row whose document path defaults to prefix + camelCase(column)."""
    return column, make, (prefix + _camel(column) if path == "" else path), nullable


def _metrics_spec() -> Spec:
    p = "metrics."
    return [
        *[_s(c, lambda g: g.int(200), prefix=p, nullable=False) for c in
          ("total_orders", "completed_orders", "cancelled_orders", "returned_orders")],
        *[_s(c, lambda g: g.dec(20000), prefix=p, nullable=False) for c in
          ("total_spent", "total_refunded", "net_revenue", "lifetime_value")],
        _s("average_order_value", lambda g: g.dec(900), prefix=p),
        _s("total_items_purchased", lambda g: g.int(500), prefix=p),
        _s("favorite_category", lambda g: g.pick(["Shoes", "Bags", "Dresses"]), prefix=p),
        _s("favorite_brand", lambda g: g.pick(["Valentino", "Gucci", "Prada"]), prefix=p),
        _s("first_order_date", lambda g: g.date(), prefix=p),
        _s("last_order_date", lambda g: g.date(), prefix=p),
        ("days_since_last_order", lambda g: g.int(400), None, True),  # set below: the app computes it later
        _s("email_opens", lambda g: g.int(300), prefix=p),
        _s("email_clicks", lambda g: g.int(100), prefix=p),
        _s("email_open_rate", lambda g: g.dec(1), prefix=p),
        _s("email_click_rate", lambda g: g.dec(1), prefix=p),
        _s("churn_probability", lambda g: g.dec(1), prefix=p),
        _s("predicted_next_order_date", lambda g: g.date(), prefix=p),
        _s("predicted_lifetime_value", lambda g: g.dec(30000), prefix=p),
        _s("propensity_score", lambda g: g.dec(1), prefix=p),
        _s("calculated_at", lambda g: g.ts(), prefix=p, nullable=False),
        _s("updated_at", lambda g: g.ts(), path="!metrics.updatedAt", nullable=False),
    ]


def _demographics_spec() -> Spec:
    p = "demographics."
    return [
        _s("gender", lambda g: g.pick(["female", "male", "nonbinary"]), prefix=p),
        _s("age", lambda g: g.int(90, 18), prefix=p),
        _s("age_range", lambda g: g.pick(["18-24", "25-34", "35-44"]), prefix=p),
        _s("birth_date", lambda g: g.date(), prefix=p),
        _s("birth_year", lambda g: g.int(2005, 1940), prefix=p),
        _s("income_range", lambda g: g.pick(["50k-75k", "100k-150k"]), prefix=p),
        _s("household_income_percentile", lambda g: g.int(100), prefix=p),
        _s("education_level", lambda g: g.pick(["bachelors", "masters"]), prefix=p),
        _s("occupation", lambda g: g.text(2), prefix=p),
        _s("industry", lambda g: g.pick(["Technology", "Retail"]), prefix=p),
        _s("job_title", lambda g: g.text(2), prefix=p),
        _s("company", lambda g: g.pick(["Tech Corp", "Ström AB"]), prefix=p),
        _s("marital_status", lambda g: g.pick(["married", "single"]), prefix=p),
        _s("has_children", lambda g: g.bool(), prefix=p),
        _s("number_of_children", lambda g: g.int(4), prefix=p),
        _s("home_ownership_status", lambda g: g.pick(["owner", "renter", "unknown"]), prefix=p),
        _s("dwelling_type", lambda g: g.pick(["single_family", "apartment"]), prefix=p),
        _s("interests", lambda g: g.words(4), prefix=p, nullable=False),
        _s("hobbies", lambda g: g.words(3), prefix=p, nullable=False),
        _s("preferred_brands", lambda g: g.words(3), prefix=p, nullable=False),
        _s("lifestyle_segment", lambda g: g.text(2), prefix=p),
        _s("social_profiles", lambda g: {"instagram": "@" + g.pick(FIRST).lower()}, prefix=p, nullable=False),
        _s("social_influence_score", lambda g: g.int(100), prefix=p),
        # enrichment times: a Timestamp in the document, the Date's ISO text in the jsonb (app_json)
        _s("demographic_sources", lambda g: {s: {"enrichedAt": g.app_ts(), "data": {}} for s in
                                             g.aside.sample(["clearbit", "fullcontact"], g.aside.randint(1, 2))},
           path=p + "sources", nullable=False),
        _s("confidence_score", lambda g: g.dec(1), prefix=p),
        _s("enriched_at", lambda g: g.ts(), prefix=p, nullable=False),
        _s("updated_at", lambda g: g.ts(), path="!demographics.updatedAt", nullable=False),
    ]


def _risk_spec(related: Callable[[_Gen], list[uuid.UUID]]) -> Spec:
    p, f = "risk.", "risk.fraudIndicators."
    return [
        _s("risk_score", lambda g: g.int(100), path=p + "overallScore", nullable=False),
        _s("risk_level", lambda g: g.pick(["low", "medium", "high", "critical"]), path=p + "level", nullable=False),
        *[_s(c, lambda g: g.int(100), prefix=p, nullable=False) for c in
          ("email_risk_score", "ip_risk_score", "address_risk_score", "behavior_risk_score", "payment_risk_score")],
        _s("is_disposable_email", lambda g: g.bool(), prefix=f, nullable=False),
        _s("is_free_email", lambda g: g.bool(), prefix=f, nullable=False),
        _s("email_domain_age_days", lambda g: g.int(9000), prefix=f),
        _s("has_multiple_accounts", lambda g: g.bool(), prefix=f, nullable=False),
        _s("related_account_ids", related, prefix=f, nullable=False),
        _s("uses_vpn_frequently", lambda g: g.bool(), prefix=f, nullable=False),
        _s("multiple_ip_countries", lambda g: g.bool(), prefix=f, nullable=False),
        _s("ip_country_count", lambda g: g.int(5, 1), prefix=f, nullable=False),
        _s("billing_shipping_mismatch", lambda g: g.bool(), prefix=f, nullable=False),
        _s("high_risk_country", lambda g: g.bool(), prefix=f, nullable=False),
        *[_s(c, lambda g: g.bool(), prefix="risk.behavioralFlags.", nullable=False) for c in
          ("rapid_order_velocity", "unusual_purchase_pattern", "high_return_rate")],
        *[_s(c, lambda g: g.int(5), prefix="risk.paymentFlags.", nullable=False) for c in
          ("payment_failures", "chargebacks", "different_payment_methods")],
        _s("sift_score", lambda g: g.int(100), path="risk.externalScores.sift"),
        _s("riskified_score", lambda g: g.int(100), path="risk.externalScores.riskified"),
        _s("maxmind_risk_score", lambda g: g.int(100), path="risk.externalScores.maxmind"),
        _s("is_blocked", lambda g: g.bool(), prefix=p, nullable=False),
        _s("blocked_reason", lambda g: g.text(), prefix=p),
        _s("blocked_at", lambda g: g.ts(), prefix=p),
        _s("blocked_by", lambda g: g.pick(["ops@example.com", "system"]), prefix=p),
        _s("requires_review", lambda g: g.bool(), prefix=p, nullable=False),
        _s("review_notes", lambda g: g.text(), prefix=p),
        _s("reviewed_at", lambda g: g.ts(), path=None),
        _s("reviewed_by", lambda g: g.text(1), path=None),
        ("assessed_at", lambda g: g.ts(), p + "assessedAt", False),
        _s("updated_at", lambda g: g.ts(), path="!risk.updatedAt", nullable=False),
        _s("next_assessment_at", lambda g: g.ts(), prefix=p),
    ]


def _engagement_spec() -> Spec:
    e = "engagement."
    return [
        _s("email_consent", lambda g: g.bool(), path=e + "email.consent", nullable=False),
        _s("email_consent_date", lambda g: g.ts(), path=e + "email.consentDate"),
        _s("email_unsubscribe_date", lambda g: g.ts(), path=e + "email.unsubscribeDate"),
        _s("total_emails_sent", lambda g: g.int(500), path=e + "email.totalSent", nullable=False),
        _s("total_emails_opened", lambda g: g.int(300), path=e + "email.totalOpened", nullable=False),
        _s("total_emails_clicked", lambda g: g.int(100), path=e + "email.totalClicked", nullable=False),
        _s("total_emails_bounced", lambda g: g.int(5), path=e + "email.totalBounced", nullable=False),
        _s("last_email_open_date", lambda g: g.ts(), path=e + "email.lastOpenDate"),
        _s("last_email_click_date", lambda g: g.ts(), path=e + "email.lastClickDate"),
        _s("email_engagement_score", lambda g: g.dec(1), path=e + "email.engagementScore"),
        _s("sms_consent", lambda g: g.bool(), path=e + "sms.consent", nullable=False),
        _s("sms_consent_date", lambda g: g.ts(), path=e + "sms.consentDate"),
        _s("sms_unsubscribe_date", lambda g: g.ts(), path=e + "sms.unsubscribeDate"),
        _s("total_sms_sent", lambda g: g.int(100), path=e + "sms.totalSent", nullable=False),
        _s("total_sms_clicked", lambda g: g.int(50), path=e + "sms.totalClicked", nullable=False),
        _s("last_sms_click_date", lambda g: g.ts(), path=e + "sms.lastClickDate"),
        _s("sms_engagement_score", lambda g: g.dec(1), path=e + "sms.engagementScore"),
        _s("push_consent", lambda g: g.bool(), path=e + "push.consent", nullable=False),
        _s("push_tokens", lambda g: [f"tok-{g.int(10**6)}" for _ in range(g.int(2))], path=e + "push.tokens",
           nullable=False),
        _s("total_sessions", lambda g: g.int(500), path=e + "web.totalSessions", nullable=False),
        _s("total_page_views", lambda g: g.int(5000), path=e + "web.totalPageViews", nullable=False),
        _s("average_session_duration", lambda g: g.int(900), path=e + "web.averageSessionDuration"),
        _s("bounce_rate", lambda g: g.dec(1), path=e + "web.bounceRate"),
        _s("app_installed", lambda g: g.bool(), path=e + "app.installed", nullable=False),
        _s("app_version", lambda g: g.pick(["1.2.0", "2.0.1"]), path=e + "app.version"),
        _s("app_last_opened", lambda g: g.ts(), path=e + "app.lastOpened"),
        _s("loyalty_member", lambda g: g.bool(), path=e + "loyalty.isMember", nullable=False),
        _s("loyalty_tier", lambda g: g.pick(["bronze", "silver", "gold"]), path=e + "loyalty.tier"),
        _s("loyalty_points", lambda g: g.int(9000), path=e + "loyalty.points", nullable=False),
        _s("loyalty_lifetime_points", lambda g: g.int(20000), path=e + "loyalty.lifetimePoints", nullable=False),
        _s("total_reviews", lambda g: g.int(20), path=e + "reviews.totalReviews", nullable=False),
        _s("average_review_rating", lambda g: g.dec(5, 1), path=e + "reviews.averageRating"),
        _s("nps_score", lambda g: g.int(10), path=e + "reviews.npsScore"),
        _s("calculated_at", lambda g: g.ts(), path=e + "calculatedAt", nullable=False),
        _s("updated_at", lambda g: g.ts(), path="!engagement.updatedAt", nullable=False),
    ]


def _root(g: _Gen, c: Customer) -> None:
    first, last = g.pick(FIRST), g.pick(LAST)
    # UNIQUE in the seed, so the whole id; ASCII, so Postgres LOWER() agrees with Python's lower() in any collation
    local = unicodedata.normalize("NFKD", f"{first}.{last}").encode("ascii", "ignore").decode().replace("'", "")
    email = f"{local}.{c.id.replace('-', '')}@Example.com"
    spec: Spec = [
        _s("email", lambda _: email, nullable=False),
        _s("phone", lambda g: f"+1310{g.int(9999999, 1000000)}"),
        _s("phone_normalized", lambda g: f"+1310{g.int(9999999, 1000000)}"),
        _s("first_name", lambda _: first, nullable=False),
        _s("last_name", lambda _: last, nullable=False),
        _s("status", lambda g: g.pick(["active", "inactive", "vip", "blocked", "pending"]), nullable=False),
        _s("customer_type", lambda g: g.pick(["guest", "registered", "wholesale", "affiliate"]), nullable=False),
        _s("created_at", lambda g: g.ts(), nullable=False),
        _s("updated_at", lambda g: g.ts(), path="!updatedAt", nullable=False),
        _s("deleted_at", lambda g: g.ts() if g.r.random() < 0.1 else None),
        _s("last_active_at", lambda g: g.ts()),
        _s("tags", lambda g: g.words(4), nullable=False),
        _s("notes", lambda g: g.text(5)),
        _s("internal_notes", lambda g: g.text(5)),
        _s("custom_attributes", lambda g: g.json(), nullable=False),
    ]
    row: dict[str, Any] = {"id": uuid.UUID(c.id)}
    c.document.update({"id": c.id, "emailLowercase": email.lower(), "fullName": f"{first} {last}"})
    _fill(g, spec, row, c.document)
    c.tables["customers"] = [row]


def _one(g: _Gen, c: Customer, table: str, spec: Spec) -> dict[str, Any]:
    row: dict[str, Any] = {"customer_id": uuid.UUID(c.id)}
    _fill(g, spec, row, c.document)
    c.tables[table] = [row]
    return row


def _sources(g: _Gen, c: Customer) -> None:
    rows = []
    for source in g.r.sample(["shopify", "klaviyo", "manual"], g.r.randint(1, 3)):
        row = {"id": g.uuid(), "customer_id": uuid.UUID(c.id), "source": source,
               "external_id": f"gid://{source}/Customer/{c.id}", "source_data": {"plan": g.pick(["a", "b"])},
               "first_synced_at": g.ts(), "last_synced_at": g.ts(), "sync_status": g.pick(["active", "paused"]),
               "sync_errors": None, "created_at": g.ts(), "updated_at": g.ts()}
        rows.append(row)
        c.document.setdefault("sources", {})[source] = {
            "id": row["external_id"], "firstSyncedAt": row["first_synced_at"], "lastSyncedAt": row["last_synced_at"],
            "syncStatus": row["sync_status"], "data": row["source_data"]}
    c.tables["customer_sources"] = rows


def _risk(g: _Gen, c: Customer) -> None:
    rows, docs = [], []
    for _ in range(g.r.randint(0, 3)):
        row: dict[str, Any] = {"id": g.uuid(), "customer_id": uuid.UUID(c.id)}
        doc: dict[str, Any] = {}
        _fill(g, _risk_spec(lambda g: [g.uuid() for _ in range(g.int(2))]), row, doc)
        rows.append(row)
        docs.append((row["assessed_at"], doc))
    c.tables["customer_risk_assessments"] = rows
    if docs:  # the document holds the latest assessment
        c.document["risk"] = max(docs, key=lambda d: d[0])[1]["risk"]


def _segments(g: _Gen, c: Customer) -> None:
    rows, elements = [], []
    names = [("behavioral", "frequent_buyer"), ("demographic", "affluent_female"), ("value", "vip"),
             ("custom", "émigré")]
    for seg_type, name in g.r.sample(names, g.r.randint(0, 4)):
        row = {"id": g.uuid(), "customer_id": uuid.UUID(c.id), "segment_type": seg_type, "segment_name": name,
               "segment_value": g.pick(["high", "true", "gold"]), "confidence_score": g.dec(1),
               "assigned_by": g.pick(["system", "manual", "ml_model"]), "assigned_at": g.ts(), "expires_at": g.ts()}
        rows.append(row)
        elements.append({"type": seg_type, "name": name, "value": row["segment_value"],
                         "confidence": _to_firestore(row["confidence_score"], g.r), "assignedBy": row["assigned_by"],
                         "assignedAt": row["assigned_at"]})
    g.r.shuffle(elements)  # compared as a set: the array's order means nothing
    c.tables["customer_segments"] = rows
    if elements or g.bool():
        c.document["segments"] = elements


def _subcollection(g: _Gen, c: Customer, table: str, name: str, most: int,
                   make: Callable[[], tuple[dict[str, Any], dict[str, Any], Spec]], geo_path: str | None = None) -> None:
    """0..most child rows of `table` and their documents in customers/{id}/{name}/{rowId}."""
    rows, docs = [], {}
    for _ in range(g.r.randint(0, most)):
        child_id = g.uuid()
        row_extra, doc_extra, spec = make()
        row: dict[str, Any] = {"id": child_id, "customer_id": uuid.UUID(c.id), **row_extra}
        doc: dict[str, Any] = {"id": str(child_id), **doc_extra}
        _fill(g, spec, row, doc)
        if geo_path:
            _geo(g, row, doc, geo_path)
        rows.append(row)
        docs[str(child_id)] = doc
    c.tables[table] = rows
    c.subcollections[name] = docs


def _address(g: _Gen, c: Customer) -> tuple[dict[str, Any], dict[str, Any], Spec]:
    city, state, code, cc, country, tz = g.pick(CITIES)
    return {}, {}, [
        _s("address_type", lambda g: g.pick(["billing", "shipping", "both"]), nullable=False),
        _s("is_default", lambda g: g.bool(), nullable=False),
        _s("label", lambda g: g.pick(["Home", "Work"])),
        _s("first_name", lambda g: g.pick(FIRST)), _s("last_name", lambda g: g.pick(LAST)),
        _s("company", lambda g: g.pick(["Tech Corp", "Ström AB"])),
        _s("address_line1", lambda g: f"{g.int(999, 1)} S Doheny Dr", nullable=False),
        _s("address_line2", lambda g: f"Apt {g.int(20, 1)}"),
        _s("city", lambda _: city, nullable=False), _s("state_province", lambda _: state),
        _s("state_province_code", lambda _: code), _s("country", lambda _: country, nullable=False),
        _s("country_code", lambda _: cc, nullable=False), _s("postal_code", lambda g: f"{g.int(99999, 10000)}"),
        _s("phone", lambda g: f"+1310{g.int(9999999, 1000000)}"), _s("email", lambda _: c.document["email"]),
        _s("timezone", lambda _: tz),
        _s("is_validated", lambda g: g.bool(), nullable=False),
        _s("validation_provider", lambda g: g.pick(["smartystreets", "google"])),
        _s("validation_result", lambda g: {"deliverability": "deliverable", "components": {}}),
        _s("validated_at", lambda g: g.ts()),
        _s("neighborhood_income_level", lambda g: g.pick(["high", "medium"]), path="neighborhoodData.incomeLevel"),
        _s("neighborhood_median_income", lambda g: g.dec(300000), path="neighborhoodData.medianIncome"),
        _s("property_type", lambda g: g.pick(["residential", "commercial"]), path="neighborhoodData.propertyType"),
        _s("property_value_estimate", lambda g: g.dec(5_000_000), path="neighborhoodData.propertyValueEstimate"),
        _s("created_at", lambda g: g.ts(), nullable=False),
        _s("updated_at", lambda g: g.ts(), path="!updatedAt", nullable=False),
        _s("last_used_at", lambda g: g.ts()),
    ]


def _geo(g: _Gen, row: dict[str, Any], doc: dict[str, Any], path: str) -> None:
    if g.r.random() < 0.15:
        row["latitude"] = row["longitude"] = None
        return
    row["latitude"], row["longitude"] = g.dec(90, 8, -90), g.dec(180, 8, -180)
    _put(doc, path, firestore.GeoPoint(float(row["latitude"]), float(row["longitude"])))


def _ip_address(g: _Gen) -> tuple[dict[str, Any], dict[str, Any], Spec]:
    city, state, code, cc, country, tz = g.pick(CITIES)
    ip = g.inet()
    loc, isp, dev, use = "location.", "isp.", "device.", "usage."
    return {"ip_address": ip, "ip_version": ip.version}, {"ipAddress": ip_text(ip), "ipVersion": ip.version}, [
        _s("country", lambda _: country, prefix=loc), _s("country_code", lambda _: cc, prefix=loc),
        _s("region", lambda _: state, prefix=loc), _s("region_code", lambda _: code, prefix=loc),
        _s("city", lambda _: city, prefix=loc), _s("postal_code", lambda g: str(g.int(99999)), prefix=loc),
        _s("timezone", lambda _: tz, prefix=loc),
        _s("isp", lambda g: g.pick(["AT&T Services", "MTN Nigeria"]), path="isp.name"),
        _s("organization", lambda g: g.pick(["AT&T", "MTN"]), prefix=isp),
        _s("asn", lambda g: g.int(65000), prefix=isp), _s("as_name", lambda g: g.text(1), prefix=isp),
        _s("connection_type", lambda g: g.pick(["residential", "mobile"]), prefix=isp),
        *[_s(f, lambda g: g.bool(), prefix="riskFlags.", nullable=False) for f in
          ("is_vpn", "is_proxy", "is_tor", "is_relay", "is_hosting", "is_mobile")],
        _s("user_agent", lambda g: "Mozilla/5.0 (X11; Linux)", prefix=dev),
        _s("browser", lambda g: g.pick(["Chrome", "Safari"]), prefix=dev),
        _s("browser_version", lambda g: "120.0", prefix=dev),
        _s("operating_system", lambda g: g.pick(["Windows", "iOS"]), prefix=dev),
        _s("os_version", lambda g: "11", prefix=dev),
        _s("device_type", lambda g: g.pick(["desktop", "mobile"]), prefix=dev),
        _s("device_brand", lambda g: g.pick(["Apple", "Samsung"]), prefix=dev),
        _s("device_model", lambda g: g.pick(["iPhone 15", "S24"]), prefix=dev),
        _s("first_seen_at", lambda g: g.ts(), prefix=use, nullable=False),
        _s("last_seen_at", lambda g: g.ts(), prefix=use, nullable=False),
        *[_s(f, lambda g: g.int(900), prefix=use, nullable=False) for f in
          ("total_sessions", "total_page_views", "total_events")],
        _s("created_at", lambda g: g.ts(), nullable=False),
        _s("updated_at", lambda g: g.ts(), path="!updatedAt", nullable=False),
    ]


def _activity(g: _Gen) -> tuple[dict[str, Any], dict[str, Any], Spec]:
    ctx = "context."
    return {}, {}, [
        _s("activity_type", lambda g: g.pick(["page_view", "product_view", "add_to_cart"]), nullable=False),
        _s("activity_category", lambda g: g.pick(["browsing", "shopping"])),
        _s("event_data", lambda g: {"productId": str(g.int(10**6)), "productPrice": 439.69, "currency": "EUR",
                                    "nested": {"qty": g.int(3)}}, nullable=False),
        _s("ip_address", lambda g: g.inet(), prefix=ctx), _s("session_id", lambda g: f"session-{g.int()}", prefix=ctx),
        _s("user_agent", lambda g: "Mozilla/5.0", prefix=ctx), _s("referrer", lambda g: "https://google.com", prefix=ctx),
        _s("utm_source", lambda g: "google", path="context.utm.source"),
        _s("utm_medium", lambda g: "cpc", path="context.utm.medium"),
        _s("utm_campaign", lambda g: "summer_sale", path="context.utm.campaign"),
        _s("country_code", lambda g: g.pick(["US", "NG"]), prefix="location."),
        _s("region", lambda g: "California", prefix="location."), _s("city", lambda g: "Lagos", prefix="location."),
        _s("occurred_at", lambda g: g.ts(), nullable=False),
        _s("created_at", lambda g: g.ts(), path="!createdAt", nullable=False),  # serverTimestamp() in the app
    ]


def generate(n: int, seed: int = 0, ids: list[str] | None = None) -> list[Customer]:
    """n customers, deterministic for a seed, with every table of seed 000 filled."""
    return list(iter_customers(n, seed, ids))


def iter_customers(n: int, seed: int = 0, ids: list[str] | None = None) -> Iterator[Customer]:
    """generate(), one customer at a time: large datasets load in chunks without holding them all."""
    g = _Gen(random.Random(seed), random.Random(f"aside {seed}"))
    for i in range(n):
        c = Customer(id=ids[i] if ids else str(g.uuid()))
        _root(g, c)
        _sources(g, c)
        metrics = _one(g, c, "customer_metrics", _metrics_spec())
        metrics["days_since_last_order"] = days = g.int(400)
        c.document["metrics"]["daysSinceLastOrder"] = days + (1 if g.r.random() < 0.1 else 0)  # computed later
        if g.r.random() < 0.95:
            _one(g, c, "customer_demographics", _demographics_spec())
        else:
            c.tables["customer_demographics"] = []
        _risk(g, c)
        _one(g, c, "customer_engagement", _engagement_spec())
        _segments(g, c)
        _subcollection(g, c, "customer_addresses", "addresses", 3, lambda: _address(g, c), "geoPoint")
        _subcollection(g, c, "customer_ip_addresses", "ipAddresses", 3, lambda: _ip_address(g), "location.geoPoint")
        _subcollection(g, c, "customer_activities", "activities", 5, lambda: _activity(g))
        yield c


# ---------------------------------------------------------------- loading

def create_schema(conn: psycopg.Connection) -> None:
    conn.execute(SCHEMA.read_text())
    conn.commit()


def load_postgres(conn: psycopg.Connection, customers: Iterable[Customer]) -> None:
    """COPY per table, in one transaction."""
    by_table: dict[str, list[dict[str, Any]]] = {}
    for c in customers:
        for table, rows in c.tables.items():
            by_table.setdefault(table, []).extend(rows)
    order = ["customers", "customer_sources", "customer_metrics", "customer_demographics", "customer_risk_assessments",
             "customer_engagement", "customer_segments", "customer_addresses", "customer_ip_addresses",
             "customer_activities"]
    with conn.cursor() as cur:
        for table in order:
            rows = by_table.get(table) or []
            if not rows:
                continue
            columns = [k for k in rows[0] if k not in GENERATED]
            stmt = sql.SQL("COPY {} ({}) FROM STDIN").format(
                sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns)))
            with cur.copy(stmt) as copy:
                for row in rows:
                    copy.write_row([Jsonb(row[k], dumps=app_json) if k in JSONB and row[k] is not None else row[k]
                                    for k in columns])
    conn.commit()


def load_firestore(client: firestore.Client, customers: Iterable[Customer], collection: str = "customers",
                   workers: int = 4) -> None:
    """Batched writes (500 per batch) from a small pool of threads."""
    writes: list[tuple[Any, dict[str, Any]]] = []
    for c in customers:
        ref = client.collection(collection).document(c.id)
        writes.append((ref, c.document))
        for name, docs in c.subcollections.items():
            writes.extend((ref.collection(name).document(i), d) for i, d in docs.items())

    def commit(chunk: list[tuple[Any, dict[str, Any]]]) -> None:
        batch = client.batch()
        for ref, doc in chunk:
            batch.set(ref, doc)
        batch.commit()

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(commit, [writes[i:i + 500] for i in range(0, len(writes), 500)]))


# ---------------------------------------------------------------- drift

def load(conn: psycopg.Connection, client: firestore.Client, customers: list[Customer]) -> None:
    """The schema and these customers on both sides, in sync (dataset.load's twin for seed 000)."""
    create_schema(conn)
    load_postgres(conn, customers)
    load_firestore(client, customers)


def inject_demo_drift(conn: psycopg.Connection, client: firestore.Client, customers: list[Customer], seed: int = 1,
                      ratio: float = 0.01, collection: str = "customers") -> list[dict[str, Any]]:
    """Real drift in both databases, about `ratio` of the customers (at least one of each kind)."""
    rng = random.Random(seed)
    pool = customers[:]
    rng.shuffle(pool)
    per_kind = max(1, int(len(customers) * ratio / 10))
    col = client.collection(collection)
    drift: list[dict[str, Any]] = []

    def take(pred: Callable[[Customer], bool] = lambda c: True) -> list[Customer]:
        chosen = [c for c in pool if pred(c)][:per_kind]
        for c in chosen:
            pool.remove(c)
        return chosen

    def note(c: Customer | str, kind: str, path: str | None = None, sub: str = "") -> None:
        cid = c if isinstance(c, str) else c.id
        drift.append({"key": f"{collection}/{cid}{sub}", "kind": kind, "path": path})

    for c in take():
        col.document(c.id).update({"metrics.totalSpent": 999999.99})
        note(c, "mismatch", "metrics.totalSpent")
    for c in take():
        conn.execute("UPDATE customers SET email = %s WHERE id = %s", (f"changed-{c.id[:8]}@example.com", c.id))
        note(c, "mismatch", "email")
    for c in take():
        col.document(c.id).delete()
        note(c, "missing_in_firestore")
    for _ in range(per_kind):
        ghost = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        col.document(ghost).set({"email": "ghost@example.com", "status": "active"})
        note(ghost, "missing_in_postgres")
    for c in take():
        col.document(c.id).update({"engagement.email.totalOpened": -1})
        note(c, "mismatch", "engagement.email.totalOpened")
    for c in take(lambda c: "risk" in c.document):
        conn.execute("UPDATE customer_risk_assessments SET risk_score = (risk_score + 37) %% 101 WHERE customer_id = %s AND "
                     "assessed_at = (SELECT max(assessed_at) FROM customer_risk_assessments WHERE customer_id = %s)",
                     (c.id, c.id))
        note(c, "mismatch", "risk.overallScore")
    for c in take(lambda c: bool(c.document.get("segments"))):
        seg = c.document["segments"][0]
        conn.execute("UPDATE customer_segments SET confidence_score = 0.01 + (0.5 - confidence_score) / 2 WHERE "
                     "customer_id = %s AND segment_type = %s AND segment_name = %s", (c.id, seg["type"], seg["name"]))
        note(c, "mismatch", f"segments[{seg['type']},{seg['name']}].confidence")
    for c in take(lambda c: bool(c.subcollections.get("addresses"))):
        aid = next(iter(c.subcollections["addresses"]))
        col.document(c.id).collection("addresses").document(aid).delete()
        note(c, "missing_in_firestore", None, f"/addresses/{aid}")
    for c in take(lambda c: bool(c.subcollections.get("ipAddresses"))):
        iid = next(iter(c.subcollections["ipAddresses"]))
        col.document(c.id).collection("ipAddresses").document(iid).update({"isp.name": "Tampered ISP"})
        note(c, "mismatch", "isp.name", f"/ipAddresses/{iid}")
    for c in take(lambda c: bool(c.document.get("sources"))):
        source = next(iter(c.document["sources"]))
        col.document(c.id).update({f"sources.{source}.id": "tampered"})
        note(c, "mismatch", f"sources.{source}.id")
    conn.commit()
    return drift
