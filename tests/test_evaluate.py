"""Dataset-scale evaluation: metrics against independent computations, batching, executors
(in-process, process pool, Dask LocalCluster), streaming, resumption and bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context

import numpy as np
import pytest
import torch
from captum.attr import Saliency
from scipy import stats

from captum_attnflow import ContributionGraph, attention_flow, raw_attention, rollout
from captum_attnflow.evaluation import CaptumMethod, Classifier, HFClassifier, ResultTable, SerialExecutor, evaluate, read_examples
from captum_attnflow.evaluation.data import as_example, fit_length, iterate_examples, pad_batch
from captum_attnflow.evaluation.faithfulness import (
    aopc, bootstrap_interval, check_fractions, perturbed_inputs, top_k_counts,
)
from captum_attnflow.evaluation.methods import flow_task, resolve_methods
from captum_attnflow.evaluation.results import ResultStore

transformers = pytest.importorskip("transformers")

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(35)]
PAD, UNK, CLS, SEP = 0, 1, 2, 3
SETTINGS = dict(protected=(0, -1), progress=False, resamples=200, flow_solver="scipy")


def tiny_bert(seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=16, attn_implementation="eager", unk_token_id=UNK, pad_token_id=PAD,
        initializer_range=0.4,
    )
    return transformers.BertForSequenceClassification(config).eval()


def factory_classifier() -> HFClassifier:
    """A picklable model factory: each worker builds the same tiny BERT once."""
    return HFClassifier(tiny_bert())


def make_data(count: int, seed: int = 1, lengths=(2, 10)):
    rng = np.random.default_rng(seed)
    return [
        {"input_ids": [CLS] + rng.integers(5, len(VOCAB), rng.integers(*lengths)).tolist() + [SEP], "label": i % 2}
        for i in range(count)
    ]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Two torch threads on a shared 2-core machine are many times slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def classifier():
    return HFClassifier(tiny_bert())


@pytest.fixture(scope="module")
def serial(classifier):
    """The reference: a serial, one-batch-at-a-time run with every kind of method."""
    return evaluate(classifier, make_data(10), "raw,rollout,flow,ig,occlusion", batch_size=4, **SETTINGS)


def assert_same_records(a, b):
    """Same examples, scores and metrics (to float rounding of the model's own passes)."""
    assert [r["index"] for r in a] == [r["index"] for r in b]
    for x, y in zip(a, b):
        assert x["tokens"] == y["tokens"] and x["target"] == y["target"]
        for name in x["scores"]:
            np.testing.assert_allclose(np.array(x["scores"][name], float), np.array(y["scores"][name], float), atol=1e-5)
        for name in x["metrics"]:
            for metric, values in x["metrics"][name].items():
                np.testing.assert_allclose(np.array(values, float), np.array(y["metrics"][name][metric], float), atol=1e-5)


# ---------------------------------------------------------------------------------------------
# AOPC and bootstrap: pure functions
# ---------------------------------------------------------------------------------------------


def test_top_k_counts_round_up_and_stay_in_range():
    assert top_k_counts(10, (0.1, 0.25, 0.5, 1.0)) == [1, 3, 5, 10]
    assert top_k_counts(3, (0.1, 0.34)) == [1, 2]
    assert top_k_counts(0, (0.5,)) == [0]


@pytest.mark.parametrize("deletion", ["blank", "remove"])
def test_perturbed_inputs_match_brute_force(deletion):
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 40, 9).tolist()
    scores = rng.integers(0, 4, 9).astype(float)  # many ties: earlier position wins
    candidates = np.ones(9, bool)
    candidates[[0, 8]] = False
    fractions = (0.1, 0.3, 0.5, 1.0)
    deleted, kept = perturbed_inputs(ids, scores, candidates, fractions, blank_id=UNK, deletion=deletion)
    order = sorted(range(1, 8), key=lambda j: (-scores[j], j))
    for f, d, k in zip(fractions, deleted, kept):
        top = set(order[: max(1, int(np.ceil(f * 7 - 1e-9)))])
        drop_d = top
        drop_k = set(range(1, 8)) - top
        for drop, got in ((drop_d, d), (drop_k, k)):
            if deletion == "blank":
                assert got == [UNK if j in drop else t for j, t in enumerate(ids)]
            else:
                assert got == [t for j, t in enumerate(ids) if j not in drop]


def test_perturbed_inputs_reject_nan_and_bad_shapes():
    with pytest.raises(ValueError, match="NaN"):
        perturbed_inputs([5, 6, 7], np.array([0.1, np.nan, 0.2]), np.ones(3, bool), (0.5,), blank_id=UNK)
    with pytest.raises(ValueError, match="one entry per token"):
        perturbed_inputs([5, 6, 7], np.zeros(2), np.ones(3, bool), (0.5,), blank_id=UNK)
    with pytest.raises(ValueError, match="deletion"):
        perturbed_inputs([5, 6], np.zeros(2), np.ones(2, bool), (0.5,), blank_id=UNK, deletion="mask")
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        check_fractions([0.0, 0.5])


