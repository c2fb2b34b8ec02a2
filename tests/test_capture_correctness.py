"""Capture correctness: gradients of the recorded tensor, training mode, threads, SDPA in evaluate()."""

import threading

import pytest
import torch
from torch import nn

from captum_attnflow import rollout
from captum_attnflow.attr import AttentionRollout, GradientWeightedRollout
from captum_attnflow.attr.gradient import gradient_weighted_graph
from captum_attnflow.capture import AttentionRecorder
from captum_attnflow.graph import fuse_heads, rollout_matrices

transformers = pytest.importorskip("transformers")

D, H, N, B = 8, 2, 5, 2


# --------------------------------------------------------------------------------------------
# 12.3: gradients of a transposed view
# --------------------------------------------------------------------------------------------


def _transposed_attention(qkv, x, weights=None):
    """Attention computed key-major ``(b, h, keys, queries)`` and returned as its transposed view."""
    b, n, d = x.shape
    q, k, v = qkv(x).reshape(b, n, 3, H, d // H).permute(2, 0, 3, 1, 4)
    if weights is None:
        by_key = ((k @ q.transpose(-1, -2)) / (d // H) ** 0.5).softmax(dim=-2)
        weights = by_key.transpose(-1, -2)  # (b, h, queries, keys): a view, not a reshape
    return (weights @ v).transpose(1, 2).reshape(b, n, d), weights


class TransposedAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(D, 3 * D)

    def forward(self, x, weights=None):
        return _transposed_attention(self.qkv, x, weights)


class TransposedModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([TransposedAttention() for _ in range(2)])
        self.head = nn.Linear(D, 3)

    def forward(self, x, weights=None):
        for index, layer in enumerate(self.layers):
            given = None if weights is None else weights[index]
            x = x + layer(x, given)[0]
        return self.head(x[:, 0])


def test_gradient_weighted_rollout_differentiates_the_transposed_view_itself():
    torch.manual_seed(0)
    model, x, target = TransposedModel().eval(), torch.randn(B, N, D), 1
    with torch.no_grad(), AttentionRecorder(model) as recorder:
        model(x)
    # brute force: the same function with layer l's recorded weights as an explicit leaf (the
    # other layers computed as usual, so every path through later layers counts)
    leaves = [a.clone().requires_grad_(True) for a in recorder.attentions]
    gradients = []
    for index, leaf in enumerate(leaves):
        given = [leaf if i == index else None for i in range(len(leaves))]
        gradients.append(torch.autograd.grad(model(x, given)[:, target].sum(), leaf)[0])
    fused = fuse_heads(gradient_weighted_graph([a.detach() for a in leaves], gradients), "mean")
    expected = rollout_matrices(fused)[:, -1, :, :][:, 0]
    got = GradientWeightedRollout(model).attribute(x, target=target)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_multihead_attention_gradient_still_comes_from_its_reshaped_base():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d_model=D, nhead=H, dropout=0.0, batch_first=True)
    encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False).eval()
    model = nn.Sequential(encoder, nn.Flatten(), nn.Linear(N * D, 3)).eval()
    x = torch.randn(B, N, D)
    got = GradientWeightedRollout(model).attribute(x, target=2)
    with AttentionRecorder(model, keep_graph=True) as recorder:
        model(x)[:, 2].sum().backward()  # retain_grad + the base hook: an independent route
    fused = fuse_heads(gradient_weighted_graph([a.detach() for a in recorder.attentions],
                                               [a.grad for a in recorder.attentions]), "mean")
    torch.testing.assert_close(got, rollout_matrices(fused)[:, -1, 0], rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# 12.4: training mode
# --------------------------------------------------------------------------------------------


def _bert(implementation, dropout=0.1):
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=32,
        max_position_embeddings=32, attention_probs_dropout_prob=dropout, hidden_dropout_prob=dropout,
        num_labels=2, unk_token_id=1, pad_token_id=0,
    )
    config._attn_implementation = implementation
    return transformers.BertForSequenceClassification(config)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_training_mode_with_dropout_is_refused_on_eager_and_sdpa(implementation):
    model = _bert(implementation).train()
    ids = torch.randint(3, 40, (B, N))
    with pytest.raises(ValueError, match=r"training mode.*model\.eval\(\)"):
        with AttentionRecorder(model) as recorder:
            model(ids)
    with pytest.raises(ValueError, match=r"model\.eval\(\)"):
        AttentionRollout(model).attribute(ids)
    assert not recorder.attached
    model.eval()
    with AttentionRecorder(model) as recorder:
        model(ids)
    assert len(recorder.attentions) == 2


def test_training_mode_is_refused_for_multihead_attention_and_sdpa_dropout_argument():
    layer = nn.TransformerEncoderLayer(d_model=D, nhead=H, batch_first=True)  # dropout 0.1
    encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False).train()
    with pytest.raises(ValueError, match=r"dropout=0\.1.*model\.eval\(\)"):
        with AttentionRecorder(encoder):
            encoder(torch.randn(B, N, D))

    class LiteralDropoutAttention(nn.Module):  # no dropout attribute: only the call says it
        def forward(self, x):
            q = x.unsqueeze(1)
            return nn.functional.scaled_dot_product_attention(q, q, q, dropout_p=0.2).squeeze(1)

    with pytest.raises(ValueError, match=r"dropout_p=0\.2.*model\.eval\(\)"):
        with AttentionRecorder(nn.Sequential(LiteralDropoutAttention())) as recorder:
            recorder.model(torch.randn(B, N, D))


