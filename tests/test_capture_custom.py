"""AttentionRecorder on hand-written models: extractors, patterns, discovery and forward order."""

import re
import runpy
from pathlib import Path

import pytest
import torch
from torch import nn

from captum_attnflow import rollout
from captum_attnflow.capture import AttentionRecorder, discover_attention_layers

N, DIM, HEADS = 5, 8, 2
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "custom_model.py"


class Mixer(nn.Module):
    """Self-attention by explicit math that keeps its weights in ``self.probs`` (returns only x)."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(DIM, 3 * DIM)

    def forward(self, x):
        q, k, v = (t.reshape(x.shape[0], N, HEADS, -1).transpose(1, 2) for t in self.qkv(x).chunk(3, -1))
        self.probs = (q @ k.transpose(-2, -1) / (DIM // HEADS) ** 0.5).softmax(-1)
        return x + (self.probs @ v).transpose(1, 2).reshape(x.shape)


class Net(nn.Module):
    def __init__(self, depth=3, reverse=False, share=False):
        super().__init__()
        self.mixers = nn.ModuleList(Mixer() for _ in range(1 if share else depth))
        self.depth, self.reverse, self.share = depth, reverse, share

    def forward(self, x):
        order = range(self.depth - 1, -1, -1) if self.reverse else range(self.depth)
        for index in order:
            x = self.mixers[0 if self.share else index](x)
        return x


def _probs_extractor(module, args, kwargs, output):
    return module.probs


@pytest.fixture
def x():
    return torch.randn(2, N, DIM, generator=torch.Generator().manual_seed(0))


def test_extractor_records_custom_modules(x):
    torch.manual_seed(0)
    net = Net()
    with AttentionRecorder(net, attention_layers=list(net.mixers), extractor=_probs_extractor) as recorder:
        net(x)
    assert recorder.layers == ["mixers.0", "mixers.1", "mixers.2"]
    for recorded, mixer in zip(recorder.attentions, net.mixers):
        torch.testing.assert_close(recorded, mixer.probs.detach(), atol=0, rtol=0)
    assert recorder.mask is None


@pytest.mark.parametrize("pattern", ["mixers.*", re.compile(r"mixers\.\d+")])
def test_name_patterns_select_modules(x, pattern):
    net = Net()
    with AttentionRecorder(net, attention_layers=[pattern], extractor=_probs_extractor) as recorder:
        net(x)
    assert recorder.registered_layers == ["mixers.0", "mixers.1", "mixers.2"]


def test_layers_are_reported_in_forward_order(x):
    net = Net(reverse=True)
    with AttentionRecorder(net, attention_layers=["mixers.*"], extractor=_probs_extractor) as recorder:
        net(x)
    assert recorder.registered_layers == ["mixers.0", "mixers.1", "mixers.2"]
    assert recorder.layers == ["mixers.2", "mixers.1", "mixers.0"]


def test_shared_module_contributes_one_layer_per_call(x):
    net = Net(share=True)
    with AttentionRecorder(net, attention_layers=["mixers.0"], extractor=_probs_extractor) as recorder:
        net(x)
    assert recorder.layers == ["mixers.0"] * 3
    assert not torch.equal(recorder.attentions[0], recorder.attentions[1])  # three different inputs


def test_recorder_keeps_the_last_complete_forward_pass(x):
    net = Net()
    with AttentionRecorder(net, attention_layers=["mixers.*"], extractor=_probs_extractor) as recorder:
        net(x)
        net(x[:1])
        assert recorder.attentions[0].shape[0] == 1
        recorder.reset()
        with pytest.raises(RuntimeError, match="no complete forward pass"):
            recorder.attentions
    # Still readable after the with-block.
    net(x)
    with pytest.raises(RuntimeError, match="no complete forward pass"):
        recorder.attentions


def test_attach_and_remove_without_with(x):
    net = Net()
    recorder = AttentionRecorder(net, attention_layers=["mixers.*"], extractor=_probs_extractor).attach()
    assert recorder.attached
    net(x)
    recorder.remove()
    assert not recorder.attached
    assert len(recorder.attentions) == 3
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())


def test_discovery_prefers_innermost_attention_classes():
    class SelfAttentionBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.MultiheadAttention(DIM, HEADS, batch_first=True)
            self.norm = nn.LayerNorm(DIM)

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList(SelfAttentionBlock() for _ in range(2))

    found = discover_attention_layers(Model())
    assert [layer.name for layer in found] == ["blocks.0.inner", "blocks.1.inner"]
    assert {layer.role for layer in found} == {"auto"}


def test_discovery_ignores_flatten_whose_name_contains_atten():
    model = nn.Sequential(nn.Flatten(0, 0), nn.MultiheadAttention(DIM, HEADS, batch_first=True), nn.Unflatten(0, (1, -1)))
    assert [layer.name for layer in discover_attention_layers(model)] == ["1"]


def test_head_fused_extractor_capture_gives_same_rollout(x):
    net = Net()
    with AttentionRecorder(net, attention_layers=["mixers.*"], extractor=_probs_extractor) as full:
        net(x)
    with AttentionRecorder(net, attention_layers=["mixers.*"], extractor=_probs_extractor, head_fusion="mean") as fused:
        net(x)
    assert fused.stack().shape == (2, 3, 1, N, N)
    torch.testing.assert_close(rollout(fused.attentions), rollout(full.attentions), atol=1e-6, rtol=0)


def test_custom_model_example_runs(capsys):
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    printed = capsys.readouterr().out
    assert "recorded layers: ['blocks.0.mixer', 'blocks.1.mixer', 'blocks.2.mixer', 'blocks.3.mixer']" in printed
    assert printed.count("[CLS] flow") == 4
