"""Reports: the JSON shape, the HTML page (escaping, offline, charts, findings), atomic files. No servers."""

from __future__ import annotations

import datetime as dt
import html
import json
import os
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler import report
from reconciler.errors import RuntimeFailure
from reconciler.report import ReportPaths, render_html, to_dict, write_reports
from reconciler.result import Counts, EntityResult, FieldDiff, Finding, FindingKind, RunResult
from reconciler.values import Geo

T0 = dt.datetime(2025, 3, 4, 5, 0, 2, 250000, tzinfo=dt.timezone.utc)
T1 = T0 + dt.timedelta(seconds=289.5)
XSS = "<script>alert(1)</script>"
XSS_ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"

TOP_KEYS = {"run_id", "mode", "started_at", "finished_at", "duration_s", "has_drift", "entities"}
ENTITY_KEYS = {"entity", "source_of_truth", "counts", "field_counts", "error", "duration_s", "findings",
               "findings_truncated"}
COUNT_KEYS = {"postgres", "firestore", "matched", "mismatched", "missing_in_firestore", "missing_in_postgres", "in_flight"}
FINDING_KEYS = {"key", "kind", "fields"}
FIELD_KEYS = {"path", "kind", "postgres", "firestore"}


def fd(path: str, pg, fs) -> FieldDiff:
    return FieldDiff(path=path, postgres=pg, firestore=fs, pattern=path)


def entity(name: str = "customers", *, findings=(), truncated: bool = False, field_counts=None, error=None,
           counts: Counts | None = None, source: str = "postgres") -> EntityResult:
    findings = tuple(findings)
    if counts is None:
        kinds = [f.kind for f in findings]
        counts = Counts(postgres=10, firestore=10, matched=10 - len(findings),
                        mismatched=kinds.count(FindingKind.MISMATCH),
                        missing_in_firestore=kinds.count(FindingKind.MISSING_IN_FIRESTORE),
                        missing_in_postgres=kinds.count(FindingKind.MISSING_IN_POSTGRES))
    if field_counts is None:
        field_counts = {}
        for f in findings:
            for d in f.fields:
                field_counts[d.pattern] = field_counts.get(d.pattern, 0) + 1
    return EntityResult(entity=name, source_of_truth=source, counts=counts, findings=findings,
                        findings_truncated=truncated, field_counts=field_counts, duration_s=1.25, error=error)


def run(*entities: EntityResult, run_id: str = "abc123def456") -> RunResult:
    return RunResult(run_id=run_id, mode="audit", started_at=T0, finished_at=T1, entities=tuple(entities))


def sample() -> RunResult:
    return run(entity("customers", findings=[
        Finding("customers/c1", FindingKind.MISMATCH, (
            fd("metrics.totalSpent", 8456.0, 8465.0),
            fd("updatedAt", T0, dt.datetime(2025, 3, 4, 7, 0, 5, tzinfo=dt.timezone(dt.timedelta(hours=2)))),
            fd("location.geo", Geo(52.52, 13.405), Geo(52.5201, 13.405)),
            fd("balance", Decimal("12.50"), None),
            fd("tags", ("vip", "newsletter"), ["vip"]),
            fd("prefs", {"lang": "de", "channels": ["mail", "sms"]}, {"lang": "de", "channels": []}),
        )),
        Finding("customers/c1/addresses/a7", FindingKind.MISMATCH, (fd("city", "Berlin", "Bonn"),)),
        Finding("customers/c2", FindingKind.MISSING_IN_FIRESTORE),
        Finding("customers/c3", FindingKind.MISSING_IN_POSTGRES),
    ]))


# ------------------------------------------------------------------------------------------ HTML helpers


