"""The paper's §4 evaluation on the agreement model: Tables 1 and 2.

For every test example and every layer ``l`` the ``[CLS]`` row of raw attention (heads
averaged), attention rollout and attention flow (residual ``0.5·A + 0.5·I``) gives one score per
input position; it is correlated (Spearman's ρ over all positions, ``[CLS]`` and ``[END]``
included) with

* blank-out importance — ``|Δ p(correct class)|`` when the token alone is replaced by ``[UNK]``
  (Table 1), and
* input-gradient importance — ``|Σ_d ∂(p(class 0) - p(class 1)) / ∂e_d|`` for the token's input
  embedding ``e`` (Table 2, the paper's reduction), and the L2 norm ``‖∂(p0 - p1) / ∂e‖₂``
  (Table 2b). On this architecture the paper's sum vanishes in exact arithmetic: every path from
  the embeddings to the classifier passes a LayerNorm, which is invariant to adding
  ``c·(1, …, 1)``, so ``Σ_d ∂f/∂e_d = 0`` and float32 leaves only rounding noise, whose size
  follows the gradient's magnitude. Both tables are reported for that reason.

Examples are batched by exact length, so no padding enters any score.
"""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np
import torch

from captum_attnflow.flow import attention_flow
from captum_attnflow.graph import raw_attention, rollout
from captum_attnflow.models.agreement_data import UNK, AgreementExample, batches_by_length, encode, vocabulary
from captum_attnflow.models.agreement_model import AgreementModel
from captum_attnflow.evaluation.metrics import blank_out_scores, input_gradient_scores, layer_correlations, spearman
from captum_attnflow.utils.validation import check_count

METHODS: tuple[str, ...] = ("raw", "rollout", "flow")
#: the paper's row names for :data:`METHODS`
METHOD_NAMES: dict[str, str] = {"raw": "Raw", "rollout": "Rollout", "flow": "Flow"}
REFERENCES: tuple[str, ...] = ("blank_out", "gradient", "gradient_l2")
#: per-token gradient reduction of each gradient reference
GRADIENT_REFERENCES: dict[str, str] = {"gradient": "abs_sum", "gradient_l2": "l2"}

#: the published table each reference is compared with (the paper has no L2-gradient table)
PAPER_REFERENCE: dict[str, str] = {"blank_out": "blank_out", "gradient": "gradient", "gradient_l2": "gradient"}
#: Abnar & Zuidema (2020), Tables 1 (blank-out) and 2 (input gradients): (mean, std) at L1..L6.
PAPER_TABLES: dict[str, dict[str, list[tuple[float, float]]]] = {
    "blank_out": {
        "raw": [(0.69, 0.27), (0.10, 0.43), (-0.11, 0.49), (-0.09, 0.52), (0.20, 0.45), (0.29, 0.39)],
        "rollout": [(0.32, 0.26), (0.38, 0.27), (0.51, 0.26), (0.62, 0.26), (0.70, 0.25), (0.71, 0.24)],
        "flow": [(0.32, 0.26), (0.44, 0.29), (0.70, 0.25), (0.70, 0.22), (0.71, 0.22), (0.70, 0.22)],
    },
    "gradient": {
        "raw": [(0.53, 0.33), (0.16, 0.38), (-0.06, 0.42), (0.00, 0.47), (0.24, 0.40), (0.46, 0.35)],
        "rollout": [(0.22, 0.31), (0.27, 0.32), (0.39, 0.32), (0.47, 0.32), (0.53, 0.32), (0.54, 0.31)],
        "flow": [(0.22, 0.31), (0.31, 0.34), (0.54, 0.32), (0.61, 0.28), (0.60, 0.28), (0.61, 0.28)],
    },
}


@dataclass
class ExampleScores:
    """Every score of one example; ``n`` = its token count, ``k`` = the number of studied layers.

    Attributes:
        example: the generated example.
        probability: ``p(correct class)`` of the model.
        methods: ``"raw" | "rollout" | "flow"`` -> ``(k, n)`` [CLS]-row scores at the studied layers.
        references: ``"blank_out" | "gradient" | "gradient_l2"`` -> ``(n,)`` scores.
    """

    example: AgreementExample
    probability: float
    methods: dict[str, np.ndarray]
    references: dict[str, np.ndarray]


@dataclass
class StudyResult:
    """Per-example correlations and scores of :func:`run_study`.

    Attributes:
        layers: the studied layers, 1-based (the tables' columns).
        correlations: reference -> method -> ``(examples, k)`` ρ (NaN where undefined).
        scores: one :class:`ExampleScores` per example, in the order of the input examples.
    """

    layers: list[int]
    correlations: dict[str, dict[str, np.ndarray]]
    scores: list[ExampleScores] = field(repr=False)


def _flow_cls_rows(stack: np.ndarray, layers: list[int], method: str) -> np.ndarray:
    """``(b, k, n)`` flow of [CLS] at the 0-based ``layers`` from attention ``(b, L, H, n, n)``."""
    return attention_flow(stack, output_positions=0, layers=layers, flow_solver=method)[:, layers, 0, :]


