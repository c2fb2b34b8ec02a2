"""``evaluate``'s report: the ``examples.jsonl`` records as explorer data
(:func:`evaluation_explorer`, with :func:`token_decoder` for its ``--model``) for the generic
:func:`~captum_attnflow.report.write_report` (:func:`write_evaluation_report`)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from captum_attnflow.report.page import (
    MAX_EXAMPLES,
    write_report,
    REFERENCE_LABELS,
    Explorer,
    ExplorerExample,
    ExplorerMethod,
    layer_labels,
    sentence,
)

def evaluation_explorer(
    records: Sequence[dict], inputs: Sequence[Sequence[int]], decode: Callable[[Sequence[int]], list[str]],
    *, limit: int = MAX_EXAMPLES,
) -> Explorer:
    """``evaluate``: every method and reference of the ``ok`` records.

    Args:
        records: the ``ok`` example records with their ``scores``
            (:func:`~captum_attnflow.evaluation.read_examples`).
        inputs: the token ids of every example, by record ``index``.
        decode: token ids -> token strings (e.g. ``tokenizer.convert_ids_to_tokens``).
        limit: most examples.

    Raises:
        ValueError: no records.
    """
    if not records:
        raise ValueError("no finished example records to show in the explorer.")
    first = records[0]["scores"]
    methods = []
    for key, values in first.items():
        array = np.asarray(values, dtype=np.float64)
        layers = layer_labels(array.shape[0]) if array.ndim == 2 else ("all layers",)
        methods.append(ExplorerMethod(key, REFERENCE_LABELS.get(key, key), layers))
    examples = []
    for record in records[:limit]:
        n = int(record["tokens"])
        tokens = decode(list(inputs[int(record["index"])])[:n])
        info = f"example {record['index']}; label: {record.get('label')}"
        if record.get("aopc_class") is not None:
            info += f"; explained class {record['aopc_class']} (p = {float(record['aopc_probability']):.3f})"
        examples.append(ExplorerExample(sentence(tokens), tokens, record["scores"], info))
    return methods, examples


def token_decoder(model: str) -> Callable[[Sequence[int]], list[str]]:
    """Token ids -> strings for ``evaluate --model``: the agreement vocabulary (``"agreement"`` or a
    ``.pt`` checkpoint) or the tokenizer of a local Hugging Face model directory."""
    if model == "agreement" or model.endswith(".pt"):
        from captum_attnflow.models.agreement_data import vocabulary

        words = vocabulary()
        return lambda ids: [words[i] for i in ids]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model).convert_ids_to_tokens


def write_evaluation_report(out: str | Path, data: Sequence[tuple[Sequence[int], object]], model: str, markdown: str) -> Path:
    """``evaluate``'s ``out/report.html``: the summary ``markdown`` and the explorer of its records.

    Args:
        out: the run's output directory (holds ``examples.jsonl``).
        data: the evaluated ``(token ids, label)`` pairs, by example index.
        model: the ``--model`` argument (:func:`token_decoder`).
        markdown: the summary tables.
    """
    from captum_attnflow.evaluation.results import read_examples

    records = read_examples(out)
    explorer = evaluation_explorer(records, [ids for ids, _ in data], token_decoder(model)) if records else None
    return write_report(Path(out) / "report.html", "Evaluation: faithfulness of attributions", markdown, explorer=explorer)
