"""Run an evaluation over a dataset: batching, executors, streaming, resumption.

The work of one example splits in two:

1. **In the main process**, on padded batches: the model's forward pass with attention, the
   reference scores (blank-out via Captum ``FeatureAblation``, input gradients via ``Saliency``,
   from :mod:`captum_attnflow.evaluation.metrics`), raw attention, rollout and every Captum method.
2. **In the executor**: attention flow, the expensive part, as one task per example that receives
   only the example's head-fused attention graph ``(L, n, n)`` as numpy
   (:func:`~captum_attnflow.evaluation.methods.flow_task`). The model is never shipped, so any
   ``concurrent.futures.Executor`` works unchanged: the default runs in-process,
   :func:`~captum_attnflow.evaluation.executors.process_pool` gives local worker processes,
   and ``dask.distributed``'s ``client.get_executor()`` (or Ray's executor) spreads flow over a
   cluster.

While workers solve flow for a batch, the main process already runs the model on the next ones
(up to ``max_in_flight`` examples are pending). When an example's flow arrives, the main process
computes AOPC for every method (one forward pass over the example's deduplicated perturbed
inputs) and Spearman's ρ against both references, and streams the example's record to disk.

With a fast flow solver the model's own passes (blank-out, AOPC) dominate, so the main process
becomes the bottleneck. Passing a **model factory** instead of a model — a picklable
``factory() -> Classifier``, e.g. ``functools.partial(load_my_classifier, path)`` — moves the
*whole* evaluation of each batch into the executor
(:func:`~captum_attnflow.evaluation.pipeline.batch_task`): every worker builds
the model once, on its first batch, and returns finished records; the main process only checks
lengths and streams records. The model itself is still never shipped.

Failures are per example: a bad example (empty, too long with ``truncation="error"``, a label
out of range, a model error) gets ``status="error"`` with its message; an example whose flow
or batch task raised in the executor (a dead worker, a broken pool) gets ``status="lost"``. Resuming
(``resume=True``) runs exactly the examples that have no ``ok``/``error`` record.
"""

from __future__ import annotations

import json
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from torch import nn

