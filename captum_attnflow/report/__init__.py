"""One-file HTML reports with an attribution explorer (:mod:`captum_attnflow.report.page`) and the
adapters that turn each command's per-example scores into explorer examples
(:mod:`captum_attnflow.evaluation.explorer`)."""

from captum_attnflow.report.page import (
    ExplorerExample, ExplorerMethod, explorer_payload, markdown_to_html, render_report, write_report,
)

__all__ = ["ExplorerExample", "ExplorerMethod", "explorer_payload", "markdown_to_html", "render_report", "write_report"]