def test_training_mode_without_dropout_records_the_eval_attention():
    model = _bert("eager", dropout=0.0)
    ids = torch.randint(3, 40, (B, N))
    with torch.no_grad(), AttentionRecorder(model.train()) as training:
        model(ids)
    with torch.no_grad(), AttentionRecorder(model.eval()) as evaluation:
        model(ids)
    for a, b in zip(training.attentions, evaluation.attentions):
        torch.testing.assert_close(a, b)


# --------------------------------------------------------------------------------------------
# 12.7: threads
# --------------------------------------------------------------------------------------------


def test_one_model_from_several_threads_and_the_fast_path_switch_is_restored():
    model = _bert("sdpa").eval()
    ids = torch.randint(3, 40, (B, N))
    expected = AttentionRollout(model).attribute(ids)
    before = torch.backends.mha.get_fastpath_enabled()
    threads, barrier, results, errors = 4, threading.Barrier(4), [], []

    def work():
        barrier.wait()
        for _ in range(4):
            try:
                results.append(AttentionRollout(model).attribute(ids))
            except Exception as error:  # noqa: BLE001 - collected for the assertion
                errors.append(repr(error))

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    assert len(results) == 16 and all(torch.equal(r, expected) for r in results)
    assert torch.backends.mha.get_fastpath_enabled() == before


def test_fast_path_switch_is_reference_counted_over_overlapping_recorders():
    model = nn.TransformerEncoder(nn.TransformerEncoderLayer(D, H, batch_first=True), 1,
                                  enable_nested_tensor=False).eval()
    before = torch.backends.mha.get_fastpath_enabled()
    first, second = AttentionRecorder(model).attach(), AttentionRecorder(model).attach()
    first.remove()  # not last: the switch stays off while `second` is attached
    assert torch.backends.mha.get_fastpath_enabled() is False
    with pytest.raises(RuntimeError, match="boom"):
        with AttentionRecorder(model):  # nested, left by an exception
            raise RuntimeError("boom")
    assert torch.backends.mha.get_fastpath_enabled() is False
    second.remove()
    assert torch.backends.mha.get_fastpath_enabled() == before


def test_a_pass_in_another_thread_is_not_recorded_and_the_error_says_so():
    model = _bert("sdpa").eval()
    with AttentionRecorder(model) as recorder:
        worker = threading.Thread(target=model, args=(torch.randint(3, 40, (B, N)),))
        worker.start()
        worker.join()
    with pytest.raises(RuntimeError, match="another thread"):
        recorder.attentions


# --------------------------------------------------------------------------------------------
# 12.15: evaluate() on SDPA, the functional API's empty attentions
# --------------------------------------------------------------------------------------------


def test_evaluate_on_sdpa_gives_the_records_of_eager():
    from captum_attnflow.evaluation import evaluate

    data = [{"input_ids": [2, 5 + i, 7, 9 + i, 3][: 3 + i % 3], "label": i % 2} for i in range(4)]
    runs = {}
    for implementation in ("eager", "sdpa"):
        model = _bert(implementation).eval()
        runs[implementation] = evaluate(model, data, methods=("raw", "rollout"), progress=False, resamples=10)
    assert runs["sdpa"].errors == {} and len(runs["sdpa"].examples) == 4
    for eager, sdpa in zip(runs["eager"].examples, runs["sdpa"].examples):
        assert eager["tokens"] == sdpa["tokens"] and eager["target"] == sdpa["target"]
        for method in ("raw", "rollout"):
            torch.testing.assert_close(torch.tensor(sdpa["scores"][method]), torch.tensor(eager["scores"][method]))


def test_functional_api_on_empty_output_attentions_says_why_and_how():
    model = _bert("sdpa").eval()
    output = model(torch.randint(3, 40, (B, N)), output_attentions=True)
    with pytest.raises(ValueError, match=r"SDPA.*attn_implementation='eager'.*AttentionRecorder"):
        rollout(output.attentions)
    with pytest.raises(TypeError, match=r"attn_implementation='eager'"):
        rollout(None)
