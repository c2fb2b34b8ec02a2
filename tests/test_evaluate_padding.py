"""Every evaluation method gives the same scores and metrics for any batch size and padding side,
on an encoder classifier (BERT) and on decoder classifiers that pool their last real token
(Llama, GPT-2) — value-norm and ALTI methods included: the gradient reference, ``saliency`` and ``ixg`` go through ``inputs_embeds``,
where transformers cannot see the padding and used to pool the last *padded* position
(issue 18 item 1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from captum_attnflow.evaluation import HFClassifier, evaluate

transformers = pytest.importorskip("transformers")

METHODS = "raw,rollout,flow,saliency,ixg,ig,occlusion,ablation,raw_alti,rollout_alti,flow_value_norm"
SETTINGS = dict(progress=False, resamples=20, flow_solver="scipy", protected=(-1,), position=-1)
VOCAB = 40
PAD, UNK, EOS = 0, 1, 2


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(kind: str):
    torch.manual_seed(0)
    common = dict(vocab_size=VOCAB, num_labels=3, pad_token_id=PAD)
    if kind == "bert":
        config = transformers.BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=32, max_position_embeddings=32, initializer_range=0.4,
                                         **common)
        model = transformers.BertForSequenceClassification(config)
    elif kind == "llama":
        config = transformers.LlamaConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                          num_key_value_heads=1, intermediate_size=32, max_position_embeddings=32,
                                          initializer_range=0.4, **common)
        model = transformers.LlamaForSequenceClassification(config)
    else:  # GPT-2 with pad == eos, as GPT-2 classifiers are usually set up; every example ends with eos
        config = transformers.GPT2Config(n_embd=16, n_layer=2, n_head=2, n_positions=32, initializer_range=0.4,
                                         **{**common, "pad_token_id": EOS})
        model = transformers.GPT2ForSequenceClassification(config)
    model.config._attn_implementation = "eager"
    return HFClassifier(model.eval(), blank_id=UNK)


def data(count: int = 5):
    rng = np.random.default_rng(3)
    return [rng.integers(3, VOCAB, rng.integers(2, 9)).tolist() + [EOS] for _ in range(count)]


def run(classifier, batch_size, side):
    options = {} if side == "right" else {"padding_side": side}  # right padding is the default
    return evaluate(classifier, data(), METHODS, batch_size=batch_size, **options, **SETTINGS).examples


@pytest.mark.parametrize("kind", ["bert", "llama", "gpt2"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_scores_do_not_depend_on_batch_size_or_padding_side(kind, side):
    classifier = tiny(kind)
    alone = run(classifier, 1, "right")
    passes = []  # the batch size of every model stage: a failing batch would be rerun example by example
    attentions = classifier.attentions
    classifier.attentions = lambda ids, mask: passes.append(len(ids)) or attentions(ids, mask)
    batched = run(classifier, 4, side)
    assert passes == [4, 1]
    assert [r["index"] for r in alone] == [r["index"] for r in batched] == list(range(5))
    for a, b in zip(alone, batched):
        assert a["target"] == b["target"] and a["prediction"] == b["prediction"]
        assert abs(a["probability"] - b["probability"]) < 1e-5
        for name in a["scores"]:
            np.testing.assert_allclose(np.array(b["scores"][name], float), np.array(a["scores"][name], float),
                                       atol=2e-5, rtol=1e-4, err_msg=f"{kind} {side}: {name} of example {a['index']}")
        for name in a["metrics"]:
            for metric, values in a["metrics"][name].items():
                np.testing.assert_allclose(np.array(b["metrics"][name][metric], float), np.array(values, float),
                                           atol=2e-5, err_msg=f"{kind} {side}: {name} {metric}")


def test_decoder_pools_the_last_real_token():
    """The classifier's probabilities equal the model's logits at the last token of the unpadded example
    (pad == eos here, so transformers' own input_ids path would skip the example's final eos)."""
    classifier = tiny("gpt2")
    example = torch.tensor([data()[0]])
    with torch.no_grad():  # one unpadded example through inputs_embeds: transformers pools its last position
        expected = classifier.model(inputs_embeds=classifier.embed(example)).logits.softmax(-1)
    width = example.shape[1] + 3
    for side in ("right", "left"):
        ids = torch.full((1, width), EOS)
        mask = torch.zeros((1, width), dtype=torch.long)
        live = slice(0, example.shape[1]) if side == "right" else slice(width - example.shape[1], width)
        ids[0, live], mask[0, live] = example[0], 1
        with torch.no_grad():
            for probabilities in (classifier.probabilities(ids, mask),
                                  classifier.probabilities_from_embeddings(classifier.embed(ids), mask)):
                torch.testing.assert_close(probabilities, expected, atol=1e-5, rtol=1e-5)
