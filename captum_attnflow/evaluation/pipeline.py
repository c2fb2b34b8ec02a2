"""The work on one batch of examples (used by :func:`captum_attnflow.evaluation.evaluate`).

:class:`BatchRun` runs the model stage on a padded batch (forward pass with attention, the
blank-out and gradient references from :mod:`captum_attnflow.evaluation.metrics`, raw attention, rollout and
the Captum methods), submits one flow task per example to an executor, and — when an example's
flow arrives — computes AOPC (one forward pass over the example's deduplicated perturbed inputs;
for the predicted class, or the target with ``aopc_target="label"``) and Spearman's ρ against both
references (for the target: the label when given, else the prediction), and writes the example's
record. Failures become records: ``error`` for a bad example, ``lost`` when the executor lost its
task.

:func:`batch_task` does all of this inside a worker that builds the model once from a factory.
"""

from __future__ import annotations

import pickle
import warnings
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from captum_attnflow.evaluation.data import Example, fit_length, pad_batch
from captum_attnflow.evaluation.executors import SerialExecutor
from captum_attnflow.evaluation.faithfulness import aopc, perturbed_inputs
from captum_attnflow.evaluation.methods import (
    Batch, BatchMethod, EvaluationMethod, FlowMethod, Position, flow_task, graph_of, resolve_position,
)
from captum_attnflow.evaluation.models import Classifier
from captum_attnflow.evaluation.results import ResultStore, json_safe
from captum_attnflow.evaluation.metrics import blank_out_scores, input_gradient_scores, spearman

REFERENCES: tuple[str, ...] = ("blank_out", "gradient")


@dataclass
class _Pending:
    """An example between the model stage and its record."""

    example: Example
    truncated: bool
    target: int
    prediction: int
    probability: float
    aopc_class: int
    aopc_probability: float
    scores: dict[str, np.ndarray]
    references: dict[str, np.ndarray]
    graphs: dict[str, tuple[np.ndarray, bool]] = field(default_factory=dict)  # flow method -> (graph, residual)
    flows: dict[str, Future] = field(default_factory=dict)


