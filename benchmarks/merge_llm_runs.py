"""One table from several ``captum-attnflow llm-faithfulness`` runs over the same prompts.

The docs' LLM table was measured in two runs of the command over all 110 shipped prompts
(``--new-tokens 2``): the package's default methods (with LayerIntegratedGradients and
FeatureAblation), and the peers (inseq, AttnLRP), which need the ``peers`` extra, beside the
sink-free rows and the reference rows. This script keeps the prompts every run finished, merges
their per-method records (a method in several runs — the reference rows, the sink-free rows —
is computed identically in each; the first run's rows are kept, with their ρ against
LayerIntegratedGradients) and writes the table, the per-kind table and the deletion-curve figure
with the command's own functions::

    captum-attnflow llm-faithfulness --new-tokens 2 --workers 1 --out run1
    captum-attnflow llm-faithfulness --new-tokens 2 --workers 1 --out run2 \\
        --methods rollout_no_sink,rollout_alti_no_sink,flow_alti_no_sink,inseq_attention,inseq_value_zeroing,attnlrp,random,earliest,latest
    python benchmarks/merge_llm_runs.py run1 run2 --results-md docs/results --figures docs/figures
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from captum_attnflow.evaluation.llm_command import NAME
from captum_attnflow.evaluation.llm_prompts import load_prompts
from captum_attnflow.evaluation.llm_summary import curves_figure, kind_table, llm_table, summarize_llm
from captum_attnflow.evaluation.results import read_examples
from captum_attnflow.utils.results_md import write_table

PER_METHOD = ("metrics", "scores", "curves", "seconds")


def merged_records(runs: list[Path]) -> tuple[list[dict], list[str], dict]:
    """The ``ok`` records of the prompts every run finished, with the methods of all runs."""
    per_run = [{r["index"]: r for r in read_examples(run) if r["status"] == "ok"} for run in runs]
    configs = [json.loads((run / "config.json").read_text()) for run in runs]
    common = sorted(set.intersection(*(set(records) for records in per_run)))
    methods: list[str] = []
    for config in configs:
        methods += [m for m in config["methods"] if m not in methods]
    merged = []
    for index in common:
        record = dict(per_run[0][index])
        for other in per_run[1:]:
            for key in PER_METHOD:
                record[key] = {**other[index].get(key, {}), **record.get(key, {})}  # the first run's rows win
        merged.append(record)
    return merged, methods, configs[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="the --out folders of the runs")
    parser.add_argument("--results-md", type=Path, default=None, metavar="DIR")
    parser.add_argument("--figures", type=Path, default=None, metavar="DIR")
    args = parser.parse_args()
    records, methods, config = merged_records(args.runs)
    if not records:
        raise SystemExit("merge_llm_runs: error: no prompt was finished by every run")
    total = len(load_prompts())
    which = (f"all {total} shipped prompts" if len(records) == total else
             f"{len(records)} prompts (a subset of the {total} shipped, spread over the kinds: the prompts every one "
             f"of the {len(args.runs)} runs finished)")
    head = (f"SmolLM2-135M-Instruct, {which}; greedy continuation of {config.get('new_tokens')} tokens "
            f"(agreement prompts: the correct verb); AOPC over k = 1..{config.get('max_k')} top prompt tokens, in nats of "
            f"the output token's log-probability; key removal = removed as a key in every layer, positions kept; "
            f"replacement = the token ' ' (a space); ρ per output token; agreement columns over the agreement prompts "
            f"only; s / prompt on a shared 2-core machine (compare within a run).")
    markdown = (f"{head}\n\n{llm_table(summarize_llm(records, methods))}\n\n"
                f"Key-removal deletion AOPC by kind of prompt:\n\n{kind_table(records, methods)}")
    write_table(args.results_md, NAME, markdown)
    if args.figures is not None:
        curves_figure(records, methods, args.figures / f"{NAME}.png",
                      f"Deletion curves, SmolLM2-135M-Instruct, {len(records)} prompts")
    print(markdown)


if __name__ == "__main__":
    main()
