"""Contribution graphs (graph="value_norm", graph="alti") against a per-pair implementation.

The reference below is written independently of the package: loops over ``i``, ``j``, ``h`` with
explicit vectors, and the parts it needs (attention, value vectors, output projection, block
input) are read from each model by the test's own hooks and the module's own weights, on an
eager twin of the model (same weights). Every ALTI reference first checks that its terms add up
to the block's real output, ``Σ_j T_i(x_j) (+ biases) = attention output + residual`` (after the
post-norm LayerNorm for BERT and post-norm ``nn.TransformerEncoderLayer``). Tiny random configs,
float64.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

transformers = pytest.importorskip("transformers")

from captum_attnflow import (  # noqa: E402
    AttentionFlow,
    AttentionRecorder,
    AttentionRollout,
    ContributionGraph,
    LLMAttentionAttribution,
    RawAttention,
    alti_graph,
    attention_flow,
    rollout,
    value_norm_graph,
)
from captum_attnflow.graph import GRAPHS, check_graph, head_rollout, recorded_graph  # noqa: E402

B, N = 2, 6
TOL = dict(atol=1e-7, rtol=1e-5)  # float64; SDPA (explicit math) vs the eager twin differ by ~1e-9


# ---- the per-pair reference ------------------------------------------------------------------


def head_terms(alpha, v, W_O, i, j):
    """Σ_h α^h_ij W_O^h v^h_j, one head at a time."""
    H, dh = alpha.shape[0], v.shape[-1]
    total = torch.zeros(W_O.shape[0], dtype=torch.float64)
    for h in range(H):
        total = total + alpha[h, i, j] * (W_O[:, h * dh : (h + 1) * dh] @ v[h, j])
    return total


def rownormed(matrix, live):
    out = torch.zeros_like(matrix)
    for i in range(matrix.shape[0]):
        if live[i]:
            out[i] = matrix[i] / matrix[i].sum()
    return out


def reference_value_norm(p, b):
    """(n, n): ‖Σ_h α^h_ij W_O^h v^h_j‖₂ over live pairs, rows normalised."""
    alpha, v, W_O, live = p["alpha"][b], p["v"][b], p["W_O"], p["live"][b]
    n = alpha.shape[-1]
    w = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(n):
            if live[i] and live[j]:
                w[i, j] = torch.linalg.vector_norm(head_terms(alpha, v, W_O, i, j), 2)
    return rownormed(w, live)


@torch.no_grad()
def reference_alti(p, b):
    """(n, n) ALTI rows; asserts that the terms add up to the block's real output."""
    alpha, v, W_O, x, live = p["alpha"][b], p["v"][b], p["W_O"], p["x"][b], p["live"][b]
    n = alpha.shape[-1]
    c = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        if not live[i]:
            continue
        terms = [head_terms(alpha, v, W_O, i, j) + (x[i] if i == j else 0) if live[j] else torch.zeros_like(x[i])
                 for j in range(n)]
        bias = p["b_O"] if p["b_O"] is not None else torch.zeros_like(x[i])
        if p["ln"] is not None:  # post-norm: split the LayerNorm over the terms, variance of the real sum
            ln = p["ln"]
            z = sum(terms) + bias
            sigma = torch.sqrt(z.var(unbiased=False) + ln.eps)
            terms = [ln.weight * (t - t.mean()) / sigma for t in terms]
            bias = ln.weight * (bias - bias.mean()) / sigma + ln.bias
        torch.testing.assert_close(sum(terms) + bias, p["block"][b, i], atol=1e-9, rtol=1e-9)
        y = sum(terms)
        for j in range(n):
            c[i, j] = max(0.0, float(torch.linalg.vector_norm(y, 1) - torch.linalg.vector_norm(y - terms[j], 1)))
    return rownormed(c, live)


def reference(graph, parts):
    """(batch, L, n, n) of the reference graph."""
    fn = reference_value_norm if graph == "value_norm" else reference_alti
    return torch.stack([torch.stack([fn(p, b) for p in parts]) for b in range(B)])


# ---- the parts, read by the test's own hooks on an eager twin ---------------------------------


def split_heads(t, heads):
    b, n, _ = t.shape
    return t.view(b, n, heads, -1).transpose(1, 2)


def run_with_hooks(model, hooks, call):
    handles = [module.register_forward_pre_hook(fn, with_kwargs=True) if pre else module.register_forward_hook(fn)
               for module, fn, pre in hooks]
    try:
        with torch.no_grad():
            return call()
    finally:
        for h in handles:
            h.remove()


