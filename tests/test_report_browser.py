"""The one-file HTML report in a real headless Chromium (Debian's ``chromium``, driven by Playwright).

The report is copied alone into an empty folder and opened from a ``file://`` URL; the test
changes the explorer's selections, checks that the token colours and the hover numbers follow the
embedded scores, that hostile tokens stay text, and that the page makes no request other than the
file itself and logs no error. A missing browser is a failure, not a skip: CI installs it
(``.ci/run``); locally ``apt-get install -y chromium``.
"""

import shutil
from pathlib import Path

import numpy as np
import pytest

from captum_attnflow.report import ExplorerExample, ExplorerMethod, write_report

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
HOSTILE = ["<img src=x onerror=alert(1)>", "</script ><img src=x onerror=alert(3)>", "&amp;"]

MARKDOWN = """# Report <script>alert("title")</script>

Some **bold** text and `code`.

| | L1 | L2 | L3 |
|---|---|---|---|
| **Flow** (this run) | 0.10±0.20 | 0.20±0.20 | <img src=x onerror=alert(2)> |
| Flow (paper) | 0.32±0.26 | 0.44±0.29 | 0.70±0.25 |

![A figure](figure.png)
"""


def _report(folder: Path) -> tuple[Path, list[ExplorerMethod], list[ExplorerExample]]:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(2, 1))
    figure.add_subplot().plot([0, 1], [1, 0])
    figure.savefig(folder / "figure.png")
    rng = np.random.default_rng(0)
    flow = rng.random((3, 6))
    flow[:, 0] += 4.0  # [CLS] takes most of the mass, as in real attention
    methods = [ExplorerMethod("flow", "flow, [CLS] row", ("L1", "L2", "L3")), ExplorerMethod("blank_out", "blank-out")]
    examples = [
        ExplorerExample("hostile", ["[CLS]", *HOSTILE, "Ġword", "##ing"],
                        {"flow": flow, "blank_out": rng.random(6)}, info="<b>not bold</b>"),
        ExplorerExample("second", ["[CLS]", "a", "dog"], {"flow": rng.random((3, 3)), "blank_out": -rng.random(3)}),
    ]
    path = write_report(folder / "report.html", "<i>title</i>", MARKDOWN, image_dir=folder,
                        explorer=(methods, examples))
    return path, methods, examples


def _colours(page) -> list[str]:
    return page.eval_on_selector_all("#explorer-tokens .tok", "spans => spans.map(s => s.style.backgroundColor)")


def test_report_explorer_in_headless_chromium(tmp_path):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser test needs the playwright package: pip install -e '.[dev]'")
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y --no-install-recommends chromium (as .ci/run does)")
    build = tmp_path / "build"
    build.mkdir()
    built, methods, examples = _report(build)
    alone = tmp_path / "alone"
    alone.mkdir()
    path = Path(shutil.copy(built, alone / "report.html"))
    assert sorted(p.name for p in alone.iterdir()) == ["report.html"]
    url = path.as_uri()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page()
            requests, errors, dialogs = [], [], []
            page.on("request", lambda request: requests.append(request.url))
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
            page.goto(url)
            page.wait_for_selector("#explorer-tokens .tok", timeout=10_000)

            # hostile strings are text: no element, no dialog, shown literally
            assert page.title() == "<i>title</i>"
            assert page.eval_on_selector("h1", "h => h.textContent") == 'Report <script>alert("title")</script>'
            assert page.eval_on_selector_all("img", "images => images.map(i => i.src.slice(0, 22))") == [
                "data:image/png;base64,"]  # only the embedded figure
            assert page.eval_on_selector_all("i, b", "elements => elements.length") == 0
            assert page.eval_on_selector_all("script", "s => s.length") == 2  # the JSON data and the explorer
            texts = page.eval_on_selector_all("#explorer-tokens .tok", "spans => spans.map(s => s.textContent)")
            assert texts == ["[CLS]", *HOSTILE, "word", "ing"]
            assert page.eval_on_selector("#explorer-tokens", "box => box.textContent") == (
                "[CLS] <img src=x onerror=alert(1)> </script ><img src=x onerror=alert(3)> &amp; wording")  # word pieces joined
            assert page.text_content("#explorer-info") == "<b>not bold</b>"
            assert page.eval_on_selector_all("tr.paper", "rows => rows.length") == 1
            assert page.eval_on_selector_all("table tr.ours td", "cells => cells.map(c => c.textContent)")[-1] == (
                "<img src=x onerror=alert(2)>")

            # default: the last layer of the first method; hover titles carry the numbers
            assert page.input_value("#explorer-layer") == "2"
            flow = np.asarray(examples[0].scores["flow"])
            titles = page.eval_on_selector_all("#explorer-tokens .tok", "spans => spans.map(s => s.title)")
            for title, value in zip(titles, flow[2]):
                assert title.startswith("flow, [CLS] row · L3 · token")
                assert abs(float(title.rsplit(": ", 1)[1]) - value) <= 1e-3 * max(abs(value), 1e-9)
            page.hover("#explorer-tokens .tok >> nth=1")
            assert page.text_content("#explorer-detail") == titles[1]
            assert '"<img src=x onerror=alert(1)>"' in titles[1]

            # the largest score of the method (all layers) gets the darkest colour
            last = _colours(page)
            page.select_option("#explorer-layer", "0")
            first_layer = _colours(page)
            assert first_layer != last
            strongest = np.unravel_index(flow.argmax(), flow.shape)
            page.select_option("#explorer-layer", str(strongest[0]))
            assert _colours(page)[strongest[1]] == "rgb(102, 30, 4)"
            assert page.eval_on_selector_all("#explorer-layers tr", "rows => rows.length") == 3

            page.select_option("#explorer-method", "1")  # blank-out: one row, the layer menu disabled
            assert page.is_disabled("#explorer-layer")
            assert _colours(page) not in (last, first_layer)
            blank_titles = page.eval_on_selector_all("#explorer-tokens .tok", "spans => spans.map(s => s.title)")
            assert all(t.startswith("blank-out · all layers") for t in blank_titles)

            page.select_option("#explorer-example", "1")  # negative scores: diverging scale, symmetric legend
            texts = page.eval_on_selector_all("#explorer-tokens .tok", "spans => spans.map(s => s.textContent)")
            assert texts == ["[CLS]", "a", "dog"]
            low, high = page.text_content("#explorer-legend-low"), page.text_content("#explorer-legend-high")
            assert float(low) == pytest.approx(-float(high), rel=1e-3) and float(low) < 0
            page.select_option("#explorer-method", "0")
            assert page.is_enabled("#explorer-layer")
            assert float(page.text_content("#explorer-legend-low")) == 0

            # special tokens ([CLS], <…>) left out of the colour scale: the words get their own scale
            page.select_option("#explorer-example", "0")
            page.select_option("#explorer-method", "0")
            top_layer, top_token = np.unravel_index(flow[:, 3:].argmax(), flow[:, 3:].shape)  # "&amp;" on: words
            page.select_option("#explorer-layer", str(top_layer))
            whole = _colours(page)
            page.check("#explorer-special")
            words = _colours(page)
            darkest = "rgb(102, 30, 4)"
            assert words[0] == words[3 + top_token] == darkest != whole[3 + top_token]  # [CLS] clipped, top word darkest
            assert "special tokens left out" in page.text_content("#explorer-legend-high")
            assert float(page.text_content("#explorer-legend-high").split()[0]) == pytest.approx(flow[:, 3:].max(), rel=1e-3)

            assert errors == [] and dialogs == []
            assert requests == [url], requests
        finally:
            browser.close()


