"""The one-file HTML report: Markdown sections, embedded figures and the attribution explorer.

:func:`write_report` renders a command's Markdown report (headings, paragraphs, lists, tables,
``![caption](figure.png)`` images) to a single HTML file that works when sent on its own: figures
are embedded as ``data:`` URIs, the CSS and the explorer's JavaScript are inline, nothing refers
to any URL, and a Content-Security-Policy forbids every network request. Everything that comes
from data (tokens, titles, table cells) is HTML-escaped; the explorer's data is embedded as JSON
in ``<script type="application/json">`` with ``<``, ``>`` and ``&`` written as ``\\u003c``… so no
token can close the script, and the JavaScript writes strings with ``textContent`` only.
"""

from __future__ import annotations

import base64
import html
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from captum_attnflow.visualize import is_special_token, word_pieces

#: Most examples the explorer embeds (keeps the file small).
MAX_EXAMPLES = 50
#: MIME type of each figure suffix :func:`markdown_to_html` embeds.
IMAGE_TYPES: dict[str, str] = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
#: No network at all: images only from data: URIs, inline style and script only.
CONTENT_SECURITY_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


@dataclass(frozen=True)
class ExplorerMethod:
    """One entry of the explorer's method menu.

    Attributes:
        key: the key of the scores in every :class:`ExplorerExample`.
        label: the menu text, e.g. ``"flow, [CLS] row"``.
        layers: the layer names of the score rows, e.g. ``("L1", …, "L6")``; a single name
            (default) for scores without layers (blank-out, gradients).
    """

    key: str
    label: str
    layers: tuple[str, ...] = ("all layers",)


@dataclass
class ExplorerExample:
    """One example of the explorer.

    Attributes:
        title: the menu text (the sentence).
        tokens: the ``n`` tokenizer strings (``Ġ``/``▁``/``##`` markers are made readable).
        scores: method key -> ``(len(method.layers), n)`` scores (or ``(n,)`` for one layer).
        info: one line shown above the tokens (label, attractors, …).
        prediction: the model's predicted class (shown as ``predicted X (p=…), gold Y``);
            ``None``: not a classification, or unknown.
        probability: the model's probability of ``prediction``.
        gold: the correct class. When ``prediction`` and ``gold`` differ the explorer marks
            the example wrong (a warning above its tokens, ``✗`` in the menu) and opens on the
            first example that is not wrong.
    """

    title: str
    tokens: Sequence[str]
    scores: Mapping[str, np.ndarray]
    info: str = ""
    prediction: str | None = None
    probability: float | None = None
    gold: str | None = None

    @property
    def correct(self) -> bool | None:
        """Whether ``prediction == gold``; ``None`` when either is unknown."""
        if self.prediction is None or self.gold is None:
            return None
        return str(self.prediction) == str(self.gold)


Explorer = tuple[list[ExplorerMethod], list[ExplorerExample]]

#: menu labels of the reference scores every study computes
REFERENCE_LABELS: dict[str, str] = {
    "blank_out": "blank-out |Δp| ([UNK])",
    "gradient": "input gradient |Σ_d g_d|",
    "gradient_l2": "input gradient ‖g‖₂",
}


def layer_labels(count: int, numbers: Sequence[int] | None = None) -> tuple[str, ...]:
    """Menu labels ``L1 … Lcount`` (or ``L<number>`` of ``numbers``) of a method's layers."""
    return tuple(f"L{layer}" for layer in (numbers if numbers is not None else range(1, count + 1)))


def sentence(tokens: Sequence[str], *, limit: int = 90) -> str:
    """Readable text of ``tokens`` (word pieces joined), cut to ``limit`` characters."""
    text = "".join((" " if starts and index else "") + piece for index, (piece, starts) in enumerate(word_pieces(tokens)))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _number(value: float) -> float:
    """Six significant digits: enough for the tooltips, a third of the size of ``repr``."""
    return float(f"{value:.6g}")