class BatchRun:
    """The per-batch work of one evaluation, with its settings (see the module docstring)."""

    def __init__(self, classifier: Classifier, methods: list[EvaluationMethod], store: ResultStore | Collector, *,
                 executor: Executor, position: Position, head_fusion: str, residual: bool,
                 gradient_reduction: str, fractions: tuple[float, ...], deletion: str,
                 protected: tuple[int, ...], truncation: str, max_length: int | None,
                 aopc_batch_size: int, aopc_target: str, progress, padding_side: str = "right") -> None:
        self.classifier, self.methods, self.store, self.executor = classifier, methods, store, executor
        self.position, self.head_fusion, self.residual = position, head_fusion, residual
        self.gradient_reduction, self.fractions, self.deletion = gradient_reduction, fractions, deletion
        self.protected, self.truncation, self.max_length = protected, truncation, max_length
        self.aopc_batch_size, self.aopc_target, self.progress = aopc_batch_size, aopc_target, progress
        self.padding_side = padding_side
        self.flows = [m for m in methods if isinstance(m, FlowMethod)]
        # the value-norm / ALTI graphs the methods run on, recorded once per batch
        self.graphs = sorted({graph_of(m) for m in methods} - {"attention"})
        self.broken: str | None = None  # the executor refused work: the rest is lost

    # -- records ---------------------------------------------------------------------------
    def _record(self, index: int, status: str, **fields: Any) -> None:
        self.store.write({"index": index, "status": status, **fields})
        self.progress.update(1)

    def _fail(self, example: Example, error: BaseException) -> None:
        self._record(example.index, "error", error=f"{type(error).__name__}: {error}")

    # -- model stage -----------------------------------------------------------------------
    def validate(self, examples: Sequence[Example]) -> list[tuple[Example, bool]]:
        """Length checks; returns ``(example, truncated)`` to run. Failures become records."""
        if self.broken:
            self.lose(examples, self.broken)
            return []
        runnable: list[tuple[Example, bool]] = []
        for example in examples:
            try:
                runnable.append(fit_length(example, self.max_length, self.truncation))
            except ValueError as error:
                self._fail(example, error)
        return runnable

    def lose(self, examples: Iterable[Example], message: str) -> None:
        """Record ``examples`` as lost (an executor failure); resuming runs them."""
        for example in examples:
            self._record(example.index, "lost", error=message)

    def start(self, runnable: Sequence[tuple[Example, bool]]) -> list[_Pending]:
        """Run the model stage on a batch and submit its flow tasks; failures become records."""
        if not runnable:
            return []
        try:
            pending = self._model_stage(runnable)
        except Exception:  # noqa: BLE001 - isolate the failing example(s) by running each alone
            pending = []
            for item in runnable:
                try:
                    pending.extend(self._model_stage([item]))
                except Exception as error:  # noqa: BLE001 - recorded with the example
                    self._fail(item[0], error)
        if self.flows:
            self._submit_flow(pending)
        return pending

    def _model_stage(self, items: Sequence[tuple[Example, bool]]) -> list[_Pending]:
        examples = [example for example, _ in items]
        input_ids, mask = pad_batch([e.input_ids for e in examples], self.classifier.pad_id, self.padding_side)
        lengths = [len(e.input_ids) for e in examples]
        for example in examples:
            resolve_position(self.position, len(example.input_ids))
        with torch.no_grad():
            probabilities = self.classifier.probabilities(input_ids, mask)
            attentions = tuple(self.classifier.attentions(input_ids, mask))
            contributions = self.classifier.contribution_graphs(input_ids, mask, self.graphs) if self.graphs else {}
        predictions = probabilities.argmax(-1)
        classes = probabilities.shape[-1]
        for example in examples:
            if example.label is not None and not 0 <= example.label < classes:
                raise ValueError(
                    f"example {example.index} has label {example.label}; the model has {classes} "
                    f"classes (0..{classes - 1})."
                )
        targets = torch.tensor([e.label if e.label is not None else int(p) for e, p in zip(examples, predictions)])
        batch = Batch(input_ids, mask, targets, lengths, attentions, side=self.padding_side, contributions=contributions)
        references = {
            "blank_out": blank_out_scores(
                self.classifier.probabilities, input_ids, target=targets, blank_id=self.classifier.blank_id,
                additional_forward_args=(mask,), mask=mask, perturbations_per_eval=min(8, input_ids.shape[1]),
            ),
            "gradient": input_gradient_scores(
                self.classifier.probabilities_from_embeddings, self.classifier.embed(input_ids).detach(),
                target=targets, additional_forward_args=(mask,), reduction=self.gradient_reduction, mask=mask,
            ),
        }
        references = {k: v.detach().to(torch.float64).numpy() for k, v in references.items()}
        if self.gradient_reduction == "abs_sum":
            self._check_abs_sum(references["gradient"], input_ids, mask, targets)
        method_scores = {
            m.name: m.scores(
                batch, self.classifier, position=self.position, head_fusion=self.head_fusion, residual=self.residual
            )
            for m in self.methods if isinstance(m, BatchMethod)
        }
        graphs = {
            m.name: (m.graphs(batch, self.head_fusion), m.task_residual(batch, self.residual)) for m in self.flows
        }
        chosen = probabilities.gather(1, targets[:, None])[:, 0]
        # AOPC follows the predicted class (ERASER) or the same target as the references
        aopc_classes = predictions if self.aopc_target == "predicted" else targets
        aopc_chosen = probabilities.gather(1, aopc_classes[:, None])[:, 0]
        return [
            _Pending(
                example=example, truncated=truncated, target=int(targets[b]), prediction=int(predictions[b]),
                probability=float(chosen[b]), aopc_class=int(aopc_classes[b]),
                aopc_probability=float(aopc_chosen[b]), scores={name: scores[b] for name, scores in method_scores.items()},
                references={name: values[b, batch.live(b)] for name, values in references.items()},
                graphs={name: (per_example[b], residual) for name, (per_example, residual) in graphs.items()},
            )
            for b, (example, truncated) in enumerate(items)
        ]

    def _check_abs_sum(self, scores: np.ndarray, input_ids, mask, targets) -> None:
        """Warn when ``|Σ_d g_d|`` is rounding noise: orders of magnitude below ``‖g‖₂``.

        That happens in models whose embeddings reach the output only through LayerNorms (adding
        a constant to every dimension changes nothing, so ``Σ_d g_d = 0`` exactly).
        """
        norms = input_gradient_scores(
            self.classifier.probabilities_from_embeddings, self.classifier.embed(input_ids).detach(),
            target=targets, additional_forward_args=(mask,), reduction="l2", mask=mask,
        )
        largest = float(norms.max())
        if largest > 0 and float(np.max(scores)) < 1e-4 * largest:
            warnings.warn(
                f"gradient_reduction='abs_sum' gives |sum_d g_d| <= {float(np.max(scores)):.1e} while the "
                f"gradient norms reach {largest:.1e}: this model is invariant to shifting all embedding "
                f"dimensions (LayerNorm), so the gradient reference ranks rounding noise. Use "
                f"gradient_reduction='l2' (--gradient-reduction l2).",
                stacklevel=2,
            )

    def _submit_flow(self, pending: list[_Pending]) -> None:
        for item in pending:
            for method in self.flows:
                graph, residual = item.graphs.pop(method.name)
                try:
                    future = self.executor.submit(flow_task, graph, self.position, residual, method.solver)
                except Exception as error:  # noqa: BLE001 - a shut-down or broken executor
                    self.broken = f"the executor refused the flow task: {type(error).__name__}: {error}"
                    future = Future()
                    future.set_exception(error)
                item.flows[method.name] = future

    # -- finishing stage -------------------------------------------------------------------
    def finish(self, pending: Iterable[_Pending]) -> None:
        """Wait for flow, compute AOPC and Spearman, and write the records."""
        for item in pending:
            index = item.example.index
            scores = dict(item.scores)
            failure = self._collect_flows(item, scores)
            if failure is not None:
                status, error = failure
                self._record(index, status, error=error)
                continue
            try:
                metrics = self._metrics(item, scores)
            except Exception as error:  # noqa: BLE001 - recorded with the example
                self._fail(item.example, error)
                continue
            ordered = {m.name: scores[m.name] for m in self.methods}
            self._record(
                index, "ok", tokens=len(item.example.input_ids), truncated=item.truncated, label=item.example.label,
                target=item.target, prediction=item.prediction, probability=item.probability,
                aopc_class=item.aopc_class, aopc_probability=item.aopc_probability, scores={**ordered, **item.references}, metrics=metrics,
            )

    @staticmethod
    def _collect_flows(item: _Pending, scores: dict[str, np.ndarray]) -> tuple[str, str] | None:
        """Wait for the example's flow tasks and add their scores; ``(status, error)`` when one failed:
        ``lost`` (the worker or pool died: resuming reruns it) before ``error`` (the example itself)."""
        failures = []
        for name, future in item.flows.items():
            try:
                status, value = future.result()
            except Exception as error:  # noqa: BLE001 - the worker or the pool died
                failures.append(("lost", f"flow task lost: {type(error).__name__}: {error}"))
                continue
            if status != "ok":
                failures.append(("error", f"{name}: {value}"))
                continue
            scores[name] = value
        return min(failures, default=None, key=lambda failure: failure[0] != "lost")

    def _metrics(self, item: _Pending, scores: dict[str, np.ndarray]) -> dict[str, dict[str, list[float]]]:
        ids = list(item.example.input_ids)
        n = len(ids)
        candidates = np.ones(n, dtype=bool)
        for position in self.protected:
            if -n <= position < n:
                candidates[position] = False
        curves = {}  # (method, row) -> (deleted inputs, kept inputs)
        for name, rows in scores.items():
            for row, values in enumerate(rows):
                curves[name, row] = perturbed_inputs(
                    ids, values, candidates, self.fractions, blank_id=self.classifier.blank_id, deletion=self.deletion
                )
        unique = list(dict.fromkeys(tuple(s) for deleted, kept in curves.values() for s in deleted + kept))
        probability = dict(zip(unique, self._probabilities(unique, item.aopc_class)))
        metrics: dict[str, dict[str, list[float]]] = {}
        for name, rows in scores.items():
            metrics[name] = {
                f"spearman_{ref}": spearman(rows, np.broadcast_to(item.references[ref], rows.shape)).tolist()
                for ref in REFERENCES
            }
            for metric, curve in (("aopc_comprehensiveness", 0), ("aopc_sufficiency", 1)):
                metrics[name][metric] = [
                    aopc(item.aopc_probability, [probability[tuple(s)] for s in curves[name, row][curve]])
                    for row in range(len(rows))
                ]
        return metrics

    def _probabilities(self, sequences: list[tuple[int, ...]], target: int) -> list[float]:
        """``p(target | sequence)`` for each (unpadded) sequence, in padded chunks."""
        out: list[float] = []
        for start in range(0, len(sequences), self.aopc_batch_size):
            chunk = sequences[start : start + self.aopc_batch_size]
            ids, mask = pad_batch(chunk, self.classifier.pad_id, self.padding_side)
            with torch.no_grad():
                out.extend(self.classifier.probabilities(ids, mask)[:, target].tolist())
        return out


