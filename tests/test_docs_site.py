"""The documentation site builds in strict mode and works offline in a real headless Chromium.

``mkdocs build --strict`` (MkDocs + Material + mkdocstrings + mkdocs-jupyter, ``mkdocs.yml`` at
the repository root) builds the site into a temporary folder; the test serves it from a local
HTTP server (the search index is fetched, which ``file://`` pages may not do) and drives Debian's
``chromium`` through Playwright, as ``tests/test_report_browser.py`` does: the search box finds
``AttentionFlow``, the API page of ``LLMAttentionAttribution`` shows its signature, and no page
logs an error or requests anything but the local server. A second test shows that the strict
build fails on what it must refuse: a broken link, a reference to a missing object and a
docstring griffe cannot parse. A missing browser is a failure, not a skip (``.ci/run`` installs it).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
ENV = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}

pytest.importorskip("mkdocs", reason="the documentation site needs the docs extra: pip install -e '.[docs]'")


def build(config: Path, out: Path, cwd: Path) -> subprocess.CompletedProcess:
    """``mkdocs build --strict`` of ``config`` into ``out`` (run in ``cwd``: the notebook plugin's cache goes there)."""
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--clean", "-f", str(config), "-d", str(out)],
                          cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("docs-site")
    run = build(ROOT / "mkdocs.yml", work / "site", work)
    assert run.returncode == 0, f"mkdocs build --strict failed:\n{run.stderr[-4000:]}"
    return work / "site"


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # no request log on stderr
        pass


@pytest.fixture(scope="module")
def server(site):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def test_site_has_every_page(site):
    for page in ["index.html", "capture.html", "attribution.html", "llm.html", "evaluation.html", "cli.html",
                 "reproduction.html", "speed.html", "design.html", "guarantees.html", "solver.html",
                 "tutorials/quickstart.html", "api/attr.html", "api/functions.html", "api/capture.html",
                 "api/visualize.html", "api/evaluation.html", "search/search_index.json"]:
        assert (site / page).is_file(), page
    html = "".join(path.read_text(encoding="utf-8") for path in site.rglob("*.html"))
    for external in ("fonts.googleapis", "fonts.gstatic", "cdn.jsdelivr", "unpkg.com", "cdnjs"):
        assert external not in html.lower(), external  # no web font, no script or style from a CDN
    api = "".join(path.read_text(encoding="utf-8") for path in (site / "api").glob("*.html"))
    assert ":func:`" not in api and ":class:`" not in api  # Sphinx roles rewritten (docs/griffe_roles.py)
    assert (site / "figures" / "reproduce_fig2_maps.png").is_file()


def test_site_in_headless_chromium(server, tmp_path):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser test needs the playwright package: pip install -e '.[dev]'")
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y --no-install-recommends chromium (as .ci/run does)")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            requests, errors = [], []
            page.on("request", lambda request: requests.append(request.url))
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))

            # the home page and the search box
            page.goto(server + "index.html")
            assert "captum-attnflow" in page.title()
            page.click("label.md-search__icon, .md-search__input")
            page.wait_for_function(  # the search worker has loaded the index
                "() => { const m = document.querySelector('.md-search-result__meta');"
                " return m && m.textContent && !/Initializing/i.test(m.textContent); }", timeout=30_000)
            page.locator("input.md-search__input").press_sequentially("AttentionFlow", delay=20)  # typed, key by key
            page.wait_for_selector(".md-search-result__item", state="attached", timeout=30_000)
            hits = page.eval_on_selector_all(".md-search-result__item a", "links => links.map(a => a.href)")
            texts = page.eval_on_selector_all(".md-search-result__item", "items => items.map(i => i.textContent)")
            assert any("AttentionFlow" in text for text in texts), texts
            assert any("api/attr.html" in href for href in hits), hits
            shots = Path(os.environ.get("DOCS_SCREENSHOTS", tmp_path))  # DOCS_SCREENSHOTS=folder: look at the site
            page.screenshot(path=str(shots / "search.png"))

            # the API page of LLMAttentionAttribution: its heading and its signature
            page.goto(server + "api/attr.html#captum_attnflow.attr.LLMAttentionAttribution")
            heading = page.locator("[id='captum_attnflow.attr.LLMAttentionAttribution']")
            assert heading.count() == 1
            signature = page.locator("[id='captum_attnflow.attr.LLMAttentionAttribution'] + div.doc-signature")
            text = signature.text_content()
            assert "LLMAttentionAttribution(" in text and "attr_method" in text and "tokenizer" in text, text
            body = page.text_content("article")
            assert "attribute" in body and "gen_args" in body
            page.screenshot(path=str(shots / "api_llm.png"))
            page.goto(server + "index.html")
            page.screenshot(path=str(shots / "home.png"), full_page=True)

            # every other page loads without an error
            for name in ["capture.html", "llm.html", "cli.html", "reproduction.html", "speed.html",
                         "tutorials/quickstart.html", "api/functions.html"]:
                page.goto(server + name)
                assert page.locator("article h1").count() >= 1, name
            assert errors == [], errors
            assert all(url.startswith(server) for url in requests), [u for u in requests if not u.startswith(server)]
        finally:
            browser.close()


BROKEN_PAGE = """# Broken

A link to [a page that does not exist](missing.md).

::: badmodule.grouped
"""

BAD_MODULE = '''def grouped(a, b):
    """Grouped parameters are not Google style.

    Args:
        a, b: two numbers.
    """
'''


@pytest.mark.parametrize("what", ["link", "reference", "docstring"])
def test_strict_build_fails_on_broken_links_references_and_docstrings(what, tmp_path):
    import yaml

    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    docs = tmp_path / "docs"
    docs.mkdir()
    page = {"link": "# Page\n\n[gone](missing.md)\n",
            "reference": "# Page\n\n::: badmodule.not_there\n",
            "docstring": "# Page\n\n::: badmodule.grouped\n"}[what]
    (docs / "index.md").write_text(page)
    (tmp_path / "badmodule.py").write_text(BAD_MODULE)
    for helper in ("griffe_roles.py", "site_hooks.py"):
        shutil.copy(ROOT / "docs" / helper, docs / helper)
    config.update(docs_dir="docs", nav=[{"Home": "index.md"}])
    config.pop("not_in_nav", None)
    config["plugins"] = [p for p in config["plugins"] if not (isinstance(p, dict) and "mkdocs-jupyter" in p)]
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config))
    run = build(tmp_path / "mkdocs.yml", tmp_path / "site", tmp_path)
    assert run.returncode != 0, f"the strict build accepted a broken {what}:\n{run.stderr[-2000:]}"
    expected = {"link": "missing.md", "reference": "not_there", "docstring": "'a, b'"}[what]
    assert expected in run.stderr, run.stderr[-2000:]