def grab(store, key, index=None):
    def pre(module, args, kwargs):
        store[key] = (args[0] if args else next(iter(kwargs.values()))).detach()

    def post(module, args, output):
        store[key] = (output[0] if isinstance(output, tuple) else output).detach()

    return pre if index is None else post


def hf_parts(model, ids, mask):
    """Per layer: alpha, v, W_O, b_O, x, ln, block (the block's real output), live — for Llama,
    Qwen2, GPT-2 and BERT (eager twin, own hooks, module weights)."""
    eager = copy.deepcopy(model)
    eager.config._attn_implementation = "eager"
    cfg, store, hooks = eager.config, {}, []
    kind = type(eager).__name__
    layers = eager.h if kind == "GPT2Model" else eager.encoder.layer if kind == "BertModel" else eager.layers
    for l, layer in enumerate(layers):
        if kind == "BertModel":
            hooks += [(layer.attention.self, grab(store, ("x", l)), True), (layer.attention.output, grab(store, ("block", l), 0), False)]
        else:
            attn = layer.attn if kind == "GPT2Model" else layer.self_attn
            hooks += [(layer, grab(store, ("x", l)), True), (attn, grab(store, ("out", l), 0), False)]
    out = run_with_hooks(eager, hooks, lambda: eager(ids, attention_mask=mask, output_attentions=True))
    H = cfg.num_attention_heads
    parts = []
    for l, layer in enumerate(layers):
        x = store[("x", l)]
        with torch.no_grad():
            if kind == "BertModel":
                v, proj, ln = split_heads(layer.attention.self.value(x), H), layer.attention.output.dense, layer.attention.output.LayerNorm
                W_O, b_O, block = proj.weight, proj.bias, store[("block", l)]
            elif kind == "GPT2Model":
                v = split_heads(layer.attn.c_attn(layer.ln_1(x)).split(cfg.hidden_size, dim=2)[2], H)
                W_O, b_O, ln, block = layer.attn.c_proj.weight.t(), layer.attn.c_proj.bias, None, x + store[("out", l)]
            else:  # Llama / Qwen2, grouped-query: query head h reads key/value head h // (H / KV)
                kv = split_heads(layer.self_attn.v_proj(layer.input_layernorm(x)), cfg.num_key_value_heads)
                v = kv.repeat_interleave(H // cfg.num_key_value_heads, dim=1)
                W_O, b_O, ln, block = layer.self_attn.o_proj.weight, layer.self_attn.o_proj.bias, None, x + store[("out", l)]
        parts.append(dict(alpha=out.attentions[l], v=v, W_O=W_O.detach(), b_O=None if b_O is None else b_O.detach(),
                          x=x, ln=ln, block=block, live=mask.bool()))
    return parts


def tiny(kind, implementation, **extra):
    torch.manual_seed(0)
    common = dict(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4)
    if kind == "llama":
        model = transformers.LlamaModel(transformers.LlamaConfig(**common, num_key_value_heads=2, **extra))
    elif kind == "qwen2":
        model = transformers.Qwen2Model(transformers.Qwen2Config(**common, num_key_value_heads=2))
    elif kind == "gpt2":
        model = transformers.GPT2Model(transformers.GPT2Config(vocab_size=40, n_embd=16, n_layer=2, n_head=4))
    else:
        model = transformers.BertModel(transformers.BertConfig(**common))
    model.config._attn_implementation = implementation
    return model.double().eval()


def inputs(causal):
    torch.manual_seed(1)
    ids = torch.randint(3, 40, (B, N))
    mask = torch.ones(B, N, dtype=torch.long)
    mask[1, -2:] = 0  # right padding (left padding makes eager float64 Llama NaN in transformers itself)
    return ids, mask


MODELS = [("llama", "eager"), ("llama", "sdpa"), ("qwen2", "sdpa"), ("gpt2", "eager"), ("gpt2", "sdpa"),
          ("bert", "eager"), ("bert", "sdpa")]


# ---- Hugging Face models ------------------------------------------------------------------------


@pytest.mark.parametrize("kind, implementation", MODELS)
def test_hf_graphs_match_per_pair_reference(kind, implementation):
    model = tiny(kind, implementation)
    ids, mask = inputs(causal=kind != "bert")
    parts = hf_parts(model, ids, mask)
    with AttentionRecorder(model, contributions=True) as recorder, torch.no_grad():
        model(ids, attention_mask=mask)
    for terms, p in zip(recorder.terms, parts):
        live = p["live"]  # padded tokens may hold NaN in the model itself: compare real tokens
        torch.testing.assert_close(terms.values.transpose(1, 2)[live], p["v"].transpose(1, 2)[live])
        torch.testing.assert_close(terms.out_weight, p["W_O"])
        torch.testing.assert_close(terms.residual[live], p["x"][live])
        assert (terms.post_norm is not None) == (kind == "bert")
    for graph in ("value_norm", "alti"):
        result = recorded_graph(graph, recorder.attentions, recorder.terms, mask=recorder.mask)
        expected = reference(graph, parts)
        torch.testing.assert_close(result.matrices, expected, **TOL)
        assert result.residual_included == (graph == "alti")


def test_invariants_rows_padding_causal():
    for kind, causal in (("llama", True), ("gpt2", True), ("bert", False)):
        model = tiny(kind, "sdpa")
        ids, mask = inputs(causal)
        for graph in ("value_norm", "alti"):
            for method in (RawAttention, AttentionRollout):
                scores = method(model).attribute(ids, additional_forward_args={"attention_mask": mask}, graph=graph,
                                                 layer="all", position="all")  # (batch, L, n, n)
                live = mask.bool()
                sums = scores.sum(-1)[live[:, None].expand(-1, scores.shape[1], -1)]
                torch.testing.assert_close(sums, torch.ones_like(sums))
                assert (scores[1][..., ~live[1]] == 0).all() and (scores[1][:, ~live[1]] == 0).all()
                if causal:
                    assert (scores.triu(1) == 0).all()


def test_classes_equal_functional_pipeline_on_reference():
    model = tiny("llama", "eager")
    ids, mask = inputs(causal=True)
    parts = hf_parts(model, ids, mask)
    forward = {"attention_mask": mask}
    for graph in ("value_norm", "alti"):
        expected = reference(graph, parts)
        # rollout of the reference graph by hand: Â = ½M + ½I (value-norm) or M (ALTI, residual inside)
        live = mask.bool().double()
        augmented = expected if graph == "alti" else 0.5 * expected + 0.5 * torch.diag_embed(live)[:, None]
        chain = [augmented[:, 0]]
        for l in range(1, augmented.shape[1]):
            chain.append(augmented[:, l] @ chain[-1])
        by_hand = torch.stack(chain, dim=1)
        got = AttentionRollout(model).attribute(ids, additional_forward_args=forward, graph=graph, layer="all", position="all")
        torch.testing.assert_close(got, by_hand, **TOL)
        graph_in = ContributionGraph(expected, graph == "alti", graph)
        torch.testing.assert_close(rollout(graph_in, mask=mask), by_hand, **TOL)
        torch.testing.assert_close(RawAttention(model).attribute(ids, additional_forward_args=forward, graph=graph, layer="all",
                                                                 position="all"), expected, **TOL)
        flow = AttentionFlow(model, flow_solver="networkx").attribute(ids, additional_forward_args=forward, graph=graph)
        reference_flow = attention_flow(graph_in, mask=mask, flow_solver="networkx", layers=-1)[:, -1]
        torch.testing.assert_close(flow, reference_flow[[0, 1], [N - 1, N - 3]], **TOL)


def test_functional_api_on_tensors_and_norm_weighted_residual():
    model = tiny("gpt2", "eager")
    ids, mask = inputs(causal=True)
    parts = hf_parts(model, ids, mask)
    args = ([p["alpha"] for p in parts], [p["v"] for p in parts], [p["W_O"] for p in parts])
    torch.testing.assert_close(value_norm_graph(*args, mask=mask).matrices, reference("value_norm", parts), **TOL)
    alti = alti_graph(*args, [p["x"] for p in parts], out_bias=[p["b_O"] for p in parts], mask=mask)
    torch.testing.assert_close(alti.matrices, reference("alti", parts), **TOL)
    # Kobayashi 2021-style residual: the diagonal is ‖Σ_h f^h_ii + x_i‖₂
    weighted = value_norm_graph(*args, mask=mask, residuals=[p["x"] for p in parts])
    assert weighted.residual_included
    p, b, i = parts[1], 0, 3
    row = torch.stack([torch.linalg.vector_norm(head_terms(p["alpha"][b], p["v"][b], p["W_O"], i, j) + (p["x"][b, i] if i == j else 0))
                       for j in range(N)])
    torch.testing.assert_close(weighted.matrices[b, 1, i], row / row.sum())


# ---- nn.MultiheadAttention, custom modules ----------------------------------------------------


@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_encoder_matches_reference(norm_first):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True, norm_first=norm_first)
    encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).double().eval()
    x0 = torch.randn(B, N, 16, dtype=torch.float64)
    padding = torch.zeros(B, N, dtype=torch.bool)
    padding[1, -2:] = True
    store, hooks = {}, []
    for l, block in enumerate(encoder.layers):
        hooks.append((block, grab(store, ("x", l)), True))
        hooks.append((block.norm1 if not norm_first else block.self_attn, grab(store, ("block", l), 0), False))
    run_with_hooks(encoder, hooks, lambda: encoder(x0, src_key_padding_mask=padding))
    parts = []
    for l, block in enumerate(encoder.layers):
        x, mha = store[("x", l)], block.self_attn
        inp = block.norm1(x) if norm_first else x
        with torch.no_grad():
            alpha = mha(inp, inp, inp, key_padding_mask=padding, need_weights=True, average_attn_weights=False)[1]
            v = split_heads(F.linear(inp, mha.in_proj_weight[32:], mha.in_proj_bias[32:]), 4)
        out = store[("block", l)] if not norm_first else x + store[("block", l)]
        parts.append(dict(alpha=alpha, v=v, W_O=mha.out_proj.weight.detach(), b_O=mha.out_proj.bias.detach(), x=x,
                          ln=None if norm_first else block.norm1, block=out, live=~padding))
    with AttentionRecorder(encoder, contributions=True) as recorder, torch.no_grad():
        encoder(x0, src_key_padding_mask=padding)
    for graph in ("value_norm", "alti"):
        result = recorded_graph(graph, recorder.attentions, recorder.terms, mask=recorder.mask)
        torch.testing.assert_close(result.matrices, reference(graph, parts), **TOL)


