"""Run an evaluation over a dataset: batching, executors, streaming, resumption.

The work of one example splits in two:

1. **In the main process**, on padded batches: the model's forward pass with attention, the
   reference scores (blank-out via Captum ``FeatureAblation``, input gradients via ``Saliency``,
   from :mod:`captum_attnflow.metrics`), raw attention, rollout and every Captum method.
2. **In the executor**: attention flow, the expensive part, as one task per example that receives
   only the example's head-fused attention graph ``(L, n, n)`` as numpy
   (:func:`~captum_attnflow.evaluation.methods.flow_task`). The model is never shipped, so any
   ``concurrent.futures.Executor`` works unchanged: the default runs in-process,
   :func:`process_pool` gives local worker processes, and ``dask.distributed``'s
   ``client.get_executor()`` (or Ray's executor) spreads flow over a cluster.

While workers solve flow for a batch, the main process already runs the model on the next ones
(up to ``max_in_flight`` examples are pending). When an example's flow arrives, the main process
computes AOPC for every method (one forward pass over the example's deduplicated perturbed
inputs) and Spearman's ρ against both references, and streams the example's record to disk.

With a fast flow solver the model's own passes (blank-out, AOPC) dominate, so the main process
becomes the bottleneck. Passing a **model factory** instead of a model — a picklable
``factory() -> Classifier``, e.g. ``functools.partial(load_my_classifier, path)`` — moves the
*whole* evaluation of each batch into the executor (:func:`batch_task`): every worker builds
the model once, on its first batch, and returns finished records; the main process only checks
lengths and streams records. The model itself is still never shipped.

Failures are per example: a bad example (empty, too long with ``truncation="error"``, a label
out of range, a model error) gets ``status="error"`` with its message; an example whose flow
task raised in the executor (a dead worker, a broken pool) gets ``status="lost"``. Resuming
(``resume=True``) runs exactly the examples that have no ``ok``/``error`` record.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import pickle
from collections import deque
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from captum_attnflow.evaluation.data import Example, Truncation, dataset_size, fit_length, iterate_examples, pad_batch
from captum_attnflow.evaluation.faithfulness import (
    DEFAULT_FRACTIONS, DELETIONS, Deletion, aopc, check_fractions, perturbed_inputs,
)
from captum_attnflow.evaluation.methods import (
    Batch, BatchMethod, EvaluationMethod, FlowMethod, Position, flow_task, resolve_methods, resolve_position,
)
from captum_attnflow.evaluation.models import Classifier, HFClassifier
from captum_attnflow.evaluation.results import ResultStore, ResultTable, json_safe
from captum_attnflow.graph import HEAD_FUSIONS
from captum_attnflow.metrics import GRADIENT_REDUCTIONS, GradientReduction, blank_out_scores, input_gradient_scores, spearman

REFERENCES: tuple[str, ...] = ("blank_out", "gradient")


class SerialExecutor(Executor):
    """The default executor: runs each task in the calling thread when it is submitted."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as error:  # noqa: BLE001 - delivered through the future, like a pool
            future.set_exception(error)
        return future


def _single_thread() -> None:
    torch.set_num_threads(1)


