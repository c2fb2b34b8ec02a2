"""AttentionRecorder on tiny randomly initialised Hugging Face transformers models.

Every family runs with SDPA (the transformers 5.x default) and with eager attention; the
reference is the model's own eager ``output_attentions``.
"""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from captum_attnflow import rollout  # noqa: E402
from captum_attnflow.capture import AttentionRecorder  # noqa: E402

VOCAB, N, BATCH, HEADS, LAYERS = 40, 7, 2, 4, 2
SMALL = dict(hidden_size=16, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=32)


def _text_inputs(padding_side):
    ids = torch.randint(3, VOCAB, (BATCH, N), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(BATCH, N, dtype=torch.long)
    if padding_side == "right":
        mask[1, N - 2 :] = 0
    else:  # decoder batches are padded on the left
        mask[1, :2] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _bert():
    config = transformers.BertConfig(vocab_size=VOCAB, max_position_embeddings=32, **SMALL)
    names = [f"encoder.layer.{i}.attention.self" for i in range(LAYERS)]
    return transformers.BertModel(config), _text_inputs("right"), names


def _roberta():
    config = transformers.RobertaConfig(vocab_size=VOCAB, max_position_embeddings=32, pad_token_id=1, **SMALL)
    names = [f"encoder.layer.{i}.attention.self" for i in range(LAYERS)]
    return transformers.RobertaForSequenceClassification(config), _text_inputs("right"), [f"roberta.{n}" for n in names]


def _distilbert():
    config = transformers.DistilBertConfig(
        vocab_size=VOCAB, dim=16, n_layers=LAYERS, n_heads=HEADS, hidden_dim=32, max_position_embeddings=32
    )
    names = [f"transformer.layer.{i}.attention" for i in range(LAYERS)]
    return transformers.DistilBertModel(config), _text_inputs("right"), names


def _gpt2():
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=16, n_layer=LAYERS, n_head=HEADS, n_positions=32, bos_token_id=0, eos_token_id=0
    )
    names = [f"transformer.h.{i}.attn" for i in range(LAYERS)]
    return transformers.GPT2LMHeadModel(config), _text_inputs("left"), names


def _vit():
    config = transformers.ViTConfig(image_size=8, patch_size=4, num_channels=3, **SMALL)
    pixels = torch.randn(BATCH, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    model = transformers.ViTModel(config)
    names = [name for name, module in model.named_modules() if type(module).__name__ == "ViTAttention"]
    assert len(names) == LAYERS
    return model, {"pixel_values": pixels}, names


def _llama_gqa():
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, num_key_value_heads=HEADS // 2, max_position_embeddings=32, **SMALL
    )
    names = [f"model.layers.{i}.self_attn" for i in range(LAYERS)]
    return transformers.LlamaForCausalLM(config), _text_inputs("left"), names


def _qwen2_gqa():
    config = transformers.Qwen2Config(
        vocab_size=VOCAB, num_key_value_heads=HEADS // 2, max_position_embeddings=32, **SMALL
    )
    names = [f"model.layers.{i}.self_attn" for i in range(LAYERS)]
    inputs = _text_inputs("left")
    del inputs["attention_mask"]  # no mask: transformers takes SDPA's is_causal + enable_gqa route
    return transformers.Qwen2ForCausalLM(config), inputs, names


FAMILIES = {
    "bert": _bert,
    "roberta": _roberta,
    "distilbert": _distilbert,
    "gpt2": _gpt2,
    "vit": _vit,
    "llama-gqa": _llama_gqa,
    "qwen2-gqa": _qwen2_gqa,
}
CAUSAL = {"gpt2", "llama-gqa", "qwen2-gqa"}


def _first_output(output):
    return output.logits if hasattr(output, "logits") else output.last_hidden_state


