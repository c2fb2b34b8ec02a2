"""``captum-attnflow reproduce``: the paper's verb-number-agreement study, offline, end to end.

Loads the agreement classifier shipped with the package (6 GPT-2 blocks without causal mask, 8
heads, hidden 128; trained on generated agreement data, see ``captum_attnflow.models.agreement_data``)
— or retrains it with ``--retrain`` — then, for N test examples, correlates the [CLS] row of raw
attention, attention rollout and attention flow at every layer with blank-out importance
(Table 1) and with input gradients (Table 2: the paper's |sum_d g_d|, which is rounding noise on
this LayerNorm model, and Table 2b: the L2 norm), prints the tables next to the paper's numbers,
and writes a report (Markdown + HTML), CSV/JSON tables and figures to --out.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

from captum_attnflow.flow.maxflow import flow_solver
from captum_attnflow.utils.arguments import non_negative_int, positive_int
from captum_attnflow.utils.results_md import add_option, write_table

HELP = "reproduce the paper's verb-agreement study: Tables 1-2 and Figs. 1-3 (offline, minutes)"

#: sizes of the generated splits when retraining
DATA_SIZES: dict[str, int] = {"train": 20000, "valid": 2000, "test": 4000}
#: most epochs of training when retraining (it stops earlier at the paper's accuracy, see
#: ``captum_attnflow.studies.agreement.train.TrainingConfig``)
MAX_EPOCHS = 3
#: a test example for Figs. 1–3 is chosen among those with this many tokens (if any)
FIGURE_LENGTHS = range(10, 17)


class UsageError(ValueError):
    """A bad command-line value (reported without a traceback)."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--examples", type=positive_int, default=2000, metavar="N",
                        help="number of test examples to evaluate (default 2000, as in the paper)")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="seed choosing the N test examples; with --retrain also the data and "
                             "training seed (default 0)")
    parser.add_argument("--out", default="attnflow-output/reproduce", metavar="DIR",
                        help="output folder for report, tables and figures (default ./attnflow-output/reproduce)")
    parser.add_argument("--retrain", action="store_true",
                        help="train the model again (until 0.96 validation accuracy, 2-5 min on one CPU core) instead of "
                             "loading the shipped checkpoint; saved to --checkpoint or DIR/checkpoint.pt")
    parser.add_argument("--checkpoint", default=None, metavar="PATH",
                        help="checkpoint to load (default: the one shipped in the package), or, with "
                             "--retrain, where to save the new one")
    parser.add_argument("--layers", default=None, metavar="LIST",
                        help="layers to report, 1-based: '1,3,6' or '2-6' (default: all)")
    parser.add_argument("--flow-solver", type=flow_solver, default="auto", metavar="NAME",
                        help="max-flow solver for attention flow: 'auto' (fastest exact) or a name in "
                             "captum_attnflow.flow.maxflow.SOLVERS")
    parser.add_argument("--workers", type=positive_int, default=1, metavar="N",
                        help="processes computing attention flow (default 1)")
    add_option(parser)


def parse_layers(text: str | None, num_layers: int) -> list[int]:
    """``"1,3,6"`` / ``"2-6"`` / ``None`` -> sorted 1-based layers within ``1..num_layers``."""
    if text is None:
        return list(range(1, num_layers + 1))
    layers: set[int] = set()
    try:
        for part in text.split(","):
            low, _, high = part.strip().partition("-")
            layers.update(range(int(low), int(high or low) + 1))
    except ValueError:
        raise UsageError(f"--layers {text!r} is not a list like '1,3,6' or '2-6'.") from None
    if not layers or min(layers) < 1 or max(layers) > num_layers:
        raise UsageError(f"--layers {text!r} must name layers between 1 and {num_layers}.")
    return sorted(layers)


def _check_arguments(args: argparse.Namespace) -> Path:
    """Everything that can be checked before loading or training: the output folders."""
    from captum_attnflow.utils.files import writable_directory

    try:
        out = writable_directory(args.out, "--out")
        if args.results_md is not None:
            writable_directory(args.results_md, "--results-md")
        if args.retrain and args.checkpoint:
            if Path(args.checkpoint).is_dir():
                raise ValueError(f"--checkpoint {args.checkpoint} is a folder; pass the file to save the model to.")
            writable_directory(Path(args.checkpoint).parent, "--checkpoint's folder")
    except ValueError as error:
        raise UsageError(str(error)) from None
    return out