def test_aopc_is_mean_drop():
    assert aopc(0.9, [0.5, 0.7]) == pytest.approx(0.3)
    assert np.isnan(aopc(0.9, []))


def test_bootstrap_interval_agrees_with_scipy():
    values = np.random.default_rng(3).normal(0.4, 0.3, 150)
    low, high = bootstrap_interval(values, resamples=4000, seed=1)
    reference = stats.bootstrap((values,), np.mean, method="percentile", n_resamples=4000, random_state=2).confidence_interval
    assert low == pytest.approx(reference.low, abs=0.015) and high == pytest.approx(reference.high, abs=0.015)
    assert low < values.mean() < high
    assert bootstrap_interval(np.append(values, np.nan), resamples=4000, seed=1) == (low, high)
    assert bootstrap_interval([0.25]) == (0.25, 0.25)
    assert all(np.isnan(bootstrap_interval([np.nan])))
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_interval(values, confidence=95)


# ---------------------------------------------------------------------------------------------
# Examples and data sources
# ---------------------------------------------------------------------------------------------


def test_example_forms_and_dataloader_agree():
    data = make_data(5)
    listed = list(iterate_examples(data))
    pairs = list(iterate_examples([(d["input_ids"], d["label"]) for d in data]))
    assert listed == pairs

    def collate(items):
        ids, mask = pad_batch([i["input_ids"] for i in items], PAD)
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([i["label"] for i in items])}

    loader = torch.utils.data.DataLoader(data, batch_size=2, collate_fn=collate)
    assert list(iterate_examples(loader)) == listed


def test_bad_example_forms_are_named():
    with pytest.raises(TypeError, match="tokenize"):
        as_example("a sentence", 3)
    with pytest.raises(ValueError, match="input_ids"):
        as_example({"ids": [1, 2]}, 0)
    with pytest.raises(TypeError, match="data must be an iterable"):
        list(iterate_examples(torch.zeros(2, 3, dtype=torch.long)))


def test_fit_length_truncates_with_warning_or_errors():
    example = as_example(list(range(5, 25)), 7)
    with pytest.warns(UserWarning, match="example 7 has 20 tokens.*truncated"):
        cut, truncated = fit_length(example, 16, "warn")
    assert truncated and cut.input_ids == example.input_ids[:16]
    with pytest.raises(ValueError, match="truncation='warn'"):
        fit_length(example, 16, "error")
    with pytest.raises(ValueError, match="empty"):
        fit_length(as_example([], 2), 16, "warn")


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown method 'attn'; valid methods: raw, rollout, flow"):
        resolve_methods("raw,attn")
    with pytest.raises(ValueError, match="more than once"):
        resolve_methods(["raw", "raw"])
    with pytest.raises(TypeError, match="Attribution class"):
        CaptumMethod("x", torch.nn.Linear)
    with pytest.raises(ValueError, match=r"unknown reduction 'max'; choose one of \('abs_sum', 'l2', 'sum'\)"):
        CaptumMethod("x", Saliency, reduction="max")


def test_unknown_settings_list_the_valid_ones(classifier):
    with pytest.raises(ValueError, match=r"unknown head_fusion 'median'; choose one of \('mean', 'max', 'min'\)"):
        evaluate(classifier, make_data(1), "raw", **{**SETTINGS, "head_fusion": "median"})
    with pytest.raises(ValueError, match=r"unknown gradient_reduction 'max'; choose one of \('abs_sum'"):
        evaluate(classifier, make_data(1), "raw", **{**SETTINGS, "gradient_reduction": "max"})


# ---------------------------------------------------------------------------------------------
# Correctness against independent computations
# ---------------------------------------------------------------------------------------------


