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


def test_save_text_html_escapes_tokens_and_labels(tmp_path):
    hostile = ["<img src=x onerror=alert(1)>", "</td><script>alert(2)</script>", "a&b"]
    records = text_records(torch.tensor([[0.5, 0.2, 0.3]]), [hostile], pred_classes=["<b>pos</b>"], attr_class="<i>flow</i>")
    page = save_text_html(records, tmp_path / "text.html").read_text()
    assert "<img" not in page and "<script" not in page and "<b>pos" not in page and "<i>" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page and "a&amp;b" in page and "&lt;i&gt;flow&lt;/i&gt;" in page


def test_readable_tokens_join_word_pieces():
    from captum_attnflow.visualize import readable_tokens, word_pieces

    assert word_pieces(["<|endoftext|>", "The", "Ġauthor", "Ġtalk", "ed", "ĠSara", "Ċ"]) == [
        ("<|endoftext|>", True), ("The", True), ("author", True), ("talk", True), ("ed", False), ("Sara", True),
        ("↵", False)]
    assert readable_tokens(["[CLS]", "a", "grip", "##ping", "film", "##"]) == ["[CLS]", "a", "grip", "-ping", "film", "##"]
    assert readable_tokens(["▁the", "▁cat", "s"]) == ["the", "cat", "-s"]


def test_figures_use_one_sequential_scale_for_non_negative_scores():
    per_layer = {"raw": torch.rand(3, 4) * 0.2, "flow": torch.rand(3, 4)}
    figure = layer_heatmaps(per_layer, ["[CLS]", "Ġthe", "Ġfilm", "s"])
    panels = [axes for axes in figure.axes if axes.images]
    assert panels[0].images[0].get_clim() == panels[1].images[0].get_clim() == (0.0, pytest.approx(float(per_layer["flow"].max())))
    assert panels[0].images[0].get_clim()[0] == 0 and panels[0].images[0].get_cmap().name == "viridis"
    assert [t.get_text() for t in panels[0].get_xticklabels()] == ["[CLS]", "the", "film", "-s"]
    assert len(figure.axes) == 3  # two panels and ONE colour bar
    signed = token_heatmap({"ig": torch.tensor([0.5, -1.0]), "flow": torch.tensor([0.2, 0.1])}, ["a", "b"])
    assert signed.axes[0].images[0].get_clim() == (-1.0, 1.0) and signed.axes[0].images[0].get_cmap().name == "RdBu_r"
    positive = token_heatmap({"flow": torch.tensor([0.2, 0.1])}, ["a", "b"])
    assert positive.axes[0].images[0].get_clim() == (0.0, 1.0) and positive.axes[0].images[0].get_cmap().name == "viridis"


def test_patch_overlay_draws_the_image_in_grey_under_a_perceptual_map():
    image = torch.zeros(3, 8, 8)
    image[0] = 1.0  # pure red
    figure = patch_overlay(image, torch.rand(2, 2))
    background, heat = figure.axes[0].images
    np.testing.assert_allclose(np.asarray(background.get_array()), np.full((8, 8), 0.299))
    assert background.get_cmap().name == "gray" and heat.get_cmap().name == "inferno" and heat.get_alpha() < 1


