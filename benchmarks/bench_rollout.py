"""Speed of the functional ``rollout`` against the plain loop the peers run, at small ``n``.

    python benchmarks/bench_rollout.py                  # n = 26 and 128, writes docs/results/rollout_speed.md
    python benchmarks/bench_rollout.py --sizes 26,64,128,256 --repeat 2000 --out -

Both take the same attention: batch 1, 6 layers, 12 heads of float32 softmax attention (the
shape of a 6-layer BERT / ViT-S recording), first layer first, as Hugging Face returns it.

* ``rollout``: :func:`captum_attnflow.rollout` as a user calls it — input validation (shapes,
  NaN/inf, negative weights, row sums), head fusion, residual, row normalisation, and *every*
  layer's rollout ``(1, L, n, n)``. Its checks and graph matrices are one compiled (numba) pass,
  loaded once per process: the first call in a fresh process is timed apart (a subprocess) and
  reported above the table, the medians are of warm calls.
* ``peer loop``: the loop of vit-explain / fast-vit-rollout written out here: per layer mean over
  heads, ``(A + I) / 2``, divide rows by their sums, multiply into the running product; no checks,
  only the last layer's product.

Each timing is the median of ``--repeat`` calls after a warm-up, the two functions interleaved
call by call so that machine noise hits both alike, once with torch's default thread count and
once with one thread. The last column is ``rollout`` / ``peer loop`` (≤ 1: rollout is no slower).
Both results are compared (the last layer of ``rollout`` equals the loop's product) before timing.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from captum_attnflow import rollout

LAYERS, HEADS = 6, 12
RESULT = Path(__file__).resolve().parent.parent / "docs" / "results" / "rollout_speed.md"


def random_attention(n: int, *, seed: int = 0) -> list[torch.Tensor]:
    """``LAYERS`` float32 tensors ``(1, HEADS, n, n)`` of softmax attention (N(0, 1) logits)."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.softmax(torch.randn(1, HEADS, n, n, generator=generator), dim=-1) for _ in range(LAYERS)]


def peer_loop(attentions: list[torch.Tensor]) -> torch.Tensor:
    """The peers' rollout: mean-fuse, ``(A + I) / 2``, renormalise, multiply. ``(batch, n, n)``."""
    n = attentions[0].shape[-1]
    eye = torch.eye(n, dtype=attentions[0].dtype)
    result = eye
    for attention in attentions:
        fused = (attention.mean(dim=1) + eye) / 2
        fused = fused / fused.sum(dim=-1, keepdim=True)
        result = torch.matmul(fused, result)
    return result


FIRST_CALL = """
import time, torch
from captum_attnflow import rollout
attentions = [torch.softmax(torch.randn(1, {heads}, {n}, {n}), dim=-1) for _ in range({layers})]
start = time.perf_counter()
rollout(attentions)
print(time.perf_counter() - start)
"""


def first_call_seconds(n: int) -> float:
    """Seconds of the first ``rollout`` call in a fresh Python process (imports not included)."""
    code = FIRST_CALL.format(heads=HEADS, n=n, layers=LAYERS)
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def median_times(functions, attentions, repeat: int) -> list[float]:
    """Median wall-clock seconds of each function, calls interleaved, after one warm-up call."""
    samples: list[list[float]] = [[] for _ in functions]
    with torch.no_grad():
        for function in functions:
            function(attentions)
        for _ in range(repeat):
            for index, function in enumerate(functions):
                start = time.perf_counter()
                function(attentions)
                samples[index].append(time.perf_counter() - start)
    return [statistics.median(s) for s in samples]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="26,128", help="comma-separated token counts n (default 26,128)")
    parser.add_argument("--repeat", type=int, default=1000, help="timed calls per function and setting (default 1000)")
    parser.add_argument("--out", default=str(RESULT), help="Markdown table to write ('-': print only)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.repeat < 1 or any(n < 1 for n in sizes):
        parser.error("--repeat and every size in --sizes must be positive integers")
    default_threads = torch.get_num_threads()
    header = "| n | torch threads | rollout (µs) | peer loop (µs) | rollout / peer loop |\n|---:|---:|---:|---:|---:|"
    rows = []
    print(header, flush=True)
    for n in sizes:
        attentions = random_attention(n)
        ours = rollout(attentions)[:, -1]
        torch.testing.assert_close(ours, peer_loop(attentions), atol=1e-5, rtol=0)
        for threads in (default_threads, 1):
            torch.set_num_threads(threads)
            ours_s, peer_s = median_times((rollout, peer_loop), attentions, args.repeat)
            row = f"| {n} | {threads} | {ours_s * 1e6:.0f} | {peer_s * 1e6:.0f} | {ours_s / peer_s:.2f} |"
            rows.append(row)
            print(row, flush=True)
        torch.set_num_threads(default_threads)
    first = first_call_seconds(sizes[0])
    table = (
        f"Batch 1, {LAYERS} layers × {HEADS} heads, float32; median of {args.repeat} interleaved calls "
        f"(`rollout`: validation and all {LAYERS} layers; peer loop: last layer only). The first `rollout` "
        f"call of a process (n = {sizes[0]}) took {first * 1e3:.0f} ms: numba loads the compiled pass once.\n\n"
        + header + "\n" + "\n".join(rows) + "\n"
    )
    if args.out != "-":
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table)
        print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
