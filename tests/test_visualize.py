"""Visualisation helpers: Captum text records and matplotlib figures written without a display."""

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")

from captum.attr import visualization  # noqa: E402

from captum_attnflow.visualize import (  # noqa: E402
    layer_heatmaps,
    patch_overlay,
    save_figure,
    save_text_html,
    text_records,
    token_heatmap,
)

TOKENS = ["[CLS]", "the", "film", "[PAD]"]
MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])


def test_text_records_feed_captum_visualize_text(tmp_path):
    scores = torch.tensor([[0.5, 0.1, 0.25, 0.0], [0.2, -0.4, 0.1, 0.1]])
    records = text_records(scores, [TOKENS, TOKENS], mask=MASK, pred_probs=[0.9, 0.2], attr_class="flow")
    assert all(isinstance(r, visualization.VisualizationDataRecord) for r in records)
    assert records[0].raw_input_ids == TOKENS[:3]
    torch.testing.assert_close(records[0].word_attributions, torch.tensor([1.0, 0.2, 0.5], dtype=torch.float64))
    torch.testing.assert_close(records[1].word_attributions, torch.tensor([0.5, -1.0, 0.25, 0.25], dtype=torch.float64))
    assert records[0].attr_score == pytest.approx(0.85) and records[0].pred_prob == pytest.approx(0.9)
    raw = text_records(scores, [TOKENS, TOKENS], normalize=False)
    torch.testing.assert_close(raw[1].word_attributions, scores[1].double())
    path = save_text_html(records, tmp_path / "text.html")
    html = path.read_text()
    assert html.count("film") == 2 and html.count("[PAD]") == 1 and "flow" in html  # example 0 is padded
    with pytest.raises(ValueError, match="tokens\\[1\\] has 3 entries"):
        text_records(scores, [TOKENS, TOKENS[:3]])
    with pytest.raises(ValueError, match="batch of 2"):
        text_records(scores, [TOKENS])


def test_token_heatmap_rows_are_methods_scaled_per_row(tmp_path):
    scores = {"rollout": torch.tensor([[0.5, 0.25, 0.25, 0.0]]), "ablation": torch.tensor([[-2.0, 1.0, 0.5, 0.0]])}
    figure = token_heatmap(scores, TOKENS, mask=MASK[:1], title="one sentence")
    shown = np.asarray(figure.axes[0].images[0].get_array())
    np.testing.assert_allclose(shown, [[1.0, 0.5, 0.5], [-1.0, 0.5, 0.25]])
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == TOKENS[:3]
    assert [t.get_text() for t in figure.axes[0].get_yticklabels()] == ["rollout", "ablation"]
    png = save_figure(figure, tmp_path / "methods.png")
    svg = save_figure(figure, tmp_path / "methods.svg")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in svg.read_text()[:500]
    with pytest.raises(ValueError, match="suffixes"):
        save_figure(figure, tmp_path / "methods.jpg")
    with pytest.raises(ValueError, match="NaN"):
        token_heatmap({"flow": torch.tensor([float("nan"), 0.0, 0.0, 0.0])}, TOKENS)


def test_layer_heatmaps_one_panel_per_method(tmp_path):
    per_layer = {"raw": torch.rand(2, 3, 4), "flow": torch.rand(2, 3, 4)}
    figure = layer_heatmaps(per_layer, TOKENS, example=1, title="layers")
    panels = [axes for axes in figure.axes if axes.images]
    assert [axes.get_title() for axes in panels] == ["raw", "flow"]
    np.testing.assert_allclose(np.asarray(panels[1].images[0].get_array()), per_layer["flow"][1].numpy(), rtol=1e-6)
    assert [t.get_text() for t in panels[0].get_yticklabels()] == ["L1", "L2", "L3"]
    assert save_figure(figure, tmp_path / "layers.png").stat().st_size > 0
    with pytest.raises(ValueError, match="tokens has 3 entries"):
        layer_heatmaps(per_layer, TOKENS[:3])


def test_patch_overlay_upsamples_and_accepts_both_layouts(tmp_path):
    image = torch.rand(3, 32, 32)
    patches = torch.zeros(4, 4)
    patches[1, 2] = 1.0
    channels_first = patch_overlay(image, patches)
    channels_last = patch_overlay((image.permute(1, 2, 0) * 255).to(torch.uint8).numpy(), patches)
    heat = np.asarray(channels_first.axes[0].images[1].get_array())
    assert heat.shape == (32, 32) and heat.min() == 0 and heat.max() == pytest.approx(1.0)
    row, col = np.unravel_index(heat.argmax(), heat.shape)
    assert (row // 8, col // 8) == (1, 2)
    np.testing.assert_allclose(np.asarray(channels_last.axes[0].images[1].get_array()), heat)
    assert save_figure(channels_first, tmp_path / "overlay.svg").read_text().count("<image") >= 1
    with pytest.raises(ValueError, match="patch_scores must have shape"):
        patch_overlay(image, torch.zeros(16))
    with pytest.raises(ValueError, match="image must be"):
        patch_overlay(torch.rand(5, 32, 32), patches)