def test_report_page_is_self_contained_and_escaped(tmp_path):
    from captum_attnflow.report import ExplorerExample, ExplorerMethod, explorer_payload, markdown_to_html, render_report
    from captum_attnflow.report.page import script_json

    figure = token_heatmap({"flow": torch.tensor([0.2, 0.1])}, ["a", "b"])
    save_figure(figure, tmp_path / "f.png")
    page = render_report("t", "intro\n\n| a | b |\n|---|---|\n| x (paper) | 1 |\n\n![cap](f.png)", image_dir=tmp_path,
                         explorer=([ExplorerMethod("m", "m")], [ExplorerExample("</script >", ["</script >"], {"m": [1.0]})]))
    assert "<h1>t</h1>" in page and "data:image/png;base64," in page and '<tr class="paper">' in page
    assert "http" not in page.replace("http-equiv", "") and "src=\"f.png\"" not in page
    assert page.count("</script>") == 2 and "\\u003c/script \\u003e" in page  # the data cannot close its script
    assert script_json({"t": "<&>"}) == '{"t":"\\u003c\\u0026\\u003e"}'
    for source in ("https://example.org/x.png", "/etc/x.png", "../x.png"):
        with pytest.raises(ValueError, match="relative file name"):
            markdown_to_html(f"![x]({source})", tmp_path)
    with pytest.raises(FileNotFoundError, match="write the figure"):
        markdown_to_html("![x](missing.png)", tmp_path)
    bracketed = markdown_to_html("![Fig. 3 — [CLS] rows](f.png)", tmp_path)  # brackets inside the caption
    assert "data:image/png;base64," in bracketed and "![" not in bracketed and "[CLS] rows" in bracketed
    methods = [ExplorerMethod("m", "m", ("L1", "L2"))]
    with pytest.raises(ValueError, match=r"shape \(2, 2\)"):
        explorer_payload(methods, [ExplorerExample("e", ["a", "b"], {"m": np.zeros((3, 2))})])
    with pytest.raises(ValueError, match="no scores for method 'm'"):
        explorer_payload(methods, [ExplorerExample("e", ["a", "b"], {})])
    with pytest.raises(ValueError, match="NaN"):
        explorer_payload(methods, [ExplorerExample("e", ["a", "b"], {"m": np.full((2, 2), np.nan)})])
    many = [ExplorerExample(str(i), ["a", "b"], {"m": np.ones((2, 2))}) for i in range(5)]
    assert [e["title"] for e in explorer_payload(methods, many, max_examples=3)["examples"]] == ["0", "1", "2"]


def test_each_commands_explorer_data_carries_its_scores():
    from captum_attnflow.models.agreement_data import AgreementExample
    from captum_attnflow.studies.agreement.study import ExampleScores, StudyResult
    from captum_attnflow.evaluation.explorer import evaluation_explorer
    from captum_attnflow.report import explorer_payload
    from captum_attnflow.studies.agreement.explorer import agreement_explorer
    from captum_attnflow.studies.pronoun import PronounExample, PronounResult, pronoun_explorer
    from captum_attnflow.studies.sentiment import SentimentResult, sentiment_explorer

    rng = np.random.default_rng(0)
    example = AgreementExample(("the", "keys", "to", "the", "cabinet"), 1, 1, (4,), ((1, 1), (4, 0)))
    scores = ExampleScores(example, 0.9, {m: rng.random((2, 7)) for m in ("raw", "rollout", "flow")},
                           {r: rng.random(7) for r in ("blank_out", "gradient", "gradient_l2")})
    methods, examples = agreement_explorer(StudyResult([2, 6], {}, [scores]))
    payload = explorer_payload(methods, examples)
    assert payload["methods"][2] == {"key": "flow", "label": "Flow, [CLS] row", "layers": ["L2", "L6"]}
    assert payload["examples"][0]["scores"]["flow"][1][3] == pytest.approx(scores.methods["flow"][1, 3], rel=1e-5)
    assert "attractors: cabinet" in payload["examples"][0]["info"]

    sentiment = SentimentResult(tokens=[["[CLS]", "grip", "##ping", "[SEP]"]], predictions=[1])
    sentiment.scores = {(v, m): [rng.random((6, 4))] for v in ("max", "cls") for m in ("raw", "rollout", "flow")}
    sentiment.scores.update({r: [rng.random(4)] for r in ("gradient", "gradient_l2", "blank_out")})
    payload = explorer_payload(*sentiment_explorer(sentiment))
    assert payload["examples"][0]["title"] == "gripping" and len(payload["methods"]) == 9
    assert payload["examples"][0]["scores"]["rollout/cls"][5][2] == pytest.approx(sentiment.scores[("cls", "rollout")][0][5, 2], rel=1e-5)

    pronoun = PronounResult([PronounExample("Mary thanked David for", ("Mary", "David"), ("female", "male"))],
                            np.array([[0.2, 0.3]]), {}, tokens=[["<|endoftext|>", "Mary", "Ġthanked", "ĠDavid", "Ġfor"]],
                            relevance={m: [rng.random((30, 5))] for m in ("raw", "rollout", "flow")})
    payload = explorer_payload(*pronoun_explorer(pronoun))
    assert payload["methods"][0]["layers"][-1] == "L30" and payload["examples"][0]["tokens"][2] == "thanked"

    record = {"index": 1, "tokens": 3, "label": 0, "aopc_class": 0, "aopc_probability": 0.8,
              "scores": {"rollout": rng.random((6, 3)).tolist(), "ig": rng.random(3).tolist(), "blank_out": rng.random(3).tolist()}}
    methods, examples = evaluation_explorer([record], [[], [0, 5, 2, 9]], lambda ids: [f"w{i}" for i in ids])
    assert [m.layers[-1] for m in methods] == ["L6", "all layers", "all layers"] and examples[0].tokens == ["w0", "w5", "w2"]