def _live(inputs, n):
    mask = inputs.get("attention_mask")
    return torch.ones(BATCH, n, dtype=torch.bool) if mask is None else mask.bool()


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    torch.manual_seed(0)
    model, inputs, names = FAMILIES[request.param]()
    model.eval()
    model.set_attn_implementation("eager")
    with torch.no_grad():
        reference = model(**inputs, output_attentions=True).attentions
    assert len(reference) == LAYERS and reference[0].shape[1] == HEADS
    return request.param, model, inputs, names, list(reference)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_recorded_attention_equals_output_attentions(family, implementation):
    _, model, inputs, names, reference = family
    model.set_attn_implementation(implementation)
    assert model.config._attn_implementation == implementation
    with torch.no_grad():
        plain = _first_output(model(**inputs))
        with AttentionRecorder(model) as recorder:
            output = _first_output(model(**inputs))
    n = reference[0].shape[-1]
    live = _live(inputs, n)
    # Recording does not change what the model computes (rows of padded queries aside: eager
    # attends uniformly there, SDPA gives zero weights).
    if output.shape[1] == n:
        torch.testing.assert_close(output[live], plain[live], atol=1e-5, rtol=0)
    else:
        torch.testing.assert_close(output, plain, atol=1e-5, rtol=0)
    assert recorder.layers == names
    if "attention_mask" in inputs:
        assert torch.equal(recorder.mask, live)
    else:
        assert recorder.mask is None
    assert len(recorder.attentions) == LAYERS
    for recorded, expected in zip(recorder.attentions, reference):
        assert recorded.shape == expected.shape == (BATCH, HEADS, n, n)
        assert not recorded.requires_grad
        for b in range(BATCH):
            torch.testing.assert_close(recorded[b][:, live[b]], expected[b][:, live[b]], atol=1e-6, rtol=0)
    torch.testing.assert_close(
        rollout(recorder.attentions, mask=recorder.mask), rollout(reference, mask=recorder.mask), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(recorder.stack(), torch.stack(recorder.attentions, dim=1))


def test_head_fused_capture_gives_same_rollout(family):
    _, model, inputs, _, reference = family
    model.set_attn_implementation("sdpa")
    for head_fusion in ("mean", "max", "min"):
        with torch.no_grad(), AttentionRecorder(model, head_fusion=head_fusion) as recorder:
            model(**inputs)
        n = reference[0].shape[-1]
        assert all(layer.shape == (BATCH, 1, n, n) for layer in recorder.attentions)
        expected = rollout(reference, head_fusion=head_fusion, mask=recorder.mask)
        # a one-head max/min recording passed with the same head_fusion is taken as already fused
        fused = rollout(recorder.attentions, mask=recorder.mask, head_fusion=head_fusion)
        torch.testing.assert_close(fused, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_keep_graph_gives_attention_gradients(family, implementation):
    _, model, inputs, _, _ = family
    model.set_attn_implementation(implementation)
    with AttentionRecorder(model, keep_graph=True) as recorder:
        output = model(**inputs, output_hidden_states=True).hidden_states[-1]
    # A random projection: the plain sum of a LayerNorm output has zero gradient.
    projection = torch.randn(output.shape[-1], generator=torch.Generator().manual_seed(2))
    (output[0, -1] * projection).sum().backward()
    model.zero_grad()
    for layer in recorder.attentions:
        assert layer.requires_grad and layer.grad is not None and layer.grad.shape == layer.shape
    # The last layer's gradient is non-zero exactly in the row that feeds output position -1.
    rows = recorder.attentions[-1].grad[0].abs().sum(dim=(0, 2))
    assert rows[-1] > 0 and torch.all(rows[:-1] == 0)


@pytest.mark.parametrize("name", sorted(CAUSAL))
def test_causal_models_record_lower_triangular_attention(name):
    torch.manual_seed(0)
    model, inputs, _ = FAMILIES[name]()
    model.eval()
    with torch.no_grad(), AttentionRecorder(model) as recorder:
        model(input_ids=inputs["input_ids"])  # no mask: SDPA's is_causal flag does the masking
    assert recorder.mask is None
    for layer in recorder.attentions:
        assert torch.all(layer.triu(diagonal=1) == 0)
        torch.testing.assert_close(layer.sum(-1), torch.ones_like(layer.sum(-1)))


@pytest.fixture(scope="module")
def t5():
    torch.manual_seed(0)
    config = transformers.T5Config(
        vocab_size=VOCAB, d_model=16, d_kv=4, d_ff=32, num_layers=LAYERS, num_decoder_layers=LAYERS,
        num_heads=HEADS, decoder_start_token_id=0,
    )
    model = transformers.T5ForConditionalGeneration(config).eval()
    inputs = _text_inputs("right")
    inputs["decoder_input_ids"] = inputs["input_ids"][:, :5]
    inputs["decoder_attention_mask"] = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
    model.set_attn_implementation("eager")
    with torch.no_grad():
        reference = model(**inputs, output_attentions=True)
    return model, inputs, reference


ENCODER, DECODER, CROSS = ["encoder.block.*.layer.0"], ["decoder.block.*.layer.0"], ["decoder.block.*.layer.1"]


def test_encoder_decoder_needs_a_choice(t5):
    model, _, _ = t5
    with pytest.raises(ValueError, match=r"encoder-decoder model.*\['encoder.block.\*.layer.0', 'decoder.block"):
        AttentionRecorder(model)
    with pytest.raises(ValueError, match="both the encoder and the decoder"):
        AttentionRecorder(model, attention_layers=ENCODER + DECODER)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_encoder_decoder_records_each_graph_and_cross_attention_apart(t5, implementation):
    model, inputs, reference = t5
    model.set_attn_implementation(implementation)
    with torch.no_grad():
        with AttentionRecorder(model, attention_layers=ENCODER) as encoder:
            model(**inputs)
        with AttentionRecorder(model, attention_layers=DECODER + CROSS) as decoder:
            model(**inputs)
    assert encoder.layers == ["encoder.block.0.layer.0", "encoder.block.1.layer.0"] and encoder.cross_layers == []
    assert decoder.layers == ["decoder.block.0.layer.0", "decoder.block.1.layer.0"]
    assert decoder.cross_layers == ["decoder.block.0.layer.1", "decoder.block.1.layer.1"]
    assert torch.equal(encoder.mask, inputs["attention_mask"].bool())
    assert torch.equal(decoder.mask, inputs["decoder_attention_mask"].bool())
    pairs = [
        (encoder.attentions, reference.encoder_attentions, encoder.mask),
        (decoder.attentions, reference.decoder_attentions, decoder.mask),
        (decoder.cross_attentions, reference.cross_attentions, decoder.mask),
    ]
    for recorded, expected, live in pairs:
        assert len(recorded) == len(expected) == LAYERS
        for got, want in zip(recorded, expected):
            assert got.shape == want.shape
            for b in range(BATCH):  # rows of live queries
                torch.testing.assert_close(got[b][:, live[b]], want[b][:, live[b]], atol=1e-6, rtol=0)
