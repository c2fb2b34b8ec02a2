"""AttentionRecorder on ``torch.nn.MultiheadAttention`` and ``nn.Transformer*`` modules."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from captum_attnflow import rollout
from captum_attnflow.capture import AttentionRecorder

N, BATCH, DIM, HEADS = 6, 3, 8, 2


def _encoder(norm_first=False):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(
        DIM, HEADS, dim_feedforward=16, dropout=0.0, batch_first=True, norm_first=norm_first
    )
    # The nested-tensor fast path needs post-norm layers.
    return nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=not norm_first).eval()


def _reference_encoder_attention(encoder, src, mask=None, key_padding_mask=None, is_causal=False):
    """Run the layers one by one and ask each MHA for its per-head weights (slow path)."""
    weights, x = [], src
    for layer in encoder.layers:
        attn_input = layer.norm1(x) if layer.norm_first else x
        weights.append(
            layer.self_attn(
                attn_input, attn_input, attn_input, attn_mask=mask, key_padding_mask=key_padding_mask,
                need_weights=True, average_attn_weights=False,
            )[1]
        )
        x = layer(x, src_mask=mask, src_key_padding_mask=key_padding_mask, is_causal=is_causal)
    return weights


@pytest.fixture
def src():
    return torch.randn(BATCH, N, DIM, generator=torch.Generator().manual_seed(1))


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_encoder_with_padding_uses_real_weights(src, norm_first):
    encoder = _encoder(norm_first)
    padding = torch.zeros(BATCH, N, dtype=torch.bool)
    padding[1, 4:] = True
    padding[2, 5:] = True
    live = ~padding
    assert torch.backends.mha.get_fastpath_enabled()
    with torch.no_grad():
        plain = encoder(src, src_key_padding_mask=padding)  # fast path (nested tensors)
        with AttentionRecorder(encoder) as recorder:
            assert not torch.backends.mha.get_fastpath_enabled()
            output = encoder(src, src_key_padding_mask=padding)
        reference = _reference_encoder_attention(encoder, src, key_padding_mask=padding)
    assert torch.backends.mha.get_fastpath_enabled()  # restored
    torch.testing.assert_close(output[live], plain[live], atol=1e-5, rtol=0)
    assert recorder.layers == ["layers.0.self_attn", "layers.1.self_attn"]
    assert torch.equal(recorder.mask, live)
    for recorded, expected in zip(recorder.attentions, reference):
        assert recorded.shape == (BATCH, HEADS, N, N)
        torch.testing.assert_close(recorded, expected, atol=1e-6, rtol=0)
        assert torch.all(recorded[padding[:, None, None, :].expand_as(recorded)] == 0)  # padded keys
    torch.testing.assert_close(
        rollout(recorder.attentions, mask=recorder.mask), rollout(reference, mask=live), atol=1e-6, rtol=0
    )


def test_transformer_encoder_causal(src):
    encoder = _encoder()
    causal = nn.Transformer.generate_square_subsequent_mask(N)
    with torch.no_grad(), AttentionRecorder(encoder) as recorder:
        encoder(src, mask=causal, is_causal=True)
    reference = _reference_encoder_attention(encoder, src, mask=causal, is_causal=True)
    assert recorder.mask is None
    for recorded, expected in zip(recorder.attentions, reference):
        assert torch.all(recorded.triu(diagonal=1) == 0)
        torch.testing.assert_close(recorded, expected.detach(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("average", [True, False])
def test_multihead_attention_caller_gets_what_it_asked_for(batch_first, average):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(DIM, HEADS, batch_first=batch_first).eval()
    x = torch.randn(BATCH, N, DIM) if batch_first else torch.randn(N, BATCH, DIM)
    padding = torch.zeros(BATCH, N)
    padding[0, -1] = float("-inf")  # float key_padding_mask
    with torch.no_grad():
        out_plain, weights_plain = mha(x, x, x, key_padding_mask=padding, average_attn_weights=average)
        per_head = mha(x, x, x, key_padding_mask=padding, average_attn_weights=False)[1]
        with AttentionRecorder(mha) as recorder:
            out, weights = mha(x, x, x, key_padding_mask=padding, average_attn_weights=average)
            # positional need_weights=False, as nn.TransformerEncoderLayer passes it by keyword
            out_positional, none = mha(x, x, x, padding, False)
    assert none is None
    torch.testing.assert_close(out, out_plain, atol=1e-6, rtol=0)
    torch.testing.assert_close(out_positional, out_plain, atol=1e-6, rtol=0)
    torch.testing.assert_close(weights, weights_plain, atol=1e-6, rtol=0)
    assert recorder.layers == ["<model>"]  # the last pass: the positional call
    torch.testing.assert_close(recorder.attentions[0], per_head, atol=1e-6, rtol=0)
    assert recorder.mask.tolist() == (padding == 0).tolist()


def test_unbatched_multihead_attention():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(DIM, HEADS).eval()
    x = torch.randn(N, DIM)
    with torch.no_grad():
        expected = mha(x, x, x)[1]
        with AttentionRecorder(mha) as recorder:
            _, weights = mha(x, x, x)
    torch.testing.assert_close(weights, expected, atol=1e-6, rtol=0)
    assert recorder.attentions[0].shape == (1, HEADS, N, N)
    torch.testing.assert_close(recorder.attentions[0].mean(1)[0], expected, atol=1e-6, rtol=0)


def test_decoder_cross_attention_is_recorded_separately():
    torch.manual_seed(0)
    layer = nn.TransformerDecoderLayer(DIM, HEADS, dim_feedforward=16, dropout=0.0, batch_first=True)
    decoder = nn.TransformerDecoder(layer, num_layers=2).eval()
    tgt, memory = torch.randn(BATCH, N, DIM), torch.randn(BATCH, N + 3, DIM)
    causal = nn.Transformer.generate_square_subsequent_mask(N)
    with torch.no_grad(), AttentionRecorder(decoder) as recorder:
        decoder(tgt, memory, tgt_mask=causal, tgt_is_causal=True)
    assert recorder.registered_layers == [
        "layers.0.self_attn", "layers.0.multihead_attn", "layers.1.self_attn", "layers.1.multihead_attn"
    ]
    assert recorder.layers == ["layers.0.self_attn", "layers.1.self_attn"]
    assert recorder.cross_layers == ["layers.0.multihead_attn", "layers.1.multihead_attn"]
    assert [tuple(a.shape) for a in recorder.attentions] == [(BATCH, HEADS, N, N)] * 2
    assert [tuple(a.shape) for a in recorder.cross_attentions] == [(BATCH, HEADS, N, N + 3)] * 2
    for cross in recorder.cross_attentions:
        torch.testing.assert_close(cross.sum(-1), torch.ones(BATCH, HEADS, N))
    assert torch.all(recorder.attentions[0].triu(diagonal=1) == 0)


def test_keep_graph_gives_the_gradient_of_the_multihead_attention_weights():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(DIM, HEADS, batch_first=True).eval()
    x = torch.randn(BATCH, N, DIM)
    projection = torch.randn(BATCH, N, DIM)
    with AttentionRecorder(mha, keep_graph=True) as recorder:
        out, _ = mha(x, x, x, need_weights=False)
    (out * projection).sum().backward()
    recorded = recorder.attentions[0]
    assert recorded.grad is not None and recorded.grad.shape == (BATCH, HEADS, N, N)
    # Independent: the same module written out by hand, with the recorded weights as a leaf.
    weights = recorded.detach().requires_grad_()
    q, k, v = F.linear(x, mha.in_proj_weight, mha.in_proj_bias).chunk(3, dim=-1)
    v = v.reshape(BATCH, N, HEADS, DIM // HEADS).transpose(1, 2)
    by_hand = mha.out_proj((weights @ v).transpose(1, 2).reshape(BATCH, N, DIM))
    torch.testing.assert_close(by_hand, out, atol=1e-6, rtol=0)
    (expected,) = torch.autograd.grad((by_hand * projection).sum(), weights)
    torch.testing.assert_close(recorded.grad, expected, atol=1e-6, rtol=0)


def test_keep_graph_through_transformer_encoder(src):
    encoder = _encoder()
    with AttentionRecorder(encoder, keep_graph=True) as recorder:
        out = encoder(src)
    (out[0, -1] * torch.randn(DIM)).sum().backward()
    for layer in recorder.attentions:
        assert layer.grad is not None and layer.grad.shape == (BATCH, HEADS, N, N)
    rows = recorder.attentions[-1].grad[0].abs().sum(dim=(0, 2))
    assert rows[-1] > 0 and torch.all(rows[:-1] == 0)
    assert torch.all(recorder.attentions[0].grad[1:] == 0)  # example 0 only


def test_nn_transformer_records_encoder_or_decoder_with_its_own_mask():
    torch.manual_seed(0)
    model = nn.Transformer(DIM, HEADS, 2, 2, dim_feedforward=16, dropout=0.0, batch_first=True).eval()
    src, tgt = torch.randn(BATCH, N + 2, DIM), torch.randn(BATCH, N, DIM)
    src_padding = torch.zeros(BATCH, N + 2, dtype=torch.bool)
    src_padding[0, -3:] = True
    tgt_padding = torch.zeros(BATCH, N, dtype=torch.bool)
    tgt_padding[1, -1] = True
    with pytest.raises(ValueError, match=r"encoder-decoder model.*'encoder.layers.\*.self_attn'"):
        AttentionRecorder(model)
    call = dict(src_key_padding_mask=src_padding, tgt_key_padding_mask=tgt_padding, memory_key_padding_mask=src_padding)
    with torch.no_grad():
        with AttentionRecorder(model, attention_layers=["encoder.layers.*.self_attn"]) as encoder:
            model(src, tgt, **call)
        with AttentionRecorder(model, attention_layers=["decoder.layers.*.*_attn"]) as decoder:
            model(src, tgt, **call)
    assert encoder.layers == ["encoder.layers.0.self_attn", "encoder.layers.1.self_attn"]
    assert torch.equal(encoder.mask, ~src_padding)
    assert decoder.layers == ["decoder.layers.0.self_attn", "decoder.layers.1.self_attn"]
    assert decoder.cross_layers == ["decoder.layers.0.multihead_attn", "decoder.layers.1.multihead_attn"]
    assert torch.equal(decoder.mask, ~tgt_padding)
    assert decoder.cross_attentions[0].shape == (BATCH, HEADS, N, N + 2)
    assert torch.all(decoder.cross_attentions[0][0, :, :, -3:] == 0)  # padded memory keys


def test_extractor_on_multihead_attention_keeps_self_and_cross_apart():
    class SelfThenCross(nn.Module):
        def __init__(self):
            super().__init__()
            self.self_attn = nn.MultiheadAttention(DIM, HEADS, batch_first=True)
            self.cross = nn.MultiheadAttention(DIM, HEADS, batch_first=True)

        def forward(self, x, memory):
            x = self.self_attn(x, x, x, average_attn_weights=False)[0]
            return self.cross(x, memory, memory, average_attn_weights=False)[0]

    torch.manual_seed(0)
    model = SelfThenCross().eval()
    x, memory = torch.randn(BATCH, N, DIM), torch.randn(BATCH, N, DIM)  # equal lengths: only `is` tells
    recorder = AttentionRecorder(model, extractor=lambda module, args, kwargs, output: output[1])
    with torch.no_grad(), recorder:
        model(x, memory)
    assert recorder.layers == ["self_attn"] and recorder.cross_layers == ["cross"]
    expected = model.self_attn(x, x, x, average_attn_weights=False)[1]
    torch.testing.assert_close(recorder.attentions[0], expected.detach(), atol=0, rtol=0)