def run_study(
    model: AgreementModel,
    examples: list[AgreementExample],
    *,
    layers: list[int] | None = None,
    flow_solver: str = "auto",
    batch_size: int = 64,
    executor: Executor | None = None,
    progress: bool = True,
) -> StudyResult:
    """Score ``examples`` with every method and correlate them, per example and layer.

    Args:
        model: the trained classifier (put in eval mode here).
        examples: the test examples.
        layers: 1-based layers to study (default: all).
        flow_solver: ``method`` of :func:`~captum_attnflow.attention_flow`.
        batch_size: examples per forward pass (batches hold examples of one length).
        executor: when given, flow of each batch is computed by ``executor.submit`` (e.g. a
            process pool); the model-side scores stay in this process.
        progress: show a tqdm bar.

    Returns:
        :class:`StudyResult`.

    Raises:
        ValueError: no examples, ``batch_size`` not a positive integer, or a layer outside
            ``1..model.config.layers``.
    """
    from tqdm.auto import tqdm

    if not examples:
        raise ValueError("run_study needs at least one example.")
    check_count(batch_size, "batch_size")
    model.eval()
    num_layers = model.config.layers
    layers = list(range(1, num_layers + 1)) if layers is None else list(layers)
    if not layers or any(not 1 <= layer <= num_layers for layer in layers):
        raise ValueError(f"layers must be 1-based layers within 1..{num_layers}; got {layers}.")
    index = [layer - 1 for layer in layers]
    blank_id = vocabulary().index(UNK)
    ids = encode(examples)
    labels = torch.tensor([x.label for x in examples])

    def probabilities(input_ids: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model(input_ids), -1)

    def class_difference(inputs_embeds: torch.Tensor) -> torch.Tensor:
        p = torch.softmax(model(inputs_embeds=inputs_embeds), -1)
        return p[:, 0] - p[:, 1]

    pending = []
    bar = tqdm(total=len(examples), desc="scoring examples", unit="ex", disable=not progress)
    for batch in batches_by_length([len(x) for x in ids], batch_size):
        input_ids = torch.tensor([ids[i] for i in batch])
        target = labels[batch]
        with torch.no_grad():
            logits, attentions = model(input_ids, output_attentions=True)
        stack = torch.stack(attentions, 1).numpy()  # (b, L, H, n, n)
        methods = {
            "raw": raw_attention(attentions)[:, index, 0].numpy(),
            "rollout": rollout(attentions)[:, index, 0].numpy(),
        }
        flow = (
            executor.submit(_flow_cls_rows, stack, index, flow_solver) if executor is not None
            else _flow_cls_rows(stack, index, flow_solver)
        )
        references = {
            "blank_out": blank_out_scores(
                probabilities, input_ids, target=target, blank_id=blank_id,
                perturbations_per_eval=input_ids.shape[1],
            ).numpy(),
        }
        for name, reduction in GRADIENT_REFERENCES.items():
            references[name] = input_gradient_scores(class_difference, model.embed(input_ids), reduction=reduction).numpy()
        probability = torch.softmax(logits, -1)[torch.arange(len(batch)), target].numpy()
        pending.append((batch, methods, flow, references, probability))
        bar.update(len(batch))
    bar.close()

    scores: list[ExampleScores | None] = [None] * len(examples)
    correlations = {ref: {m: np.empty((len(examples), len(layers))) for m in METHODS} for ref in REFERENCES}
    for batch, methods, flow, references, probability in tqdm(
        pending, desc="collecting flow", disable=not progress or executor is None
    ):
        methods["flow"] = flow.result() if executor is not None else flow
        for ref in REFERENCES:
            for name, rho in layer_correlations(methods, references[ref]).items():
                correlations[ref][name][batch] = rho
        for row, i in enumerate(batch):
            scores[i] = ExampleScores(
                example=examples[i], probability=float(probability[row]),
                methods={name: values[row] for name, values in methods.items()},
                references={name: values[row] for name, values in references.items()},
            )
    return StudyResult(layers=layers, correlations=correlations, scores=scores)


def gradient_diagnostics(result: StudyResult) -> dict[str, float]:
    """How the paper's ``|Σ_d g_d|`` relates to ``‖g‖₂`` over all tokens of the study.

    Returns:
        ``{"median_ratio": median of |Σ_d g_d| / ‖g‖₂ over tokens with ‖g‖₂ > 0,
        "mean_rho": mean over examples of Spearman ρ between the two per-token scores}``.
    """
    sums = np.concatenate([s.references["gradient"] for s in result.scores])
    norms = np.concatenate([s.references["gradient_l2"] for s in result.scores])
    positive = norms > 0
    rhos = np.array([spearman(s.references["gradient"], s.references["gradient_l2"]) for s in result.scores])
    return {
        "median_ratio": float(np.median(sums[positive] / norms[positive])) if positive.any() else float("nan"),
        "mean_rho": float(np.nanmean(rhos)) if np.isfinite(rhos).any() else float("nan"),
    }
