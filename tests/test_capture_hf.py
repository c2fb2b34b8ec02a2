"""AttentionRecorder on tiny randomly initialised Hugging Face transformers models."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from captum_attnflow import rollout  # noqa: E402
from captum_attnflow.capture import AttentionRecorder  # noqa: E402

VOCAB, N, BATCH = 40, 7, 2


def _bert():
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=3, num_attention_heads=4,
        intermediate_size=32, max_position_embeddings=32,
    )
    names = [f"encoder.layer.{i}.attention.self" for i in range(3)]
    return transformers.BertModel(config), names, "right"


def _gpt2():
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=16, n_layer=3, n_head=4, n_positions=32, bos_token_id=0, eos_token_id=0
    )
    names = [f"transformer.h.{i}.attn" for i in range(3)]
    return transformers.GPT2LMHeadModel(config), names, "left"


FAMILIES = {"bert": _bert, "gpt2": _gpt2}


def _inputs(padding_side):
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1, VOCAB, (BATCH, N), generator=generator)
    mask = torch.ones(BATCH, N, dtype=torch.long)
    if padding_side == "right":
        mask[1, N - 2 :] = 0
    else:
        mask[1, :2] = 0
    return ids, mask


def _model_output(output):
    return output.logits if hasattr(output, "logits") else output.last_hidden_state


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    torch.manual_seed(0)
    model, names, padding_side = FAMILIES[request.param]()
    model.eval()
    ids, mask = _inputs(padding_side)
    model.set_attn_implementation("eager")
    with torch.no_grad():
        reference = model(ids, attention_mask=mask, output_attentions=True)
    return model, names, ids, mask, reference


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_recorded_attention_equals_output_attentions(family, implementation):
    model, names, ids, mask, reference = family
    model.set_attn_implementation(implementation)
    assert model.config._attn_implementation == implementation
    with torch.no_grad():
        plain = _model_output(model(ids, attention_mask=mask))
        with AttentionRecorder(model) as recorder:
            output = _model_output(model(ids, attention_mask=mask))
    live = mask.bool()
    # The recorder does not change what the model computes (padded positions aside).
    torch.testing.assert_close(output[live], plain[live], atol=1e-5, rtol=0)
    assert recorder.layers == names
    assert torch.equal(recorder.mask, live)
    assert len(recorder.attentions) == len(reference.attentions)
    for recorded, expected in zip(recorder.attentions, reference.attentions):
        assert recorded.shape == expected.shape == (BATCH, 4, N, N)
        assert not recorded.requires_grad
        # Rows of padded queries are arbitrary (eager: uniform, SDPA: zero); live rows must agree.
        torch.testing.assert_close(recorded[:, :, live[1]][1], expected[:, :, live[1]][1], atol=1e-6, rtol=0)
        torch.testing.assert_close(recorded[0], expected[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(
        rollout(recorder.attentions, mask=recorder.mask), rollout(list(reference.attentions), mask=mask), atol=1e-6, rtol=0
    )
    assert recorder.stack().shape == (BATCH, 3, 4, N, N)


@pytest.mark.parametrize("head_fusion", ["mean", "max", "min"])
def test_head_fused_capture_gives_same_rollout(family, head_fusion):
    model, _, ids, mask, reference = family
    model.set_attn_implementation("sdpa")
    with torch.no_grad(), AttentionRecorder(model, head_fusion=head_fusion) as recorder:
        model(ids, attention_mask=mask)
    assert all(layer.shape == (BATCH, 1, N, N) for layer in recorder.attentions)
    expected = rollout(list(reference.attentions), head_fusion=head_fusion, mask=mask)
    torch.testing.assert_close(rollout(recorder.attentions, mask=recorder.mask), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_keep_graph_gives_attention_gradients(family, implementation):
    model, _, ids, mask, _ = family
    model.set_attn_implementation(implementation)
    with AttentionRecorder(model, keep_graph=True) as recorder:
        output = _model_output(model(ids, attention_mask=mask))
    # A random projection: the plain sum of a LayerNorm output has zero gradient.
    weights = torch.randn(output.shape[-1], generator=torch.Generator().manual_seed(2))
    (output[0, -1] * weights).sum().backward()
    model.zero_grad()
    for layer in recorder.attentions:
        assert layer.requires_grad and layer.grad is not None and layer.grad.shape == layer.shape
    # The last layer's gradient is non-zero only in the rows that feed output position -1.
    last = recorder.attentions[-1].grad[0].abs().sum(dim=(0, 2))
    assert last[-1] > 0 and torch.all(last[:-1] == 0)


def test_gpt2_causal_attention_is_lower_triangular(family):
    model, names, ids, mask, _ = family
    if not names[0].startswith("transformer.h"):
        pytest.skip("causal model only")
    model.set_attn_implementation("sdpa")
    with torch.no_grad(), AttentionRecorder(model) as recorder:
        model(ids)  # no attention_mask: SDPA runs with is_causal=True
    assert recorder.mask is None
    for layer in recorder.attentions:
        assert torch.all(layer.triu(diagonal=1) == 0)
        torch.testing.assert_close(layer.sum(-1), torch.ones_like(layer.sum(-1)))
