"""Seed-002-shaped conversations (with attachments) and customer preferences, on both sides
(schema/conversations.sql; Firestore conversations/{id}/attachments/{id} and customers/{id}/preferences/{id}).

The conversation documents write their timestamps as ISO-8601 strings, as the seed shows; the preference
documents as Firestore timestamps. Documents carry a few fields the rules do not map.
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from decimal import Decimal
from typing import Any

from demo.dataset import Dataset

SCHEMA = "conversations.sql"
UTC = dt.timezone.utc
PREFERENCES = {
    "communication_method": [("preferred_channel", lambda r: {"value": r.choice(["email", "sms", "voice"]),
                                                              "metadata": {"fallback": "sms", "business_hours_only": True}}),
                             ("avoid_channels", lambda r: {"value": r.sample(["sms", "voice", "email"], 2)})],
    "scheduling": [("preferred_times", lambda r: {"value": {"start": "09:00", "end": r.choice(["17:00", "18:30"])}}),
                   ("preferred_days", lambda r: {"value": ["monday", "tuesday", "friday"][: r.randint(1, 3)]})],
    "service": [("budget_range", lambda r: {"value": {"min": 100, "max": r.choice([300, 500]), "currency": "USD"}})],
    "billing": [("auto_pay_enabled", lambda r: {"value": r.random() < 0.5})],
}


def _iso(t: dt.datetime | None) -> str | None:
    return None if t is None else t.isoformat().replace("+00:00", "Z")


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _conversation(data: Dataset, rng: random.Random, customer: str, when: dt.datetime, k: int) -> str:
    cid = _uuid(rng)
    inbound = k % 2 == 0
    nlp = {"intent": rng.choice(["service_request", "billing_question", "complaint"]),
           "sentiment": rng.choice(["neutral", "positive", "negative"]), "priority": rng.choice(["normal", "high"]),
           "confidence_score": round(rng.uniform(0.5, 0.99), 2),
           "entities": [{"type": "location", "value": "kitchen"}, {"type": "issue", "value": "leaky faucet"}],
           "keywords": ["faucet", "leak", "kitchen"][: rng.randint(1, 3)], "topics": ["plumbing"]}
    times = {"message_timestamp": when, "received_at": when + dt.timedelta(seconds=1),
             "processed_at": when + dt.timedelta(seconds=3), "created_at": when + dt.timedelta(seconds=1),
             "updated_at": when + dt.timedelta(seconds=5),
             "response_generated_at": when + dt.timedelta(seconds=4) if inbound else None}
    row: dict[str, Any] = {
        "id": cid, "customer_id": customer, "conversation_thread_id": f"thread_{customer[:8]}_{k // 2}",
        "external_id": f"gmail_{rng.getrandbits(40):x}", "medium": rng.choice(["email", "sms", "chat"]),
        "direction": "inbound" if inbound else "outbound", "subject": rng.choice([None, "Need help with leaky faucet"]),
        "content": "Hi, I have a leaky faucet in my kitchen..." if inbound else "We can come on Tuesday.",
        "content_type": "text/plain", "raw_content": {"headers": {"x-mailer": "gmail"}, "body": "..."},
        "from_address": "customer@example.com", "to_address": "hello@757handy.com",
        "cc_addresses": rng.choice([[], ["spouse@example.com"]]), "bcc_addresses": [],
        "phone_number": rng.choice([None, "+17575550100"]), "status": "processed", "processing_stage": "completed",
        "nlp_analysis": nlp if inbound else None, "response_id": None,
        "response_template_used": "service_inquiry_response" if inbound else None,
        "response_method": "template" if inbound else None,
        "metadata": {"ip_address": "192.168.1.1", "processing_time_ms": rng.randint(500, 4000)},
        "agent_id": "communication_agent", "session_id": f"session_{k // 2}", **times,
    }
    data.add_row("conversations", {**row, "intent": nlp["intent"] if inbound else None,
                                   "sentiment": nlp["sentiment"] if inbound else None,
                                   "priority": nlp["priority"] if inbound else None,
                                   "confidence_score": Decimal(str(nlp["confidence_score"])) if inbound else None,
                                   "entities": nlp["entities"] if inbound else None,
                                   "keywords": nlp["keywords"] if inbound else None,
                                   "topics": nlp["topics"] if inbound else None})
    data.docs[f"conversations/{cid}"] = {**row, **{k: _iso(v) for k, v in times.items()}, "schema_version": 2}
    for a in range(rng.choice([0, 0, 1, 2])):
        aid = _uuid(rng)
        att = {"id": aid, "conversation_id": cid, "file_name": f"photo_{a}.jpg", "file_type": "image/jpeg",
               "file_size": rng.randint(10_000, 2_000_000), "storage_path": f"gs://karen-attachments/{cid}/{a}.jpg",
               "content_id": rng.choice([None, f"image00{a}"]), "is_inline": a == 0, "checksum": f"sha256:{aid[:12]}",
               "virus_scan_status": "clean",
               "virus_scan_result": {"engine": "clamav", "result": "clean", "scanned_at": _iso(when)}}
        data.add_row("conversation_attachments", {**att, "created_at": when})
        data.docs[f"conversations/{cid}/attachments/{aid}"] = {**att, "created_at": _iso(when)}
    return cid


def generate(n_customers: int, seed: int = 0) -> Dataset:
    """Per customer 1-3 conversations and 1-4 preferences, the same on both sides."""
    rng = random.Random(seed)
    data = Dataset()
    data.tables("conversations", "conversation_attachments", "customer_preferences")
    start = dt.datetime(2025, 6, 1, tzinfo=UTC)
    for c in range(n_customers):
        customer = _uuid(rng)
        when = start + dt.timedelta(hours=c * 5, seconds=rng.randrange(3600))
        convs = [_conversation(data, rng, customer, when + dt.timedelta(minutes=k * 7), k)
                 for k in range(rng.randint(1, 3))]
        kinds = [(t, key, make) for t, prefs in PREFERENCES.items() for key, make in prefs]
        for ptype, pkey, make in rng.sample(kinds, rng.randint(1, 4)):
            pid = _uuid(rng)
            learned = when + dt.timedelta(hours=1)
            pref = {"id": pid, "customer_id": customer, "preference_type": ptype, "preference_key": pkey,
                    "preference_value": make(rng), "confidence_score": round(rng.uniform(0.3, 1.0), 2),
                    "source": rng.choice(["explicit", "learned", "inferred"]),
                    "medium": rng.choice(["email", "sms", "general"]),
                    "context": rng.choice([None, {"learned_from_pattern": "replies by email", "interaction_count": 15,
                                                  "success_rate": 0.93}]),
                    "learned_from_interaction_id": rng.choice([None, convs[0]]), "learned_at": learned,
                    "expires_at": rng.choice([None, learned + dt.timedelta(days=365)]),
                    "is_active": rng.random() < 0.9, "priority": rng.randint(1, 5), "created_at": learned,
                    "updated_at": learned, "created_by": "system", "updated_by": "system"}
            data.add_row("customer_preferences", {**pref, "confidence_score": Decimal(str(pref["confidence_score"]))})
            data.docs[f"customers/{customer}/preferences/{pid}"] = {**pref, "ttl_hint": "keep"}
    return data