class HandAttention(nn.Module):
    """Attention by einsum (no SDPA, no matmul of the weights): the recorder cannot find its values."""

    def __init__(self, d=16, heads=4):
        super().__init__()
        self.heads, self.qkv, self.mix = heads, nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, h):
        q, k, v = (split_heads(t, self.heads) for t in self.qkv(h).chunk(3, dim=-1))
        weights = torch.softmax(torch.einsum("bhid,bhjd->bhij", q, k) / 2.0, dim=-1)
        self.last = (weights, v)
        context = torch.einsum("bhij,bhjd->bhid", weights, v).transpose(1, 2).reshape(h.shape)
        return self.mix(context), weights


class HandBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm, self.attn = nn.LayerNorm(16), HandAttention()

    def forward(self, x):
        self.attn.block_input = x
        return x + self.attn(self.norm(x))[0]


class HandNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([HandBlock(), HandBlock()])

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


def full_extractor(module, args, kwargs, output):
    weights, values = module.last
    return {"weights": weights, "values": values, "out_proj": module.mix.weight, "out_bias": module.mix.bias,
            "residual": module.block_input}


def test_custom_module_through_extractor():
    torch.manual_seed(0)
    net = HandNet().double().eval()
    x0 = torch.randn(B, N, 16, dtype=torch.float64)
    parts = []
    with torch.no_grad():
        x = x0
        for block in net.blocks:
            attention_out, alpha = block.attn(block.norm(x))
            parts.append(dict(alpha=alpha, v=block.attn.last[1], W_O=block.attn.mix.weight, b_O=block.attn.mix.bias, x=x,
                              ln=None, block=x + attention_out, live=torch.ones(B, N, dtype=torch.bool)))
            x = block(x)
    layers = [block.attn for block in net.blocks]
    for graph in ("value_norm", "alti"):
        got = RawAttention(net, attention_layers=layers, extractor=full_extractor).attribute(
            x0, graph=graph, layer="all", position="all")
        torch.testing.assert_close(got, reference(graph, parts), **TOL)