def _browser(playwright):
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y --no-install-recommends chromium (as .ci/run does)")
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)


def test_report_opens_on_a_correct_prediction_warns_on_wrong_ones_and_fits_400px(tmp_path):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser test needs the playwright package: pip install -e '.[dev]'")
    rng = np.random.default_rng(1)
    methods = [ExplorerMethod("flow", "flow, [CLS] row", ("L1", "L2"))]
    long_title = " ".join(["the keys to the cabinet on the table near the windows of the old house"] * 3)
    examples = [
        ExplorerExample("the keys to the cabinet is", ["[CLS]", "the", "keys"], {"flow": rng.random((2, 3))},
                        prediction="singular", probability=0.97, gold="plural"),
        ExplorerExample("the key to the cabinets is", ["[CLS]", "the", "key"], {"flow": rng.random((2, 3))},
                        prediction="singular", probability=0.91, gold="singular"),
        ExplorerExample(long_title, ["[CLS]", *long_title.split()], {"flow": rng.random((2, 1 + len(long_title.split())))},
                        info="a long sentence " * 12),
    ]
    assert [e.correct for e in examples] == [False, True, None]
    path = write_report(tmp_path / "report.html", "Report", MARKDOWN.replace("![A figure](figure.png)", ""),
                        explorer=(methods, examples))
    with sync_playwright() as playwright:
        browser = _browser(playwright)
        try:
            page = browser.new_page(viewport={"width": 400, "height": 900})
            errors = []
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(path.as_uri())
            page.wait_for_selector("#explorer-tokens .tok", timeout=10_000)
            # opens on the first example the model gets right, says what it predicted
            assert page.input_value("#explorer-example") == "1"
            assert page.text_content("#explorer-outcome") == "predicted singular (p=0.910), gold singular"
            assert page.is_hidden("#explorer-warning")
            options = page.eval_on_selector_all("#explorer-example option", "o => o.map(x => x.textContent)")
            assert options[0].startswith("1. ✗ wrong: ") and options[1].startswith("2. the key")
            # no horizontal overflow at a 400 px viewport (wide tables scroll inside their own box)
            for index in ("1", "0", "2"):
                page.select_option("#explorer-example", index)
                assert page.evaluate("document.documentElement.scrollWidth") <= 400, index
            # a wrong prediction: a visible warning naming prediction and gold
            page.select_option("#explorer-example", "0")
            assert page.is_visible("#explorer-warning")
            warning = page.text_content("#explorer-warning")
            assert "wrong" in warning and "predicted singular (p=0.970), gold plural" in warning
            page.select_option("#explorer-example", "2")  # no prediction: nothing shown
            assert page.text_content("#explorer-outcome") == "" and page.is_hidden("#explorer-warning")
            assert errors == []
        finally:
            browser.close()


def test_report_of_the_first_test_fits_400px(tmp_path):
    from playwright.sync_api import sync_playwright

    path, _, _ = _report(tmp_path)
    with sync_playwright() as playwright:
        browser = _browser(playwright)
        try:
            page = browser.new_page(viewport={"width": 400, "height": 900})
            page.goto(path.as_uri())
            page.wait_for_selector("#explorer-tokens .tok", timeout=10_000)
            assert page.evaluate("document.documentElement.scrollWidth") <= 400
        finally:
            browser.close()
