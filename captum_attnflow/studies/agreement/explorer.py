"""``reproduce``'s explorer data: the agreement study's per-example scores for the one-file report."""

from __future__ import annotations

from captum_attnflow.report.page import MAX_EXAMPLES, REFERENCE_LABELS, Explorer, ExplorerExample, ExplorerMethod, layer_labels
from captum_attnflow.models.agreement_data import LABEL_NAMES
from captum_attnflow.studies.agreement.study import METHOD_NAMES, METHODS, REFERENCES


def agreement_explorer(result, *, limit: int = MAX_EXAMPLES) -> Explorer:
    """``reproduce``: [CLS] rows of raw / rollout / flow at the studied layers, blank-out, gradients."""
    
    layers = layer_labels(len(result.layers), result.layers)
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
