"""Reports of a run: `report.json` for machines, `report.html` for the person reading it at 7 a.m.

`to_dict` is the one JSON shape (values through `values.to_json`). `render_html` renders that dict, never
the RunResult, so a report.json read back from disk renders the same page. `write_reports` writes both
files, each atomically (temp file in the same directory, fsync, `os.replace`).

The page needs no network: inline CSS, server-rendered SVG charts, no scripts. All values are escaped
(jinja2 autoescape is on for the whole template; nothing from the data is marked safe).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import logging
import math
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import jinja2

from reconciler.errors import RuntimeFailure
from reconciler.redact import scrub_data
from reconciler.result import EntityResult, Finding, FindingKind, Repair, RepairSummary, RunResult, Sweep
from reconciler.values import to_json

log = logging.getLogger(__name__)
TEMPLATE = "report.html.j2"
# Installed from a wheel: reconciler/_templates (pyproject force-include). From the repo: reports/templates.
TEMPLATE_DIRS = (
    Path(__file__).resolve().parent / "_templates",
    Path(__file__).resolve().parent.parent / "reports" / "templates",
)

COUNT_KEYS = ("postgres", "firestore", "matched", "mismatched", "missing_in_firestore", "missing_in_postgres",
              "in_flight")
DRIFT_KEYS = ("mismatched", "missing_in_firestore", "missing_in_postgres")
TOP_FIELDS = 20
LABEL_MAX = 44  # characters of a chart label before it is shortened (the full text is in the bar's tooltip)
HIGHLIGHT_MIN = 40  # values at least this long get the differing middle part highlighted


@dataclass(frozen=True)
class ReportPaths:
    json: Path
    html: Path


# ------------------------------------------------------------------------------------------ JSON


def to_dict(result: RunResult, history: dict[str, list[dict[str, Any]]] | None = None) -> dict[str, Any]:
    """The report as JSON-ready data (see README, "Reports"). `history`: per entity, its recorded runs oldest
    first (this one last) as {"run_id", "started_at", "drifted", "outcome"}: the drift-over-time chart."""
    return {
        "run_id": result.run_id,
        "mode": result.mode,
        "started_at": to_json(result.started_at),
        "finished_at": to_json(result.finished_at),
        "duration_s": round((result.finished_at - result.started_at).total_seconds(), 3),
        "has_drift": result.has_drift,
        "entities": [_entity_dict(e) for e in result.entities],
        **({"history": {e: [{**p, "started_at": to_json(p["started_at"])} for p in points]
                        for e, points in history.items()}} if history else {}),
    }


def _entity_dict(e: EntityResult) -> dict[str, Any]:
    return {
        "entity": e.entity,
        "source_of_truth": e.source_of_truth,
        "counts": {k: int(getattr(e.counts, k)) for k in COUNT_KEYS},
        "field_counts": {str(k): int(v) for k, v in sorted(e.field_counts.items(), key=lambda kv: (-kv[1], kv[0]))},
        "error": e.error,
        "duration_s": round(e.duration_s, 3),
        "findings": [_finding_dict(f) for f in e.findings],
        "findings_truncated": e.findings_truncated,
        **({"repair": _summary_dict(e.repair)} if e.repair is not None else {}),
        **({"sweep": _sweep_dict(e.sweep)} if e.sweep is not None else {}),
        **({"skipped": e.skipped} if e.skipped else {}),
    }


def _sweep_dict(s: Sweep) -> dict[str, Any]:
    return {"rules_sha256": s.rules_sha256, "documents": list(s.documents), "max_findings": s.max_findings,
            "start": s.start, "end": s.end, "shard": list(s.shard) if s.shard else None,
            "changed_since": s.changed_since, "workers": s.workers}


def _summary_dict(r: RepairSummary) -> dict[str, Any]:
    return {"target": r.target, "applied": r.applied, "planned": r.planned, "done": r.done, "skipped": r.skipped,
            "failed": r.failed, "refused": r.refused, "duration_s": round(r.duration_s, 3),
            "resolved": [{"run_id": x.run_id, "key": x.key, "action": x.action.value, "status": x.status,
                          "reason": x.reason} for x in r.resolved],
            "earlier": [{"key": x.key, "action": x.action.value, "status": x.status, "reason": x.reason}
                        for x in r.earlier]}


def _finding_dict(f: Finding) -> dict[str, Any]:
    return {
        "key": f.key,
        "kind": f.kind.value if isinstance(f.kind, FindingKind) else str(f.kind),
        "fields": [{"path": d.path, "kind": d.kind, "postgres": to_json(d.postgres), "firestore": to_json(d.firestore)}
                   for d in f.fields],
        **({"repair": _repair_dict(f.repair)} if f.repair is not None else {}),
    }


def _repair_dict(r: Repair) -> dict[str, Any]:
    out = {"action": r.action.value, "status": r.status.value, "reason": r.reason,
           "writes": list(r.writes)}
    if r.deleted is not None:
        out["deleted"] = to_json(r.deleted)
    return out


# ------------------------------------------------------------------------------------------ HTML


@functools.cache
def _environment() -> jinja2.Environment:
    for directory in TEMPLATE_DIRS:
        if (directory / TEMPLATE).is_file():
            return jinja2.Environment(
                loader=jinja2.FileSystemLoader(str(directory)),
                autoescape=True,  # on for every template whatever its name (.j2 is not in select_autoescape's list)
                undefined=jinja2.StrictUndefined,
                trim_blocks=True,
                lstrip_blocks=True,
            )
    raise RuntimeFailure(f"the report template {TEMPLATE} is in none of: {', '.join(map(str, TEMPLATE_DIRS))}")


def render_html(report: dict[str, Any]) -> str:
    """The HTML page for a report dict (from `to_dict`, or a report.json read back)."""
    return _environment().get_template(TEMPLATE).render(**_view(report))


def _view(report: dict[str, Any]) -> dict[str, Any]:
    """Everything the template shows, precomputed: display strings, percentages, chart geometry."""
    anchors: set[str] = set()
    entities = [_entity_view(e, anchors) for e in report.get("entities") or ()]
    drifted = sum(e["drifted"] for e in entities)
    records = sum(e["total"] for e in entities)
    failed = [e for e in entities if e["error"]]
    drifting = [e for e in entities if e["drifted"]]

    lines = [f"Entity {e['name']} failed: {e['error']}" for e in failed]
    if drifted:
        level = "failed" if failed else "drift"
        headline = f"Drift found in {drifted:,} {_plural(drifted, 'record')}"
        detail = (f"{len(drifting)} of {len(entities)} {_plural(len(entities), 'entity', 'entities')} drifted, "
                  f"out of {records:,} {_plural(records, 'record')} compared.")
    elif failed:
        level, headline = "failed", lines.pop(0)
        ok = len(entities) - len(failed)
        detail = f"No drift in the {ok} other {_plural(ok, 'entity', 'entities')}." if ok else ""
    elif entities:
        level, headline = "ok", "No drift"
        detail = (f"All {records:,} {_plural(records, 'record')} match across {len(entities)} "
                  f"{_plural(len(entities), 'entity', 'entities')}.")
    else:
        level, headline, detail = "none", "Nothing audited", "The run had no entities."

    return {
        "run_id": str(report.get("run_id", "")),
        "mode": str(report.get("mode", "")),
        "started": _when(report.get("started_at")),
        "finished": _when(report.get("finished_at")),
        "duration": _duration(report.get("duration_s")),
        "verdict": {"level": level, "headline": headline, "detail": detail, "lines": lines},
        "title": f"{headline} · reconciler {report.get('mode', '')} {report.get('run_id', '')}".strip(),
        "entities": entities,
        "totals": {"drifted": drifted, "records": records, "drift_pct": _pct(drifted, records),
                   "counts": {k: sum(e["counts"][k] for e in entities) for k in COUNT_KEYS}},
        "entity_chart": _entity_chart(entities),
        "field_chart": _field_chart(entities),
        "trend_charts": _trend_charts(report.get("history") or {}, report.get("run_id"), entities),
    }


def _entity_view(e: dict[str, Any], anchors: set[str]) -> dict[str, Any]:
    name = str(e.get("entity", ""))
    raw = e.get("counts") or {}
    counts = {k: _int(raw.get(k)) for k in COUNT_KEYS}
    drifted = sum(counts[k] for k in DRIFT_KEYS)
    total = counts["matched"] + drifted
    findings = [_finding_view(f) for f in e.get("findings") or ()]
    fields = sorted(((str(k), _int(v)) for k, v in (e.get("field_counts") or {}).items()),
                    key=lambda kv: (-kv[1], kv[0]))
    source = str(e.get("source_of_truth") or "")
    return {
        "name": name,
        "anchor": _anchor(name, anchors),
        "source_of_truth": source,
        "source_label": {"postgres": "Postgres", "firestore": "Firestore"}.get(source, source),
        "counts": counts,
        "drifted": drifted,
        "total": total,
        "drift_pct": _pct(drifted, total),
        "error": e.get("error") or None,
        "skipped": e.get("skipped") or None,
        "duration": _duration(e.get("duration_s")),
        "fields": [{"path": p, "count": c} for p, c in fields],
        "findings": findings,
        "shown": len(findings),
        "truncated": bool(e.get("findings_truncated")),
        "repair": _repair_summary_text(e.get("repair")),
        "resolved": _resolved_lines(e.get("repair")),
        "earlier": _earlier_lines(e.get("repair")),
    }


def _repair_summary_text(r: Any) -> str | None:
    if not isinstance(r, dict):
        return None
    target = {"postgres": "Postgres", "firestore": "Firestore"}.get(str(r.get("target")), str(r.get("target")))
    if r.get("refused"):
        return f"Repair toward {target} refused: {r['refused']}"
    if not r.get("applied"):
        return f"Repair toward {target}, dry run: {_int(r.get('planned')):,} records would be written; nothing was."
    return (f"Repair toward {target}: {_int(r.get('done')):,} applied, {_int(r.get('skipped')):,} skipped, "
            f"{_int(r.get('failed')):,} failed.")


def _resolved_lines(r: Any) -> list[str]:
    """The writes earlier runs left pending in the audit trail, as this run settled them."""
    if not isinstance(r, dict):
        return []
    return [f"{x.get('action')} {x.get('key')} (run {x.get('run_id')}): {x.get('status')}: {x.get('reason')}"
            for x in r.get("resolved") or () if isinstance(x, dict)]


def _earlier_lines(r: Any) -> list[str]:
    """This run's writes before its Postgres connection was lost (the repair started over; each is counted once)."""
    if not isinstance(r, dict):
        return []
    return [f"{x.get('action')} {x.get('key')}: {x.get('status')}" + (f": {x['reason']}" if x.get("reason") else "")
            for x in r.get("earlier") or () if isinstance(x, dict)]


