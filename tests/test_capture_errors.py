"""AttentionRecorder bad input: clear errors, and never a hook or mode left behind."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from captum_attnflow.capture import AttentionRecorder

N, DIM, HEADS = 4, 8, 2


class FusedAttention(nn.Module):
    """Hand-written fused attention; ``calls`` SDPA calls per forward, optional crash and early exit."""

    def __init__(self, calls=1):
        super().__init__()
        self.qkv = nn.Linear(DIM, 3 * DIM)
        self.calls = calls

    def forward(self, x):
        q, k, v = (t.reshape(x.shape[0], -1, HEADS, DIM // HEADS).transpose(1, 2) for t in self.qkv(x).chunk(3, -1))
        for _ in range(self.calls):
            v = F.scaled_dot_product_attention(q, k, v)
        return x + v.transpose(1, 2).reshape(x.shape)


class Model(nn.Module):
    def __init__(self, depth=2, calls=1, crash_at=None, exit_after=None):
        super().__init__()
        self.layers = nn.ModuleList(FusedAttention(calls) for _ in range(depth))
        self.crash_at, self.exit_after = crash_at, exit_after

    def forward(self, x):
        for index, layer in enumerate(self.layers):
            if index == self.crash_at:
                raise RuntimeError("boom")
            if index == self.exit_after:
                break
            x = layer(x)
        return x


def _x(batch=2):
    return torch.randn(batch, N, DIM, generator=torch.Generator().manual_seed(0))


def _assert_clean(model):
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks, type(module).__name__
    assert not torch.overrides._is_torch_function_mode_enabled()
    assert torch.backends.mha.get_fastpath_enabled()


def test_no_attention_module_lists_what_was_tried():
    model = nn.Sequential(nn.Linear(DIM, DIM), nn.ReLU())
    with pytest.raises(ValueError) as error:
        AttentionRecorder(model)
    message = str(error.value)
    for expected in ("no attention module found in Sequential", "Tried", "_can_record_outputs", "MultiheadAttention",
                     "attention_layers=", "extractor="):
        assert expected in message


def test_reading_before_any_forward_pass():
    recorder = AttentionRecorder(Model())
    assert recorder.registered_layers == ["layers.0", "layers.1"]
    for attribute in ("attentions", "layers", "mask", "cross_attentions"):
        with pytest.raises(RuntimeError, match="no complete forward pass has been recorded"):
            getattr(recorder, attribute)


def test_hooks_are_removed_when_the_forward_pass_raises():
    model = Model(crash_at=1)
    with pytest.raises(RuntimeError, match="boom"):
        with AttentionRecorder(model) as recorder:
            model(_x())
    _assert_clean(model)
    with pytest.raises(RuntimeError, match="no complete forward pass"):
        recorder.attentions


def test_a_failed_pass_replaces_an_earlier_complete_one():
    model = Model()
    with AttentionRecorder(model) as recorder:
        model(_x())
        model.crash_at = 1
        with pytest.raises(RuntimeError, match="boom"):
            model(_x())
        with pytest.raises(RuntimeError, match="no complete forward pass"):
            recorder.attentions
    _assert_clean(model)


def test_extractor_with_wrong_shape_names_the_layer():
    model = Model()
    expected = r"'layers.0' \(FusedAttention\): the extractor gave attention of shape \(2, 4, 4\)"
    with pytest.raises(ValueError, match=expected):
        with AttentionRecorder(model, extractor=lambda module, args, kwargs, output: torch.zeros(2, 4, 4)):
            model(_x())
    _assert_clean(model)


def test_extractor_returning_a_non_tensor():
    model = Model()
    with pytest.raises(ValueError, match="gave attention of shape NoneType"):
        with AttentionRecorder(model, extractor=lambda module, args, kwargs, output: None):
            model(_x())
    _assert_clean(model)


def test_early_exit_is_reported_when_reading():
    model = Model(depth=3, exit_after=2)
    with AttentionRecorder(model) as recorder:
        model(_x())
    with pytest.raises(RuntimeError, match=r"1 of the 3 registered attention modules never ran: \['layers.2'\]"):
        recorder.attentions


def test_module_without_weights_asks_for_an_extractor():
    class Opaque(nn.Module):
        def forward(self, x):
            return x * 2

    model = nn.Sequential(Opaque(), Opaque())
    with pytest.raises(ValueError, match=r"'0' \(Opaque\) produced no attention weights.*extractor="):
        with AttentionRecorder(model, attention_layers=["*"]):
            model(_x())
    _assert_clean(model)


def test_several_sdpa_calls_in_one_module():
    model = Model(calls=2)
    with pytest.raises(ValueError, match="called F.scaled_dot_product_attention 2 times"):
        with AttentionRecorder(model):
            model(_x())
    _assert_clean(model)


def test_non_square_self_attention():
    class Pooling(nn.Module):
        def forward(self, x):
            q = x[:, None, :1]  # one query over n keys
            return F.scaled_dot_product_attention(q, x[:, None], x[:, None])[:, 0]

    class PoolAttn(nn.Module):
        def __init__(self):
            super().__init__()
            self.pool = Pooling()

        def forward(self, x):
            return self.pool(x)

    model = PoolAttn()
    with pytest.raises(ValueError, match=r"'pool' \(Pooling\) recorded non-square attention of shape \(2, 1, 1, 4\)"):
        with AttentionRecorder(model, attention_layers=["pool"]):
            model(_x())
    _assert_clean(model)


def test_keep_graph_under_no_grad():
    model = Model()
    with pytest.raises(RuntimeError, match="keep_graph=True .* does not require grad"):
        with torch.no_grad(), AttentionRecorder(model, keep_graph=True):
            model(_x())
    _assert_clean(model)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"head_fusion": "median"}, ValueError, "unknown head_fusion 'median'"),
        ({"head_fusion": "mean", "keep_graph": True}, ValueError, "Use head_fusion=None"),
        ({"extractor": "probs"}, TypeError, "extractor must be a function"),
        ({"attention_layers": "layers.*"}, TypeError, "Wrap a single entry in a list"),
        ({"attention_layers": []}, ValueError, "attention_layers is empty"),
        ({"attention_layers": ["decoder.*"]}, ValueError, "pattern 'decoder.*' matches no module name"),
        ({"attention_layers": [nn.Linear(2, 2)]}, ValueError, "not a submodule of Model"),
        ({"attention_layers": [3]}, TypeError, "got int"),
        ({"attention_layers": ["layers.0", "layers.0.qkv"]}, ValueError, "'layers.0.qkv', which is inside it"),
    ],
)
def test_invalid_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        AttentionRecorder(Model(), **kwargs)


def test_model_must_be_a_module():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        AttentionRecorder(lambda x: x)


def test_attaching_twice():
    model = Model()
    recorder = AttentionRecorder(model)
    with recorder:
        with pytest.raises(RuntimeError, match="already attached"):
            recorder.attach()
    _assert_clean(model)


def test_mask_that_does_not_fit_the_attention():
    class Prepends(nn.Module):
        """Adds a class token inside, so its attention_mask is one shorter than the attention."""

        def __init__(self):
            super().__init__()
            self.attn = FusedAttention()

        def forward(self, x, attention_mask=None):
            return self.attn(torch.cat([x[:, :1], x], dim=1))

    model = Prepends()
    with AttentionRecorder(model) as recorder:
        model(_x(), attention_mask=torch.ones(2, N))
    assert recorder.attentions[0].shape == (2, HEADS, N + 1, N + 1)
    with pytest.raises(ValueError, match=r"mask of the model call has shape \(2, 4\).*\(2, 5\)"):
        recorder.mask
