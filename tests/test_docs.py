"""The reference site: the generated pages are current (settings from --help, results tables from the benchmark
JSON files), `mkdocs build --strict` passes, and every internal link of the built site resolves."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_generated_pages_equal_what_their_sources_give():
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import generate
    finally:
        sys.path.pop(0)
    stale = [str(p) for p, text in generate.outputs().items() if p.read_text(encoding="utf-8") != text]
    assert not stale, f"stale (run python docs/generate.py): {stale}"


def test_a_results_table_is_the_json_it_comes_from():
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import generate
    finally:
        sys.path.pop(0)
    record = {"title": "t", "machine": "m", "measured": "d", "commands": ["kfold run x"],
              "rows": [{"backbone": "minilm", "accuracy": 36.033, "train_rows_per_s": 8.6, "fold_wall_s": 566,
                        "tokens_per_row": 127}]}
    text = generate.table(record)
    assert "| `minilm` | 36.03 | 8.6 | 566 s | 127 |" in text and "Command: `kfold run x`." in text
    page = "a\n<!-- results:x -->\nold\n<!-- /results -->\nb"
    assert generate.fill_tables(page, {"x": record}, Path("p")) == f"a\n<!-- results:x -->\n{text}\n<!-- /results -->\nb"
    with pytest.raises(SystemExit, match="names no file"):
        generate.fill_tables(page, {}, Path("p"))


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.ids = [], set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        for key in ("href", "src"):
            if attrs.get(key):
                self.links.append(attrs[key])


def test_the_site_builds_strict_and_no_internal_link_is_broken(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra is not installed (pip install 'rekfold[docs]')")
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(site)], cwd=ROOT,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    # 404.html links from the site's root (it is served at any address); the other pages link relatively
    pages = {p: _Links() for p in site.rglob("*.html")}
    for page, parser in pages.items():
        parser.feed(page.read_text(encoding="utf-8"))
    broken = []
    for page, parser in pages.items():
        for link in parser.links:
            url = urlparse(link)
            if url.scheme or link.startswith(("mailto:", "//")):
                continue
            path = unquote(url.path)
            target = ((site / path.lstrip("/")) if path.startswith("/") else (page.parent / path)).resolve() \
                if path else page
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                broken.append(f"{page.relative_to(site)}: {link}")
            elif url.fragment and target.suffix == ".html" and target in pages \
                    and url.fragment not in pages[target].ids:
                broken.append(f"{page.relative_to(site)}: {link} (no such anchor)")
    assert len(pages) >= 17 and not broken, broken
    # the reference pages say what the README links to them for
    assert re.search(r"Settings reference", (site / "settings" / "index.html").read_text(encoding="utf-8"))