def _load_or_train(args: argparse.Namespace, out: Path):
    """-> (model, metadata, splits, checkpoint path, training seconds or None)."""
    from captum_attnflow.models.agreement_data import generate_splits
    from captum_attnflow.models.agreement_model import (
        check_metadata, load_checkpoint, save_checkpoint, shipped_checkpoint_path,
    )
    from captum_attnflow.studies.agreement.train import TrainingConfig, accuracy, train_model

    if not args.retrain:
        path = Path(args.checkpoint) if args.checkpoint else shipped_checkpoint_path()
        model, metadata = load_checkpoint(path)
        check_metadata(metadata, path)
        splits = generate_splits(metadata["data_seed"], **metadata["data_sizes"])
        return model, metadata, splits, path, None
    if args.examples > DATA_SIZES["test"]:
        raise UsageError(f"--examples {args.examples} exceeds the test split of {DATA_SIZES['test']} examples.")
    start = time.perf_counter()
    splits = generate_splits(args.seed, **DATA_SIZES)
    model, history = train_model(splits, seed=args.seed, training=TrainingConfig(epochs=MAX_EPOCHS))
    seconds = time.perf_counter() - start
    path = Path(args.checkpoint) if args.checkpoint else out / "checkpoint.pt"
    metadata = {
        "data_seed": args.seed, "train_seed": args.seed, "data_sizes": dict(DATA_SIZES), "history": history,
        "training_seconds": seconds, "valid_accuracy_before_fp16": accuracy(model, splits.valid).as_dict(),
    }
    save_checkpoint(model, path, metadata=metadata)
    model, metadata = load_checkpoint(path)  # evaluate exactly the stored (float16) weights
    return model, metadata, splits, path, seconds


def _figure_example(result) -> int:
    """Index into ``result.scores`` of the example shown in Figs. 1–3: the first correctly
    classified one with an attractor and 10–16 tokens, else the first example."""
    for i, scores in enumerate(result.scores):
        if scores.example.attractors and scores.probability > 0.5 and len(scores.example.tokens) in FIGURE_LENGTHS:
            return i
    return 0


def _figures(model, result, out: Path, flow_solver: str) -> tuple[dict[str, str], str]:
    import torch

    from captum_attnflow.flow import attention_flow
    from captum_attnflow.graph import raw_attention, rollout
    from captum_attnflow.studies.agreement import figures
    from captum_attnflow.models.agreement_data import encode

    chosen = result.scores[_figure_example(result)]
    tokens = list(chosen.example.tokens)
    with torch.no_grad():
        _, attentions = model(torch.tensor(encode([chosen.example])), output_attentions=True)
    maps = {
        "raw": raw_attention(attentions)[0].numpy(),
        "rollout": rollout(attentions)[0].numpy(),
        "flow": attention_flow(attentions, flow_solver=flow_solver)[0].numpy(),
    }
    paths = {
        "Fig. 1 — raw attention per layer": figures.plot_raw_maps(maps["raw"], tokens, out / "fig1_raw_attention.png"),
        "Fig. 2 — raw vs rollout vs flow across layers": figures.plot_method_maps(
            maps, tokens, out / "fig2_raw_rollout_flow_maps.png"),
        "Fig. 3 — [CLS] attribution per layer": figures.plot_cls_scores(
            chosen.methods, chosen.references, tokens, result.layers, out / "fig3_cls_raw_rollout_flow.png"),
    }
    return {title: path.name for title, path in paths.items()}, " ".join(tokens)


def _study(args: argparse.Namespace, model, examples, layers):
    from captum_attnflow.studies.agreement.study import run_study

    if args.workers == 1:
        return run_study(model, examples, layers=layers, flow_solver=args.flow_solver)
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(args.workers) as executor:
        return run_study(model, examples, layers=layers, flow_solver=args.flow_solver, executor=executor)


def _write_outputs(out: Path, *, result, tables: dict, setup: dict, summary: dict, figure_names: dict,
                   figure_example: str) -> list[str]:
    """Write CSV/JSON tables and the Markdown/HTML report; return the report's notes."""
    from captum_attnflow.studies.agreement.tables import (
        TABLE_FILES, comparison_notes, markdown_report, write_csv, write_json,
    )
    from captum_attnflow.studies.agreement.study import REFERENCES, gradient_diagnostics

    diagnostics = gradient_diagnostics(result)
    notes = comparison_notes(tables, result.layers, diagnostics)
    for ref in REFERENCES:
        write_csv(tables, ref, result.layers, out / f"{TABLE_FILES[ref]}.csv")
    write_json({"setup": setup, "layers": result.layers, **summary, "tables": tables,
                "gradient_diagnostics": diagnostics, "notes": notes}, out / "results.json")
    report = markdown_report(tables=tables, layers=result.layers, setup=setup, accuracy=summary["accuracy"],
                             timings=summary["timings_seconds"], figures=figure_names, example=figure_example,
                             notes=notes)
    (out / "report.md").write_text(report)
    from captum_attnflow.report import write_report
    from captum_attnflow.studies.agreement.explorer import agreement_explorer

    write_report(out / "report.html", "Attention flow reproduction: verb-number agreement", report, image_dir=out,
                 explorer=agreement_explorer(result))
    return notes


