"""without_sink: the attention sink's column removed from every layer's graph, and
LLMAttentionAttribution(drop_sink=) built on it, against straightforward loops."""

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from captum_attnflow import AttentionRollout, ContributionGraph, LLMAttentionAttribution, rollout  # noqa: E402
from captum_attnflow.graph import without_sink  # noqa: E402

from test_llm_attribution import PROMPT, TARGET, ids_of, tiny  # noqa: E402,F401 (fixture)


def causal_attention(layers=3, heads=2, n=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    future = torch.triu(torch.ones(n, n, dtype=torch.bool), 1)
    return [torch.softmax(torch.randn(1, heads, n, n, generator=generator, dtype=torch.float64).masked_fill(future, -1e9), -1)
            for _ in range(layers)]


def brute_without_sink(matrix: np.ndarray, sink: int) -> np.ndarray:
    out = matrix.copy()
    for i in range(matrix.shape[0]):
        row = matrix[i].copy()
        if i != sink:
            row[sink] = 0.0
        out[i] = row / row.sum() if row.sum() > 0 else matrix[i]
    return out


@pytest.mark.parametrize("sink", [0, 2, -1])
def test_without_sink_matches_a_loop_on_fused_attention(sink):
    attentions = causal_attention()
    graph = without_sink(attentions, sink)
    assert isinstance(graph, ContributionGraph) and not graph.residual_included and graph.name == "attention-no-sink"
    for layer, attention in enumerate(attentions):
        expected = brute_without_sink(attention[0].mean(0).numpy(), sink % 6)
        np.testing.assert_allclose(graph.matrices[0, layer].numpy(), expected, atol=1e-12)
    rows = graph.matrices.sum(-1)
    assert torch.allclose(rows, torch.ones_like(rows))


def test_rollout_of_the_sink_free_graph_gives_the_sink_nothing():
    attentions = causal_attention(layers=4)
    scores = rollout(without_sink(attentions, 0))[0, -1, -1]
    assert scores[0] == 0 and torch.isclose(scores.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert scores[0] < rollout(attentions)[0, -1, -1, 0]


def test_contribution_graph_keeps_its_residual_flag_and_bad_sink_is_refused():
    matrices = torch.softmax(torch.randn(1, 2, 4, 4, dtype=torch.float64), -1)
    graph = without_sink(ContributionGraph(matrices, residual_included=True, name="alti"), 1)
    assert graph.residual_included and graph.name == "alti-no-sink"
    for sink in (4, -5, 1.0, True):
        with pytest.raises(ValueError, match="sink"):
            without_sink(ContributionGraph(matrices, True), sink)


def test_llm_drop_sink_rows_equal_rollout_of_the_sink_free_graph(tiny):
    model, tokenizer = tiny
    prompt_ids = ids_of(tokenizer, PROMPT)
    target_ids = ids_of(tokenizer, TARGET, special=False)[0]
    result = LLMAttentionAttribution(AttentionRollout(model), tokenizer).attribute(PROMPT, target=TARGET, drop_sink=0)
    assert torch.all(result.token_attr[:, 0] == 0)
    ids = torch.cat([prompt_ids, target_ids[None, :-1]], dim=1)
    with torch.no_grad():
        attentions = model(ids, output_attentions=True).attentions
    expected = rollout(without_sink([a.double() for a in attentions], 0))[0, -1]
    n_prompt = prompt_ids.shape[1]
    for t in range(len(target_ids)):
        np.testing.assert_allclose(result.token_attr[t].double().numpy(), expected[n_prompt - 1 + t, :n_prompt].numpy(),
                                   atol=1e-5)
    with pytest.raises(ValueError, match="drop_sink"):
        LLMAttentionAttribution(AttentionRollout(model), tokenizer).attribute(PROMPT, target=TARGET, drop_sink=0, head=0)


def test_output_tokens_survive_captums_failure_on_split_characters(tiny, monkeypatch):
    """Captum's pretty-token conversion raises IndexError when the target ends inside a UTF-8
    character (SmolLM2 generating '¡' as two byte pieces); the result keeps one label per id."""
    import captum_attnflow.attr.text as text

    model, tokenizer = tiny

    def captum_bug(ids, tok):
        raise IndexError("index 2 is out of bounds for dimension 0 with size 2")

    monkeypatch.setattr(text, "_convert_ids_to_pretty_tokens", captum_bug)
    result = LLMAttentionAttribution(AttentionRollout(model), tokenizer).attribute(PROMPT, target=TARGET)
    assert result.output_tokens == [tokenizer.decode([i]) for i in ids_of(tokenizer, TARGET, special=False)[0].tolist()]