class Page(HTMLParser):
    """Table rows as lists of (class, text) cells, plus each <svg id>'s <g class="bar..."> count."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.rows: list[list[tuple[str, str]]] = []
        self.bars: dict[str, int] = {}
        self._cell: list[str] | None = None
        self._svg: str | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th") and self.rows:
            self._cell = [a.get("class") or ""]
        elif tag == "svg":
            self._svg = a.get("id") or ""
            self.bars.setdefault(self._svg, 0)
        elif tag == "g" and self._svg is not None and "bar" in (a.get("class") or "").split():
            self.bars[self._svg] += 1

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append((self._cell[0], "".join(self._cell[1:]).strip()))
            self._cell = None
        elif tag == "svg":
            self._svg = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def row_for(self, path: str) -> dict[str, str]:
        """The finding row of a field path: {cell class: text}."""
        for row in self.rows:
            cells = {cls: text for cls, text in row}
            if cells.get("path") == path:
                return cells
        raise AssertionError(f"no row for field {path!r}")


# ------------------------------------------------------------------------------------------ JSON


def test_json_has_exactly_the_documented_keys():
    d = to_dict(sample())
    assert set(d) == TOP_KEYS
    (e,) = d["entities"]
    assert set(e) == ENTITY_KEYS
    assert set(e["counts"]) == COUNT_KEYS
    for f in e["findings"]:
        assert set(f) == FINDING_KEYS
        for field in f["fields"]:
            assert set(field) == FIELD_KEYS


def test_json_values_are_json_types():
    d = to_dict(sample())
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    assert d["run_id"] == "abc123def456" and d["mode"] == "audit"
    assert d["started_at"] == "2025-03-04T05:00:02.250000Z"
    assert d["finished_at"] == "2025-03-04T05:04:51.750000Z"
    assert d["duration_s"] == 289.5
    assert d["has_drift"] is True
    e = d["entities"][0]
    assert e["entity"] == "customers" and e["source_of_truth"] == "postgres"
    assert e["counts"] == {"postgres": 10, "firestore": 10, "matched": 6, "mismatched": 2,
                           "missing_in_firestore": 1, "missing_in_postgres": 1, "in_flight": 0}
    assert e["error"] is None and e["duration_s"] == 1.25 and e["findings_truncated"] is False
    assert [f["kind"] for f in e["findings"]] == ["mismatch", "mismatch", "missing_in_firestore",
                                                  "missing_in_postgres"]
    assert e["findings"][1]["key"] == "customers/c1/addresses/a7"
    assert e["findings"][2]["fields"] == []
    fields = {f["path"]: (f["postgres"], f["firestore"]) for f in e["findings"][0]["fields"]}
    assert fields["metrics.totalSpent"] == (8456.0, 8465.0)
    assert fields["updatedAt"] == ("2025-03-04T05:00:02.250000Z", "2025-03-04T05:00:05Z")  # +02:00 -> UTC
    assert fields["location.geo"] == ({"latitude": 52.52, "longitude": 13.405},
                                      {"latitude": 52.5201, "longitude": 13.405})
    assert fields["balance"] == (12.5, None)
    assert fields["tags"] == (["vip", "newsletter"], ["vip"])
    assert fields["prefs"][1] == {"lang": "de", "channels": []}


def test_field_counts_are_kept_most_drifted_first():
    e = entity(field_counts={"b": 2, "a": 2, "metrics.totalSpent": 3, "sources.*.id": 1})
    assert list(to_dict(run(e))["entities"][0]["field_counts"].items()) == [
        ("metrics.totalSpent", 3), ("a", 2), ("b", 2), ("sources.*.id", 1)]


def test_no_drift_and_failed_entity():
    ok = entity("orders")
    failed = entity("products", error="firestore: 503 unavailable", counts=Counts())
    d = to_dict(run(ok, failed))
    assert d["has_drift"] is False
    assert [e["error"] for e in d["entities"]] == [None, "firestore: 503 unavailable"]


def test_non_finite_numbers_never_make_invalid_json():
    e = entity(findings=[Finding("c/1", FindingKind.MISMATCH, (
        fd("geo", Geo(float("nan"), 1.0), Geo(0.0, float("inf"))), fd("x", float("nan"), Decimal("1E+400"))))])
    d = to_dict(run(e))
    json.dumps(d, allow_nan=False)  # would raise on NaN/Infinity
    f = d["entities"][0]["findings"][0]["fields"]
    assert f[0]["postgres"] == {"latitude": "nan", "longitude": 1.0}
    assert f[1] == {"path": "x", "kind": "value", "postgres": "nan", "firestore": "inf"}


# ------------------------------------------------------------------------------------------ HTML


def test_mismatch_values_side_by_side():
    page = Page(render_html(to_dict(sample())))
    row = page.row_for("metrics.totalSpent")
    assert row["pg"] == "8456.0" and row["fs"] == "8465.0"
    row = page.row_for("updatedAt")
    assert row["pg"] == "2025-03-04T05:00:02.250000Z" and row["fs"] == "2025-03-04T05:00:05Z"
    assert page.row_for("city") == {"path": "city", "pg": "Berlin", "fs": "Bonn", "key": "customers/c1/addresses/a7",
                                    "kind": "mismatch"}


def test_maps_and_lists_are_compact_json_in_code_and_none_is_a_dash():
    text = render_html(to_dict(sample()))
    page = Page(text)
    assert page.row_for("location.geo")["pg"] == '{"latitude":52.52,"longitude":13.405}'
    assert page.row_for("tags")["pg"] == '["vip","newsletter"]'
    assert '<code class="val">{&#34;lang&#34;:&#34;de&#34;,&#34;channels&#34;:[]}</code>' in text
    assert page.row_for("balance") == {"path": "balance", "pg": "12.5", "fs": "—"}
    assert '<span class="null" title="NULL or absent">—</span>' in text


def test_values_of_different_types_are_labelled():
    e = entity(findings=[Finding("c/1", FindingKind.MISMATCH, (fd("level", "42", 42), fd("name", "Ann ", "Ann")))])
    page = Page(render_html(to_dict(run(e))))
    assert page.row_for("level")["pg"] == "42 text" and page.row_for("level")["fs"] == "42 number"
    assert page.row_for("name")["pg"] == '"Ann "'  # trailing space made visible by quoting


def test_long_values_have_the_differing_part_marked():
    a = "Friedrichstraße 123, Hinterhaus, 3. Obergeschoss links, 10117 Berlin"
    e = entity(findings=[Finding("c/1", FindingKind.MISMATCH, (fd("street", a, a.replace("3.", "4.")),))])
    text = render_html(to_dict(run(e)))
    assert "<mark>3</mark>" in text and "<mark>4</mark>" in text
    assert Page(text).row_for("street")["pg"] == a


def test_script_values_are_escaped_everywhere():
    e = entity(XSS, error=XSS, findings=[Finding(f"customers/{XSS}", FindingKind.MISMATCH, (fd(XSS, XSS, {XSS: [XSS]}),))],
               field_counts={XSS: 1})
    text = render_html(to_dict(run(e, run_id=XSS)))
    assert "<script" not in text.lower()
    assert XSS_ESCAPED in text
    page = Page(text)
    assert page.row_for(XSS)["pg"] == f"{XSS} text"  # text vs map: both values carry their type
    assert page.row_for(XSS)["fs"] == json.dumps({XSS: [XSS]}, separators=(",", ":")) + " map"
    assert f"Entity {XSS_ESCAPED} failed: {XSS_ESCAPED}" in text


def test_page_is_offline():
    text = render_html(to_dict(sample()))
    assert "http://" not in text and "https://" not in text
    lower = text.lower()
    for needle in ("<script", "<link", "<img", "<iframe", "@import", "url(", " src="):
        assert needle not in lower
    assert "<style>" in text and "<svg" in text


def test_verdicts():
    no_drift = render_html(to_dict(run(entity("orders"))))
    assert "No drift" in no_drift and "verdict-ok" in no_drift and "Drift found" not in no_drift

    drift = render_html(to_dict(sample()))
    assert "Drift found in 4 records" in drift and "verdict-drift" in drift

    one = render_html(to_dict(run(entity(findings=[Finding("c/1", FindingKind.MISSING_IN_POSTGRES)]))))
    assert "Drift found in 1 record<" in one

    failed = render_html(to_dict(run(entity("orders"), entity("products", error="boom: timeout", counts=Counts()))))
    assert "Entity products failed: boom: timeout" in failed and "verdict-failed" in failed
    assert "No drift<" not in failed


def test_header_shows_run_times_and_duration():
    text = render_html(to_dict(sample()))
    assert "abc123def456" in text
    assert "2025-03-04 05:00:02 UTC" in text and "2025-03-04 05:04:51 UTC" in text
    assert "4 min 49 s" in text


def test_summary_table_counts_and_drift_percentage():
    page = Page(render_html(to_dict(sample())))
    header = [text for _, text in page.rows[0]]
    assert header == ["Entity", "Postgres", "Firestore", "Matched", "Mismatched", "Missing in Firestore",
                      "Missing in Postgres", "Drift"]
    values = [text for _, text in page.rows[1]]
    assert values[0].startswith("customers")
    assert values[1:] == ["10", "10", "6", "2", "1", "1", "40%"]


def test_entity_chart_has_one_bar_per_entity():
    entities = [entity(f"e{i}", findings=[Finding(f"e{i}/{j}", FindingKind.MISMATCH, (fd("x", 1, 2),))
                                           for j in range(i)]) for i in range(5)]
    page = Page(render_html(to_dict(run(*entities))))
    assert page.bars["chart-entities"] == 5


def test_field_chart_has_one_bar_per_field_up_to_20():
    page = Page(render_html(to_dict(run(entity(field_counts={"a": 3, "b.c": 2, "d": 1})))))
    assert page.bars["chart-fields"] == 3

    many = {f"field{i:02d}": 100 - i for i in range(25)}
    text = render_html(to_dict(run(entity(field_counts=many))))
    assert Page(text).bars["chart-fields"] == 20
    assert "field19" in text and "field20" not in text.split("chart-fields")[1].split("</svg>")[0]
    assert "top 20 of 25" in text


def test_field_chart_names_the_entity_when_several_drift():
    text = render_html(to_dict(run(entity("customers", field_counts={"email": 2}),
                                   entity("orders", field_counts={"email": 1}))))
    assert Page(text).bars["chart-fields"] == 2
    assert "customers · email" in text and "orders · email" in text


def test_no_field_chart_bars_without_field_drift():
    text = render_html(to_dict(run(entity("orders"))))
    assert "No field differences." in text and "chart-fields" not in text


def test_truncated_findings_show_the_notice():
    findings = [Finding(f"customers/c{i}", FindingKind.MISSING_IN_FIRESTORE) for i in range(2)]
    counts = Counts(postgres=100, firestore=93, matched=93, missing_in_firestore=7)
    text = render_html(to_dict(run(entity(findings=findings, truncated=True, counts=counts))))
    assert "Showing the first 2 of 7 drifted records" in text

    text = render_html(to_dict(sample()))
    assert "Showing the first" not in text


def test_missing_records_are_listed_with_a_badge():
    page = Page(render_html(to_dict(sample())))
    rows = [{cls: text for cls, text in row} for row in page.rows]
    missing = [r for r in rows if r.get("key") in ("customers/c2", "customers/c3")]
    assert [r["kind"] for r in missing] == ["missing in Firestore", "missing in Postgres"]


def test_renders_a_report_with_optional_parts_missing():
    """An older or hand-written report.json without field_counts/error/duration still renders."""
    d = to_dict(sample())
    for e in d["entities"]:
        for k in ("field_counts", "error", "duration_s"):
            del e[k]
    del d["duration_s"]
    assert "customers/c1" in render_html(d)


# ------------------------------------------------------------------------------------------ files


def test_write_reports_writes_valid_json_that_re_renders(tmp_path: Path):
    result = run(entity("kunden", findings=[Finding("kunden/ü", FindingKind.MISMATCH, (fd("name", "Jörg", "Jorg"),))]))
    out = tmp_path / "nested" / "out"
    paths = write_reports(result, out)
    assert paths == ReportPaths(json=out / "report.json", html=out / "report.html")
    raw = paths.json.read_bytes()
    assert "Jörg".encode() in raw  # UTF-8, not \u-escaped
    assert raw.startswith(b'{\n  "run_id"')  # indent=2
    loaded = json.loads(raw.decode("utf-8"))
    assert loaded == to_dict(result)
    page = paths.html.read_text(encoding="utf-8")
    assert page == render_html(loaded)
    assert Page(page).row_for("name") == {"key": "kunden/ü", "kind": "mismatch", "path": "name", "pg": "Jörg",
                                          "fs": "Jorg"}
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json"]  # no temp files left


def test_write_reports_replaces_existing_reports(tmp_path: Path):
    write_reports(sample(), tmp_path)
    write_reports(run(entity("orders")), tmp_path)
    assert json.loads((tmp_path / "report.json").read_text())["has_drift"] is False
    assert "No drift" in (tmp_path / "report.html").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "report.json"]


def test_a_crash_while_writing_leaves_the_previous_report_whole(tmp_path: Path, monkeypatch):
    write_reports(run(entity("orders")), tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    real_fsync = os.fsync

    def crash(fd):  # the data is written but the process "dies" before the rename
        real_fsync(fd)
        raise KeyboardInterrupt

    monkeypatch.setattr(report.os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        write_reports(sample(), tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_failed_rename_of_the_html_keeps_the_old_html(tmp_path: Path, monkeypatch):
    write_reports(run(entity("orders")), tmp_path)
    old_html = (tmp_path / "report.html").read_bytes()
    real_replace = os.replace

    def replace(src, dst):
        if str(dst).endswith(".html"):
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(report.os, "replace", replace)
    with pytest.raises(RuntimeFailure, match="cannot write the report"):
        write_reports(sample(), tmp_path)
    assert (tmp_path / "report.html").read_bytes() == old_html
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "report.json"]


def test_unwritable_directory_is_a_runtime_failure(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(RuntimeFailure, match="cannot write the report"):
        write_reports(sample(), blocker / "out")


def test_lone_surrogates_still_give_valid_files(tmp_path: Path):
    e = entity(findings=[Finding("c/\udc80", FindingKind.MISMATCH, (fd("name", "a\ud800", "b"),))])
    paths = write_reports(run(e), tmp_path)
    loaded = json.loads(paths.json.read_bytes().decode("utf-8"))
    assert loaded["entities"][0]["findings"][0]["key"] == "c/\udc80"
    paths.html.read_bytes().decode("utf-8")


def test_template_is_found_in_the_installed_location_first(tmp_path: Path, monkeypatch):
    installed = tmp_path / "_templates"
    installed.mkdir()
    (installed / report.TEMPLATE).write_text("installed {{ run_id }}", encoding="utf-8")
    monkeypatch.setattr(report, "TEMPLATE_DIRS", (installed, report.TEMPLATE_DIRS[1]))
    report._environment.cache_clear()
    try:
        assert render_html(to_dict(sample())) == "installed abc123def456"
        monkeypatch.setattr(report, "TEMPLATE_DIRS", (tmp_path / "nowhere", report.TEMPLATE_DIRS[1]))
        report._environment.cache_clear()
        assert "<!doctype html>" in render_html(to_dict(sample()))  # the repo's reports/templates
        monkeypatch.setattr(report, "TEMPLATE_DIRS", (tmp_path / "nowhere",))
        report._environment.cache_clear()
        with pytest.raises(RuntimeFailure, match="report template"):
            render_html(to_dict(sample()))
    finally:
        report._environment.cache_clear()


def test_repo_template_path_matches_the_wheel_force_include():
    assert report.TEMPLATE_DIRS[1] == Path(__file__).resolve().parent.parent / "reports" / "templates"
    assert (report.TEMPLATE_DIRS[1] / report.TEMPLATE).is_file()
    assert report.TEMPLATE_DIRS[0].parts[-2:] == ("reconciler", "_templates")


# ------------------------------------------------------------------------------------------ property

scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text()
           | st.decimals(allow_nan=False)
           | st.datetimes(timezones=st.sampled_from([None, dt.timezone.utc, dt.timezone(dt.timedelta(hours=-7))]))
           | st.dates()
           | st.builds(Geo, st.floats(allow_nan=False), st.floats(allow_nan=False)))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
field_diffs = st.builds(FieldDiff, path=st.text(max_size=20), postgres=values, firestore=values,
                        pattern=st.text(max_size=10))
findings_st = st.builds(Finding, key=st.text(max_size=40), kind=st.sampled_from(list(FindingKind)),
                        fields=st.lists(field_diffs, max_size=4).map(tuple))
counts_st = st.builds(Counts, *[st.integers(0, 10**9)] * 6)
entities_st = st.builds(
    EntityResult, entity=st.text(max_size=20), source_of_truth=st.sampled_from(["postgres", "firestore"]),
    counts=counts_st, findings=st.lists(findings_st, max_size=5).map(tuple), findings_truncated=st.booleans(),
    field_counts=st.dictionaries(st.text(max_size=20), st.integers(0, 10**6), max_size=25),
    duration_s=st.floats(0, 1e6), error=st.none() | st.text(max_size=30))
runs = st.builds(RunResult, run_id=st.text(max_size=12), mode=st.just("audit"), started_at=st.just(T0),
                 finished_at=st.datetimes(min_value=dt.datetime(2025, 3, 4, 5, 0, 3), max_value=dt.datetime(2025, 3, 5))
                 .map(lambda t: t.replace(tzinfo=dt.timezone.utc)),
                 entities=st.lists(entities_st, max_size=3).map(tuple))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(runs)
def test_any_result_round_trips_through_json_and_renders(result: RunResult):
    d = to_dict(result)
    text = json.dumps(d, ensure_ascii=False, allow_nan=False)
    assert json.loads(text) == d
    page = render_html(d)
    assert isinstance(page, str) and page.startswith("<!doctype html>")
    assert "<script" not in page.lower()  # whatever the data says, it is text
    for e in result.entities:
        for f in e.findings:
            assert html.escape(f.key, quote=False) in page.replace("&#34;", '"').replace("&#39;", "'")
    assert render_html(json.loads(text)) == page
