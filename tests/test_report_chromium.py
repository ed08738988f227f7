"""The HTML report of a real audit, opened in headless Chromium (Debian's `chromium`): it renders the summary
charts and the findings table, and a value holding markup is shown as text, never run."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from reconciler.engine import run_audit
from reconciler.report import write_reports

WIDTH, HEIGHT = 1280, 1600
MISMATCH_BAR, FIELD_BAR = (0xD4, 0xA7, 0x2C), (0x21, 0x8B, 0xFF)  # --mm-bar and --field-bar in the template
XSS = "<script>document.title='pwned'</script><img src=x onerror=\"document.title='pwned'\">"


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("chromium")
    assert exe, "Debian's chromium is needed (.ci/run installs it: apt-get install chromium)"
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        return subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                               "--disable-background-networking", "--disable-component-update", "--disable-sync",
                               "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=120)


class Page(HTMLParser):
    """The dumped DOM: its title, element names, and the cells of the findings table by class."""

    def __init__(self, dom: str) -> None:
        super().__init__()
        self.title, self.tags, self.rows, self.text = "", set(), [], []
        self._in: list[str] = []
        self._cell: list[str] | None = None
        self.feed(dom)

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self._in.append(tag)
        if tag == "tr":
            self.rows.append({})
        if tag == "td":
            self._cell = []
            self.rows[-1][dict(attrs).get("class", "")] = self._cell

    def handle_endtag(self, tag):
        if tag == "td":
            self._cell = None
        if self._in and self._in[-1] == tag:
            self._in.pop()

    def handle_data(self, data):
        if self._in and self._in[-1] == "title":
            self.title += data
        if self._cell is not None:
            self._cell.append(data)
        self.text.append(data)

    def cells(self, path: str) -> dict[str, str]:
        (row,) = [r for r in self.rows if "".join(r.get("path", [])).strip() == path]
        return {k: "".join(v).strip() for k, v in row.items()}


def test_scripts_do_run_in_this_chromium(tmp_path):
    """The control for the test below: a real script changes the title in the dumped DOM."""
    page = tmp_path / "control.html"
    page.write_text("<html><head><title>before</title></head><body><script>document.title='pwned'</script></body></html>")
    r = chromium("--dump-dom", page.as_uri())
    assert Page(r.stdout).title == "pwned", r.stderr


@pytest.fixture
def report(customers_loaded, fs_client, tmp_path) -> tuple[Path, object, list]:
    settings, people = customers_loaded
    col = fs_client.collection("customers")
    col.document(people[0].id).update({"notes": XSS})
    col.document(people[1].id).update({"metrics.totalOrders": -5})
    result = run_audit(settings, ["customers"])
    return write_reports(result, tmp_path / "out").html, result, people


def test_the_report_renders_charts_and_findings_and_shows_markup_as_text(report):
    html, result, people = report
    (e,) = result.entities
    r = chromium("--dump-dom", "--virtual-time-budget=2000", html.as_uri())
    assert r.returncode == 0, r.stderr
    page = Page(r.stdout)
    # nothing from the data ran: no script or image element, the title is the report's
    assert page.title.startswith("Drift") and "pwned" not in page.title
    assert not {"script", "img"} & page.tags
    text = " ".join(" ".join(page.text).split())
    assert "customers" in text and f"{e.counts.drifted:,} drifted of" in text
    assert f"{e.counts.postgres:,} in Postgres, {e.counts.firestore:,} in Firestore" in text
    notes = page.cells("notes")
    assert notes["key"] == f"customers/{people[0].id}" and notes["fs"] == XSS  # the markup, shown as text
    assert notes["pg"] == (people[0].document.get("notes") or "—")
    orders = page.cells("metrics.totalOrders")
    assert orders["key"] == f"customers/{people[1].id}"
    assert (orders["pg"], orders["fs"]) == (str(people[1].document["metrics"]["totalOrders"]), "-5")
    assert {"svg"} <= page.tags


def test_a_screenshot_shows_the_charts(report, tmp_path):
    html, _, _ = report
    png = tmp_path / "report.png"
    r = chromium(f"--screenshot={png}", f"--window-size={WIDTH},{HEIGHT}", "--hide-scrollbars", html.as_uri())
    assert png.is_file(), r.stderr
    with Image.open(png) as img:
        assert img.format == "PNG" and img.size == (WIDTH, HEIGHT)
        rgb = img.convert("RGB")
    colors = {c: n for n, c in rgb.getcolors(maxcolors=WIDTH * HEIGHT)}
    assert len(colors) > 50  # text, charts, table: not a blank page
    assert colors.get(MISMATCH_BAR, 0) > 200, "the drift-per-entity chart's mismatch bar is not drawn"
    assert colors.get(FIELD_BAR, 0) > 200, "the per-field chart's bars are not drawn"