# ---- errors -----------------------------------------------------------------------------------


def test_unknown_graph_names_the_choices():
    model = tiny("llama", "eager")
    ids, _ = inputs(causal=True)
    assert GRAPHS == ("attention", "value_norm", "alti")
    for call in (lambda: check_graph("norm"), lambda: RawAttention(model).attribute(ids, graph="norm"),
                 lambda: AttentionFlow(model).attribute(ids, graph="ALTI")):
        with pytest.raises(ValueError, match=r"unknown graph .*'attention', 'value_norm', 'alti'"):
            call()


def test_graph_options_that_do_not_apply():
    model = tiny("llama", "eager")
    ids, mask = inputs(causal=True)
    with pytest.raises(ValueError, match="head=1 .*attention graph"):
        AttentionRollout(model).attribute(ids, graph="alti", head=1)
    with pytest.raises(ValueError, match="head_fusion='max'.*sums the heads"):
        RawAttention(model).attribute(ids, graph="value_norm", head_fusion="max")
    graph = ContributionGraph(torch.eye(N).expand(1, 2, N, N), False, "value_norm")
    with pytest.raises(ValueError, match="head_fusion='min'"):
        rollout(graph, head_fusion="min")
    with pytest.raises(ValueError, match="appendix A.1"):
        head_rollout(graph, layer=1)
    with pytest.raises(ValueError, match="non-negative"):
        rollout(ContributionGraph(-torch.eye(N).expand(1, 2, N, N), False))


