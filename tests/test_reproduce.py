"""`captum-attnflow reproduce` end to end on a tiny model, its study against brute force, and its errors."""

import json

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from captum_attnflow import attention_flow, raw_attention, rollout
from captum_attnflow.models.agreement_data import UNK, encode, generate_splits, vocabulary
from captum_attnflow.models.agreement_model import ModelConfig, load_checkpoint, save_checkpoint
from captum_attnflow.studies.agreement.study import run_study
from captum_attnflow.studies.agreement.train import TrainingConfig, train_model
from captum_attnflow.cli import main

TINY = ModelConfig(layers=3, heads=2, hidden=16)
SIZES = {"train": 200, "valid": 40, "test": 30}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny trained model saved like the shipped one (3 layers, 2 heads, hidden 16)."""
    splits = generate_splits(5, **SIZES)
    model, history = train_model(splits, seed=5, model_config=TINY, training=TrainingConfig(epochs=1), progress=False)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(model, path, metadata={"data_seed": 5, "data_sizes": SIZES, "history": history})
    return path


def test_study_matches_brute_force(checkpoint):
    model, _ = load_checkpoint(checkpoint)
    examples = generate_splits(5, **SIZES).test[:4]
    result = run_study(model, examples, layers=[1, 3], flow_solver="scipy", progress=False)
    assert result.layers == [1, 3]
    unk = vocabulary().index(UNK)
    for k, scores in enumerate(result.scores):
        assert scores.example is examples[k]
        ids = torch.tensor(encode([scores.example]))
        label = scores.example.label
        with torch.no_grad():
            logits, attentions = model(ids, output_attentions=True)
            p = torch.softmax(logits, -1)[0, label]
            blank = []
            for j in range(ids.shape[1]):
                blanked = ids.clone()
                blanked[0, j] = unk
                blank.append(abs(float(p - torch.softmax(model(blanked), -1)[0, label])))
        np.testing.assert_allclose(scores.references["blank_out"], blank, atol=1e-6)
        embeds = model.embed(ids).detach().requires_grad_(True)
        probs = torch.softmax(model(inputs_embeds=embeds), -1)[0]
        (grad,) = torch.autograd.grad(probs[0] - probs[1], embeds)
        np.testing.assert_allclose(scores.references["gradient"], grad[0].sum(-1).abs().numpy(), atol=1e-6)
        expected = {
            "raw": raw_attention(attentions)[0, [0, 2], 0].numpy(),
            "rollout": rollout(attentions)[0, [0, 2], 0].numpy(),
            "flow": attention_flow(attentions, output_positions=0, flow_solver="networkx")[0, [0, 2], 0].numpy(),
        }
        for name, values in expected.items():
            np.testing.assert_allclose(scores.methods[name], values, atol=1e-5)
            for column in range(2):
                rho = spearmanr(values[column], blank).statistic
                np.testing.assert_allclose(result.correlations["blank_out"][name][k, column], rho, atol=1e-5)


def test_study_rejects_bad_input(checkpoint):
    model, _ = load_checkpoint(checkpoint)
    examples = generate_splits(5, **SIZES).test[:2]
    with pytest.raises(ValueError, match="within 1..3"):
        run_study(model, examples, layers=[0, 1], progress=False)
    with pytest.raises(ValueError, match="at least one example"):
        run_study(model, [], progress=False)


def test_reproduce_end_to_end(checkpoint, tmp_path, capsys):
    out = tmp_path / "report"
    code = main(["reproduce", "--checkpoint", str(checkpoint), "--examples", "6", "--out", str(out), "--seed", "1"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "Table 1" in printed and "Table 2" in printed and "Rollout (paper) | 0.32±0.26" in printed
    assert str(out.resolve()) in printed.splitlines()[-1]
    for name in ("report.md", "report.html", "table1_blank_out.csv", "table2_gradient_abs_sum.csv",
                 "table2b_gradient_l2.csv", "results.json", "fig1_raw_attention.png",
                 "fig2_raw_rollout_flow_maps.png", "fig3_cls_raw_rollout_flow.png", "fig4_correlations.png"):
        assert (out / name).stat().st_size > 0, name
    results = json.loads((out / "results.json").read_text())
    assert results["layers"] == [1, 2, 3]
    flow = results["tables"]["blank_out"]["flow"]
    assert len(flow["mean"]) == 3 and all(c + u == 6 for c, u in zip(flow["count"], flow["undefined"]))
    rows = (out / "table1_blank_out.csv").read_text().splitlines()
    assert rows[0].startswith("method,layer,mean,std") and len(rows) == 1 + 3 * 3
    # L1 rollout = L1 flow by construction (single layer: both are Â_1's [CLS] row)
    table = results["tables"]["gradient"]
    assert table["rollout"]["mean"][0] == pytest.approx(table["flow"]["mean"][0])


def test_reproduce_retrain_and_workers(tmp_path, monkeypatch, capsys):
    from captum_attnflow.studies.agreement import reproduce

    monkeypatch.setattr(reproduce, "DATA_SIZES", SIZES)
    monkeypatch.setattr(reproduce, "MAX_EPOCHS", 1)
    saved = tmp_path / "retrained.pt"
    argv = ["reproduce", "--retrain", "--checkpoint", str(saved), "--examples", "4", "--layers", "1,6"]
    assert main(argv + ["--out", str(tmp_path / "serial")]) == 0
    _, metadata = load_checkpoint(saved)
    assert metadata["data_sizes"] == SIZES and metadata["history"][-1]["epoch"] <= 1  # MAX_EPOCHS = 1
    serial = json.loads((tmp_path / "serial" / "results.json").read_text())["tables"]
    argv[1:2] = []  # load the retrained checkpoint instead of training again
    argv += ["--workers", "2"]
    assert main(argv + ["--out", str(tmp_path / "parallel")]) == 0
    parallel = json.loads((tmp_path / "parallel" / "results.json").read_text())["tables"]
    assert serial == parallel


def run_cli(argv, capsys):
    """(exit status, stderr) of the command line, in-process; the error must be one line."""
    try:
        code = main(argv)
    except SystemExit as exit_info:
        code = exit_info.code
    err = capsys.readouterr().err
    if code == 2:
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return code, err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--examples", "31"], "exceeds the test split of 30"),
        (["--examples", "0"], "--examples: must be a positive integer; got 0"),
        (["--examples", "-5"], "--examples: must be a positive integer; got -5"),
        (["--examples", "x"], "--examples: 'x' is not an integer"),
        (["--workers", "0"], "--workers: must be a positive integer"),
        (["--seed", "-1"], "--seed: must be a non-negative integer"),
        (["--layers", "0-2"], "between 1 and 3"),
        (["--layers", "a,b"], "not a list"),
        (["--flow-solver", "magic"], "'magic' is unknown"),
    ],
)
def test_reproduce_bad_arguments(checkpoint, tmp_path, capsys, extra, message):
    code, err = run_cli(["reproduce", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "o")] + extra, capsys)
    assert code == 2 and message in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())  # nothing written


def test_reproduce_bad_out_and_checkpoint(checkpoint, tmp_path, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    code, err = run_cli(["reproduce", "--checkpoint", str(checkpoint), "--out", str(a_file)], capsys)
    assert code == 2 and "--out" in err and "is a file" in err
    # an --out that cannot be created is found before the model is even loaded, not after the scoring
    code, err = run_cli(["reproduce", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(a_file / "o")], capsys)
    assert code == 2 and f"--out {a_file / 'o'} cannot be written" in err
    code, err = run_cli(["reproduce", "--retrain", "--checkpoint", str(a_file / "x.pt"), "--out", str(tmp_path)],
                        capsys)
    assert code == 2 and "--checkpoint's folder" in err and "is a file" in err
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    code, err = run_cli(["reproduce", "--checkpoint", str(broken), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "--retrain" in err
    code, err = run_cli(["reproduce", "--no-such-flag"], capsys)
    assert code == 2 and "unrecognized arguments: --no-such-flag" in err


def _edited(checkpoint, tmp_path, name, edit):
    payload = torch.load(checkpoint, weights_only=True)
    edit(payload)
    path = tmp_path / f"{name}.pt"
    torch.save(payload, path)
    return path


MISMATCHES = {
    "heads0": (lambda p: p["config"].update(heads=0), "non-positive or non-integer sizes {'heads': 0}"),
    "indivisible": (lambda p: p["config"].update(heads=3), "hidden 16 is not divisible by heads 3"),
    "short": (lambda p: p["config"].update(max_tokens=8), "max_tokens 8 is shorter than the longest"),
    "dropout": (lambda p: p["config"].update(attn_dropout=1.5), "attn_dropout 1.5 is not a probability"),
    "unknown": (lambda p: p["config"].update(width=3), "unknown config fields ['width']"),
    "keys": (lambda p: p["state_dict"].pop("classifier.bias"), "does not match the model architecture"),
    "shape": (lambda p: p["state_dict"].update({"classifier.bias": torch.zeros(3)}), "does not match the model"),
    "huge": (lambda p: p["metadata"]["data_sizes"].update(train=10**9), "more than the 100000 this code generates"),
    "float": (lambda p: p["metadata"]["data_sizes"].update(train=1e9), "are not positive integers"),
    "sizes": (lambda p: p["metadata"].pop("data_sizes"), "metadata data_sizes None must be"),
    "seed": (lambda p: p["metadata"].update(data_seed=-3), "data_seed -3 is not a non-negative integer"),
}


@pytest.mark.parametrize("name", sorted(MISMATCHES))
def test_mismatched_checkpoints_are_one_line_errors_before_any_work(checkpoint, tmp_path, capsys, name):
    """Loadable checkpoints that do not fit (config, weights, metadata) raised KeyError /
    ZeroDivisionError / IndexError tracebacks, or hung generating 1e9 examples."""
    edit, message = MISMATCHES[name]
    path = _edited(checkpoint, tmp_path, name, edit)
    for argv in (["reproduce", "--checkpoint", str(path), "--out", str(tmp_path / "r")],
                 ["evaluate", "--model", str(path), "--out", str(tmp_path / "e"), "--no-progress"]):
        code, err = run_cli(argv, capsys)
        assert code == 2 and message in err and "--retrain" in err
    assert not (tmp_path / "e" / "examples.jsonl").exists()


def test_report_helpers_follow_the_numbers():
    from captum_attnflow.studies.agreement.tables import comparison_notes, markdown_table
    from captum_attnflow.report import markdown_to_html

    layers = [1, 2, 3, 4]
    entry = lambda means: {"mean": means, "std": [0.1] * 4, "count": [5] * 4, "undefined": [0] * 4}  # noqa: E731
    table = {"raw": entry([0.5, 0.1, 0.3, 0.2]), "rollout": entry([0.4, 0.5, 0.2, 0.6]),
             "flow": entry([0.4, 0.6, 0.7, 0.1])}
    tables = {ref: table for ref in ("blank_out", "gradient", "gradient_l2")}
    notes = comparison_notes(tables, layers, {"median_ratio": 1e-7, "mean_rho": 0.5})
    assert notes[0].startswith("Table 1: in the 2 studied layers from L3 up, rollout beats raw attention in 1, "
                               "flow in 1 (paper: in all); flow ≥ rollout in 1. Deepest layer L4: raw 0.20, "
                               "rollout 0.60, flow 0.10")
    assert "1.0e-07" in notes[-1]
    markdown = markdown_table(tables, "blank_out", layers)
    assert markdown.splitlines()[2] == "| **Raw** (this run) | 0.50±0.10 | 0.10±0.10 | 0.30±0.10 | 0.20±0.10 |"
    assert markdown.splitlines()[3] == "| Raw (paper) | 0.69±0.27 | 0.10±0.43 | -0.11±0.49 | -0.09±0.52 |"
    page = markdown_to_html("# T\n\n- a\n- b\n\n" + markdown)
    assert page.count("<ul>") == 1 and page.count("</ul>") == 1 and page.count("<tr") == 7  # header + 3 methods × (ours, paper)
    assert page.count('<tr class="paper">') == 3 and page.count('<tr class="ours">') == 3
