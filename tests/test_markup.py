"""Markup safety (issue 18 items 13-14): the README's notebook path
``visualize_text(text_records(...))`` shows hostile tokens and labels as text in a real headless
Chromium (Captum itself escapes nothing), and ``write_report`` never follows a symbolic link out of
its image folder."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import pytest
import torch
from captum.attr import visualization

from captum_attnflow.report import write_report
from captum_attnflow.visualize import save_text_html, text_records

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
PAYLOADS = ["<script>alert(1)</script>", '"><img src=x onerror=alert(2)>', "<svg onload=alert(3)>"]


def _records():
    tokens = ["[CLS]", *PAYLOADS, "a&b"]
    return text_records(torch.tensor([[0.1, 0.5, 0.2, 0.3, 0.4]]), [tokens], pred_classes=[PAYLOADS[1]],
                        true_classes=[PAYLOADS[2]], attr_class=PAYLOADS[0])


def test_text_records_hand_captum_escaped_tokens_and_labels():
    record = _records()[0]
    assert record.raw_input_ids == ["[CLS]", "&lt;script&gt;alert(1)&lt;/script&gt;",
                                    "&quot;&gt;&lt;img src=x onerror=alert(2)&gt;", "&lt;svg onload=alert(3)&gt;", "a&amp;b"]
    assert "<" not in record.pred_class + record.true_class + record.attr_class


def test_visualize_text_of_text_records_runs_nothing_in_chromium(tmp_path):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser test needs the playwright package: pip install -e '.[dev]'")
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y --no-install-recommends chromium")
    with contextlib.redirect_stdout(io.StringIO()):  # the notebook path, as the README shows it
        notebook = visualization.visualize_text(_records()).data
    (tmp_path / "notebook.html").write_text("<!doctype html><meta charset='utf-8'>" + notebook, encoding="utf-8")
    saved = save_text_html(_records(), tmp_path / "saved.html")  # not escaped twice
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            for path in (tmp_path / "notebook.html", saved):
                page = browser.new_page()
                dialogs, errors = [], []
                page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
                page.on("pageerror", lambda error: errors.append(str(error)))
                page.goto(path.as_uri())
                page.wait_for_timeout(300)
                assert dialogs == [] and errors == [], (path.name, dialogs, errors)
                assert page.eval_on_selector_all("script, img, svg", "found => found.length") == 0, path.name
                text = page.text_content("body")
                for payload in PAYLOADS + ["a&b"]:
                    assert payload in text, (path.name, payload)
                page.close()
        finally:
            browser.close()


def _secret(tmp_path: Path) -> Path:
    secret = tmp_path / "outside" / "secret.png"
    secret.parent.mkdir()
    secret.write_bytes(b"\x89PNG not a figure but a secret")
    return secret


def test_write_report_refuses_a_symlink_out_of_its_image_folder(tmp_path):
    secret = _secret(tmp_path)
    images = tmp_path / "images"
    images.mkdir()
    os.symlink(secret, images / "figure.png")
    (images / "sub").symlink_to(secret.parent, target_is_directory=True)
    for name in ("figure.png", "sub/secret.png"):
        with pytest.raises(ValueError, match="outside .*embeds only files inside image_dir"):
            write_report(tmp_path / "report.html", "t", f"![leak]({name})", image_dir=images)
        with pytest.raises(ValueError, match="outside"):
            write_report(tmp_path / "report.html", "t", "x", image_dir=images, figures={"leak": name})
    assert not (tmp_path / "report.html").exists()


def test_write_report_embeds_a_symlink_inside_its_image_folder(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "real.png").write_bytes(b"\x89PNG inside")
    os.symlink(images / "real.png", images / "alias.png")
    page = write_report(tmp_path / "report.html", "t", "![ok](alias.png)", image_dir=images).read_text()
    assert "data:image/png;base64," in page
