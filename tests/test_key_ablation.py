"""LLMKeyAblation: leave-one-out ablation by key removal, positions kept.

On tiny random Llama (grouped-query attention) and GPT-2 models, eager and SDPA: the batched
scores equal a brute-force loop (one unbatched pass per removed token), the removal leaves every
other position's logits equal to a run whose attention column of that token is zeroed (and rows
renormalised), and the call shape and result follow Captum's LLMAttribution.
"""

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from captum.attr import LLMAttributionResult, TextTokenInput  # noqa: E402

from captum_attnflow import LLMKeyAblation  # noqa: E402
from captum_attnflow.attr.ablation import key_removal_mask, perturbed_log_probs  # noqa: E402
from tests.test_llm_attribution import PROMPT, TARGET, WORDS, word_tokenizer  # noqa: E402


def tiny_model(kind: str, attention: str):
    torch.manual_seed(0)
    if kind == "llama":
        config = transformers.LlamaConfig(
            vocab_size=len(WORDS), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=32, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        )
        model_class = transformers.LlamaForCausalLM
    else:
        config = transformers.GPT2Config(vocab_size=len(WORDS), n_embd=16, n_layer=2, n_head=4, n_positions=32,
                                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
        model_class = transformers.GPT2LMHeadModel
    config._attn_implementation = attention
    model = model_class(config).eval()
    for weight in model.parameters():  # larger weights: attention far from uniform
        if weight.dim() > 1:
            torch.nn.init.normal_(weight, std=0.4)
    return model


MODELS = [("llama", "eager"), ("llama", "sdpa"), ("gpt2", "eager"), ("gpt2", "sdpa")]


def ids_of(tokenizer, text, special=True):
    return torch.tensor(tokenizer.encode(text, add_special_tokens=special))


def brute_force(model, prompt_ids, target_ids):
    """``(T, P)``: for each prompt token alone, an unbatched pass with an explicitly built mask."""
    ids = torch.cat([prompt_ids, target_ids[:-1]])
    n, p = ids.shape[0], prompt_ids.shape[0]

    def log_probs(removed: int | None):
        mask = torch.full((n, n), torch.finfo(torch.float32).min)
        for i in range(n):
            for j in range(i + 1):
                if j != removed or j == i:
                    mask[i, j] = 0.0
        with torch.no_grad():
            logits = model(input_ids=ids[None], attention_mask=mask[None, None],
                           position_ids=torch.arange(n)[None]).logits[0]
        lp = torch.log_softmax(logits, -1)
        return torch.stack([lp[p - 1 + t, target_ids[t]] for t in range(target_ids.shape[0])])

    base = log_probs(None)
    return torch.stack([base - log_probs(j) for j in range(p)], dim=1)


@pytest.mark.parametrize("kind,attention", MODELS)
def test_scores_equal_a_brute_force_loop(kind, attention):
    model, tokenizer = tiny_model(kind, attention), word_tokenizer()
    result = LLMKeyAblation(model, tokenizer, batch_size=3).attribute(PROMPT, target=TARGET)
    expected = brute_force(model, ids_of(tokenizer, PROMPT), ids_of(tokenizer, TARGET, special=False))
    assert isinstance(result, LLMAttributionResult)
    assert result.token_attr.shape == (3, 8) and result.seq_attr.shape == (8,)
    torch.testing.assert_close(result.token_attr, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(result.seq_attr, expected.sum(0))
    assert result.token_attr.abs().max() > 1e-2  # removal does change the prediction


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_eager_and_sdpa_agree(kind):
    tokenizer = word_tokenizer()
    eager = LLMKeyAblation(tiny_model(kind, "eager"), tokenizer).attribute(PROMPT, target=TARGET)
    sdpa = LLMKeyAblation(tiny_model(kind, "sdpa"), tokenizer).attribute(PROMPT, target=TARGET)
    torch.testing.assert_close(eager.token_attr, sdpa.token_attr, rtol=1e-4, atol=1e-5)


def zeroed_column_attention(column: int):
    """An eager attention function whose softmax output has ``column`` zeroed, rows renormalised."""

    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        repeat = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(repeat, 1), value.repeat_interleave(repeat, 1)
        scaling = query.size(-1) ** -0.5 if scaling is None else scaling
        weights = torch.matmul(query, key.transpose(-1, -2)) * scaling
        if attention_mask is not None:
            weights = weights + attention_mask[..., : key.shape[-2]]
        weights = torch.softmax(weights, dim=-1)
        weights[..., column] = 0.0
        weights = weights / weights.sum(-1, keepdim=True).clamp_min(1e-30)
        return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights

    return attention


@pytest.mark.parametrize("kind,attention", MODELS)
def test_removal_equals_a_zeroed_attention_column(kind, attention, monkeypatch):
    model, tokenizer = tiny_model(kind, attention), word_tokenizer()
    ids = ids_of(tokenizer, PROMPT + " " + TARGET)
    n = ids.shape[0]
    module = transformers.models.llama.modeling_llama if kind == "llama" else transformers.models.gpt2.modeling_gpt2
    for column in (0, 3, n - 2):
        removed = torch.zeros(1, n, dtype=torch.bool)
        removed[0, column] = True
        ours = perturbed_log_probs(model, ids, removed, list(range(n)))[0]
        reference_model = tiny_model(kind, "eager")
        with monkeypatch.context() as patch:
            patch.setattr(module, "eager_attention_forward", zeroed_column_attention(column))
            with torch.no_grad():
                logits = reference_model(input_ids=ids[None]).logits[0]
        reference = torch.log_softmax(logits, -1)
        others = [i for i in range(n) if i != column]
        torch.testing.assert_close(ours[others], reference[others], rtol=1e-4, atol=1e-5)
        assert (ours[column + 1:] - perturbed_log_probs(model, ids, removed & False, list(range(n)))[0][column + 1:]).abs().max() > 1e-3


def test_mask_keeps_the_diagonal_and_causality():
    removed = torch.tensor([[False, True, False], [True, True, True]])
    mask = key_removal_mask(removed)
    allowed = mask[:, 0] == 0
    assert allowed[0].tolist() == [[True, False, False], [True, True, False], [True, False, True]]
    assert allowed[1].tolist() == [[True, False, False], [False, True, False], [False, False, True]]


def test_skip_tokens_generation_and_replacement():
    model, tokenizer = tiny_model("llama", "eager"), word_tokenizer()
    ablation = LLMKeyAblation(model, tokenizer)
    full = ablation.attribute(PROMPT, target=TARGET)
    skipped = ablation.attribute(PROMPT, target=TARGET, skip_tokens=["<s>"])
    torch.testing.assert_close(skipped.token_attr, full.token_attr[:, 1:])
    assert skipped.input_tokens == full.input_tokens[1:]
    generated = ablation.attribute(TextTokenInput(PROMPT, tokenizer), gen_args={"max_new_tokens": 2, "do_sample": False})
    assert generated.token_attr.shape == (2, 8)
    # replacing a token by a neutral id is an ordinary pass over the edited ids
    ids = ids_of(tokenizer, PROMPT)
    picked = torch.zeros(1, ids.shape[0], dtype=torch.bool)
    picked[0, 2] = True
    replaced = perturbed_log_probs(model, ids, picked, [ids.shape[0] - 1], perturbation="replace", neutral_id=3)
    edited = ids.clone()
    edited[2] = 3
    with torch.no_grad():
        expected = torch.log_softmax(model(input_ids=edited[None]).logits[0, -1], -1)
    torch.testing.assert_close(replaced[0, 0], expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="neutral_id"):
        perturbed_log_probs(model, ids, picked, [0], perturbation="replace")
    with pytest.raises(ValueError, match="batch_size"):
        LLMKeyAblation(model, tokenizer, batch_size=0)
