"""compare_attributions: aligned per-token scores for a tiny BERT classifier and a tiny GPT-2.

Each Captum baseline is checked against an independent computation: blank-out by a loop that
replaces one token at a time, saliency against :func:`captum_attnflow.evaluation.metrics.input_gradient_scores`
(which goes through the model's ``inputs_embeds``, not the embedding-layer hook), integrated
gradients by its completeness property, the attention methods against the classes.
"""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from captum_attnflow import AttentionFlow, GradientWeightedRollout, RawAttention  # noqa: E402
from captum_attnflow.evaluation.compare import compare_attributions, format_table  # noqa: E402
from captum_attnflow.evaluation.metrics import input_gradient_scores  # noqa: E402

VOCAB, N, BLANK = 40, 6, 1


@pytest.fixture(scope="module")
def bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=16, pad_token_id=0,
    )
    return transformers.BertForSequenceClassification(config).eval()


@pytest.fixture(scope="module")
def gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=16, n_layer=2, n_head=2, n_positions=16, bos_token_id=0, eos_token_id=0
    )
    return transformers.GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module")
def batch():
    ids = torch.randint(3, VOCAB, (2, N), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, N, dtype=torch.long)
    mask[1, N - 2 :] = 0
    return ids, mask


def _blank_out_loop(model, ids, mask, targets):
    """f(x) - f(x with token j := BLANK) of the target probability, one token at a time."""
    def prob(x):
        with torch.no_grad():
            logits = model(x, attention_mask=mask).logits.softmax(-1)
        return torch.stack([logits[(b, *t)] if isinstance(t, tuple) else logits[b, t] for b, t in enumerate(targets)])

    base = prob(ids)
    out = torch.zeros(ids.shape, dtype=torch.float)
    for j in range(ids.shape[1]):
        blanked = ids.clone()
        blanked[:, j] = BLANK
        out[:, j] = base - prob(blanked)
    return out * mask


def test_bert_scores_are_aligned_and_match_independent_computations(bert, batch):
    ids, mask = batch
    methods = ("raw", "flow", "gradient_rollout", "ablation", "saliency", "layer_integrated_gradients")
    scores = compare_attributions(
        bert, ids, additional_forward_args={"attention_mask": mask}, methods=methods, baseline_token_id=BLANK,
        gradient_reduction="sum", n_steps=20,
    )
    assert list(scores) == list(methods)
    for name, value in scores.items():
        assert value.shape == (2, N), name
        assert (value[1, N - 2 :] == 0).all(), name
    predicted = bert(ids, attention_mask=mask).logits.argmax(-1).tolist()
    kwargs = dict(additional_forward_args={"attention_mask": mask})
    torch.testing.assert_close(scores["raw"], RawAttention(bert).attribute(ids, **kwargs), atol=0, rtol=0)
    torch.testing.assert_close(scores["flow"], AttentionFlow(bert).attribute(ids, **kwargs), atol=1e-7, rtol=0)
    torch.testing.assert_close(
        scores["gradient_rollout"], GradientWeightedRollout(bert).attribute(ids, target=predicted, **kwargs), atol=1e-7, rtol=0
    )
    torch.testing.assert_close(scores["ablation"], _blank_out_loop(bert, ids, mask, predicted), atol=1e-6, rtol=1e-4)

    def probabilities(embeds, attention_mask):
        return bert(inputs_embeds=embeds, attention_mask=attention_mask).logits.softmax(-1)

    embeds = bert.get_input_embeddings()(ids).detach()
    expected = input_gradient_scores(
        probabilities, embeds, target=predicted, additional_forward_args=(mask,), reduction="sum", mask=mask
    )
    torch.testing.assert_close(scores["saliency"], expected, atol=1e-6, rtol=1e-4)
    # Integrated gradients, reduced by "sum", add up to f(x) - f(baseline) (completeness).
    with torch.no_grad():
        full = bert(ids, attention_mask=mask).logits.softmax(-1)[range(2), predicted]
        empty = bert(torch.full_like(ids, BLANK), attention_mask=mask).logits.softmax(-1)[range(2), predicted]
    torch.testing.assert_close(scores["layer_integrated_gradients"].sum(1), full - empty, atol=2e-3, rtol=0)


def test_gradient_reductions(bert, batch):
    ids, mask = batch
    options = dict(additional_forward_args=(mask,), methods=("input_x_gradient",))
    l2 = compare_attributions(bert, ids, **options)["input_x_gradient"]
    signed = compare_attributions(bert, ids, gradient_reduction="sum", **options)["input_x_gradient"]
    absolute = compare_attributions(bert, ids, gradient_reduction="abs_sum", **options)["input_x_gradient"]
    torch.testing.assert_close(absolute, signed.abs())
    assert (l2 >= absolute / 16**0.5 - 1e-9).all() and (l2 >= 0).all()  # ‖g‖₂ ≥ |Σ g| / √d
    assert (signed < 0).any()


def test_gpt2_scores_are_aligned_at_the_last_real_token(gpt2, batch):
    ids, mask = batch
    scores = compare_attributions(
        gpt2, ids, additional_forward_args={"attention_mask": mask}, baseline_token_id=BLANK,
        methods=("rollout", "gradient_rollout", "ablation", "occlusion", "saliency", "input_x_gradient",
                 "layer_integrated_gradients"),
        n_steps=5,
    )
    for name, value in scores.items():
        assert value.shape == (2, N), name
        assert torch.isfinite(value).all() and (value[1, N - 2 :] == 0).all(), name
    lengths = mask.sum(1).tolist()
    logits = gpt2(ids, attention_mask=mask).logits
    targets = [(length - 1, int(logits[b, length - 1].argmax())) for b, length in enumerate(lengths)]
    torch.testing.assert_close(scores["ablation"], _blank_out_loop(gpt2, ids, mask, targets), atol=1e-6, rtol=1e-4)
    # Causal: tokens after the traced position cannot matter.
    assert (scores["rollout"][0, : N - 1] > 0).all()


def test_format_table_lists_live_tokens_per_method(bert, batch):
    ids, mask = batch
    scores = {"a": torch.tensor([[0.5, 0.25, 0.0]]), "blank_out": torch.tensor([[1.0, -2.0, 3.0]])}
    table = format_table(scores, ["[CLS]", "hello", "[PAD]"], mask=torch.tensor([[1, 1, 0]]))
    lines = table.splitlines()
    assert lines[0].split() == ["token", "a", "blank_out"]
    assert lines[1].split() == ["[CLS]", "0.5", "1"] and lines[2].split() == ["hello", "0.25", "-2"]
    assert len(lines) == 3
    with pytest.raises(ValueError, match="tokens has 2 entries"):
        format_table(scores, ["a", "b"])
    with pytest.raises(ValueError, match="same shape"):
        format_table({"a": torch.zeros(1, 3), "b": torch.zeros(1, 4)})


def test_bad_input(bert, gpt2, batch):
    ids, mask = batch
    with pytest.raises(TypeError, match="input_ids must be an integer"):
        compare_attributions(bert, ids.float())
    with pytest.raises(ValueError, match="unknown methods \\['lime'\\]"):
        compare_attributions(bert, ids, methods=("lime",))
    with pytest.raises(ValueError, match="gradient_reduction"):
        compare_attributions(bert, ids, gradient_reduction="max")
    with pytest.raises(ValueError, match="baseline_token_id"):
        compare_attributions(gpt2, ids, methods=("ablation",))
    with pytest.raises(ValueError, match="no single output position"):
        compare_attributions(gpt2, ids, methods=("saliency",), position="max")