from captum_attnflow.evaluation.data import (
    Example, Truncation, check_padding_side, dataset_identity, iterate_examples,
)
from captum_attnflow.evaluation.executors import SerialExecutor
from captum_attnflow.evaluation.faithfulness import (
    DEFAULT_FRACTIONS, DELETIONS, AopcTarget, Deletion, aopc_protocol, check_aopc_target, check_fractions,
)
from captum_attnflow.evaluation.methods import EvaluationMethod, Position, check_graph_methods, resolve_methods
from captum_attnflow.evaluation.models import Classifier, HFClassifier
from captum_attnflow.evaluation.pipeline import BatchRun, batch_task, cached_classifier
from captum_attnflow.evaluation.results import ResultStore, ResultTable, json_safe
from captum_attnflow.utils.files import state_dict_sha256
from captum_attnflow.utils.validation import check_count, check_loaded
from captum_attnflow.graph import check_head_fusion
from captum_attnflow.evaluation.metrics import GradientReduction, check_gradient_reduction


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
    aopc_target: AopcTarget = "predicted",
    deletion: Deletion = "blank",
    protected: Sequence[int] | None = None,
    batch_size: int = 8,
    padding_side: str = "right",
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
    model_id: str | None = None,
) -> Evaluation:
    """Faithfulness of explanation methods over a dataset (Abnar & Zuidema 2020, §4, plus AOPC).

    For each example: the per-token scores of every method (attention methods: the traced query
    at every layer), the reference scores (blank-out and input gradients, for the target class),
    Spearman's ρ of each method (per layer) against each reference, and AOPC comprehensiveness and
    sufficiency. Summarised in :attr:`Evaluation.table`.

    Args:
        model: a :class:`Classifier`, or a Hugging Face sequence-classification model (wrapped in
            :class:`HFClassifier`; eager or SDPA attention, recorded by ``AttentionRecorder``) — then
            only flow runs in the executor — or a picklable factory returning a :class:`Classifier` —
            then whole batches run in the executor, each worker building the model once (see the module docstring).
        data: an iterable of examples (dicts with ``input_ids`` and optionally ``label``, pairs
            ``(input_ids, label)``, or token-id sequences) or a ``DataLoader`` of padded batches;
            see :mod:`captum_attnflow.evaluation.data`. It is read once up front for its content
            hash (a one-shot iterator is turned into a list) and must not be empty. The target
            class of the references is the label when given, else the model's prediction.
        methods: names from :data:`~captum_attnflow.evaluation.methods.METHODS` (a list or one
            comma-separated string) and/or method objects such as ``CaptumMethod``.
        position: the query traced by attention methods (``0`` = ``[CLS]``; negative counts from
            each example's end, e.g. ``-1`` for a causal LM's last token), or ``"max"`` for the
            maximum over all query positions per token (the paper's SST-2 protocol).
        head_fusion: how the heads are fused in the attention graph (see :func:`captum_attnflow.rollout`).
        residual: the residual weight of the attention graph (see :func:`captum_attnflow.rollout`).
        gradient_reduction: per-token reduction of the input-gradient reference: ``"l2"``
            (default), ``"abs_sum"`` (``|Σ_d g_d|``, the paper's code) or ``"sum"``. ``abs_sum`` is
            exactly 0 up to rounding for models whose embeddings reach the output only through
            LayerNorms (BERT; pre-LN GPT-2 blocks such as the agreement model), where adding a
            constant to every embedding dimension changes nothing — so its ranks are noise there.
        fractions: AOPC shares ``k`` of the perturbable tokens, each in ``(0, 1]``; default the
            ERASER bins ``(0.01, 0.05, 0.1, 0.2, 0.5)`` (DeYoung et al. 2020).
        aopc_target: the class whose probability AOPC tracks: ``"predicted"`` (ERASER, default)
            or ``"label"`` (the references' target: the label, else the prediction). The protocol
            is recorded in ``config.json``, ``results.json`` and the table's header.
        deletion: ``"blank"`` (replace by the blank id) or ``"remove"`` (drop the token).
        protected: positions never perturbed by AOPC (negative from the end), e.g. ``(0, -1)`` for
            ``[CLS] … [SEP]``; default: ``(position,)`` (none for ``"max"``).
        batch_size: examples per padded batch (results do not depend on it).
        padding_side: ``"right"`` (default) or ``"left"``: where batches are padded (results do
            not depend on it; the classifier must list it in ``padding_sides`` —
            :class:`HFClassifier` takes both and pools a decoder classifier's last *real* token).
        truncation: an example longer than ``max_length``: ``"warn"`` cuts it (recorded as
            ``truncated``), ``"error"`` records it as failed.
        max_length: default ``model.max_length``.
        executor: any ``concurrent.futures.Executor`` for flow, or for whole batches with a model
            factory (default: in-process);
            :func:`~captum_attnflow.evaluation.executors.process_pool`,
            ``dask.distributed.Client(...).get_executor()``, ... It is not
            shut down here.
        max_in_flight: examples submitted but not yet finished (default ``4 * batch_size``).
        out: directory for ``examples.jsonl`` (streamed), ``config.json`` and, at the end,
            ``results.csv`` / ``results.json``; ``None`` = memory. It is created and checked
            writable before any model pass, and locked while the run writes into it (a second run
            into it refuses; a lock left by a killed run is taken over with a warning). Without
            ``resume`` an ``out`` holding another run's records is refused.
        resume: continue the run in ``out``: finished examples are skipped, lost and missing
            ones run. The model (hash of its weights), the data (hash of the examples) and the
            settings must match the stored run's, else it is refused naming what differs.
        progress: show a tqdm bar.
        flow_solver: max-flow solver for flow (``"auto"``: the fastest exact one).
        aopc_batch_size: rows per forward pass when scoring perturbed inputs.
        confidence: the confidence level of the table's bootstrap interval.
        resamples: the number of bootstrap resamples.
        seed: the seed of the bootstrap resampling.
        model_id: the identity of the model stored with the run and compared on resume; default
            the SHA-256 of the weights of every ``nn.Module`` attribute of the classifier (a
            custom :class:`Classifier` without one must pass it when ``out`` is given).

    Returns:
        :class:`Evaluation` with the table, the ``ok`` example records, and the errors and lost
        examples by index.

    Raises:
        ValueError, TypeError: bad settings (unknown method — the valid names are listed —,
            fractions, deletion, counts, output directory, a locked or mismatched ``out``, empty
            data, a malformed example, ...), all before any model pass. Bad *examples* (empty, too
            long, a label out of range) do not raise; they are recorded as errors.
    """
    from tqdm.auto import tqdm

    factory = None
    if isinstance(model, Classifier):
        classifier = model
    elif isinstance(model, nn.Module):
        classifier = HFClassifier(model)
    elif callable(model):
        factory = model
        classifier = cached_classifier(factory)
    else:
        raise TypeError(
            f"model must be a Classifier, a Hugging Face model or a factory returning a Classifier; got "
            f"{type(model).__name__}."
        )
    for value in vars(classifier).values():
        if isinstance(value, nn.Module):
            check_loaded(value, f"the model ({type(value).__name__})")
    resolved = resolve_methods(methods, flow_solver=flow_solver)
    check_head_fusion(head_fusion)
    check_graph_methods(resolved, classifier, head_fusion)
    check_gradient_reduction(gradient_reduction, "gradient_reduction")
    if deletion not in DELETIONS:
        raise ValueError(f"unknown deletion {deletion!r}; choose one of {DELETIONS}.")
    if position != "max" and (isinstance(position, bool) or not isinstance(position, int)):
        raise TypeError(f"position must be an integer token position or 'max'; got {position!r}.")
    for name, value in (("batch_size", batch_size), ("aopc_batch_size", aopc_batch_size), ("resamples", resamples)):
        check_count(value, name)
    check_count(max_in_flight, "max_in_flight", optional=True)
    check_count(max_length, "max_length", optional=True)
    check_count(seed, "seed", minimum=0)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), e.g. 0.95; got {confidence!r}.")
    if max_length is not None and classifier.max_length is not None and max_length > classifier.max_length:
        raise ValueError(
            f"max_length={max_length} exceeds the model's maximum of {classifier.max_length} tokens; pass at most "
            f"{classifier.max_length} (or leave it unset)."
        )
    fractions = check_fractions(fractions)
    check_aopc_target(aopc_target)
    check_padding_side(padding_side)
    if padding_side not in getattr(classifier, "padding_sides", ("right",)):
        raise ValueError(
            f"padding_side={padding_side!r}: {type(classifier).__name__} supports "
            f"{tuple(getattr(classifier, 'padding_sides', ('right',)))} only."
        )
    protocol = aopc_protocol(fractions, aopc_target)
    if resume and out is None:
        raise ValueError("resume=True needs out=DIR, the directory of the run to continue.")
    if protected is None:
        protected = () if position == "max" else (position,)
    protected = tuple(int(p) for p in protected)
    max_length = classifier.max_length if max_length is None else max_length
    data, data_sha256, total = dataset_identity(data)
    if total == 0:
        raise ValueError("data is empty: pass at least one example.")
    config = {
        "methods": [m.name for m in resolved], "position": position, "head_fusion": head_fusion,
        "residual": residual, "gradient_reduction": gradient_reduction, "fractions": list(fractions),
        "aopc_target": aopc_target, "aopc_protocol": protocol["name"],
        "deletion": deletion, "protected": list(protected), "truncation": truncation,
        "max_length": max_length, "blank_id": classifier.blank_id, "flow_solver": flow_solver,
        "data_sha256": data_sha256, "data_examples": total,
        "model_sha256": (model_id or _model_identity(classifier)) if out is not None else model_id,
    }
    if padding_side != "right":  # recorded only when not the default, so earlier runs still resume
        config["padding_side"] = padding_side
    store = ResultStore(out, config, resume=resume)
    done = store.done()
    bar = tqdm(total=total, initial=len(done), disable=not progress, unit="ex", desc="evaluate")
    settings = dict(
        position=position, head_fusion=head_fusion, residual=residual, gradient_reduction=gradient_reduction,
        fractions=fractions, deletion=deletion, protected=protected, truncation=truncation, max_length=max_length,
        aopc_batch_size=aopc_batch_size, aopc_target=aopc_target, padding_side=padding_side,
    )
    executor = executor or SerialExecutor()
    run = BatchRun(classifier, resolved, store, executor=executor, progress=bar, **settings)
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
        bar.close()
        ok = store.by_status("ok")
        table = ResultTable.from_examples(
            ok, {m.name: m.per_layer for m in resolved}, confidence=confidence, resamples=resamples, seed=seed,
            protocol=protocol["description"],
        )
        result = Evaluation(
            table=table, examples=ok,
            errors={r["index"]: r["error"] for r in store.by_status("error")},
            lost={r["index"]: r["error"] for r in store.by_status("lost")},
        )
        if out is not None:  # while the directory is still locked
            _write_summary(Path(out), result, protocol)
    finally:
        bar.close()
        store.close()
    return result