def test_scores_and_metrics_match_independent_computation(classifier, serial):
    model = classifier.model
    record = serial.examples[3]
    ids = torch.tensor([make_data(10)[3]["input_ids"]])
    n = ids.shape[1]
    with torch.no_grad():
        out = model(input_ids=ids, output_attentions=True)
    target = record["target"]
    assert target == make_data(10)[3]["label"]
    np.testing.assert_allclose(record["scores"]["raw"], raw_attention(out.attentions)[0, :, 0].numpy(), atol=1e-6)
    np.testing.assert_allclose(record["scores"]["rollout"], rollout(out.attentions)[0, :, 0].numpy(), atol=1e-6)
    flow = attention_flow(out.attentions, output_positions=0, flow_solver="networkx")[0, :, 0].numpy()
    np.testing.assert_allclose(record["scores"]["flow"], flow, atol=1e-5)

    def prob(x):
        with torch.no_grad():
            return model(input_ids=x).logits.softmax(-1)[0, target].item()

    p = prob(ids)
    assert record["probability"] == pytest.approx(p, abs=1e-6)
    blank = []
    for j in range(n):
        x = ids.clone()
        x[0, j] = UNK
        blank.append(abs(p - prob(x)))
    np.testing.assert_allclose(record["scores"]["blank_out"], blank, atol=1e-6)
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    model(inputs_embeds=embeds).logits.softmax(-1)[0, target].backward()
    np.testing.assert_allclose(record["scores"]["gradient"], embeds.grad[0].norm(dim=-1).numpy(), atol=1e-6)

    metrics = record["metrics"]["rollout"]
    for layer in range(3):
        rho = stats.spearmanr(record["scores"]["rollout"][layer], blank).statistic
        assert metrics["spearman_blank_out"][layer] == pytest.approx(rho, abs=1e-9)
    # AOPC of rollout at the last layer by hand, ERASER protocol: bins 1..50 %, predicted class
    predicted = int(model(input_ids=ids).logits.argmax(-1))
    assert record["aopc_class"] == predicted == record["prediction"]
    comprehensiveness, sufficiency = aopc_by_hand(model, ids, record["scores"]["rollout"][2],
                                                  (0.01, 0.05, 0.1, 0.2, 0.5), predicted)
    assert metrics["aopc_comprehensiveness"][2] == pytest.approx(comprehensiveness, abs=1e-6)
    assert metrics["aopc_sufficiency"][2] == pytest.approx(sufficiency, abs=1e-6)


def test_value_norm_and_alti_methods_match_per_pair_reference():
    """graph= in evaluate: raw / rollout / flow over value-norm and ALTI of padded batches equal the
    per-pair reference of tests/test_contribution_graphs.py on each example alone (float64), with
    rollout by explicit products and flow by networkx (ALTI holds its residual: no ``+ I``)."""
    from test_contribution_graphs import hf_parts, reference_alti, reference_value_norm

    model = tiny_bert().double()
    data = make_data(4, lengths=(3, 8))
    names = "raw_value_norm,rollout_value_norm,flow_value_norm,raw_alti,rollout_alti,flow_alti"
    classifier, passes = HFClassifier(model), []
    graphs = classifier.contribution_graphs
    classifier.contribution_graphs = lambda ids, mask, names: passes.append(len(ids)) or graphs(ids, mask, names)
    result = evaluate(classifier, data, names, batch_size=4, **SETTINGS)
    assert passes == [4] and len({r["tokens"] for r in result.examples}) > 1  # one padded batch
    for record, example in zip(result.examples, data):
        ids = torch.tensor([example["input_ids"]])
        parts = hf_parts(model.bert, ids, torch.ones_like(ids))
        for graph, per_pair, residual_inside in (("value_norm", reference_value_norm, False),
                                                 ("alti", reference_alti, True)):
            matrices = torch.stack([per_pair(p, 0) for p in parts])  # (L, n, n)
            np.testing.assert_allclose(record["scores"][f"raw_{graph}"], matrices[:, 0].numpy(), atol=1e-9)
            product, rolled = torch.eye(ids.shape[1], dtype=torch.float64), []
            for m in matrices:
                step = m if residual_inside else 0.5 * m + 0.5 * torch.eye(len(m), dtype=torch.float64)
                product = step @ product
                rolled.append(product[0])
            np.testing.assert_allclose(record["scores"][f"rollout_{graph}"], torch.stack(rolled).numpy(), atol=1e-9)
            flow = attention_flow(ContributionGraph(matrices[None], residual_inside), output_positions=0,
                                  flow_solver="networkx")[0, :, 0].numpy()
            np.testing.assert_allclose(record["scores"][f"flow_{graph}"], flow, atol=1e-7)
        assert set(record["metrics"]) >= set(names.split(","))


def test_graph_methods_that_cannot_run_are_refused_before_any_model_pass(classifier):
    """A Classifier that cannot build the graphs, or a head fusion the graphs do not have: one error up front."""

    class AttentionOnly(HFClassifier):
        contribution_graphs = Classifier.contribution_graphs

    with pytest.raises(ValueError, match=r"rollout_alti need value-norm/ALTI graphs.*override contribution_graphs"):
        evaluate(AttentionOnly(classifier.model), make_data(3), "rollout,rollout_alti", **SETTINGS)
    with pytest.raises(ValueError, match=r"flow_value_norm sum the heads.*head_fusion='mean'"):
        evaluate(classifier, make_data(3), "flow_value_norm", head_fusion="max", **SETTINGS)


