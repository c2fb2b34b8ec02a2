"""Execute the tutorial notebook from a clean kernel, offline, and store its outputs.

The site renders ``docs/tutorials/quickstart.ipynb`` as committed (mkdocs-jupyter with
``execute: false``), so the committed outputs are what readers see; ``tests/test_tutorial.py``
executes the notebook again from a clean kernel and checks that it runs and prints the same text.
After editing the notebook, rerun it here (about a minute on a CPU)::

    python docs/tutorials/execute.py           # executes and rewrites quickstart.ipynb with outputs
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
NOTEBOOK = HERE / "quickstart.ipynb"
ROOT = HERE.parent.parent
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MPLBACKEND": "module://matplotlib_inline.backend_inline"}


def execute(path: Path = NOTEBOOK, cwd: Path | None = None, timeout: int = 600):
    """The notebook at ``path`` executed in a fresh ``python3`` kernel (this checkout first on its
    path, offline), with the cells' timing metadata removed so that reruns give small diffs."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    saved = {name: os.environ.get(name) for name in ["PYTHONPATH", *OFFLINE]}
    os.environ.update(OFFLINE, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    try:
        NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(cwd or path.parent)}}).execute()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    for cell in notebook.cells:
        cell.metadata.pop("execution", None)
    return notebook


def stdout_text(notebook) -> list[str]:
    """The text every code cell printed to stdout (what the test compares)."""
    return ["".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")
            for cell in notebook.cells if cell.cell_type == "code"]


def main() -> int:
    import nbformat

    start = time.perf_counter()
    notebook = execute()
    nbformat.write(notebook, NOTEBOOK)
    print(f"executed {NOTEBOOK.name} in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