KIND_LABELS = {
    "mismatch": "mismatch",
    "missing_in_firestore": "missing in Firestore",
    "missing_in_postgres": "missing in Postgres",
}
MISSING_NOTES = {
    "missing_in_firestore": "Exists in Postgres only: no Firestore document with this key.",
    "missing_in_postgres": "Exists in Firestore only: no Postgres row with this key.",
}


def _finding_view(f: dict[str, Any]) -> dict[str, Any]:
    kind = str(f.get("kind", ""))
    rows = []
    for d in f.get("fields") or ():
        pg, fs = _cell(d.get("postgres")), _cell(d.get("firestore"))
        if pg["kind"] != "null" and fs["kind"] != "null" and pg["type"] != fs["type"]:
            pg["tag"], fs["tag"] = pg["type"], fs["type"]  # same-looking values of different types: say so
        if pg["kind"] != "null" and fs["kind"] != "null":
            pg["parts"], fs["parts"] = _highlight(pg["text"], fs["text"])
        rows.append({"path": str(d.get("path", "")), "type_mismatch": d.get("kind") == "type_mismatch",
                     "postgres": pg, "firestore": fs})
    return {
        "key": str(f.get("key", "")),
        "kind": kind,
        "kind_class": kind if kind in KIND_LABELS else "other",
        "kind_label": KIND_LABELS.get(kind, kind.replace("_", " ")),
        "note": MISSING_NOTES.get(kind, "No field details recorded."),
        "rows": rows,
        "repair": _repair_text(f.get("repair")),
    }