def aopc_by_hand(model, ids, scores, fractions, cls):
    """(comprehensiveness, sufficiency): rank tokens 1..n-2, blank the top ceil(f*m), track p(cls)."""
    n = ids.shape[1]

    def prob(x):
        with torch.no_grad():
            return model(input_ids=x).logits.softmax(-1)[0, cls].item()

    p = prob(ids)
    scores = np.asarray(scores)
    order = sorted(range(1, n - 1), key=lambda j: (-scores[j], j))
    comprehensiveness, sufficiency = [], []
    for f in fractions:
        top = order[: max(1, int(np.ceil(f * (n - 2) - 1e-9)))]
        deleted, kept = ids.clone(), ids.clone()
        deleted[0, top] = UNK
        kept[0, [j for j in range(1, n - 1) if j not in top]] = UNK
        comprehensiveness.append(p - prob(deleted))
        sufficiency.append(p - prob(kept))
    return np.mean(comprehensiveness), np.mean(sufficiency)


def test_aopc_protocol_is_eraser_by_default_and_recorded(classifier, serial, tmp_path):
    """ERASER (bins 1-50 %, predicted class) by default; the earlier protocol (0.1..0.5, label)
    on request; each run names its protocol in config.json, results.json and the table."""
    data = make_data(10)
    disagree = [r for r in serial.examples if r["prediction"] != r["target"]]
    assert disagree, "need an example whose label is not the prediction"
    old = evaluate(classifier, data, "rollout", fractions=(0.1, 0.2, 0.3, 0.4, 0.5), aopc_target="label",
                   out=tmp_path / "old", **SETTINGS)
    for record in old.examples:
        ids = torch.tensor([data[record["index"]]["input_ids"]])
        scores = read_examples(tmp_path / "old")[record["index"]]["scores"]["rollout"][2]
        expected = aopc_by_hand(classifier.model, ids, scores, (0.1, 0.2, 0.3, 0.4, 0.5), record["label"])
        assert record["aopc_class"] == record["label"]
        np.testing.assert_allclose([record["metrics"]["rollout"]["aopc_comprehensiveness"][2],
                                    record["metrics"]["rollout"]["aopc_sufficiency"][2]], expected, atol=1e-6)
    index = disagree[0]["index"]
    assert old.examples[index]["metrics"]["rollout"]["aopc_comprehensiveness"] != \
        serial.examples[index]["metrics"]["rollout"]["aopc_comprehensiveness"]
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    assert config["aopc_protocol"] == "custom" and config["aopc_target"] == "label"
    summary = json.loads((tmp_path / "old" / "results.json").read_text())
    assert summary["aopc_protocol"]["name"] == "custom"
    assert str(old.table).startswith("AOPC protocol custom (not the ERASER protocol")
    assert str(serial.table).startswith("AOPC protocol ERASER (DeYoung et al. 2020): top 1, 5, 10, 20, 50 %")
    with pytest.raises(ValueError, match="unknown aopc_target 'gold'"):
        evaluate(classifier, data, "raw", aopc_target="gold", **SETTINGS)


def test_captum_methods_of_every_kind(classifier, serial):
    """Occlusion (built in) and FeatureAblation, one blanked token each, are the blank-out score;
    a Layer attribution on the embedding layer gives one score per token."""
    from captum.attr import FeatureAblation, LayerIntegratedGradients

    methods = [CaptumMethod("ablation", FeatureAblation),
               CaptumMethod("lig", LayerIntegratedGradients, attribute_kwargs={"baselines": UNK, "n_steps": 8})]
    result = evaluate(classifier, make_data(10)[:4], methods, batch_size=4, **SETTINGS)
    for record, reference in zip(result.examples, serial.examples):
        np.testing.assert_allclose(record["scores"]["ablation"][0], reference["scores"]["blank_out"], atol=1e-6)
        np.testing.assert_allclose(reference["scores"]["occlusion"][0], reference["scores"]["blank_out"], atol=1e-6)
        assert np.shape(record["scores"]["lig"]) == (1, record["tokens"])
        assert np.all(np.isfinite(record["scores"]["lig"])) and np.ptp(record["scores"]["lig"]) > 0


def test_padded_batches_equal_examples_alone(classifier, serial):
    alone = evaluate(classifier, make_data(10), "raw,rollout,flow,ig,occlusion", batch_size=1, **SETTINGS)
    assert_same_records(serial.examples, alone.examples)


def test_max_over_queries_protocol(classifier):
    data = make_data(3)
    result = evaluate(classifier, data, "rollout", position="max", **SETTINGS)
    ids = torch.tensor([data[1]["input_ids"]])
    with torch.no_grad():
        attentions = classifier.model(input_ids=ids, output_attentions=True).attentions
    expected = rollout(attentions)[0].amax(dim=-2).numpy()
    np.testing.assert_allclose(result.examples[1]["scores"]["rollout"], expected, atol=1e-6)