# ---------------------------------------------------------------------------------------------
# plot_llm_attribution: Captum LLMAttributionResult maps
# ---------------------------------------------------------------------------------------------

from captum.attr import LLMAttributionResult  # noqa: E402
from matplotlib.colors import LogNorm, SymLogNorm  # noqa: E402

from captum_attnflow.visualize import (  # noqa: E402
    DIVERGING_CMAP,
    SEQUENTIAL_CMAP,
    find_sink_columns,
    llm_token_labels,
    plot_llm_attribution,
)

BYTE_TOKENS = ["Marie", "ĠCur", "ie", "Ġwas", "Ċ", "Ġ", "Ã¨", "ĠcafÃ©"]


def llm_result(scores, tokens=None, outputs=None, probs=None):
    scores = torch.as_tensor(scores, dtype=torch.float32)
    tokens = tokens or [f"Ġt{j}" for j in range(scores.shape[1])]
    outputs = outputs or [f" o{i}" for i in range(scores.shape[0])]
    return LLMAttributionResult(input_tokens=tokens, output_tokens=outputs, seq_attr=scores.sum(0),
                                token_attr=scores, output_probs=probs)


def maps(figure):
    """The heat-map axes by label (bands and the sink panel; colour bars left out)."""
    return {ax.get_label(): ax for ax in figure.axes if ax.get_label().startswith(("band", "sink"))}


def tick_texts(axes, which="x"):
    return [t.get_text() for t in (axes.get_xticklabels() if which == "x" else axes.get_yticklabels())]


def test_llm_token_labels_decode_byte_level_pieces():
    assert llm_token_labels(BYTE_TOKENS) == ["Marie", "␣Cur", "ie", "␣was", "↵", "␣", "è", "␣café"]
    # already decoded strings (Captum's output_tokens) and SentencePiece pieces get the same marks
    assert llm_token_labels([" Paris", "\n", "\tx", "▁the"]) == ["␣Paris", "↵", "⇥x", "␣the"]
    # special tokens stay; half a UTF-8 character shows the replacement mark; long labels are cut
    assert llm_token_labels(["<|endoftext|>", "Ã", "Ġ" + "a" * 30], max_chars=8) == ["<|endof…", "�", "␣aaaaaa…"]
    # plain text with accents is not mistaken for byte-level pieces
    assert llm_token_labels(["café", "naïve"]) == ["café", "naïve"]


def test_llm_token_labels_use_the_tokenizer_for_its_own_tokens():
    class Tok:
        def get_vocab(self):
            return {"Ġwas": 1}

        def convert_tokens_to_string(self, tokens):
            return "<" + "".join(tokens).replace("Ġ", " ") + ">"

    assert llm_token_labels(["Ġwas", "ĠCur"], Tok()) == ["< was>", "␣Cur"]