def _repair_text(r: Any) -> str | None:
    if not isinstance(r, dict):
        return None
    reason = f": {r['reason']}" if r.get("reason") else ""
    return f"Repair: {r.get('action')}, {r.get('status')}{reason}"


_PLAIN = re.compile(r"\S(?:.*\S)?", re.DOTALL)  # no leading/trailing whitespace, not empty
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _cell(value: Any) -> dict[str, Any]:
    """How one value is shown: null (em dash), text (as is), json (<code>, for maps, lists, tricky strings)."""
    if value is None:
        return {"kind": "null", "text": "—", "type": "null", "tag": None, "parts": None}
    if isinstance(value, bool):
        kind, type_, text = "scalar", "boolean", "true" if value else "false"
    elif isinstance(value, (int, float)):
        kind, type_, text = "scalar", "number", json.dumps(value)
    elif isinstance(value, str):
        type_ = "text"
        if _PLAIN.fullmatch(value) and not _CONTROL.search(value):
            kind, text = "text", value
        else:  # empty, or spaces at either end, or control characters: quoted so they are visible
            kind, text = "json", json.dumps(value, ensure_ascii=False)
    elif isinstance(value, dict):
        kind, type_, text = "json", "map", _compact(value)
    elif isinstance(value, list):
        kind, type_, text = "json", "list", _compact(value)
    else:
        kind, type_, text = "text", type(value).__name__, str(value)
    return {"kind": kind, "text": text, "type": type_, "tag": None, "parts": None}


