"""Fused ``F.scaled_dot_product_attention``: the weight reconstruction and timm-style modules."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from captum_attnflow import rollout
from captum_attnflow.capture import AttentionRecorder, sdpa_attention_weights, sdpa_with_weights

B, H, L, S, E = 2, 4, 5, 6, 8


def _brute_force_weights(query, key, mask=None, is_causal=False, scale=None, gqa=False):
    """One row at a time in float64 numpy: exp(score - max) over the allowed keys."""
    q, k = query.double().numpy(), key.double().numpy()
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    group = q.shape[1] // k.shape[1] if gqa else 1
    bias = np.zeros((q.shape[0], q.shape[1], q.shape[2], k.shape[2]))
    if mask is not None:
        m = torch.broadcast_to(mask, bias.shape).double().numpy() if mask.dtype != torch.bool else None
        bias = np.where(torch.broadcast_to(mask, bias.shape).numpy(), 0.0, -np.inf) if m is None else bias + m
    out = np.zeros(bias.shape)
    for b, h, i in np.ndindex(*bias.shape[:3]):
        allowed = [j for j in range(k.shape[2]) if not (is_causal and j > i) and bias[b, h, i, j] > -np.inf]
        if not allowed:
            continue
        scores = np.array([q[b, h, i] @ k[b, h // group, j] * scale + bias[b, h, i, j] for j in allowed])
        weights = np.exp(scores - scores.max())
        out[b, h, i, allowed] = weights / weights.sum()
    return torch.from_numpy(out).float()


def _qkv(key_heads=H, source=S):
    generator = torch.Generator().manual_seed(0)
    return (
        torch.randn(B, H, L, E, generator=generator),
        torch.randn(B, key_heads, source, E, generator=generator),
        torch.randn(B, key_heads, source, E, generator=generator),
    )


def _bool_mask():
    mask = torch.rand(B, 1, L, S, generator=torch.Generator().manual_seed(3)) > 0.3
    mask[..., 0] = True
    return mask


CASES = {
    "plain": lambda: {},
    "causal": lambda: {"is_causal": True},
    "scale": lambda: {"scale": 0.3},
    "bool-mask": lambda: {"attn_mask": _bool_mask()},
    "float-mask": lambda: {"attn_mask": torch.randn(L, S, generator=torch.Generator().manual_seed(4))},
    "gqa": lambda: {"enable_gqa": True},
}


@pytest.mark.parametrize("case", list(CASES))
def test_sdpa_weights_match_brute_force_and_output_matches_sdpa(case):
    kwargs = CASES[case]()
    query, key, value = _qkv(key_heads=H // 2 if case == "gqa" else H, source=L if case == "causal" else S)
    output, weights = sdpa_with_weights(query, key, value, **kwargs)
    expected = _brute_force_weights(
        query, key, kwargs.get("attn_mask"), kwargs.get("is_causal", False), kwargs.get("scale"), case == "gqa"
    )
    torch.testing.assert_close(weights, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(output, F.scaled_dot_product_attention(query, key, value, **kwargs), atol=1e-5, rtol=0)


def test_fully_masked_rows_get_zero_weights_not_nan():
    query, key, _ = _qkv()
    mask = torch.ones(L, S, dtype=torch.bool)
    mask[2] = False
    weights = sdpa_attention_weights(query, key, attn_mask=mask)
    assert torch.all(weights[:, :, 2] == 0)
    torch.testing.assert_close(weights[:, :, 3].sum(-1), torch.ones(B, H))


class TimmLikeAttention(nn.Module):
    """timm's ``Attention``: fused SDPA by default, the explicit math when ``fused_attn=False``."""

    def __init__(self, dim, num_heads, fused_attn=True, causal=False):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.fused_attn, self.causal = fused_attn, causal
        self.eager_weights = None

    def forward(self, x, attn_mask=None):
        batch, n, dim = x.shape
        qkv = self.qkv(x).reshape(batch, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=self.causal, scale=self.scale)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            if self.causal:
                attn = attn.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
            if attn_mask is not None and attn_mask.dtype == torch.bool:
                attn = attn.masked_fill(~attn_mask, float("-inf"))
            elif attn_mask is not None:
                attn = attn + attn_mask
            attn = attn.softmax(dim=-1)
            self.eager_weights = attn
            x = attn @ v
        return self.proj(x.transpose(1, 2).reshape(batch, n, dim))