class Collector:
    """Stands in for the store and the progress bar inside a worker: keeps the records."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(json_safe(record))

    def update(self, count: int) -> None:
        """Progress is shown by the main process."""


_CLASSIFIERS: dict[bytes, Classifier] = {}


def cached_classifier(factory: Callable[[], Classifier]) -> Classifier:
    """``factory()``, built once per process (keyed by the pickled factory)."""
    key = pickle.dumps(factory)
    if key not in _CLASSIFIERS:
        classifier = factory()
        if not isinstance(classifier, Classifier):
            raise TypeError(
                f"the model factory must return a Classifier (e.g. HFClassifier); got {type(classifier).__name__}."
            )
        _CLASSIFIERS[key] = classifier
    return _CLASSIFIERS[key]


def batch_task(factory: Callable[[], Classifier], methods: list[EvaluationMethod], settings: dict[str, Any],
               runnable: list[tuple[Example, bool]]) -> list[dict[str, Any]]:
    """The whole evaluation of one batch, in a worker that loads the model once (``factory``).

    Returns the batch's records (``ok`` or ``error``); flow is solved in the worker itself.
    """
    collector = Collector()
    classifier = cached_classifier(factory)
    run = BatchRun(classifier, methods, collector, executor=SerialExecutor(), progress=collector, **settings)
    run.finish(run.start(runnable))
    return collector.records
