"""Bad input that used to crash with a traceback or be refused unclearly (issue 18 items 10-12):
every case is refused in one line ``captum-attnflow COMMAND: error: ...`` on stderr, exit status 2,
before the run — or accepted when it is good input (a CSV with a UTF-8 byte-order mark)."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch

from captum_attnflow.cli import main

transformers = pytest.importorskip("transformers")

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(35)]


def tiny_bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=16, unk_token_id=1, pad_token_id=0,
    )
    return transformers.BertForSequenceClassification(config).eval()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("hf")
    (directory / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    transformers.BertTokenizerFast(vocab_file=str(directory / "vocab.txt")).save_pretrained(directory)
    tiny_bert().save_pretrained(directory)
    return directory


def run_cli(argv, capsys):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_info:
        code = exit_info.code
    out = capsys.readouterr()
    return code, out.err


def refused(argv, capsys, command, message):
    code, err = run_cli(argv, capsys)
    assert code == 2, err
    assert err.startswith(f"captum-attnflow {command}: error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def evaluate_args(model_dir, data, out):
    return ["evaluate", "--model", model_dir, "--data", data, "--out", out, "--methods", "raw", "--no-progress",
            "--resamples", "5"]


# -- item 10 ----------------------------------------------------------------------------------

def test_csv_row_missing_its_text_field(model_dir, tmp_path, capsys):
    data = tmp_path / "d.csv"
    data.write_text("label,text\n0,w1 w2\n1\n")
    refused(evaluate_args(model_dir, data, tmp_path / "o"), capsys, "evaluate", "line 3 has no 'text' field")


def test_lock_file_with_a_huge_pid_is_no_crash(model_dir, tmp_path, capsys):
    data, out = tmp_path / "d.txt", tmp_path / "o"
    data.write_text("w1 w2\nw3 w4 w5\n")
    out.mkdir()
    (out / ".lock").write_text(json.dumps({"pid": 2**40, "host": socket.gethostname(), "started": "x"}))
    with pytest.warns(UserWarning, match="took over the stale lock"):
        code, err = run_cli(evaluate_args(model_dir, data, out), capsys)
    assert code == 0, err
    assert not (out / ".lock").exists()


@pytest.mark.parametrize("line, message", [
    ('{"foo": 1}', "record 3 has no integer 'index'"),
    ("[1, 2]", "record 3 is a JSON list"),
    ('{"index": 99, "status": "ok", "metrics": {}}', "record 3 has index 99, outside the run's 2 examples"),
    ('{"index": 1, "status": "done"}', "record 3 has status 'done'"),
    ('{"index": 1, "status": "ok"}', "record 3 (example 1) lacks the metrics"),
])
def test_resume_refuses_schema_invalid_records_up_front(model_dir, tmp_path, capsys, line, message):
    data, out = tmp_path / "d.txt", tmp_path / "o"
    data.write_text("w1 w2\nw3 w4 w5\n")
    args = evaluate_args(model_dir, data, out)
    assert run_cli(args, capsys)[0] == 0  # a finished run of two examples, then a record it never wrote
    stream = (out / "examples.jsonl").read_text() + line + "\n"
    (out / "examples.jsonl").write_text(stream)
    (out / "results.json").unlink()
    refused(args + ["--resume"], capsys, "evaluate", message)
    assert (out / "examples.jsonl").read_text() == stream and not (out / "results.json").exists()


def test_model_on_the_meta_device_is_refused():
    from captum_attnflow.evaluation import HFClassifier, evaluate

    with torch.device("meta"):
        model = tiny_bert()
    with pytest.raises(ValueError, match="weights on the meta device"):
        evaluate(HFClassifier(model), [[2, 5, 6, 3]], "raw", progress=False)


@pytest.mark.parametrize("argv, message", [
    (["--tokens", "0"], "--tokens: must be an integer from 1 to 512; got 0"),
    (["--layers", "-1"], "--layers: must be an integer from 1 to 48; got -1"),
    (["--tokens", "100000"], "--tokens: must be an integer from 1 to 512"),
    (["--seed", "-1"], "--seed: must be an integer from 0 to"),
    (["--seed", str(2**70)], "--seed: must be an integer from 0 to"),
])
def test_demo_refuses_bad_sizes(argv, message, capsys):
    refused(["demo"] + argv, capsys, "demo", message)


# -- item 11 ----------------------------------------------------------------------------------

def test_empty_model_folder_is_one_clear_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    data = tmp_path / "d.txt"
    data.write_text("w1\n")
    refused(evaluate_args(tmp_path / "empty", data, tmp_path / "o"), capsys, "evaluate",
            "is not a Hugging Face model folder: it has no config and no weights and no tokenizer file")


def test_csv_with_a_byte_order_mark_is_accepted(model_dir, tmp_path, capsys):
    data = tmp_path / "excel.csv"
    data.write_bytes("\ufefftext,label\nw1 w2,0\nw3 w4,1\n".encode("utf-8"))
    code, err = run_cli(evaluate_args(model_dir, data, tmp_path / "o"), capsys)
    assert code == 0, err
    records = [json.loads(line) for line in (tmp_path / "o" / "examples.jsonl").read_text().splitlines()]
    assert [(r["status"], r["label"]) for r in records] == [("ok", 0), ("ok", 1)]


# -- item 12 ----------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, command, message", [
    (["evaluate", "--model", "agreement", "--out", "o", "--exampels", "5"], "evaluate",
     "unrecognized arguments: --exampels; did you mean --examples (not --exampels)? "
     "(see captum-attnflow evaluate --help)"),
    (["evaluate", "--modle", "agreement", "--out", "o"], "evaluate", "did you mean --model (not --modle)?"),
    (["evaluate", "--model", "agreement", "--out", "o", "--ex", "5"], "evaluate",
     "unrecognized arguments: --ex"),  # no prefix matching: --ex is not --examples
    (["demo", "--layer", "2"], "demo", "did you mean --layers (not --layer)? (see captum-attnflow demo --help)"),
    (["sentiment", "--sentence", "5"], "sentiment", "did you mean --sentences"),
    (["reproduce", "--exampl", "5"], "reproduce", "did you mean --examples"),
])
def test_wrong_flags_name_the_subcommand_help_and_the_nearest_flag(argv, command, message, capsys, tmp_path):
    refused([tmp_path / "o" if a == "o" else a for a in argv], capsys, command, message)


def test_every_command_reports_errors_with_its_name(model_dir, tmp_path, capsys):
    data = tmp_path / "d.txt"
    data.write_text("w1\n")
    refused(evaluate_args(model_dir, tmp_path / "missing.txt", tmp_path / "o"), capsys, "evaluate", "is not a file")
    refused(["evaluate", "--model", "agreement", "--out", tmp_path / "o", "--dask", "x", "--workers", "2"], capsys,
            "evaluate", "not both")


def test_demo_is_documented_in_its_help(capsys):
    code, _ = run_cli(["demo", "--help"], capsys)
    assert code == 0
    code, _ = run_cli(["--help"], capsys)
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = capsys.readouterr().out
    assert "random BERT" in text and "--tokens" in text and "Example:" in text


def test_no_parser_expands_abbreviations():
    from captum_attnflow.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if hasattr(a, "choices") and isinstance(a.choices, dict)).choices
    assert not parser.allow_abbrev and all(not sub.allow_abbrev for sub in commands.values())


# -- hostile cases found beyond the list ----------------------------------------------

def test_damaged_data_and_weights_are_one_line(model_dir, tmp_path, capsys):
    import shutil

    for name, content, message in (("bad.txt", b"\xff\xfe w1\n", "is not UTF-8 text (byte b'\\xff' at offset 0)"),
                                   ("open.csv", b'text,label\n"w1 w2,0\n', "is not valid CSV (unexpected end of data)")):
        (tmp_path / name).write_bytes(content)
        refused(evaluate_args(model_dir, tmp_path / name, tmp_path / "o"), capsys, "evaluate", message)
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"garbage")
    (tmp_path / "d.txt").write_text("w1\n")
    refused(evaluate_args(broken, tmp_path / "d.txt", tmp_path / "o"), capsys, "evaluate", "cannot load the model")
    refused(evaluate_args(model_dir, tmp_path / "d.txt", tmp_path / "o") + ["--methods", ""], capsys, "evaluate",
            "no method given")