def test_find_sink_columns():
    rollout = np.full((3, 6), 1e-4)
    rollout[:, 0] = 0.999
    assert find_sink_columns(rollout) == [0]
    flat = np.full((3, 6), 0.1)
    flat[:, 3] = 0.3  # 3x the others: below the default 4x
    assert find_sink_columns(flat) == [] and find_sink_columns(flat, dominance=2.0) == [3]
    assert find_sink_columns(flat, ["<s>", *"abcde"]) == [0]  # a special first token of attention shares
    assert find_sink_columns(flat - 0.2, ["<s>", *"abcde"]) == []  # ... but not of signed scores


def test_plot_llm_attribution_non_negative_sequential_with_sink_panel(tmp_path):
    scores = np.full((2, 5), 0.01)
    scores[:, 0] = 0.96
    scores[1, 3] = 0.03
    result = llm_result(scores, ["Marie", "ĠCur", "ie", "Ġwas", "Ġborn"], [" Paris", "."], probs=torch.tensor([0.5, 0.25]))
    figure = plot_llm_attribution(result, title="rollout")
    axes = maps(figure)
    assert set(axes) == {"band 0", "sink"}
    band, sink = axes["band 0"], axes["sink"]
    assert tick_texts(band) == ["␣Cur", "ie", "␣was", "␣born"] and tick_texts(sink) == ["Marie"]
    assert tick_texts(band, "y") == ["␣Paris  p=0.5", ".  p=0.25"]
    image = band.images[0]
    assert image.cmap.name == SEQUENTIAL_CMAP and image.norm.vmin == 0 and image.norm.vmax == pytest.approx(0.03)
    assert sink.images[0].norm.vmax == pytest.approx(0.96) and sink.images[0].cmap.name == SEQUENTIAL_CMAP
    np.testing.assert_allclose(sink.images[0].get_array(), scores[:, :1])
    assert len(band.texts) == 8  # few cells: every value written
    assert "sink" in band.get_xlabel()
    assert len(figure.axes) == 4  # band, sink, two colour bars
    assert figure.get_size_inches()[0] <= 14
    assert save_figure(figure, tmp_path / "llm.png").stat().st_size > 0


def test_plot_llm_attribution_log_and_keep():
    scores = np.full((2, 5), 1e-6)
    scores[:, 0] = 0.999
    result = llm_result(scores)
    log = maps(plot_llm_attribution(result, sink="log"))
    assert set(log) == {"band 0"} and len(tick_texts(log["band 0"])) == 5
    assert isinstance(log["band 0"].images[0].norm, LogNorm)
    keep = maps(plot_llm_attribution(result, sink="keep"))["band 0"]
    assert keep.images[0].norm.vmax == pytest.approx(0.999) and not isinstance(keep.images[0].norm, LogNorm)
    assert isinstance(maps(plot_llm_attribution(llm_result(scores - 0.5), sink="log"))["band 0"].images[0].norm, SymLogNorm)
    # the sink named by hand; [] turns detection off
    assert tick_texts(maps(plot_llm_attribution(result, sink_columns=[-1]))["sink"]) == ["␣t4"]
    assert set(maps(plot_llm_attribution(result, sink_columns=[]))) == {"band 0"}


def test_plot_llm_attribution_signed_is_diverging_and_symmetric():
    scores = np.array([[0.5, -2.0, 1.0], [0.1, 0.2, -0.3]])
    band = maps(plot_llm_attribution(llm_result(scores)))["band 0"]
    image = band.images[0]
    assert image.cmap.name == DIVERGING_CMAP and image.norm.vmin == -2.0 and image.norm.vmax == 2.0
    assert tick_texts(band, "y") == ["␣o0", "␣o1"]  # no probabilities given


def test_plot_llm_attribution_long_prompt_wraps_and_caps_the_width():
    rng = np.random.default_rng(0)
    scores = rng.random((5, 150)) * 0.01
    scores[:, 0] = 0.95
    figure = plot_llm_attribution(llm_result(scores))
    axes = maps(figure)
    bands = [axes[f"band {i}"] for i in range(len(axes) - 1)]
    sizes = [len(tick_texts(b)) for b in bands]
    assert sum(sizes) == 149 and len(set(sizes[:-1])) == 1 and 0 <= sizes[0] - sizes[-1] < len(sizes)  # + the sink
    assert sizes[0] <= 50  # cells >= 0.24 in
    assert figure.get_size_inches()[0] <= 14 and not any(b.texts for b in bands)  # many cells: no numbers
    assert bands[0].get_xticklabels()[0].get_rotation() == 90
    assert [len(tick_texts(maps(plot_llm_attribution(llm_result(scores), wrap=30))[f"band {i}"])) for i in range(5)] == [30] * 4 + [29]