class Block(nn.Module):
    def __init__(self, dim, num_heads, **kwargs):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = TimmLikeAttention(dim, num_heads, **kwargs)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x, attn_mask=None):
        x = x + self.attn(self.norm1(x), attn_mask=attn_mask)
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """Patch embedding, class token, timm-style blocks."""

    def __init__(self, dim=16, depth=3, num_heads=4, **kwargs):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, kernel_size=4, stride=4)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.blocks = nn.ModuleList(Block(dim, num_heads, **kwargs) for _ in range(depth))
        self.head = nn.Linear(dim, 3)

    def forward(self, pixels, attn_mask=None):
        x = self.patch_embed(pixels).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        for block in self.blocks:
            x = block(x, attn_mask=attn_mask)
        return self.head(x[:, 0])

    def set_fused(self, fused):
        for block in self.blocks:
            block.attn.fused_attn = fused


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("mask_kind", [None, "bool", "float"])
def test_timm_style_fused_attention_equals_eager_math(causal, mask_kind):
    torch.manual_seed(0)
    model = TinyViT(causal=causal).eval()
    pixels = torch.randn(2, 3, 8, 8)  # 4 patches + class token
    n = 5
    attn_mask = None
    if mask_kind == "bool":
        attn_mask = torch.rand(2, 1, n, n, generator=torch.Generator().manual_seed(1)) > 0.4
        attn_mask[..., 0] = True
    elif mask_kind == "float":
        attn_mask = torch.randn(n, n, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model.set_fused(False)
        eager_logits = model(pixels, attn_mask=attn_mask)
        eager = [block.attn.eager_weights for block in model.blocks]
        model.set_fused(True)
        fused_logits = model(pixels, attn_mask=attn_mask)
        with AttentionRecorder(model) as recorder:
            recorded_logits = model(pixels, attn_mask=attn_mask)
    assert recorder.registered_layers == recorder.layers == [f"blocks.{i}.attn" for i in range(3)]
    torch.testing.assert_close(recorded_logits, fused_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(recorded_logits, eager_logits, atol=1e-5, rtol=0)
    for recorded, expected in zip(recorder.attentions, eager):
        assert recorded.shape == (2, 4, n, n)
        torch.testing.assert_close(recorded, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(rollout(recorder.attentions), rollout(eager), atol=1e-6, rtol=0)


def test_interception_is_limited_to_recorded_modules():
    torch.manual_seed(0)
    model = TinyViT().eval()
    seen = []

    class Spy(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is F.scaled_dot_product_attention:
                seen.append(func)
            return func(*args, **(kwargs or {}))

    pixels = torch.randn(1, 3, 8, 8)
    with torch.no_grad(), Spy():
        with AttentionRecorder(model):
            model(pixels)
        assert seen == []  # the recorder's mode sits on top and consumes every call in a block
        model(pixels)
    assert len(seen) == 3  # after removal SDPA reaches the outer mode again
    assert not torch.overrides._is_torch_function_mode_enabled()


def test_keep_graph_gradient_through_intercepted_sdpa_equals_eager_gradient():
    torch.manual_seed(0)
    model = TinyViT(causal=True).eval()
    pixels = torch.randn(2, 3, 8, 8)
    model.set_fused(False)  # eager math: the weights are ordinary graph tensors...
    logits = model(pixels)
    eager = [block.attn.eager_weights for block in model.blocks]
    for weights in eager:
        weights.retain_grad()
    logits[:, 1].sum().backward()
    model.set_fused(True)
    with AttentionRecorder(model, keep_graph=True) as recorder:
        fused_logits = model(pixels)
    fused_logits[:, 1].sum().backward()  # ...and the fused ones get the same gradient
    for recorded, expected in zip(recorder.attentions, eager):
        torch.testing.assert_close(recorded.grad, expected.grad, atol=1e-6, rtol=0)
    assert recorder.attentions[-1].grad.abs().sum() > 0