def stream_tasks(
    store: ResultStore,
    items: Iterable[tuple[int, Any]],
    submit: Callable[[int, Any], Any],
    *,
    max_in_flight: int,
    progress=None,
) -> None:
    """Run one executor task per item and stream each returned record into ``store``.

    The task loop of a run whose tasks are whole examples (``llm-faithfulness``; ``evaluate``'s
    model-factory path does the same per batch): items whose index ``store`` already holds as
    done are skipped (resumption), at most ``max_in_flight`` tasks are pending, and a task that
    raised in the executor (a dead worker, a refused submission) becomes a ``"lost"`` record,
    which ``resume`` runs again. A task reports its own bad example as an ``"error"`` record.

    Args:
        store: the run's :class:`ResultStore` (its lock, config identity and stream).
        items: ``(index, payload)`` pairs in order.
        submit: ``submit(index, payload)`` -> a ``Future`` whose result is the example's record
            (a dict with ``index`` and ``status``), e.g. ``lambda i, p: executor.submit(task, ...)``.
        max_in_flight: most pending tasks.
        progress: a tqdm bar (or ``None``).
    """
    done = store.done()
    pending: deque[tuple[int, Any]] = deque()

    def settle(index: int, future) -> None:
        try:
            record = future.result()
        except Exception as error:  # noqa: BLE001 - the worker or the pool died
            record = {"index": index, "status": "lost", "error": f"task lost: {type(error).__name__}: {error}"}
        store.write(record)
        if progress is not None:
            progress.update(1)

    for index, payload in items:
        if index in done:
            continue
        try:
            pending.append((index, submit(index, payload)))
        except Exception as error:  # noqa: BLE001 - a shut-down or broken executor
            store.write({"index": index, "status": "lost",
                         "error": f"the executor refused the task: {type(error).__name__}: {error}"})
            continue
        while len(pending) > max_in_flight:
            settle(*pending.popleft())
    while pending:
        settle(*pending.popleft())


def _model_identity(classifier: Classifier) -> str:
    """SHA-256 over the weights of the classifier's ``nn.Module`` attributes (see ``model_id``)."""
    modules = {name: value for name, value in sorted(vars(classifier).items()) if isinstance(value, nn.Module)}
    if not modules:
        raise ValueError(
            f"cannot identify the model of {type(classifier).__name__} (it holds no nn.Module attribute); pass "
            f"model_id=... (e.g. a hash of its weights) so that resume=True can check it."
        )
    return state_dict_sha256({f"{name}.{key}": value for name, module in modules.items()
                              for key, value in module.state_dict().items()})


def _write_summary(out: Path, result: Evaluation, protocol: dict[str, Any]) -> None:
    """``results.csv`` (the table) and ``results.json`` (counts, errors, AOPC protocol, table)."""
    result.table.to_csv(out / "results.csv")
    summary = {
        "finished": len(result.examples), "failed": len(result.errors), "lost": sorted(result.lost),
        "errors": {str(k): v for k, v in result.errors.items()}, "aopc_protocol": protocol,
        "table": result.table.records,
    }
    (out / "results.json").write_text(json.dumps(json_safe(summary), indent=2) + "\n", encoding="utf-8")