def _compact(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError):
        return str(value)


def _highlight(a: str, b: str) -> tuple[list[tuple[str, bool]] | None, list[tuple[str, bool]] | None]:
    """For long values, split each into (text, differs) parts around the common prefix and suffix."""
    if a == b or min(len(a), len(b)) < HIGHLIGHT_MIN:
        return None, None
    pre = len(os.path.commonprefix([a, b]))
    suf = min(len(os.path.commonprefix([a[::-1], b[::-1]])), min(len(a), len(b)) - pre)
    if pre + suf < 8:  # hardly anything in common: highlighting would not help
        return None, None

    def parts(s: str) -> list[tuple[str, bool]]:
        out = [(s[:pre], False), (s[pre:len(s) - suf], True), (s[len(s) - suf:], False)]
        return [(t, d) for t, d in out if t]

    return parts(a), parts(b)


# ------------------------------------------------------------------------------------------ charts
# Bars are laid out in percent of the chart's width (labels stay at their font size on any screen):
# each bar is a <g class="bar"> with a label row (name left, value right) and the bar below it.

ROW_H = 38
BAR_Y = 18
BAR_H = 14
SEGMENTS = (("mismatched", "mismatch"), ("missing_in_firestore", "missing_in_firestore"),
            ("missing_in_postgres", "missing_in_postgres"))


def _entity_chart(entities: list[dict[str, Any]]) -> dict[str, Any]:
    top = max((e["drifted"] for e in entities), default=0)
    bars = []
    for i, e in enumerate(entities):
        segments, x = [], 0.0
        for key, css in SEGMENTS:
            n = e["counts"][key]
            if n and top:
                w = max(n / top * 100, 0.4)
                segments.append({"x": _num(x), "w": _num(min(w, 100 - x)), "cls": css, "n": n})
                x += w
        if e["error"]:
            value = f"failed · {e['drifted']:,}" if e["drifted"] else "failed"
        else:
            value = f"{e['drifted']:,} ({e['drift_pct']})"
        breakdown = ", ".join(f"{e['counts'][k]:,} {KIND_LABELS[c]}" for k, c in SEGMENTS if e["counts"][k])
        bars.append({
            "y": i * ROW_H, "label": _short(e["name"]), "value": value, "segments": segments,
            "failed": bool(e["error"]),
            "title": f"{e['name']}: {e['drifted']:,} drifted of {e['total']:,}" + (f" ({breakdown})" if breakdown else ""),
        })
    return {"bars": bars, "height": max(len(bars) * ROW_H, ROW_H), "bar_y": BAR_Y, "bar_h": BAR_H}


def _field_chart(entities: list[dict[str, Any]]) -> dict[str, Any]:
    items = [(f["count"], e["name"], f["path"]) for e in entities for f in e["fields"]]
    items.sort(key=lambda t: (-t[0], t[1], t[2]))
    several = len({name for _, name, _ in items}) > 1
    top = items[0][0] if items else 0
    bars = []
    for i, (count, name, path) in enumerate(items[:TOP_FIELDS]):
        label = f"{name} · {path}" if several else path
        bars.append({
            "y": i * ROW_H, "label": _short(label), "value": f"{count:,}",
            "w": _num(max(count / top * 100, 0.4)) if top and count else 0,
            "title": f"{label}: {count:,} {_plural(count, 'record')}",
        })
    return {"bars": bars, "height": max(len(bars) * ROW_H, ROW_H), "bar_y": BAR_Y, "bar_h": BAR_H,
            "total": len(items), "more": max(len(items) - TOP_FIELDS, 0)}


TREND_H = 110  # px of the columns' area
TREND_TOP = 20  # px above it: the scale label
TREND_BOTTOM = 20  # px below it: the first and last date


