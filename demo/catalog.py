"""A seed-002-shaped service catalog on both sides (schema/catalog.sql): categories (a tree), services with
their pricing_tiers subcollection, packages with their services subcollection. Postgres has UUID keys and
foreign keys plus a firestore_id column; Firestore has readable IDs ("cat_plumbing") and references by them.
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from decimal import Decimal
from typing import Any

from demo.dataset import Dataset

SCHEMA = "catalog.sql"
UTC = dt.timezone.utc
TRADES = ["plumbing", "electrical", "carpentry", "painting", "hvac", "roofing", "landscaping", "cleaning"]
JOBS = ["repair", "install", "inspection", "replacement", "maintenance"]


def _uuid(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def _money(x: float | None) -> Decimal | None:
    return None if x is None else Decimal(f"{x:.2f}")


def _both(data: Dataset, table: str, path: str, row: dict[str, Any], doc: dict[str, Any]) -> None:
    """One record: the row (Postgres: UUIDs, Decimals) and the document (Firestore: IDs, floats)."""
    data.add_row(table, row)
    data.docs[path] = doc


def _doc(row: dict[str, Any], **refs: Any) -> dict[str, Any]:
    out = {k: float(v) if isinstance(v, Decimal) else v for k, v in row.items() if k not in ("firestore_id",)}
    out.update(id=row["firestore_id"], **refs)
    return out


def generate(n_categories: int, seed: int = 0) -> Dataset:
    rng = random.Random(seed)
    data = Dataset()
    data.tables("service_categories", "services", "service_pricing_tiers", "service_packages", "package_services")
    when = dt.datetime(2025, 6, 4, 23, 30, tzinfo=UTC)
    categories: list[tuple[uuid.UUID, str]] = []
    services: list[tuple[uuid.UUID, str, Decimal]] = []
    for c in range(n_categories):
        trade = f"{TRADES[c % len(TRADES)]}{'' if c < len(TRADES) else c}"
        cid, cfs = _uuid(rng), f"cat_{trade}"
        parent = categories[rng.randrange(len(categories))] if categories and rng.random() < 0.3 else None
        row = {"id": cid, "firestore_id": cfs, "name": f"{trade.title()} Services", "slug": f"{trade}-services",
               "description": f"Complete {trade} services for residential and commercial properties",
               "parent_category_id": parent[0] if parent else None, "icon_url": f"https://example.com/icons/{trade}.svg",
               "sort_order": c, "is_active": rng.random() < 0.9, "seo_title": f"{trade.title()} | 757 Handy",
               "seo_description": rng.choice([None, f"Expert {trade} in Virginia Beach"]),
               "created_at": when, "updated_at": when}
        _both(data, "service_categories", f"service_categories/{cfs}", row,
              {**_doc(row), "parent_category_id": parent[1] if parent else None})
        categories.append((cid, cfs))
        for s in range(rng.randint(1, 3)):
            job = JOBS[(c + s) % len(JOBS)]
            sid, sfs = _uuid(rng), f"service_{trade}_{job}"
            base = rng.choice([85.0, 120.0, 250.0])
            row = {"id": sid, "firestore_id": sfs, "category_id": cid, "name": f"{trade.title()} {job.title()}",
                   "slug": f"{trade}-{job}", "short_description": f"{job} of {trade}", "full_description": None,
                   "pricing_model": rng.choice(["fixed", "hourly", "tiered"]), "base_price": _money(base),
                   "hourly_rate": _money(rng.choice([None, 65.0])), "minimum_charge": _money(base),
                   "maximum_charge": _money(base * 4), "currency": "USD",
                   "estimated_duration_minutes": rng.choice([60, 120, 240]), "difficulty_level": rng.randint(1, 5),
                   "requires_permit": rng.random() < 0.2, "emergency_service": rng.random() < 0.5,
                   "warranty_period_days": 90, "is_active": True, "is_featured": rng.random() < 0.2,
                   "availability_zones": ["virginia_beach", "norfolk", "chesapeake"][: rng.randint(1, 3)],
                   "seasonal_availability": rng.choice([None, {"months": [4, 5, 6, 7, 8, 9]}]),
                   "required_skills": [f"{trade}_basic"], "required_tools": ["wrench_set", "pliers"],
                   "required_materials": rng.choice([[], ["sealant"]]), "prerequisites": [],
                   "seo_title": f"{job.title()} | 757 Handy", "seo_description": None,
                   "keywords": [trade, job], "image_urls": [f"https://example.com/images/{sfs}.jpg"],
                   "metadata": {"popular_brands": ["Moen", "Delta"], "tools_provided": True},
                   "created_at": when, "updated_at": when, "created_by": "admin", "updated_by": "admin"}
            _both(data, "services", f"services/{sfs}", row, _doc(row, category_id=cfs))
            services.append((sid, sfs, Decimal(f"{base:.2f}")))
            for t, tier in enumerate(["basic", "standard", "premium"][: rng.randint(1, 3)]):
                tid, tfs = _uuid(rng), f"tier_{trade}_{job}_{tier}"
                row = {"id": tid, "firestore_id": tfs, "service_id": sid, "tier_name": f"{tier.title()} {job}",
                       "tier_description": rng.choice([None, "Minor repairs, washer replacement"]),
                       "min_quantity": 1, "max_quantity": rng.choice([None, 1, 5]),
                       "price": _money(base * (1 + t)), "unit": rng.choice(["each", "hour"]), "is_default": t == 0,
                       "sort_order": t, "created_at": when}
                _both(data, "service_pricing_tiers", f"services/{sfs}/pricing_tiers/{tfs}", row,
                      _doc(row, service_id=sfs))
    for p in range(max(1, n_categories // 2)):
        pid, pfs = _uuid(rng), f"package_{p:03d}"
        chosen = rng.sample(services, min(len(services), rng.randint(2, 3)))
        total = sum(s[2] for s in chosen)
        row = {"id": pid, "firestore_id": pfs, "name": f"Package {p}", "slug": f"package-{p}",
               "description": "Complete maintenance package", "package_type": rng.choice(["bundle", "maintenance"]),
               "total_price": total, "savings_amount": _money(rng.choice([0.0, 25.0, 50.0])), "currency": "USD",
               "estimated_duration_hours": _money(rng.choice([2.5, 4.5])), "validity_period_days": 365,
               "max_uses": rng.choice([None, 4]), "is_active": True, "is_featured": p % 2 == 0,
               "available_from": dt.date(2025, 1, 1), "available_until": dt.date(2025, 12, 31),
               "terms_and_conditions": "Package must be used within 12 months.",
               "image_urls": [f"https://example.com/packages/{pfs}.jpg"], "created_at": when, "updated_at": when}
        _both(data, "service_packages", f"service_packages/{pfs}", row,
              _doc(row, available_from="2025-01-01", available_until="2025-12-31"))
        for k, (sid, sfs, price) in enumerate(chosen):
            rid, rfs = _uuid(rng), f"pkg_svc_{p:03d}_{k}"
            row = {"id": rid, "firestore_id": rfs, "package_id": pid, "service_id": sid, "quantity": 1,
                   "included_price": price, "is_optional": k == 2, "sort_order": k,
                   "notes": rng.choice([None, "Includes up to 2 faucets"])}
            _both(data, "package_services", f"service_packages/{pfs}/services/{rfs}", row,
                  _doc(row, package_id=pfs, service_id=sfs))
    return data