def process_pool(workers: int) -> concurrent.futures.ProcessPoolExecutor:
    """A local pool of ``workers`` processes for flow (``spawn`` start, one torch thread each).

    ``spawn`` keeps workers independent of the parent's threads (forking a process that runs
    torch can deadlock); each worker imports the package once, then solves many examples.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer; got {workers!r}.")
    return concurrent.futures.ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context("spawn"), initializer=_single_thread
    )


@dataclass
class Evaluation:
    """What :func:`evaluate` returns.

    Attributes:
        table: the summary :class:`ResultTable` over every ``ok`` example (this run and resumed ones).
        examples: the ``ok`` per-example records, by index: ``tokens``, ``target``,
            ``probability``, ``metrics[method][metric]`` (one value per row) and — unless the run
            streamed to ``out``, where :func:`~captum_attnflow.evaluation.results.read_examples`
            reads them — ``scores[method]`` (rows × tokens; also ``blank_out`` and ``gradient``).
        errors: index -> message for examples that failed.
        lost: index -> message for examples whose task was lost in the executor (a dead
            worker); resume to run them.
    """

    table: ResultTable
    examples: list[dict[str, Any]]
    errors: dict[int, str] = field(default_factory=dict)
    lost: dict[int, str] = field(default_factory=dict)


@dataclass
class _Pending:
    """An example between the model stage and its record."""

    example: Example
    truncated: bool
    target: int
    prediction: int
    probability: float
    scores: dict[str, np.ndarray]
    references: dict[str, np.ndarray]
    graph: np.ndarray | None = None
    flow: Future | None = None


class _Run:
    """State of one :func:`evaluate` call (see the module docstring for the flow of work)."""

    def __init__(self, classifier: Classifier, methods: list[EvaluationMethod], store: ResultStore | _Collector, *,
                 executor: Executor, position: Position, head_fusion: str, residual: bool,
                 gradient_reduction: str, fractions: tuple[float, ...], deletion: str,
                 protected: tuple[int, ...], truncation: str, max_length: int | None,
                 aopc_batch_size: int, progress) -> None:
        self.classifier, self.methods, self.store, self.executor = classifier, methods, store, executor
        self.position, self.head_fusion, self.residual = position, head_fusion, residual
        self.gradient_reduction, self.fractions, self.deletion = gradient_reduction, fractions, deletion
        self.protected, self.truncation, self.max_length = protected, truncation, max_length
        self.aopc_batch_size, self.progress = aopc_batch_size, progress
        self.flow = next((m for m in methods if isinstance(m, FlowMethod)), None)
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
        if self.flow is not None:
            self._submit_flow(pending)
        return pending

    def _model_stage(self, items: Sequence[tuple[Example, bool]]) -> list[_Pending]:
        examples = [example for example, _ in items]
        input_ids, mask = pad_batch([e.input_ids for e in examples], self.classifier.pad_id)
        lengths = [len(e.input_ids) for e in examples]
        for example in examples:
            resolve_position(self.position, len(example.input_ids))
        with torch.no_grad():
            probabilities = self.classifier.probabilities(input_ids, mask)
            attentions = tuple(self.classifier.attentions(input_ids, mask))
        predictions = probabilities.argmax(-1)
        classes = probabilities.shape[-1]
        for example in examples:
            if example.label is not None and not 0 <= example.label < classes:
                raise ValueError(f"example {example.index} has label {example.label}; the model has {classes} classes (0..{classes - 1}).")
        targets = torch.tensor([e.label if e.label is not None else int(p) for e, p in zip(examples, predictions)])
        batch = Batch(input_ids, mask, targets, lengths, attentions)
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
        method_scores = {
            m.name: m.scores(batch, self.classifier, position=self.position, head_fusion=self.head_fusion, residual=self.residual)
            for m in self.methods if isinstance(m, BatchMethod)
        }
        graphs = self.flow.graphs(batch, self.head_fusion) if self.flow is not None else [None] * len(items)
        chosen = probabilities.gather(1, targets[:, None])[:, 0]
        return [
            _Pending(
                example=example, truncated=truncated, target=int(targets[b]), prediction=int(predictions[b]),
                probability=float(chosen[b]), scores={name: scores[b] for name, scores in method_scores.items()},
                references={name: values[b, : lengths[b]] for name, values in references.items()},
                graph=graphs[b],
            )
            for b, (example, truncated) in enumerate(items)
        ]

    def _submit_flow(self, pending: list[_Pending]) -> None:
        for item in pending:
            try:
                item.flow = self.executor.submit(flow_task, item.graph, self.position, self.residual, self.flow.solver)
            except Exception as error:  # noqa: BLE001 - a shut-down or broken executor
                self.broken = f"the executor refused the flow task: {type(error).__name__}: {error}"
                item.flow = Future()
                item.flow.set_exception(error)
            item.graph = None

    # -- finishing stage -------------------------------------------------------------------
    def finish(self, pending: Iterable[_Pending]) -> None:
        """Wait for flow, compute AOPC and Spearman, and write the records."""
        for item in pending:
            index = item.example.index
            scores = dict(item.scores)
            if item.flow is not None:
                try:
                    status, value = item.flow.result()
                except Exception as error:  # noqa: BLE001 - the worker or the pool died
                    self._record(index, "lost", error=f"flow task lost: {type(error).__name__}: {error}")
                    continue
                if status != "ok":
                    self._record(index, "error", error=f"flow: {value}")
                    continue
                scores["flow"] = value
            try:
                metrics = self._metrics(item, scores)
            except Exception as error:  # noqa: BLE001 - recorded with the example
                self._fail(item.example, error)
                continue
            ordered = {m.name: scores[m.name] for m in self.methods}
            self._record(
                index, "ok", tokens=len(item.example.input_ids), truncated=item.truncated, label=item.example.label,
                target=item.target, prediction=item.prediction, probability=item.probability,
                scores={**ordered, **item.references}, metrics=metrics,
            )

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
                curves[name, row] = perturbed_inputs(ids, values, candidates, self.fractions, blank_id=self.classifier.blank_id, deletion=self.deletion)
        unique = list(dict.fromkeys(tuple(s) for deleted, kept in curves.values() for s in deleted + kept))
        probability = dict(zip(unique, self._probabilities(unique, item.target)))
        metrics: dict[str, dict[str, list[float]]] = {}
        for name, rows in scores.items():
            metrics[name] = {
                f"spearman_{ref}": spearman(rows, np.broadcast_to(item.references[ref], rows.shape)).tolist()
                for ref in REFERENCES
            }
            deleted = [aopc(item.probability, [probability[tuple(s)] for s in curves[name, r][0]]) for r in range(len(rows))]
            kept = [aopc(item.probability, [probability[tuple(s)] for s in curves[name, r][1]]) for r in range(len(rows))]
            metrics[name]["aopc_comprehensiveness"] = deleted
            metrics[name]["aopc_sufficiency"] = kept
        return metrics

    def _probabilities(self, sequences: list[tuple[int, ...]], target: int) -> list[float]:
        """``p(target | sequence)`` for each (unpadded) sequence, in padded chunks."""
        out: list[float] = []
        for start in range(0, len(sequences), self.aopc_batch_size):
            chunk = sequences[start : start + self.aopc_batch_size]
            ids, mask = pad_batch(chunk, self.classifier.pad_id)
            with torch.no_grad():
                out.extend(self.classifier.probabilities(ids, mask)[:, target].tolist())
        return out


class _Collector:
    """Stands in for the store and the progress bar inside a worker: keeps the records."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(json_safe(record))

    def update(self, count: int) -> None:
        """Progress is shown by the main process."""


