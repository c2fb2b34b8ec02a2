"""Showing per-token attributions: Captum's text view and matplotlib figures.

* :func:`text_records` turns ``(batch, n)`` scores into Captum
  :class:`~captum.attr.visualization.VisualizationDataRecord` objects for
  :func:`captum.attr.visualization.visualize_text`; :func:`save_text_html` writes that view to
  an HTML file.
* :func:`token_heatmap`: method × token map of one sentence (the paper's Fig. 4/5 view);
  :func:`grouped_token_heatmap`: the same with one colour scale per group of rows that share a
  unit (attention shares, gradients, ...).
* :func:`layer_heatmaps`: layer × token map, one panel per method (the paper's Fig. 2/3 view).
* :func:`patch_overlay`: ViT patch scores upsampled over the image.
* :func:`plot_llm_attribution`: a readable map of Captum's ``LLMAttributionResult`` (generated
  text): decoded token labels, the attention sink on its own scale; :func:`llm_token_labels`,
  :func:`find_sink_columns`.
* :func:`save_figure`: PNG / SVG / PDF by file suffix.

Figures are built with :class:`matplotlib.figure.Figure` directly (no ``pyplot``), so nothing
needs a display and no global figure state is touched. Needs the ``plot`` extra (matplotlib).
Modules: :mod:`~.text`, :mod:`~.maps`, :mod:`~.llm`, :mod:`~.common`.
"""

from captum_attnflow.visualize.common import DIVERGING_CMAP, FIGURE_FORMATS, SEQUENTIAL_CMAP, save_figure
from captum_attnflow.visualize.llm import (
    BYTE_DECODER,
    NEWLINE_MARK,
    SINK_MODES,
    SPACE_MARK,
    TAB_MARK,
    find_sink_columns,
    llm_token_labels,
    plot_llm_attribution,
)
from captum_attnflow.visualize.maps import grouped_token_heatmap, layer_heatmaps, patch_overlay, token_heatmap
from captum_attnflow.visualize.text import (
    CONTINUATION_PREFIX,
    WORD_START_MARKERS,
    is_special_token,
    readable_tokens,
    save_text_html,
    text_records,
    word_pieces,
)

__all__ = [
    "BYTE_DECODER", "CONTINUATION_PREFIX", "DIVERGING_CMAP", "FIGURE_FORMATS", "NEWLINE_MARK", "SEQUENTIAL_CMAP",
    "SINK_MODES", "SPACE_MARK", "TAB_MARK", "WORD_START_MARKERS", "find_sink_columns", "grouped_token_heatmap",
    "is_special_token", "layer_heatmaps", "llm_token_labels", "patch_overlay", "plot_llm_attribution",
    "readable_tokens", "save_figure", "save_text_html", "text_records", "token_heatmap", "word_pieces",
]
