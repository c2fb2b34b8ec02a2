"""Threads of the ``"fast"`` max-flow solver: 1 against 2, on an idle machine and next to a busy core.

    python benchmarks/bench_threads.py            # writes docs/results/flow_threads.md
    python benchmarks/bench_threads.py --out -    # prints the table only

Random softmax attention (batch 1, L = 12 layers, 4 heads, logits ``N(0, 1)``), float32, the flow
of one output position (position 0, last layer: ``n`` single-sink problems) at n = 128 and 256.
Each setting is timed ``--repeat`` times after a warm-up; the table gives the best and the
median. ``busy core`` runs a second process spinning in a loop pinned to CPU 1 while this process
may use every CPU (as another user's job would). ``auto`` is the default choice
(:func:`captum_attnflow.flow.maxflow.default_threads`) made at each call, with the thread count
it picked. The load column is ``/proc/loadavg``'s runnable count (minus this process) and
1-minute average when the setting started: on a shared machine "idle" is only as idle as that.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from captum_attnflow import attention_flow
from captum_attnflow.flow import maxflow

OUT = Path(__file__).resolve().parents[1] / "docs" / "results" / "flow_threads.md"


def attention(n: int, layers: int = 12, heads: int = 4, seed: int = 0) -> list[torch.Tensor]:
    rng = np.random.default_rng(seed)
    return [torch.from_numpy(rng.standard_normal((1, heads, n, n)).astype(np.float32)).softmax(-1) for _ in range(layers)]


def timed(raw, threads, repeat: int) -> tuple[float, float, list[int]]:
    picked = []
    original = maxflow.default_threads

    def spy(work):
        picked.append(original(work))
        return picked[-1]

    maxflow.default_threads = spy
    try:
        attention_flow(raw, output_positions=0, layers=-1, threads=threads)  # warm-up
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            attention_flow(raw, output_positions=0, layers=-1, threads=threads)
            times.append(time.perf_counter() - started)
    finally:
        maxflow.default_threads = original
    return min(times), statistics.median(times), sorted(set(picked[1:]))


def busy_loop() -> subprocess.Popen:
    code = "import os\nos.sched_setaffinity(0, {1})\nwhile True:\n    pass\n"
    process = subprocess.Popen([sys.executable, "-c", code])
    time.sleep(1.0)
    return process


def load_text() -> str:
    return f"{maxflow.busy_cpus():.0f} / {os.getloadavg()[0]:.1f}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="128,256")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--out", default=str(OUT), help="markdown file, or - for stdout only")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    for machine in ("idle", "busy core"):
        process = busy_loop() if machine == "busy core" else None
        try:
            for n in sizes:
                raw = attention(n)
                load = load_text()
                for threads in (1, 2, None):
                    best, median, picked = timed(raw, threads, args.repeat)
                    label = "auto (" + ",".join(map(str, picked)) + ")" if threads is None else str(threads)
                    rows.append((machine, n, label, best * 1e3, median * 1e3, load))
                    print(rows[-1], flush=True)
        finally:
            if process is not None:
                process.kill()
                process.wait()
    lines = [
        f"Flow threads: random attention, L = 12, 4 heads, one output position, float32; {os.cpu_count()} CPUs "
        f"(affinity {len(os.sched_getaffinity(0))}); torch {torch.__version__}; best and median of {args.repeat}.",
        "",
        "| machine | n | solver threads | best ms | median ms | load at start (runnable others / 1-min avg) |",
        "|---|---:|---|---:|---:|---|",
    ]
    lines += [f"| {m} | {n} | {t} | {b:.1f} | {md:.1f} | {load} |" for m, n, t, b, md, load in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out != "-":
        Path(args.out).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
