"""The static leaderboard site, built from a real run and opened in headless Chromium.

Without Chromium the browser test is skipped, except in CI (``$CI`` set), where it fails: a CI
image that lost its browser must not go green by skipping.
"""
from __future__ import annotations

import html
import json
import re
import subprocess
from pathlib import Path

import pytest
from matplotlib.image import imread

import defenses
from bench.runner import run
from bench.scenarios import SCENARIOS, SUITES
from bench.store import Store
from leaderboard.aggregate import boards
from leaderboard.site import build, slug
from test_leaderboard import trial_row

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
HOSTILE = ("<script>alert(1)</script>", "../../evil", "..", "a/b", "A-B")

# Injected into a copy of a page: once everything (images included) has loaded, write what the
# test needs into the DOM, which --dump-dom then prints: each image's natural width, and the
# defense column of the first table after one and two clicks on its "mean TD" header.
PROBE = """<script>
window.addEventListener("load", () => {
  const table = document.querySelector("table.sortable");
  const header = [...table.tHead.rows[0].cells].findIndex(th => th.textContent.startsWith("mean TD"));
  const column = () => [...table.tBodies[0].rows].map(r => r.cells[1].textContent.trim());
  const sorted = [];
  for (let i = 0; i < 2; i++) { table.tHead.rows[0].cells[header].click(); sorted.push(column()); }
  const probe = document.createElement("pre");
  probe.id = "probe";
  probe.textContent = JSON.stringify({images: [...document.images].map(img => img.naturalWidth), sorted});
  document.body.append(probe);
});
</script>"""


@pytest.fixture(scope="module")
def real_rows(tmp_path_factory) -> list[dict]:
    """The synthetic suite with no defense and sphere on both tracks, as stored."""
    store_path = tmp_path_factory.mktemp("run") / "results.sqlite"
    specs = [SCENARIOS.get(i) for i in SUITES.get("synthetic")]
    with Store(store_path) as store:
        run(specs, [defenses.make("none"), defenses.make("sphere")], ("informed", "blind"), store,
            progress=False)
        return store.rows()


def browse(chromium: str, profile: Path, page: Path, *args: str) -> str:
    done = subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", "--window-size=1400,1000",
                           *args, page.as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def probe(chromium: str, profile: Path, page: Path) -> dict:
    """Load a copy of ``page`` (next to it, so relative links resolve) with :data:`PROBE`."""
    copy = page.with_name("probe.html")
    copy.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = browse(chromium, profile, copy, "--dump-dom")
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, f"the probe did not run; page as loaded:\n{dom[:2000]}"
    return json.loads(html.unescape(found.group(1)))


def test_site_from_a_real_run_renders_in_chromium(tmp_path, chromium, real_rows):
    index = build(real_rows, tmp_path / "site")
    assert index == tmp_path / "site" / "index.html"
    markup = index.read_text(encoding="utf-8")
    assert "{{" not in markup and "{%" not in markup
    entries = boards(real_rows)
    assert {e["board"] for e in entries} == {"blind", "informed"}
    for defense in ("none", "sphere"):  # in both boards: a row each, linked to the defense's page
        assert markup.count(f'<a href="defenses/{defense}/index.html">{defense}</a>') == 2

    shot = tmp_path / "index.png"
    browse(chromium, tmp_path / "profile", index, f"--screenshot={shot}")
    pixels = imread(shot)[..., :3]
    assert pixels.std() > 0.05 and (pixels.mean(axis=2) < 0.9).mean() > 0.01  # not blank

    # Clicking "mean TD" sorts by it, ascending then descending.
    blind = sorted((e for e in entries if e["board"] == "blind"), key=lambda e: e["mean_td"])
    first_board = [e["defense"] for e in blind]
    assert probe(chromium, tmp_path / "profile", index)["sorted"] == [first_board, first_board[::-1]]

    page = tmp_path / "site" / "defenses" / "sphere" / "index.html"
    text = page.read_text(encoding="utf-8")
    images = re.findall(r'<img src="([^"]+)"', text)
    assert len(images) == 6  # three figures for each of the two tracks
    assert all((page.parent / name).stat().st_size > 1000 for name in images)
    loaded = probe(chromium, tmp_path / "profile", page)["images"]
    assert len(loaded) == 6 and all(width > 100 for width in loaded)
    browse(chromium, tmp_path / "profile", page, f"--screenshot={tmp_path / 'sphere.png'}")
    assert imread(tmp_path / "sphere.png")[..., :3].std() > 0.05


def test_hostile_names_are_escaped_and_write_only_inside_the_site(tmp_path):
    rows = [trial_row(name, "<i>track</i>", target, alpha, 0.1 * target, scenario="<b>s</b>/../x",
                      error="<img src=x onerror=alert(2)>" if target == 0 else None)
            for name in HOSTILE + ("none",) for target in range(3) for alpha in (1.0, 2.0)]
    site = tmp_path / "deep" / "site"
    index = build(rows, site)
    written = {p for p in tmp_path.rglob("*") if p.is_file()}
    assert written and all(site in p.parents for p in written)
    assert not (tmp_path / "evil").exists() and not (tmp_path / "deep" / "evil").exists()
    pages = [index] + sorted(site.glob("defenses/*/index.html"))
    assert len(pages) == 1 + len(HOSTILE) + 1
    for page in pages:
        markup = page.read_text(encoding="utf-8")
        assert "<script>alert" not in markup and "<img src=x" not in markup and "<b>s</b>" not in markup
        assert "<i>track</i>" not in markup
        assert markup.count("<script>") == 1  # the page's own sorting script only
    markup = index.read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in markup and "&lt;b&gt;s&lt;/b&gt;/../x" in markup


def test_slugs_are_plain_file_names_and_distinct():
    slugs = [slug(name) for name in HOSTILE + ("sphere", "deep-knn")]
    assert slugs[-2:] == ["sphere", "deep-knn"]  # ordinary names are kept as they are
    assert len(set(slugs)) == len(slugs)
    for s in slugs:
        assert re.fullmatch(r"[a-z0-9][a-z0-9._-]*", s) and ".." not in s.split("-")


def test_names_that_would_share_a_page_are_refused(tmp_path):
    twin = slug("../../evil")  # a name crafted to equal another name's slug
    rows = [trial_row(name, "any", 0, 1.0, 0.1) for name in ("../../evil", twin)]
    with pytest.raises(ValueError, match="share the page folder"):
        build(rows, tmp_path / "site")