def explorer_payload(
    methods: Sequence[ExplorerMethod], examples: Sequence[ExplorerExample], *, max_examples: int = MAX_EXAMPLES
) -> dict:
    """The explorer's JSON data: ``{"methods": [...], "examples": [...], "default": i}`` (first
    ``max_examples``; ``default``: the example shown first, the first one not predicted wrong).

    Raises:
        ValueError: no methods or examples, ``max_examples < 1``, a missing method, scores of
            the wrong shape, or non-finite scores — each naming the example and method.
    """
    if not methods:
        raise ValueError("methods is empty; pass at least one ExplorerMethod.")
    if not examples:
        raise ValueError("examples is empty; pass at least one ExplorerExample.")
    if max_examples < 1:
        raise ValueError(f"max_examples must be at least 1; got {max_examples}.")
    out = []
    for number, example in enumerate(examples[:max_examples]):
        pieces = word_pieces(example.tokens)
        n = len(pieces)
        scores = {}
        for method in methods:
            if method.key not in example.scores:
                raise ValueError(f"example {number} ({example.title!r}) has no scores for method {method.key!r}.")
            values = np.asarray(example.scores[method.key], dtype=np.float64).reshape(-1, n) if n else None
            if values is None or values.shape != (len(method.layers), n):
                raise ValueError(
                    f"example {number}, method {method.key!r}: scores must have shape ({len(method.layers)}, {n}) "
                    f"(layers × tokens); got {np.shape(example.scores[method.key])}."
                )
            if not np.isfinite(values).all():
                raise ValueError(f"example {number}, method {method.key!r}: scores contain NaN or inf.")
            scores[method.key] = [[_number(v) for v in row] for row in values.tolist()]
        out.append({
            "title": str(example.title), "info": str(example.info), "raw": [str(t) for t in example.tokens],
            "tokens": [text for text, _ in pieces], "space": [starts for _, starts in pieces],
            "special": [is_special_token(str(t)) for t in example.tokens], "scores": scores,
            "prediction": None if example.prediction is None else str(example.prediction),
            "probability": None if example.probability is None else _number(float(example.probability)),
            "gold": None if example.gold is None else str(example.gold), "correct": example.correct,
        })
    default = next((index for index, example in enumerate(out) if example["correct"] is not False), 0)
    return {
        "methods": [{"key": m.key, "label": m.label, "layers": list(m.layers)} for m in methods],
        "examples": out,
        "default": default,
    }


def script_json(payload) -> str:
    """``payload`` as JSON safe inside ``<script>``: ``<``, ``>``, ``&`` escaped as ``\\u003c``…"""
    text = json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _inline(text: str) -> str:
    """Escaped text with Markdown ``**bold**`` and ```code``` turned into tags."""
    escaped = html.escape(text)
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)


def _image(alt: str, source: str, image_dir: Path | None) -> str:
    """A ``<figure>`` with the file ``image_dir/source`` embedded as a ``data:`` URI."""
    if image_dir is None or re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:|^/|^\\", source) or ".." in Path(source).parts:
        raise ValueError(f"image {source!r}: the report embeds only figures given by a relative file name inside image_dir.")
    path = Path(image_dir) / source
    kind = IMAGE_TYPES.get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"image {source!r}: use one of the suffixes {tuple(IMAGE_TYPES)}.")
    # a symbolic link (the file or a folder on the way) must not lead out of image_dir
    real, root = path.resolve(), Path(image_dir).resolve()
    if not real.is_relative_to(root):
        raise ValueError(
            f"image {source!r} is a link to {real}, outside {image_dir}: the report embeds only files inside image_dir."
        )
    if not real.is_file():
        raise FileNotFoundError(f"image {source!r} is not in {image_dir}; write the figure before the report.")
    data = base64.b64encode(real.read_bytes()).decode("ascii")
    return (f"<figure><img alt=\"{html.escape(alt)}\" src=\"data:{kind};base64,{data}\">"
            f"<figcaption>{html.escape(alt)}</figcaption></figure>")


def _table(lines: list[str]) -> str:
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines]
    rule = [i for i, row in enumerate(rows) if all(re.fullmatch(r":?-{3,}:?", c) for c in row if c)]
    head = rows[: rule[0]] if rule else []
    body = [row for i, row in enumerate(rows) if i not in rule and (not rule or i > rule[0])]
    parts = ["<div class=\"table-wrap\"><table>"]
    if head:
        parts.append("<thead>" + "".join("<tr>" + "".join(f"<th>{_inline(c)}</th>" for c in row) + "</tr>" for row in head)
                     + "</thead>")
    parts.append("<tbody>")
    for row in body:
        kind = " class=\"paper\"" if "(paper" in row[0] else (" class=\"ours\"" if "**" in row[0] else "")
        parts.append(f"<tr{kind}>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>")
    parts.append("</tbody></table></div>")
    return "".join(parts)


def markdown_to_html(markdown: str, image_dir: str | Path | None = None) -> str:
    """The subset of Markdown the reports use, as escaped HTML.

    Headings (``#``…), paragraphs, ``- `` lists, pipe tables (rows whose first cell says
    ``(paper`` are styled as published rows), ``**bold**``, ```code``` and ``![caption](file)``
    figures, embedded from ``image_dir``. Fenced code blocks are shown as preformatted text.

    Raises:
        ValueError / FileNotFoundError: an image that is a URL, outside ``image_dir`` or missing.
    """
    image_dir = None if image_dir is None else Path(image_dir)
    blocks: list[str] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if not stripped:
            i += 1
        elif stripped.startswith("```"):
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip().startswith("```")), len(lines))
            blocks.append("<pre><code>" + html.escape("\n".join(lines[i + 1 : end])) + "</code></pre>")
            i = end + 1
        elif stripped.startswith("|"):
            end = next((j for j in range(i, len(lines)) if not lines[j].strip().startswith("|")), len(lines))
            blocks.append(_table(lines[i:end]))
            i = end
        elif stripped.startswith("- "):
            end = next((j for j in range(i, len(lines)) if not lines[j].strip().startswith("- ")), len(lines))
            blocks.append("<ul>" + "".join(f"<li>{_inline(item.strip()[2:])}</li>" for item in lines[i:end]) + "</ul>")
            i = end
        elif re.match(r"^#{1,6} ", stripped):
            level = len(stripped) - len(stripped.lstrip("#"))
            blocks.append(f"<h{level}>{_inline(stripped[level:].strip())}</h{level}>")
            i += 1
        elif match := re.fullmatch(r"!\[(.*)\]\(([^)]+)\)", stripped):
            blocks.append(_image(match.group(1), match.group(2), image_dir))
            i += 1
        else:
            end = next((j for j in range(i, len(lines))
                        if not lines[j].strip() or re.match(r"^(#{1,6} |\||- |!\[|```)", lines[j].strip())), len(lines))
            end = max(end, i + 1)
            blocks.append("<p>" + _inline(" ".join(item.strip() for item in lines[i:end])) + "</p>")
            i = end
    return "\n".join(blocks)