_CLASSIFIERS: dict[bytes, Classifier] = {}


def _cached_classifier(factory: Callable[[], Classifier]) -> Classifier:
    """``factory()``, built once per process (keyed by the pickled factory)."""
    key = pickle.dumps(factory)
    if key not in _CLASSIFIERS:
        classifier = factory()
        if not isinstance(classifier, Classifier):
            raise TypeError(f"the model factory must return a Classifier (e.g. HFClassifier); got {type(classifier).__name__}.")
        _CLASSIFIERS[key] = classifier
    return _CLASSIFIERS[key]


def batch_task(factory: Callable[[], Classifier], methods: list[EvaluationMethod], settings: dict[str, Any],
               runnable: list[tuple[Example, bool]]) -> list[dict[str, Any]]:
    """The whole evaluation of one batch, in a worker that loads the model once (``factory``).

    Returns the batch's records (``ok`` or ``error``); flow is solved in the worker itself.
    """
    collector = _Collector()
    run = _Run(_cached_classifier(factory), methods, collector, executor=SerialExecutor(), progress=collector, **settings)
    run.finish(run.start(runnable))
    return collector.records


def _batches(examples: Iterator[Example], size: int) -> Iterator[list[Example]]:
    batch: list[Example] = []
    for example in examples:
        batch.append(example)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def evaluate(
    model: Classifier | nn.Module | Callable[[], Classifier],
    data: Iterable[Any],
    methods: str | Sequence[str | EvaluationMethod] = ("raw", "rollout", "flow"),
    *,
    position: Position = 0,
    head_fusion: str = "mean",
    residual: bool = True,
    gradient_reduction: GradientReduction = "l2",
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    deletion: Deletion = "blank",
    protected: Sequence[int] | None = None,
    batch_size: int = 8,
    truncation: Truncation = "warn",
    max_length: int | None = None,
    executor: Executor | None = None,
    max_in_flight: int | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    flow_solver: str = "auto",
    aopc_batch_size: int = 64,
    confidence: float = 0.95,
    resamples: int = 1000,
    seed: int = 0,
) -> Evaluation:
    """Faithfulness of explanation methods over a dataset (Abnar & Zuidema 2020, §4, plus AOPC).

    For each example: the per-token scores of every method (attention methods: the traced query
    at every layer), the reference scores (blank-out and input gradients, for the target class),
    Spearman's ρ of each method (per layer) against each reference, and AOPC comprehensiveness and
    sufficiency. Summarised in :attr:`Evaluation.table`.

    Args:
        model: a :class:`Classifier`, or a Hugging Face sequence-classification model (wrapped in
            :class:`HFClassifier`; it must use eager attention) — then only flow runs in the
            executor — or a picklable factory returning a :class:`Classifier` — then whole batches
            run in the executor, each worker building the model once (see the module docstring).
        data: an iterable of examples (dicts with ``input_ids`` and optionally ``label``, pairs
            ``(input_ids, label)``, or token-id sequences) or a ``DataLoader`` of padded batches;
            see :mod:`captum_attnflow.evaluation.data`. The target class is the label when given,
            else the model's prediction.
        methods: names from :data:`~captum_attnflow.evaluation.methods.METHODS` (a list or one
            comma-separated string) and/or method objects such as ``CaptumMethod``.
        position: the query traced by attention methods (``0`` = ``[CLS]``; negative counts from
            each example's end, e.g. ``-1`` for a causal LM's last token), or ``"max"`` for the
            maximum over all query positions per token (the paper's SST-2 protocol).
        head_fusion, residual: attention-graph options (see :func:`captum_attnflow.rollout`).
        gradient_reduction: per-token reduction of the input-gradient reference: ``"l2"``
            (default), ``"abs_sum"`` (``|Σ_d g_d|``, the paper's code) or ``"sum"``. ``abs_sum`` is
            exactly 0 up to rounding for models whose embeddings reach the output only through
            LayerNorms (BERT; pre-LN GPT-2 blocks such as the agreement model), where adding a
            constant to every embedding dimension changes nothing — so its ranks are noise there.
        fractions: AOPC shares ``k`` of the perturbable tokens, each in ``(0, 1]``.
        deletion: ``"blank"`` (replace by the blank id) or ``"remove"`` (drop the token).
        protected: positions never perturbed by AOPC (negative from the end), e.g. ``(0, -1)`` for
            ``[CLS] … [SEP]``; default: ``(position,)`` (none for ``"max"``).
        batch_size: examples per padded batch (results do not depend on it).
        truncation: an example longer than ``max_length``: ``"warn"`` cuts it (recorded as
            ``truncated``), ``"error"`` records it as failed.
        max_length: default ``model.max_length``.
        executor: any ``concurrent.futures.Executor`` for flow, or for whole batches with a model
            factory (default: in-process);
            :func:`process_pool`, ``dask.distributed.Client(...).get_executor()``, ... It is not
            shut down here.
        max_in_flight: examples submitted but not yet finished (default ``4 * batch_size``).
        out: directory for ``examples.jsonl`` (streamed) and ``config.json``; ``None`` = memory.
        resume: continue the run in ``out``: finished examples are skipped, lost and missing
            ones run. The settings must match.
        progress: show a tqdm bar.
        flow_solver: max-flow solver for flow (``"auto"``: the fastest exact one).
        aopc_batch_size: rows per forward pass when scoring perturbed inputs.
        confidence, resamples, seed: the bootstrap interval of the table.

    Returns:
        :class:`Evaluation` with the table, the ``ok`` example records, and the errors and lost
        examples by index.

    Raises:
        ValueError, TypeError: bad settings (unknown method — the valid names are listed —,
            fractions, deletion, output directory, ...). Bad *examples* do not raise; they are
            recorded as errors.
    """
    from tqdm.auto import tqdm

    factory = None
    if isinstance(model, Classifier):
        classifier = model
    elif isinstance(model, nn.Module):
        classifier = HFClassifier(model)
    elif callable(model):
        factory = model
        classifier = _cached_classifier(factory)
    else:
        raise TypeError(f"model must be a Classifier, a Hugging Face model or a factory returning a Classifier; got {type(model).__name__}.")
    resolved = resolve_methods(methods, flow_solver=flow_solver)
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"unknown head_fusion {head_fusion!r}; choose one of {HEAD_FUSIONS}.")
    if gradient_reduction not in GRADIENT_REDUCTIONS:
        raise ValueError(f"unknown gradient_reduction {gradient_reduction!r}; choose one of {GRADIENT_REDUCTIONS}.")
    if deletion not in DELETIONS:
        raise ValueError(f"unknown deletion {deletion!r}; choose one of {DELETIONS}.")
    if position != "max" and (isinstance(position, bool) or not isinstance(position, int)):
        raise TypeError(f"position must be an integer token position or 'max'; got {position!r}.")
    for name, value in (("batch_size", batch_size), ("aopc_batch_size", aopc_batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer; got {value!r}.")
    fractions = check_fractions(fractions)
    if resume and out is None:
        raise ValueError("resume=True needs out=DIR, the directory of the run to continue.")
    if protected is None:
        protected = () if position == "max" else (position,)
    protected = tuple(int(p) for p in protected)
    max_length = classifier.max_length if max_length is None else max_length
    config = {
        "methods": [m.name for m in resolved], "position": position, "head_fusion": head_fusion,
        "residual": residual, "gradient_reduction": gradient_reduction, "fractions": list(fractions),
        "deletion": deletion, "protected": list(protected), "truncation": truncation,
        "max_length": max_length, "blank_id": classifier.blank_id, "flow_solver": flow_solver,
    }
    store = ResultStore(out, config, resume=resume)
    done = store.done()
    total = dataset_size(data)
    bar = tqdm(total=total, initial=len(done), disable=not progress, unit="ex", desc="evaluate")
    settings = dict(
        position=position, head_fusion=head_fusion, residual=residual, gradient_reduction=gradient_reduction,
        fractions=fractions, deletion=deletion, protected=protected, truncation=truncation, max_length=max_length,
        aopc_batch_size=aopc_batch_size,
    )
    executor = executor or SerialExecutor()
    run = _Run(classifier, resolved, store, executor=executor, progress=bar, **settings)
    limit = max_in_flight if max_in_flight is not None else 4 * batch_size
    in_flight: deque[tuple[list[tuple[Example, bool]], Any]] = deque()

    def settle(runnable, work) -> None:
        if factory is None:
            run.finish(work)
            return
        try:
            records = work.result()
        except Exception as error:  # noqa: BLE001 - the worker or the pool died
            run.lose([example for example, _ in runnable], f"batch lost: {type(error).__name__}: {error}")
            return
        for record in records:
            store.write(record)
            bar.update(1)

    try:
        todo = (example for example in iterate_examples(data) if example.index not in done)
        for examples in _batches(todo, batch_size):
            runnable = run.validate(examples)
            if not runnable:
                continue
            if factory is None:
                in_flight.append((runnable, run.start(runnable)))
            else:
                try:
                    in_flight.append((runnable, executor.submit(batch_task, factory, resolved, settings, runnable)))
                except Exception as error:  # noqa: BLE001 - a shut-down or broken executor
                    run.broken = f"the executor refused the batch: {type(error).__name__}: {error}"
                    run.lose([example for example, _ in runnable], run.broken)
            while in_flight and sum(len(r) for r, _ in in_flight) > limit:
                settle(*in_flight.popleft())
        while in_flight:
            settle(*in_flight.popleft())
    finally:
        bar.close()
        store.close()
    ok = store.by_status("ok")
    table = ResultTable.from_examples(
        ok, {m.name: m.per_layer for m in resolved}, confidence=confidence, resamples=resamples, seed=seed
    )
    return Evaluation(
        table=table, examples=ok,
        errors={r["index"]: r["error"] for r in store.by_status("error")},
        lost={r["index"]: r["error"] for r in store.by_status("lost")},
    )