def _reproduce(args: argparse.Namespace) -> int:
    import torch

    from captum_attnflow.studies.agreement import figures
    from captum_attnflow.models.agreement_data import LABEL_NAMES
    from captum_attnflow.studies.agreement.tables import TABLE_FILES, TABLE_TITLES, markdown_table, summary_tables
    from captum_attnflow.studies.agreement.study import REFERENCES
    from captum_attnflow.studies.agreement.train import accuracy

    out = _check_arguments(args)
    torch.set_num_threads(1)
    start = time.perf_counter()
    model, metadata, splits, checkpoint, training_seconds = _load_or_train(args, out)
    layers = parse_layers(args.layers, model.config.layers)
    if args.examples > len(splits.test):
        raise UsageError(f"--examples {args.examples} exceeds the test split of {len(splits.test)} examples.")
    timings = {} if training_seconds is None else {"training": training_seconds}

    tick = time.perf_counter()
    test_accuracy = accuracy(model, splits.test).as_dict()
    timings["test accuracy"] = time.perf_counter() - tick
    print(f"model: {checkpoint} — test accuracy {test_accuracy['overall']:.4f} "
          f"(with attractors {test_accuracy['with_attractors']:.4f}) on {len(splits.test)} examples")

    chosen = sorted(random.Random(args.seed).sample(range(len(splits.test)), args.examples))
    examples = [splits.test[i] for i in chosen]
    tick = time.perf_counter()
    result = _study(args, model, examples, layers)
    timings["scoring and correlations"] = time.perf_counter() - tick

    tick = time.perf_counter()
    tables = summary_tables(result)
    figure_names, figure_example = _figures(model, result, out, args.flow_solver)
    figure_names["Per-layer correlation, mean ± std"] = figures.plot_correlations(
        tables, layers, out / "fig4_correlations.png").name
    timings["figures"] = time.perf_counter() - tick
    timings["total"] = time.perf_counter() - start

    setup = {
        "task": "verb number (singular / plural) from [CLS] + the words before the verb + [END]",
        "data": f"generated agreement prefixes (seed {metadata['data_seed']}; "
                f"train/valid/test {len(splits.train)}/{len(splits.valid)}/{len(splits.test)})",
        "model": f"{model.config.layers} GPT-2 blocks without causal mask, {model.config.heads} heads, "
                 f"hidden {model.config.hidden}; classifier on the final [CLS] state",
        "checkpoint": str(checkpoint),
        "examples": f"{len(examples)} test examples chosen with seed {args.seed}",
        "labels": ", ".join(f"{i} = {name}" for i, name in enumerate(LABEL_NAMES)),
        "flow solver": args.flow_solver,
    }
    summary = {"accuracy": {"test": test_accuracy}, "checkpoint_metadata": metadata, "timings_seconds": timings}
    notes = _write_outputs(out, result=result, tables=tables, setup=setup, summary=summary,
                           figure_names=figure_names, figure_example=figure_example)
    for ref in REFERENCES:
        print(f"\n{TABLE_TITLES[ref]}\n{markdown_table(tables, ref, layers)}")
        write_table(args.results_md, f"reproduce_{TABLE_FILES[ref].split('_')[0]}",
                    f"{TABLE_TITLES[ref]}\n\n{markdown_table(tables, ref, layers)}")
    print("\n" + "\n".join(f"- {note}" for note in notes))
    print(f"\n{len(examples)} examples in {timings['total']:.0f} s. Report, tables and figures: {out.resolve()}")
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        import matplotlib  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as error:  # pragma: no cover - depends on the environment
        print(f"captum-attnflow reproduce: error: {error.name} is missing; install the extras with "
              f"pip install 'captum-attnflow[transformers,plot]'", file=sys.stderr)
        return 2
    from captum_attnflow.models.agreement_model import CheckpointError

    try:
        return _reproduce(args)
    except (UsageError, CheckpointError) as error:
        print(f"captum-attnflow reproduce: error: {error}", file=sys.stderr)
        return 2