def _asset(name: str) -> str:
    return resources.files("captum_attnflow.report").joinpath(name).read_text(encoding="utf-8")


EXPLORER_HTML = """<section id="explorer">
<h2>Explorer: per-token scores</h2>
<p>Choose an example, a method and a layer: tokens are coloured by their score (one colour scale per
example and method, across all its layers; hover or focus a token for its number). The table below
shows the chosen method at every layer.</p>
<div class="controls">
<label>example <select id="explorer-example"></select></label>
<label>method <select id="explorer-method"></select></label>
<label>layer <select id="explorer-layer"></select></label>
<label class="check"><span><input type="checkbox" id="explorer-special"> leave special tokens
([CLS], [SEP], &lt;|…|&gt;) out of the colour scale</span></label>
</div>
<p id="explorer-outcome"></p>
<p id="explorer-warning" role="alert" hidden></p>
<p id="explorer-info"></p>
<div id="explorer-tokens"></div>
<div id="explorer-detail" aria-live="polite"></div>
<div class="legend"><span id="explorer-legend-low"></span><span class="bar" id="explorer-legend-bar"></span>
<span id="explorer-legend-high"></span></div>
<div class="table-wrap"><table id="explorer-layers"></table></div>
</section>"""


def render_report(
    title: str,
    markdown: str,
    *,
    image_dir: str | Path | None = None,
    figures: Mapping[str, str] | None = None,
    explorer: tuple[Sequence[ExplorerMethod], Sequence[ExplorerExample]] | None = None,
    max_examples: int = MAX_EXAMPLES,
) -> str:
    """The whole HTML page (see :func:`write_report`)."""
    if not markdown.lstrip().startswith("# "):
        markdown = f"# {title}\n\n{markdown}"
    if figures:
        markdown += "\n\n## Figures\n\n" + "\n\n".join(f"![{caption}]({name})" for caption, name in figures.items())
    body = markdown_to_html(markdown, image_dir)
    section = ""
    if explorer is not None:
        methods, examples = explorer
        payload = explorer_payload(methods, examples, max_examples=max_examples)
        count = len(payload["examples"])
        note = "" if count == len(examples) else f"<p>The first {count} of {len(examples)} examples are embedded.</p>"
        section = (EXPLORER_HTML.replace("</section>", note + "</section>")
                    + f"\n<script type=\"application/json\" id=\"explorer-data\">{script_json(payload)}</script>"
                    + f"\n<script>{_asset('explorer.js')}</script>")
    return (
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{CONTENT_SECURITY_POLICY}\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{_asset('report.css')}</style>\n</head>\n<body>\n<main>\n"
        f"{body}\n{section}\n</main>\n</body>\n</html>\n"
    )


def write_report(
    path: str | Path,
    title: str,
    markdown: str,
    *,
    image_dir: str | Path | None = None,
    figures: Mapping[str, str] | None = None,
    explorer: tuple[Sequence[ExplorerMethod], Sequence[ExplorerExample]] | None = None,
    max_examples: int = MAX_EXAMPLES,
) -> Path:
    """Write the one-file HTML report of a command.

    Args:
        path: the ``.html`` file to write.
        title: the page title (also the heading when ``markdown`` does not start with one).
        markdown: the report's text (:func:`markdown_to_html`); ``![caption](file.png)`` lines
            embed the figure files found in ``image_dir``.
        image_dir: the folder holding the figures (usually the command's ``--out``).
        figures: ``{caption: file name in image_dir}`` appended as a "Figures" section.
        explorer: ``(methods, examples)``, the explorer's menus and data
            (:mod:`captum_attnflow.evaluation.explorer`); ``None``: no explorer.
        max_examples: embed at most this many examples.

    Returns:
        The path written.
    """
    path = Path(path)
    path.write_text(render_report(title, markdown, image_dir=image_dir, figures=figures, explorer=explorer,
                                  max_examples=max_examples), encoding="utf-8")
    return path
