"""LLMAttentionAttribution refuses bad input in one line (issue 18 items 10-11): ``skip_tokens`` as a
string, ``gen_args`` that change what ``generate`` returns, a model on the meta device, and a
tokenizer of another model that shares its special ids but not its vocabulary."""

from __future__ import annotations

import pytest
import torch

from captum_attnflow import AttentionRollout, LLMAttentionAttribution

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

WORDS = "<pad> <s> </s> [UNK] the cat sat on a mat dog ran to park and it was happy . she he saw her him".split()


def word_tokenizer(words=WORDS):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {w: i for i, w in enumerate(words)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                                pad_token="<pad>", unk_token="[UNK]")


def llama(vocab_size=len(WORDS), device=None):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=16, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    config._attn_implementation = "eager"
    with torch.device(device or "cpu"):
        return transformers.LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def attribution():
    return LLMAttentionAttribution(AttentionRollout(llama()), word_tokenizer())


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(target="it was", skip_tokens="the"), TypeError, r"skip_tokens must be a list .* not a str; for one token pass \['the'\]"),
    (dict(target="it was", skip_tokens=[1.5]), TypeError, "skip_tokens must hold token strings or integer token ids"),
    (dict(target="it was", skip_tokens=[10**6]), ValueError, "skip_tokens has token ids outside the model's vocabulary"),
    (dict(gen_args={"return_dict_in_generate": True, "max_new_tokens": 2}), ValueError,
     r"gen_args sets \['return_dict_in_generate'\]"),
    (dict(gen_args={"input_ids": torch.tensor([[1]])}), ValueError, r"gen_args sets \['input_ids'\]"),
])
def test_bad_arguments_are_one_line_errors(attribution, kwargs, error, message):
    with pytest.raises(error, match=message) as info:
        attribution.attribute("the cat sat", **kwargs)
    assert "\n" not in str(info.value)


def test_model_on_the_meta_device_is_refused():
    with pytest.raises(ValueError, match="weights on the meta device"):
        LLMAttentionAttribution(AttentionRollout(llama(device="meta")), word_tokenizer())


def test_tokenizer_of_another_model_is_refused(tmp_path):
    model = llama()
    model.save_pretrained(tmp_path)
    word_tokenizer().save_pretrained(tmp_path)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager")
    own = transformers.AutoTokenizer.from_pretrained(tmp_path)
    LLMAttentionAttribution(AttentionRollout(loaded), own)  # its own tokenizer, saved or built again
    LLMAttentionAttribution(AttentionRollout(loaded), word_tokenizer())
    # same size and the same <pad>/<s>/</s> ids, other words: "cat" would be read as "dog"
    other = word_tokenizer(WORDS[:4] + WORDS[4:][::-1])
    with pytest.raises(ValueError, match=r"vocabulary is not the one of the model loaded from .*id \d+ is "):
        LLMAttentionAttribution(AttentionRollout(loaded), other)
    smaller = word_tokenizer(WORDS[:-3])  # a smaller vocabulary with the same special ids
    with pytest.raises(ValueError, match="tokens against the model's 24"):
        LLMAttentionAttribution(AttentionRollout(loaded), smaller)


def test_a_much_smaller_tokenizer_is_refused_by_size():
    with pytest.raises(ValueError, match="tokenizer has 24 tokens but the model's input embedding has 2000 rows"):
        LLMAttentionAttribution(AttentionRollout(llama(vocab_size=2000)), word_tokenizer())
