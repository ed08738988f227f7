"""The run's report by e-mail: a multipart message (a text summary + the HTML report) over SMTP.

Who gets what: the global `mail.recipients` get one mail with every entity the `send` policy selects;
an address in `mail.entity_recipients.<entity>` gets one mail with only its entities' sections (an
address in both gets the global mail only). Which entities a run mails is the `send` policy:
`always` every entity; `on_drift` the entities with drift or a failure; `on_change` the entities whose
drift (mismatched / missing counts, the set of drifted keys, the failure) differs from the previous run's.
Values are masked (masking.py) in both parts, unless `mail.mask = []`.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from reconciler.config import MailSettings, Settings
from reconciler.errors import RuntimeFailure
from reconciler.masking import mask_report
from reconciler.report import DRIFT_KEYS, render_html, to_dict
from reconciler.result import EntityResult, RunResult

log = logging.getLogger(__name__)
FINDINGS_IN_TEXT = 20  # per entity, in the text part (the HTML part lists them all)


def send_run_report(settings: Settings, result: RunResult, html: str | None = None,
                    previous: RunResult | None = None) -> list[str]:
    """Mail the run's report as `settings.mail` says; returns the recipients mailed (none: nothing sent).

    `html` (the report page as already rendered, e.g. with history charts) is used as the HTML part only
    when it may be: a mail with every entity of the run and masking off. Otherwise the HTML part is
    rendered from the masked report. `previous` is the last run (from history) for `send = "on_change"`.
    """
    mail = settings.mail
    if not mail.enabled:
        return []
    chosen = select_entities(mail.send, result, previous)
    groups = _groups(mail, [e.entity for e in result.entities if e.entity in chosen])
    if not groups:
        log.info("no report e-mail: the %s policy selects no entity of this run", mail.send)
        return []
    report = mask_report(to_dict(result), mail.mask)
    messages = []
    for entities, recipients in groups:
        part = {**report, "entities": [e for e in report["entities"] if e["entity"] in entities]}
        whole = len(entities) == len(result.entities)
        page = html if html is not None and whole and not mail.mask else render_html(part)
        messages.append(build_message(mail, part, page, recipients))
    _send(mail, messages)
    sent = [a for _, recipients in groups for a in recipients]
    log.info("report mailed to %d recipients", len(sent), extra={"recipients": sent})
    return sent


def select_entities(policy: str, result: RunResult, previous: RunResult | None) -> set[str]:
    if policy == "always":
        return {e.entity for e in result.entities}
    if policy == "on_drift":
        return {e.entity for e in result.entities if e.has_drift or e.error}
    before = {e.entity: _state(e) for e in previous.entities} if previous is not None else {}
    return {e.entity for e in result.entities if _state(e) != before.get(e.entity, _CLEAN)}


_CLEAN: tuple[Any, ...] = ((0, 0, 0), frozenset(), None)


def _state(e: EntityResult) -> tuple[Any, ...]:
    """What on_change compares: drift counts (not record totals, which grow every day), drifted keys, failure."""
    c = e.counts
    return (c.mismatched, c.missing_in_firestore, c.missing_in_postgres), frozenset(f.key for f in e.findings), e.error


def _groups(mail: MailSettings, entities: list[str]) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """(entities, recipients) per message: the global list gets everything, the others their entities."""
    groups: dict[tuple[str, ...], list[str]] = {}
    if mail.recipients and entities:
        groups[tuple(entities)] = list(dict.fromkeys(mail.recipients))
    per_address: dict[str, list[str]] = {}
    for entity in entities:
        for address in mail.entity_recipients.get(entity, ()):
            if address not in mail.recipients:
                per_address.setdefault(address, []).append(entity)
    for address, own in per_address.items():
        groups.setdefault(tuple(own), []).append(address)
    return [(e, tuple(r)) for e, r in groups.items()]


def build_message(mail: MailSettings, report: dict[str, Any], html: str, recipients: tuple[str, ...]) -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = subject(report)
    msg["From"] = mail.from_addr
    msg["To"] = ", ".join(recipients)
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain=mail.from_addr.rsplit("@", 1)[-1] or None)
    msg.set_content(text_summary(report))
    msg.add_alternative(html, subtype="html")
    return msg


def _drifted(e: dict[str, Any]) -> int:
    return sum(int(e["counts"].get(k, 0)) for k in DRIFT_KEYS)


def subject(report: dict[str, Any]) -> str:
    entities = report["entities"]
    failed = [e["entity"] for e in entities if e.get("error")]
    drifted = [e for e in entities if _drifted(e)]
    if failed:
        head = f"FAILED: {', '.join(failed)}"
    elif drifted:
        head = "drift in " + ", ".join(f"{e['entity']} ({_drifted(e):,})" for e in drifted)
    else:
        head = "no drift in " + ", ".join(e["entity"] for e in entities)
    return f"reconciler {report.get('mode', 'audit')}: {head} · run {report.get('run_id', '')}"


def text_summary(report: dict[str, Any]) -> str:
    lines = [subject(report), ""]
    for e in report["entities"]:
        c = e["counts"]
        if e.get("error"):
            lines.append(f"{e['entity']}: FAILED: {e['error']}")
        lines.append(f"{e['entity']}: {c['postgres']:,} in Postgres, {c['firestore']:,} in Firestore, "
                     f"{c['matched']:,} matched, {c['mismatched']:,} mismatched, {c['missing_in_firestore']:,} "
                     f"missing in Firestore, {c['missing_in_postgres']:,} missing in Postgres")
        lines.extend(f"    {n:,} x {path}" for path, n in list(e.get("field_counts", {}).items())[:10])
        for f in e["findings"][:FINDINGS_IN_TEXT]:
            lines.append(f"  {f['key']}: {f['kind'].replace('_', ' ')}")
            lines.extend(f"      {d['path']}: Postgres {d['postgres']!r}, Firestore {d['firestore']!r}"
                         for d in f["fields"])
        if len(e["findings"]) > FINDINGS_IN_TEXT or e.get("findings_truncated"):
            lines.append(f"  ... {_drifted(e) - min(len(e['findings']), FINDINGS_IN_TEXT):,} more in the HTML part")
        lines.append("")
    return "\n".join(lines)


def _send(mail: MailSettings, messages: list[EmailMessage]) -> None:
    where = f"{mail.host}:{mail.port}"
    try:
        with smtplib.SMTP(mail.host, mail.port, timeout=mail.timeout_s) as smtp:
            if mail.starttls:
                smtp.starttls(context=ssl.create_default_context(cafile=str(mail.ca_file) if mail.ca_file else None))
            if mail.username:
                smtp.login(mail.username, mail.password)
            for msg in messages:
                smtp.send_message(msg)
    except (OSError, smtplib.SMTPException) as exc:  # ssl.SSLError is an OSError
        raise RuntimeFailure(f"cannot send the report e-mail via {where}: {type(exc).__name__}: {exc}") from exc