def test_plot_llm_attribution_seq_attr_only_and_errors():
    result = LLMAttributionResult(input_tokens=["Ġa", "Ġb"], output_tokens=[" c"], seq_attr=torch.tensor([0.2, 0.8]))
    band = maps(plot_llm_attribution(result))["band 0"]
    assert tick_texts(band, "y") == ["(whole output)"]
    for kwargs, message in [(dict(sink="hide"), "sink must be one of"), (dict(wrap=0), "wrap must be"),
                            (dict(sink_columns=[5]), "sink_columns has 5")]:
        with pytest.raises(ValueError, match=message):
            plot_llm_attribution(result, **kwargs)
    with pytest.raises(ValueError, match="output_ids has 2 ids for 1 output tokens"):
        plot_llm_attribution(llm_result([[0.2, 0.8]]), output_ids=[1, 2])


def test_layer_heatmaps_log_scale_shows_a_sink_and_the_rest():
    per_layer = {"rollout": np.array([[[0.99, 1e-3, 1e-6]], [[0.999, 1e-5, 1e-7]]])[:, 0], "flow": np.full((2, 3), 0.3)}
    figure = layer_heatmaps(per_layer, ["<|endoftext|>", "The", "Ġcat"], log=True, note="first column: the sink")
    norm = figure.axes[0].images[0].norm
    assert isinstance(norm, LogNorm) and norm.vmin == pytest.approx(1e-7) and norm.vmax == pytest.approx(0.999)
    assert figure.axes[1].images[0].norm is norm  # one scale for all panels
    assert "log scale" in figure.axes[-1].get_ylabel() and figure.get_supxlabel() == "first column: the sink"
    with pytest.raises(ValueError, match="log=True needs non-negative"):
        layer_heatmaps({"grad": -np.ones((2, 3))}, ["a", "b", "c"], log=True)


def test_grouped_token_heatmap_one_stated_scale_per_group():
    from captum_attnflow.visualize import grouped_token_heatmap

    tokens = ["el", "##ling", "crazy"]
    groups = {"share (one scale)": {"raw": [0.5, 0.1, 0.2], "flow": [0.3, 0.3, 0.31]},
              "‖g‖₂": {"gradient": [2.0, 4.0, 1.0]}, "signed": {"delta": [-1.0, 0.5, 0.0]}}
    figure = grouped_token_heatmap(groups, tokens, title="one sentence")
    maps = [ax for ax in figure.axes if ax.images and ax.get_label() != "<colorbar>"]
    assert len(maps) == 3
    share, gradient, signed = (ax.images[0] for ax in maps)
    assert (share.norm.vmin, share.norm.vmax) == (0.0, 0.5)  # flow keeps its values: not scaled to its own max
    np.testing.assert_allclose(share.get_array(), [[0.5, 0.1, 0.2], [0.3, 0.3, 0.31]])
    assert (gradient.norm.vmin, gradient.norm.vmax) == (0.0, 4.0) and gradient.cmap.name == SEQUENTIAL_CMAP
    assert (signed.norm.vmin, signed.norm.vmax) == (-1.0, 1.0) and signed.cmap.name == DIVERGING_CMAP
    bars = [ax.get_ylabel() for ax in figure.axes if ax.get_label() == "<colorbar>"]
    assert bars == list(groups)
    assert tick_texts(maps[-1]) == ["el", "-ling", "crazy"] and tick_texts(maps[0], "y") == ["raw", "flow"]
    with pytest.raises(ValueError, match="non-empty"):
        grouped_token_heatmap({"empty": {}}, tokens)
