"""Explorer data of each command: its per-example scores as :class:`ExplorerMethod` menus and
:class:`ExplorerExample` entries for :func:`~captum_attnflow.report.page.write_report`.

* :func:`agreement_explorer` — ``reproduce`` (the agreement study's :class:`StudyResult`).
* :func:`sentiment_explorer` — ``sentiment`` (:class:`SentimentResult`).
* :func:`pronoun_explorer` — ``pronoun`` (:class:`PronounResult`).
* :func:`evaluation_explorer` — ``evaluate`` (the ``examples.jsonl`` records), with
  :func:`token_decoder` for its ``--model``.

Each returns ``(methods, examples)`` for at most ``limit`` examples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from captum_attnflow.report.page import MAX_EXAMPLES, ExplorerExample, ExplorerMethod
from captum_attnflow.visualize import word_pieces

Explorer = tuple[list[ExplorerMethod], list[ExplorerExample]]

#: menu labels of the reference scores every study computes
REFERENCE_LABELS: dict[str, str] = {
    "blank_out": "blank-out |Δp| ([UNK])",
    "gradient": "input gradient |Σ_d g_d|",
    "gradient_l2": "input gradient ‖g‖₂",
}


def _layers(count: int, numbers: Sequence[int] | None = None) -> tuple[str, ...]:
    return tuple(f"L{layer}" for layer in (numbers if numbers is not None else range(1, count + 1)))


def sentence(tokens: Sequence[str], *, limit: int = 90) -> str:
    """Readable text of ``tokens`` (word pieces joined), cut to ``limit`` characters."""
    text = "".join((" " if starts and index else "") + piece for index, (piece, starts) in enumerate(word_pieces(tokens)))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def agreement_explorer(result, *, limit: int = MAX_EXAMPLES) -> Explorer:
    """``reproduce``: [CLS] rows of raw / rollout / flow at the studied layers, blank-out, gradients."""
    from captum_attnflow.agreement.data import LABEL_NAMES
    from captum_attnflow.agreement.study import METHOD_NAMES, METHODS, REFERENCES

    layers = _layers(len(result.layers), result.layers)
    methods = [ExplorerMethod(name, f"{METHOD_NAMES[name]}, [CLS] row", layers) for name in METHODS]
    methods += [ExplorerMethod(name, REFERENCE_LABELS[name]) for name in REFERENCES]
    examples = []
    for scores in result.scores[:limit]:
        example = scores.example
        words = example.words
        info = (f"label: {LABEL_NAMES[example.label]} (head noun “{words[example.head]}”); "
                f"p(correct class) = {scores.probability:.3f}; attractors: "
                + (", ".join(words[i] for i in example.attractors) or "none"))
        right = scores.probability > 0.5  # two classes: the prediction is the gold class iff p(gold) > 0.5
        examples.append(ExplorerExample(
            " ".join(words), list(example.tokens), {**scores.methods, **scores.references}, info,
            prediction=LABEL_NAMES[example.label if right else 1 - example.label],
            probability=scores.probability if right else 1.0 - scores.probability, gold=LABEL_NAMES[example.label]))
    return methods, examples


def sentiment_explorer(result, *, limit: int = MAX_EXAMPLES) -> Explorer:
    """``sentiment``: raw / rollout / flow in both views at every layer, gradients, blank-out."""
    from captum_attnflow.studies.methods import METHODS
    from captum_attnflow.studies.sentiment import REFERENCES, VIEWS

    view_names = {"max": "max over queries", "cls": "[CLS] row"}
    count = result.scores[(next(iter(VIEWS)), METHODS[0])][0].shape[0]
    methods = [ExplorerMethod(f"{method}/{view}", f"{method}, {view_names.get(view, view)}", _layers(count))
               for view in VIEWS for method in METHODS]
    methods += [ExplorerMethod(name, REFERENCE_LABELS[name]) for name in REFERENCES]
    examples = []
    for index, tokens in enumerate(result.tokens[:limit]):
        scores = {f"{method}/{view}": result.scores[(view, method)][index] for view in VIEWS for method in METHODS}
        scores.update({name: result.scores[name][index] for name in REFERENCES})
        label = "positive" if result.predictions[index] else "negative"
        examples.append(ExplorerExample(sentence(tokens[1:-1]), tokens, scores, f"predicted {label}"))
    return methods, examples


def pronoun_explorer(result, *, limit: int = MAX_EXAMPLES) -> Explorer:
    """``pronoun``: raw / rollout / flow of the predicting (last) position at every layer."""
    from captum_attnflow.studies.methods import METHODS

    count = result.relevance[METHODS[0]][0].shape[0]
    methods = [ExplorerMethod(name, f"{name}, last position", _layers(count)) for name in METHODS]
    examples = []
    for index, tokens in enumerate(result.tokens[:limit]):
        his, her = result.probabilities[index]
        info = f"P(“ his”) = {his:.3f}, P(“ her”) = {her:.3f}; referents: " + " / ".join(result.examples[index].referents)
        examples.append(ExplorerExample(result.examples[index].text, tokens,
                                        {name: result.relevance[name][index] for name in METHODS}, info))
    return methods, examples


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
        layers = _layers(array.shape[0]) if array.ndim == 2 else ("all layers",)
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
        from captum_attnflow.agreement.data import vocabulary

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
    from captum_attnflow.report.page import write_report

    records = read_examples(out)
    explorer = evaluation_explorer(records, [ids for ids, _ in data], token_decoder(model)) if records else None
    return write_report(Path(out) / "report.html", "Evaluation: faithfulness of attributions", markdown, explorer=explorer)