def test_abs_sum_gradient_reference_warns_under_layernorm(classifier):
    """BERT layer-normalises its embeddings: Σ_d g_d is 0 up to rounding, and we say so."""
    with pytest.warns(UserWarning, match="rounding noise.*gradient_reduction='l2'"):
        evaluate(classifier, make_data(2), "raw", **{**SETTINGS, "gradient_reduction": "abs_sum"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        evaluate(classifier, make_data(2), "raw", **SETTINGS)  # l2: nothing to warn about
    assert not [w for w in caught if "rounding noise" in str(w.message)]


def test_table_summarises_the_examples(serial, tmp_path):
    table = serial.table
    row = next(r for r in table if r["method"] == "flow" and r["layer"] == 2 and r["metric"] == "spearman_gradient")
    values = np.array([e["metrics"]["flow"]["spearman_gradient"][1] for e in serial.examples], float)
    values = values[np.isfinite(values)]
    assert row["mean"] == pytest.approx(values.mean()) and row["std"] == pytest.approx(values.std())
    assert row["count"] == len(values) and row["ci_low"] <= row["mean"] <= row["ci_high"]
    ig = [r for r in table if r["method"] == "ig"]
    assert {r["layer"] for r in ig} == {None} and len(ig) == 4
    frame = table.to_pandas()
    assert len(frame) == len(table) == 3 * 3 * 4 + 2 * 4
    table.to_csv(tmp_path / "t.csv")
    table.to_json(tmp_path / "t.json")
    assert len((tmp_path / "t.csv").read_text().splitlines()) == len(table) + 1
    assert ResultTable(json.loads((tmp_path / "t.json").read_text())).records[0]["mean"] == pytest.approx(table.records[0]["mean"])
    assert "spearman_blank_out" in str(table) and "L3" in str(table)


def test_bad_examples_are_recorded_not_fatal(classifier):
    data = make_data(4)
    data[1] = {"input_ids": [], "label": 0}
    data[2] = {"input_ids": [CLS] + [7] * 20 + [SEP], "label": 1}
    data.append({"input_ids": [CLS, 8, SEP], "label": 5})
    with pytest.warns(UserWarning, match="example 2 has 22 tokens"):
        result = evaluate(classifier, data, "raw,flow", **SETTINGS)
    assert [e["index"] for e in result.examples] == [0, 2, 3]
    assert result.examples[1]["truncated"] and result.examples[1]["tokens"] == 16
    assert "empty" in result.errors[1] and "label 5" in result.errors[4]
    strict = evaluate(classifier, data, "raw", truncation="error", **SETTINGS)
    assert "maximum length 16" in strict.errors[2]


# ---------------------------------------------------------------------------------------------
# Streaming and resumption
# ---------------------------------------------------------------------------------------------


def test_resume_after_a_cut_short_file(classifier, serial, tmp_path):
    full = tmp_path / "full"
    evaluate(classifier, make_data(10), "raw,rollout,flow,ig,occlusion", batch_size=4, out=full, **SETTINGS)
    lines = (full / "examples.jsonl").read_text().splitlines(keepends=True)
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(full / "config.json", partial / "config.json")
    (partial / "examples.jsonl").write_text("".join(lines[:3]) + lines[3][: len(lines[3]) // 2])
    resumed = evaluate(classifier, make_data(10), "raw,rollout,flow,ig,occlusion", out=partial, resume=True, **SETTINGS)
    assert "scores" not in resumed.examples[0]  # kept on disk only
    assert [e["metrics"] for e in resumed.examples] == [e["metrics"] for e in read_examples(partial)]
    assert_same_records(serial.examples, read_examples(partial))
    assert len((partial / "examples.jsonl").read_text().splitlines()) == 10
    with pytest.raises(ValueError, match="already holds the results of another run.*resume"):
        evaluate(classifier, make_data(10), "raw,rollout,flow,ig,occlusion", out=partial, **SETTINGS)
    with pytest.raises(ValueError, match="other settings.*methods"):
        evaluate(classifier, make_data(10), "raw", out=partial, resume=True, **SETTINGS)


def test_resume_refuses_another_model_or_other_data_in_one_line(classifier, tmp_path):
    data = make_data(4)
    evaluate(classifier, data, "raw", out=tmp_path, **SETTINGS)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["data_examples"] == 4 and len(config["data_sha256"]) == len(config["model_sha256"]) == 64
    changed = [dict(e) for e in data]
    changed[2]["input_ids"] = changed[2]["input_ids"][:-2] + [SEP]
    for other, wanted in ((changed, "the data differs"), (data[:3], "the data differs \\(4 examples"),
                          (iter(data + make_data(1, seed=5)), "the data differs")):
        with pytest.raises(ValueError, match=wanted) as error:
            evaluate(classifier, other, "raw", out=tmp_path, resume=True, **SETTINGS)
        assert "\n" not in str(error.value) and "model differs" not in str(error.value)
    with pytest.raises(ValueError, match="the model differs \\(weights sha256") as error:
        evaluate(HFClassifier(tiny_bert(seed=1)), data, "raw", out=tmp_path, resume=True, **SETTINGS)
    assert "data differs" not in str(error.value)
    resumed = evaluate(classifier, iter(data), "raw", out=tmp_path, resume=True, **SETTINGS)  # same: accepted
    assert [e["index"] for e in resumed.examples] == [0, 1, 2, 3]
    assert not (tmp_path / ".lock").exists()


def test_output_directory_is_locked_while_a_run_writes(classifier, tmp_path):
    from captum_attnflow.utils.files import DirectoryLock, LockedError

    data = make_data(2)
    with DirectoryLock(tmp_path):  # a live run (this process) holds it
        with pytest.raises(LockedError, match=f"in use by process {os.getpid()}"):
            evaluate(classifier, data, "raw", out=tmp_path, **SETTINGS)
    (tmp_path / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": "elsewhere", "started": "x"}))
    with pytest.raises(LockedError, match="process .* on elsewhere .*delete .*lock"):
        evaluate(classifier, data, "raw", out=tmp_path, **SETTINGS)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that is no longer running: the lock of a killed run
    import socket

    (tmp_path / ".lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "x"}))
    with pytest.warns(UserWarning, match=f"took over the stale lock .*process {dead.pid}"):
        result = evaluate(classifier, data, "raw", out=tmp_path, **SETTINGS)
    assert len(result.examples) == 2 and not (tmp_path / ".lock").exists()


def test_unwritable_out_and_bad_counts_fail_before_any_model_pass(classifier, tmp_path):
    class Counting(HFClassifier):
        calls = 0

        def probabilities(self, *args):
            Counting.calls += 1
            return super().probabilities(*args)

    counting = Counting(tiny_bert())
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="out .*file/run cannot be written"):
        evaluate(counting, make_data(3), "raw", out=tmp_path / "file" / "run", **SETTINGS)
    for bad, message in ((dict(resamples=0), "resamples must be a positive integer"),
                         (dict(seed=-1), "seed must be a non-negative integer"),
                         (dict(max_length=0), "max_length must be a positive integer"),
                         (dict(max_length=17), "exceeds the model's maximum of 16"),
                         (dict(max_in_flight=0), "max_in_flight must be a positive integer"),
                         (dict(confidence=1.5), "confidence must be in")):
        with pytest.raises(ValueError, match=message):
            evaluate(counting, make_data(3), "raw", **{**SETTINGS, **bad})
    with pytest.raises(ValueError, match="data is empty"):
        evaluate(counting, [], "raw", **SETTINGS)
    assert Counting.calls == 0


def test_store_rejects_corruption_before_the_last_line(tmp_path):
    (tmp_path / "examples.jsonl").write_text('{"index": 0, "status": "ok"}\nnot json\n{"index": 1, "status": "ok"}\n')
    with pytest.raises(ValueError, match="line 2 is corrupt"):
        ResultStore(tmp_path, {}, resume=True)
    with pytest.raises(ValueError, match="line 2 is corrupt"):
        read_examples(tmp_path)
    with pytest.raises(ValueError, match="holds no examples.jsonl"):
        read_examples(tmp_path / "nowhere")
    (tmp_path / "f").write_text("")
    with pytest.raises(ValueError, match="is a file"):
        ResultStore(tmp_path / "f", {})


@pytest.fixture(scope="module")
def hf_model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("hf")
    (directory / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    tokenizer = transformers.BertTokenizerFast(vocab_file=str(directory / "vocab.txt"), do_lower_case=True)
    tokenizer.save_pretrained(directory)
    tiny_bert().save_pretrained(directory)
    texts = [" ".join(f"w{(7 * i + 3 * k) % 35}" for k in range(2 + i % 7)) for i in range(40)]
    (directory / "data.txt").write_text("\n".join(texts) + "\n")
    return directory


def test_cli_resumes_a_killed_run(hf_model_dir, tmp_path):
    from captum_attnflow.cli import main

    out = tmp_path / "run"
    command = [sys.executable, "-m", "captum_attnflow", "evaluate", "--model", str(hf_model_dir), "--data",
               str(hf_model_dir / "data.txt"), "--methods", "raw,flow", "--out", str(out), "--batch-size", "1",
               "--no-progress", "--resamples", "50", "--gradient-reduction", "l2", "--flow-solver", "scipy"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    stream = out / "examples.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if stream.exists() and stream.read_text().count("\n") >= 3:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = stream.read_text().count("\n")
    assert 3 <= done_before < 40, "the run was not interrupted mid-way"
    assert (out / ".lock").exists()  # left by the killed run: taken over, not blocking
    with pytest.warns(UserWarning, match=f"took over the stale lock .*process {process.pid} .*no longer running"):
        assert main(command[3:] + ["--resume"]) == 0
    assert not (out / ".lock").exists()
    records = [json.loads(line) for line in stream.read_text().splitlines()]
    assert sorted(r["index"] for r in records) == list(range(40))  # each example exactly once
    summary = json.loads((out / "results.json").read_text())
    assert summary["finished"] == 40 and summary["lost"] == []
    assert (out / "results.csv").read_text().startswith("method,layer,metric,mean")

    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_model_dir)
    texts = (hf_model_dir / "data.txt").read_text().splitlines()
    reference = evaluate(HFClassifier(tiny_bert()), [tokenizer(t)["input_ids"] for t in texts], "raw,flow",
                         **{**SETTINGS, "resamples": 50})
    assert_same_records(reference.examples, read_examples(out))


def test_cli_reports_bad_input(hf_model_dir, tmp_path, capsys):
    from captum_attnflow.cli import main

    base = ["evaluate", "--model", str(hf_model_dir), "--out", str(tmp_path / "o"), "--no-progress"]
    assert main(base + ["--data", str(hf_model_dir / "data.txt"), "--methods", "raw,nope"]) == 2
    assert "valid methods: raw, rollout, flow" in capsys.readouterr().err
    assert main(base + ["--data", str(hf_model_dir / "vocab.json")]) == 2
    assert "is not a file" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(tmp_path / "missing"), "--data", "x.txt", "--out", str(tmp_path)]) == 2
    assert "neither 'agreement' nor a local model directory" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Executors: a dying process pool and a Dask cluster
# ---------------------------------------------------------------------------------------------


class DyingPool(ProcessPoolExecutor):
    """A real process pool whose worker exits (``os._exit``) on the third task it receives."""

    def __init__(self):
        super().__init__(max_workers=1, mp_context=get_context("spawn"))
        self.calls = 0

    def submit(self, fn, /, *args, **kwargs):
        self.calls += 1
        if self.calls == 3:
            return super().submit(os._exit, 1)
        return super().submit(fn, *args, **kwargs)


def test_dead_worker_loses_examples_that_resume_completes(classifier, serial, tmp_path):
    data = make_data(10)
    pool = DyingPool()
    try:
        broken = evaluate(classifier, data, "raw,rollout,flow,ig,occlusion", batch_size=4, executor=pool,
                          out=tmp_path, **SETTINGS)
    finally:
        pool.shutdown()
    assert 2 in broken.lost and "BrokenProcessPool" in broken.lost[2]
    assert sorted(list(broken.lost) + [e["index"] for e in broken.examples]) == list(range(10))
    resumed = evaluate(classifier, data, "raw,rollout,flow,ig,occlusion", out=tmp_path, resume=True, **SETTINGS)
    assert resumed.lost == {} and resumed.errors == {}
    assert_same_records(serial.examples, read_examples(tmp_path))


class LosingExecutor(SerialExecutor):
    """In-process, but the second task is lost as if its worker had died."""

    def __init__(self):
        self.calls = 0

    def submit(self, fn, /, *args, **kwargs):
        self.calls += 1
        if self.calls == 2:
            future = Future()
            future.set_exception(BrokenProcessPool("worker terminated"))
            return future
        return super().submit(fn, *args, **kwargs)


def test_lost_batch_of_a_model_factory_is_resumed(serial, tmp_path):
    data = make_data(10)
    broken = evaluate(factory_classifier, data, "raw,rollout,flow,ig,occlusion", batch_size=4,
                      executor=LosingExecutor(), out=tmp_path, **SETTINGS)
    assert sorted(broken.lost) == [4, 5, 6, 7] and "BrokenProcessPool" in broken.lost[4]
    resumed = evaluate(factory_classifier, data, "raw,rollout,flow,ig,occlusion", batch_size=4,
                       out=tmp_path, resume=True, **SETTINGS)
    assert resumed.lost == {}
    assert_same_records(serial.examples, read_examples(tmp_path))


@pytest.fixture(scope="module")
def dask_client():
    distributed = pytest.importorskip("distributed")
    # worker threads: starts in a second (worker processes would each import torch); shipping
    # tasks to other processes is covered by the process-pool test above
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None)
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


def test_dask_local_cluster_equals_serial(classifier, serial, dask_client):
    """Flow tasks, then whole batches, through ``client.get_executor()``; flow bit for bit."""
    assert len(dask_client.scheduler_info()["workers"]) == 2
    rng = np.random.default_rng(0)
    graphs = [rng.random((3, n, n)) for n in (4, 7, 9)]
    graphs = [g / g.sum(-1, keepdims=True) for g in graphs]
    executor = dask_client.get_executor()
    remote = [executor.submit(flow_task, g, 0, True, "scipy").result() for g in graphs]
    for g, (status, scores) in zip(graphs, remote):
        assert status == "ok" and np.array_equal(scores, flow_task(g, 0, True, "scipy")[1])
    result = evaluate(classifier, make_data(10), "raw,rollout,flow,ig,occlusion", batch_size=4,
                      executor=dask_client.get_executor(), **SETTINGS)
    assert result.lost == {} and result.errors == {}
    assert_same_records(serial.examples, result.examples)
    # a model factory: whole batches run on the workers, each building the model once
    batches = evaluate(factory_classifier, make_data(10), "raw,rollout,flow,ig,occlusion", batch_size=4,
                       executor=dask_client.get_executor(), **SETTINGS)
    assert batches.lost == {} and batches.errors == {}
    assert_same_records(serial.examples, batches.examples)


def test_agreement_model_through_the_cli(tmp_path):
    """The built-in agreement model (a small checkpoint here): CLI wiring and padded = alone."""
    from captum_attnflow.models.agreement_data import PAD, UNK, encode, generate_splits, vocabulary
    from captum_attnflow.models.agreement_model import AgreementModel, ModelConfig, load_checkpoint, save_checkpoint
    from captum_attnflow.cli import main
    from captum_attnflow.evaluation.models import AgreementClassifier

    torch.manual_seed(0)
    words = vocabulary()
    sizes = {"train": 20, "valid": 5, "test": 8}
    path = tmp_path / "agreement.pt"
    untrained = AgreementModel(ModelConfig(layers=2, heads=2, hidden=16), len(words))
    for weight in untrained.parameters():  # large weights: scores far apart, no near-ties
        if weight.dim() > 1:
            torch.nn.init.normal_(weight, std=0.5)
    save_checkpoint(untrained, path, metadata={"data_seed": 3, "data_sizes": sizes})
    out = tmp_path / "out"
    assert main(["evaluate", "--model", str(path), "--examples", "6", "--methods", "raw,rollout,flow,saliency,rollout_alti",
                 "--out", str(out), "--no-progress", "--flow-solver", "scipy", "--resamples", "50",
                 "--results-md", str(tmp_path / "md"), "--results-name", "evaluate_small"]) == 0
    assert [p.name for p in (tmp_path / "md").iterdir()] == ["evaluate_small.md"]
    assert "| rollout_alti |" in (tmp_path / "md" / "evaluate_small.md").read_text()
    summary = json.loads((out / "results.json").read_text())
    assert summary["finished"] == 6 and summary["failed"] == 0
    test = generate_splits(3, **sizes).test[:6]
    first = json.loads((out / "examples.jsonl").read_text().splitlines()[0])
    assert first["label"] == test[0].label and first["tokens"] == len(test[0].tokens)

    model, _ = load_checkpoint(path)
    classifier = AgreementClassifier(model, blank_id=words.index(UNK), pad_id=words.index(PAD))
    data = list(zip(encode(test), [e.label for e in test]))
    methods = "raw,rollout,flow,saliency,raw_value_norm,rollout_alti,flow_alti"
    batched = evaluate(classifier, data, methods, batch_size=6, **SETTINGS)
    alone = evaluate(classifier, data, methods, batch_size=1, **SETTINGS)
    assert_same_records(batched.examples, alone.examples)
    rows = np.array(alone.examples[0]["scores"]["raw_value_norm"], float)  # [CLS] row of M_l: a distribution
    np.testing.assert_allclose(rows.sum(-1), 1, atol=1e-6)



def test_csv_examples_take_label_indices_or_names(tmp_path):
    from captum_attnflow.evaluation.command import _texts

    path = tmp_path / "data.csv"
    path.write_text('text,label\n"a, b",1\nc,\nd,positive\n')
    assert _texts(path, {"negative": 0, "positive": 1}) == [("a, b", 1), ("c", None), ("d", 1)]
    with pytest.raises(ValueError, match="line 4: unknown label 'positive'"):
        _texts(path, {"neg": 0})
    path.write_text("sentence\nx\n")
    with pytest.raises(ValueError, match="'text' column"):
        _texts(path, {})
    with pytest.raises(ValueError, match=r"\.txt file"):
        _texts(tmp_path / "data.json", {})


def test_cli_on_a_dask_scheduler(hf_model_dir, dask_client, tmp_path):
    from captum_attnflow.cli import main

    out = tmp_path / "dask"
    assert main(["evaluate", "--model", str(hf_model_dir), "--data", str(hf_model_dir / "data.txt"), "--examples", "6",
                 "--methods", "raw,flow", "--out", str(out), "--no-progress", "--flow-solver", "scipy",
                 "--dask", dask_client.scheduler.address]) == 0
    assert [r["index"] for r in read_examples(out)] == list(range(6))
    assert main(["evaluate", "--model", str(hf_model_dir), "--data", str(hf_model_dir / "data.txt"), "--out",
                 str(tmp_path / "x"), "--dask", "tcp://a:1", "--workers", "2"]) == 2