def _trend_charts(history: dict[str, Any], run_id: Any, entities: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per entity with recorded runs: drifted records per run as columns, oldest left, this run last."""
    anchors = {e["name"]: e["anchor"] for e in entities}
    charts = []
    for name, points in history.items():
        points = [p for p in points or () if isinstance(p, dict)]
        if not points:
            continue
        top = max((_int(p.get("drifted")) for p in points), default=0)
        slot = 100 / len(points)
        columns = []
        for i, p in enumerate(points):
            n, status = _int(p.get("drifted")), str(p.get("outcome") or "")
            h = max(n / top * TREND_H, 2.0) if top and n else 2.0  # a clean run is a thin line, not nothing
            cls = "failed" if status == "failed" else ("drift" if n else "clean")
            columns.append({
                "x": _num(i * slot + slot * 0.15), "w": _num(slot * 0.7), "y": _num(TREND_TOP + TREND_H - h),
                "h": _num(h), "cls": cls + (" current" if p.get("run_id") == run_id else ""),
                "title": f"{_when(p.get('started_at'))} · run {p.get('run_id')}: {n:,} drifted"
                         + (" (failed)" if status == "failed" else ""),
            })
        charts.append({
            "entity": str(name), "id": "chart-trend-" + anchors.get(name, _anchor(str(name), set())).removeprefix("entity-"),
            "columns": columns, "max": f"{top:,}", "runs": len(points),
            "first": _when(points[0].get("started_at")), "last": _when(points[-1].get("started_at")),
            "height": TREND_TOP + TREND_H + TREND_BOTTOM, "base_y": TREND_TOP + TREND_H,
            "label_y": TREND_TOP + TREND_H + TREND_BOTTOM - 4,
        })
    return charts


# ------------------------------------------------------------------------------------------ formatting


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _num(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".")


def _plural(n: int, one: str, many: str | None = None) -> str:
    return one if n == 1 else (many or one + "s")


def _pct(part: int, whole: int) -> str:
    if not whole:
        return "—"
    p = part / whole * 100
    if part and p < 0.1:
        return "<0.1%"
    if part != whole and p > 99.9:
        return ">99.9%"
    return f"{p:.1f}%".replace(".0%", "%")


def _short(text: str) -> str:
    return text if len(text) <= LABEL_MAX else text[: LABEL_MAX - 1] + "…"


def _anchor(name: str, taken: set[str]) -> str:
    base = "entity-" + (re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-").lower() or "x")
    anchor, n = base, 2
    while anchor in taken:
        anchor, n = f"{base}-{n}", n + 1
    taken.add(anchor)
    return anchor


def _when(value: Any) -> str:
    if not value:
        return "—"
    try:
        t = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return str(value)
    if t.tzinfo is None:
        return t.strftime("%Y-%m-%d %H:%M:%S")
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: Any) -> str:
    try:
        s = float(seconds)
    except (TypeError, ValueError):
        return "—"
    if not math.isfinite(s) or s < 0:
        return "—"
    if s < 10:
        return f"{s:.1f} s"
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


# ------------------------------------------------------------------------------------------ files


def write_reports(result: RunResult, directory: Path,
                  history: dict[str, list[dict[str, Any]]] | None = None, secrets: Iterable[str] = ()) -> ReportPaths:
    """Write DIR/report.json and DIR/report.html (creating DIR); each file is replaced atomically.
    `history`: see to_dict (without it the page has no drift-over-time chart). `secrets` (passwords) are
    scrubbed from both, wherever a message may have quoted one."""
    return write_report_dict(scrub_data(to_dict(result, history), secrets), directory)


def write_report_dict(report: dict[str, Any], directory: Path) -> ReportPaths:
    """write_reports for a report that is already JSON-ready data (e.g. merged from shard reports)."""
    directory = Path(directory)
    html = render_html(report).encode("utf-8", errors="replace")  # rendered before anything is written
    try:
        data = json.dumps(report, indent=2, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate somewhere: \u-escaped JSON is still exact and valid
        data = json.dumps(report, indent=2, ensure_ascii=True).encode("ascii")
    paths = ReportPaths(json=directory / "report.json", html=directory / "report.html")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        _write_atomically(paths.json, data + b"\n")
        _write_atomically(paths.html, html)
    except OSError as exc:
        raise RuntimeFailure(f"cannot write the report to {directory}: {exc}") from exc
    log.info("report written", extra={"html": str(paths.html), "json": str(paths.json)})
    return paths


def _write_atomically(path: Path, data: bytes) -> None:
    """Temp file next to `path` (same filesystem), fsync, rename over: readers see the old or the new file."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0o666 & ~umask, like a plain open()
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable (not possible on every platform)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
