"""Every command validates its counts, sizes, seeds and solvers up front: one line on stderr,
exit status 2, no traceback, nothing run (``--examples -5`` used to evaluate 3,995 examples,
``--examples 0`` to exit 0 with empty results, ``sentiment --sentences -5`` to run 1,052)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from captum_attnflow.cli import main


def run_cli(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exit_info:
        code = exit_info.code
    return code, capsys.readouterr().err


EVALUATE = ["evaluate", "--model", "agreement", "--no-progress"]
CASES = [
    (EVALUATE + ["--examples", "-5"], "--examples: must be a positive integer; got -5"),
    (EVALUATE + ["--examples", "0"], "--examples: must be a positive integer; got 0"),
    (EVALUATE + ["--workers", "-1"], "--workers: must be a non-negative integer"),
    (EVALUATE + ["--batch-size", "0"], "--batch-size: must be a positive integer"),
    (EVALUATE + ["--seed", "-2"], "--seed: must be a non-negative integer"),
    (EVALUATE + ["--resamples", "0"], "--resamples: must be a positive integer"),
    (EVALUATE + ["--max-length", "0"], "--max-length: must be a positive integer"),
    (EVALUATE + ["--fractions", "0,0.5"], "each fraction must lie in (0, 1]"),
    (EVALUATE + ["--fractions", "0.1,x"], "is not a comma-separated list of numbers"),
    (EVALUATE + ["--protect", "0,a"], "is not a comma-separated list of integers"),
    (EVALUATE + ["--position", "first"], "neither a token position"),
    (EVALUATE + ["--aopc-target", "gold"], "invalid choice: 'gold'"),
    (["sentiment", "--sentences", "-5"], "--sentences: must be a positive integer; got -5"),
    (["sentiment", "--sentences", "0"], "--sentences: must be a positive integer; got 0"),
    (["sentiment", "--epochs", "0"], "--epochs: must be a positive integer"),
    (["sentiment", "--train-limit", "-1"], "--train-limit: must be a positive integer"),
    (["sentiment", "--max-length", "0"], "--max-length: must be a positive integer"),
    (["sentiment", "--seed", "-1"], "--seed: must be a non-negative integer"),
    (["sentiment", "--threads", "0"], "--threads: must be a positive integer"),
    (["sentiment", "--flow-solver", "magic"], "--flow-solver: 'magic' is unknown; choose one of auto"),
    (["pronoun", "--sentences", "0"], "--sentences: must be a positive integer"),
    (["pronoun", "--seed", "-1"], "--seed: must be a non-negative integer"),
    (["pronoun", "--max-length", "-3"], "--max-length: must be a positive integer"),
    (["pronoun", "--flow-solver", "magic"], "'magic' is unknown"),
    (["reproduce", "--examples", "-5"], "--examples: must be a positive integer"),
    (["reproduce", "--workers", "0"], "--workers: must be a positive integer"),
]


@pytest.mark.parametrize("argv, message", CASES, ids=[" ".join(c[0][-2:]) + f" ({c[0][0]})" for c in CASES])
def test_bad_numbers_are_refused_in_one_line(argv, message, capsys, tmp_path):
    code, err = run_cli(argv + ["--out", str(tmp_path / "out")], capsys)
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # refused before anything was created or run


def test_python_functions_validate_their_counts():
    from captum_attnflow.studies.finetune import FinetuneConfig
    from captum_attnflow.utils.validation import check_count

    assert check_count(3, "n") == 3 and check_count(0, "seed", minimum=0) == 0 and check_count(None, "m", optional=True) is None
    for value in (0, -5, 1e9, True, "3"):
        with pytest.raises(ValueError, match="n must be a positive integer"):
            check_count(value, "n")
    from captum_attnflow.models.agreement_data import generate_splits
    from captum_attnflow.studies.agreement.study import run_study
    from captum_attnflow.studies.pronoun import templated_examples

    with pytest.raises(ValueError, match="batch_size must be a positive integer; got 0"):
        run_study(None, generate_splits(0, train=1, valid=1, test=1).test, batch_size=0)
    with pytest.raises(ValueError, match="train must be a positive integer"):
        generate_splits(0, train=int(-5), valid=1, test=1)
    with pytest.raises(ValueError, match="count must be between 1 and"):
        templated_examples(0)
    for field, value in (("epochs", 0), ("batch_size", -1), ("train_limit", 0), ("seed", -1), ("max_length", 1.5),
                         ("learning_rate", 0.0), ("test_fraction", 1.0)):
        with pytest.raises(ValueError, match=f"FinetuneConfig.{field} must be"):
            FinetuneConfig(**{field: value})


def _python(*args):
    return subprocess.run([sys.executable, "-m", "captum_attnflow", *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)


def test_real_exit_status_and_one_line(tmp_path):
    """The real process: exit status 2 and exactly one line on stderr."""
    process = _python("evaluate", "--model", "agreement", "--examples", "-5", "--out", str(tmp_path / "a"))
    assert process.returncode == 2 and "--examples: must be a positive integer; got -5" in process.stderr
    assert len(process.stderr.strip().splitlines()) == 1


def test_examples_beyond_the_data_are_refused(capsys, tmp_path):
    code, err = run_cli(["evaluate", "--model", "agreement", "--examples", "5000", "--out", str(tmp_path),
                         "--no-progress"], capsys)
    assert code == 2 and "--examples 5000 exceeds the checkpoint's test split (4000 examples); pass at most 4000" in err
    assert not (tmp_path / "examples.jsonl").exists()


def test_two_runs_into_one_out_at_once(tmp_path, capsys):
    """While a real run writes into --out, a second one (here with --resume) refuses in one line,
    before loading anything."""
    out = tmp_path / "run"
    argv = ["evaluate", "--model", "agreement", "--examples", "400", "--methods", "raw", "--batch-size", "1",
            "--no-progress", "--resamples", "10", "--out", str(out)]
    first = subprocess.Popen([sys.executable, "-m", "captum_attnflow", *argv], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 240
        while not (out / "examples.jsonl").exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, "the first run ended before the second started"
        code, err = run_cli(argv + ["--resume"], capsys)
        assert code == 2 and f"in use by process {first.pid}" in err and len(err.strip().splitlines()) == 1
    finally:
        first.kill()
        first.wait()