def test_values_not_found_names_module_and_extractor():
    net = HandNet().double().eval()
    layers = [block.attn for block in net.blocks]
    x0 = torch.randn(1, N, 16, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"'blocks.0.attn' \(HandAttention\): the value vectors .* extractor=fn"):
        RawAttention(net, attention_layers=layers).attribute(x0, graph="value_norm")
    assert RawAttention(net, attention_layers=layers).attribute(x0).shape == (1, N)  # the attention graph needs none

    def no_projection(module, args, kwargs, output):
        return {"weights": module.last[0], "values": module.last[1]}

    with pytest.raises(ValueError, match=r"'blocks.0.attn' \(HandAttention\): its output projection was not found"):
        RawAttention(net, attention_layers=layers, extractor=no_projection).attribute(x0, graph="value_norm")


def test_alti_without_block_input_names_module():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=True).double().eval()
    model = nn.Sequential()
    model.add_module("mha", mha)
    forward = lambda x: mha(x, x, x)[0]  # noqa: E731
    x0 = torch.randn(1, N, 16, dtype=torch.float64)
    method = RawAttention(forward, attention_layers=[mha])
    with pytest.raises(ValueError, match=r"graph='alti' needs each block's input .*MultiheadAttention.*'residual'"):
        method.attribute(x0, graph="alti")
    with torch.no_grad():
        alpha = mha(x0, x0, x0, average_attn_weights=False)[1]
        v = split_heads(F.linear(x0, mha.in_proj_weight[32:], mha.in_proj_bias[32:]), 4)
    part = dict(alpha=alpha, v=v, W_O=mha.out_proj.weight.detach(), live=torch.ones(1, N, dtype=torch.bool))
    got = method.attribute(x0, graph="value_norm", position="all")
    torch.testing.assert_close(got[0], reference_value_norm(part, 0), **TOL)


# ---- LLMAttentionAttribution -----------------------------------------------------------------


def test_llm_attribution_rows_equal_prefix_runs():
    tokenizers = pytest.importorskip("tokenizers")
    words = "<pad> <s> </s> [UNK] the cat sat on a mat and it was happy".split()
    vocab = {w: i for i, w in enumerate(words)}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    backend.post_processor = tokenizers.processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                                     pad_token="<pad>", unk_token="[UNK]")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=len(words), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, bos_token_id=1, eos_token_id=2,
                                      pad_token_id=0)
    config._attn_implementation = "sdpa"
    model = transformers.LlamaForCausalLM(config).eval()
    prompt, target = "the cat sat on a mat and", "it was happy"
    prompt_ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    target_ids = tokenizer.encode(target, add_special_tokens=False)
    for graph in ("value_norm", "alti"):
        method = AttentionRollout(model)
        result = LLMAttentionAttribution(method, tokenizer).attribute(prompt, target=target, graph=graph)
        for t in range(len(target_ids)):
            ids = torch.cat([prompt_ids, torch.tensor(target_ids[:t], dtype=torch.long)[None]], dim=1)
            row = method.attribute(ids, position=-1, graph=graph)[0, : prompt_ids.shape[1]]
            torch.testing.assert_close(result.token_attr[t], row, atol=1e-6, rtol=1e-5)
