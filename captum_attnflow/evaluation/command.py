"""``captum-attnflow evaluate``: faithfulness of attention and Captum methods over a dataset.

Scores every example with the chosen methods, correlates them (Spearman, per layer for attention
methods) with blank-out and input gradients, measures AOPC comprehensiveness and sufficiency,
and writes to --out DIR:

  examples.jsonl  one line per example, streamed (scores, metrics, or the example's error)
  config.json     the settings and the identity of the model and data (--resume checks them)
  results.csv     the summary table: method, layer, metric, mean, std, 95% bootstrap CI, count
  results.json    the same table plus the numbers of finished, failed and lost examples

Models and data:
  --model agreement           the shipped verb-agreement model; --data agreement (the test split
                              of the data it was trained on); --model FILE.pt: another checkpoint
                              written by `captum-attnflow reproduce --retrain`
  --model DIR                 a local Hugging Face sequence-classification model + tokenizer;
                              --data FILE.txt (one text per line, target = predicted class) or
                              FILE.csv (column "text", optional column "label": index or name)

Whole batches (model passes, flow, metrics) run in --workers N local processes, each loading
the model once (default: in-process), or on a Dask cluster (--dask ADDRESS). An interrupted run
continues with --resume; examples lost with a dead worker are listed and rerun by --resume
(exit status 3 while any are lost). --resume refuses another model (hash of its weights), other
data (hash of the examples) or other settings; a second run into a busy --out refuses.

AOPC follows the ERASER protocol by default (DeYoung et al. 2020): bins 1, 5, 10, 20, 50 % of the
tokens and the model's predicted class; --fractions 0.1,0.2,0.3,0.4,0.5 --aopc-target label gives
this package's earlier protocol. The protocol is printed above the table and stored in the results.

Methods: raw, rollout and flow run on the paper's attention graph; raw_value_norm, rollout_alti,
flow_alti, ... on the value-norm (Kobayashi et al. 2020) and ALTI (Ferrando et al. 2022) graphs of
the same forward pass (graph= of the attribution classes).

Example:
  captum-attnflow evaluate --model agreement --data agreement --examples 200 \\
      --methods raw,rollout,flow,rollout_alti,ig,occlusion --workers 2 --out eval-agreement
"""

from __future__ import annotations

import argparse
import csv
import functools
import re
import sys
from pathlib import Path

from captum_attnflow.flow.maxflow import flow_solver
from captum_attnflow.utils.arguments import fail, non_negative_int, positive_int
from captum_attnflow.evaluation.results import evaluation_table
from captum_attnflow.utils.results_md import add_option, write_table

HELP = "faithfulness of raw/rollout/flow and Captum methods over a dataset (parallel, resumable)"
EXIT_LOST = 3


def _ints(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers like '0,-1'") from None


def _fractions(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers like '0.1,0.2'") from None
    if not values or any(not 0.0 < v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: each fraction must lie in (0, 1], e.g. 0.01,0.05,0.1,0.2,0.5")
    return values


def _position(text: str):
    if text == "max":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a token position (an integer) nor 'max'") from None


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="'agreement' (the shipped checkpoint), an agreement checkpoint FILE.pt, or a local "
                             "Hugging Face model directory")
    parser.add_argument("--data", help="'agreement' (default with --model agreement) or a .txt/.csv file")
    parser.add_argument("--methods", default="raw,rollout,flow",
                        help="comma-separated: raw,rollout,flow (the paper's attention graph), "
                             "raw_value_norm,rollout_value_norm,flow_value_norm, raw_alti,rollout_alti,flow_alti "
                             "(value-norm / ALTI graphs), saliency,ixg,ig,occlusion,ablation (default raw,rollout,flow)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--workers", type=non_negative_int, default=0,
                        help="local worker processes, each loading the model once (default 0: in-process)")
    parser.add_argument("--dask", metavar="ADDRESS", help="run the batches on the Dask scheduler at ADDRESS instead")
    parser.add_argument("--examples", type=positive_int, help="evaluate only the first N examples (N >= 1)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of the bootstrap (default 0)")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="examples per padded batch (default 8)")
    parser.add_argument("--padding-side", choices=("right", "left"), default="right",
                        help="where batches are padded (default right; results do not depend on it)")
    parser.add_argument("--position", type=_position, default=0,
                        help="query traced by attention methods (default 0 = [CLS]; -1 = last token; 'max')")
    parser.add_argument("--protect", type=_ints, default=[0, -1],
                        help="positions AOPC never perturbs (default 0,-1: [CLS] and [SEP]/[END])")
    parser.add_argument("--fractions", type=_fractions, default=[0.01, 0.05, 0.1, 0.2, 0.5],
                        help="AOPC fractions of the perturbable tokens (default: the ERASER bins 0.01,0.05,0.1,0.2,0.5)")
    parser.add_argument("--aopc-target", choices=("predicted", "label"), default="predicted",
                        help="class whose probability AOPC tracks: the model's prediction (default, as ERASER) or "
                             "the example's label (the prediction when there is none)")
    parser.add_argument("--deletion", choices=("blank", "remove"), default="blank",
                        help="AOPC deletes a token by the blank id or by removing it (default blank)")
    parser.add_argument("--gradient-reduction", choices=("abs_sum", "l2", "sum"), default="l2",
                        help="per-token reduction of the gradient reference (default l2; abs_sum = |sum_d g_d| "
                             "as the paper's code is ~0 for LayerNorm-ed embeddings)")
    parser.add_argument("--max-length", type=positive_int,
                        help="maximum tokens per example, at most the model's (default: the model's)")
    parser.add_argument("--truncation", choices=("warn", "error"), default="warn",
                        help="too-long examples: cut with a warning, or record as failed (default warn)")
    parser.add_argument("--flow-solver", type=flow_solver, default="auto", help="max-flow solver (default auto: the fastest exact one)")
    parser.add_argument("--resamples", type=positive_int, default=1000, help="bootstrap resamples (default 1000)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_option(parser)
    parser.add_argument("--results-name", type=_table_name, default="evaluate", metavar="NAME",
                        help="with --results-md: the table's file name, NAME.md (default evaluate)")


def _table_name(value: str) -> str:
    if not re.fullmatch(r"[\w.-]+", value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a file name: use letters, digits, '_', '.', '-'")
    return value


def load_agreement(path: str | None):
    """The agreement classifier of the checkpoint at ``path`` (``None``: the shipped one)."""
    from captum_attnflow.models.agreement_data import PAD, UNK, vocabulary
    from captum_attnflow.models.agreement_model import load_checkpoint, shipped_checkpoint_path
    from captum_attnflow.evaluation.models import AgreementClassifier

    model, _ = load_checkpoint(shipped_checkpoint_path() if path is None else path)
    words = vocabulary()
    return AgreementClassifier(model, blank_id=words.index(UNK), pad_id=words.index(PAD))


def _agreement(args):
    from captum_attnflow.models.agreement_data import encode, generate_splits
    from captum_attnflow.models.agreement_model import check_metadata, load_checkpoint, shipped_checkpoint_path

    if args.data not in (None, "agreement"):
        raise ValueError(
            "the agreement model evaluates its own generated data; use --data agreement (or omit --data)."
        )
    path = None if args.model == "agreement" else args.model
    checkpoint = shipped_checkpoint_path() if path is None else path
    _, metadata = load_checkpoint(checkpoint)  # checks it early
    check_metadata(metadata, checkpoint)
    # the test split of the data the checkpoint was trained with (never seen in training)
    test = generate_splits(metadata["data_seed"], **metadata["data_sizes"]).test
    test = _first(test, args.examples, f"the checkpoint's test split ({len(test)} examples)")
    return functools.partial(load_agreement, path), [(ids, e.label) for ids, e in zip(encode(test), test)]


def _texts(path: Path, label2id: dict[str, int]) -> list[tuple[str, int | None]]:
    try:
        return _read_texts(path, label2id)
    except UnicodeDecodeError as error:
        raise ValueError(
            f"--data {path} is not UTF-8 text (byte {error.object[error.start:error.start + 1]!r} at offset "
            f"{error.start}); save it as UTF-8."
        ) from None
    except csv.Error as error:
        raise ValueError(f"--data {path} is not valid CSV ({error}); quote texts that contain commas or quotes.") from None


def _read_texts(path: Path, label2id: dict[str, int]) -> list[tuple[str, int | None]]:
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as handle:  # -sig: a byte-order mark (Excel) is dropped
            reader = csv.DictReader(handle, strict=True)
            if not reader.fieldnames or "text" not in reader.fieldnames:
                raise ValueError(
                    f"{path} needs a header with a 'text' column (and optionally 'label'); got {reader.fieldnames}."
                )
            rows = list(reader)
        out = []
        for number, row in enumerate(rows, 2):
            if row.get("text") is None:  # the row has fewer fields than the header
                raise ValueError(
                    f"{path} line {number} has no 'text' field (fewer fields than the header {reader.fieldnames}); "
                    f"quote texts that contain commas."
                )
            label = (row.get("label") or "").strip()
            if label.lstrip("-").isdigit():
                out.append((row["text"], int(label)))
            elif not label:
                out.append((row["text"], None))
            elif label in label2id:
                out.append((row["text"], label2id[label]))
            else:
                raise ValueError(
                    f"{path} line {number}: unknown label {label!r}; use a class index or one of {sorted(label2id)}."
                )
        return out
    if path.suffix.lower() == ".txt":
        return [(line.rstrip("\n"), None) for line in path.read_text(encoding="utf-8-sig").splitlines()]
    raise ValueError(f"--data {path}: use a .txt file (one example per line) or a .csv file with a 'text' column.")


#: files of which a Hugging Face model directory needs one: the config, the weights, a tokenizer
MODEL_FILES = {
    "config": ("config.json",),
    "weights": ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                "pytorch_model.bin.index.json"),
    "tokenizer": ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model",
                  "spiece.model", "sentencepiece.bpe.model"),
}


def check_model_directory(directory: Path) -> None:
    """Refuse a ``--model`` folder that lacks a config, weights or tokenizer, naming what is missing
    (transformers would report an empty folder as five lines about sentencepiece)."""
    missing = [what for what, names in MODEL_FILES.items() if not any((directory / n).is_file() for n in names)]
    if missing:
        raise ValueError(
            f"--model {directory} is not a Hugging Face model folder: it has no {' and no '.join(missing)} file "
            f"({'; '.join(f'{w}: ' + ' or '.join(MODEL_FILES[w][:2]) for w in missing)}); save one with "
            f"model.save_pretrained(DIR) and tokenizer.save_pretrained(DIR)."
        )


def load_huggingface(directory: str):
    """:class:`HFClassifier` of the local model directory (eager attention; blank = ``[UNK]``)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from captum_attnflow.evaluation.models import HFClassifier

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars on stderr would break the one-line errors
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForSequenceClassification.from_pretrained(directory, attn_implementation="eager")
    blank_id = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else tokenizer.mask_token_id
    return HFClassifier(model, blank_id=blank_id, pad_id=tokenizer.pad_token_id)


def _huggingface(args):
    from transformers import AutoConfig, AutoTokenizer

    directory = Path(args.model)
    if not directory.is_dir():
        raise ValueError(f"--model {args.model!r} is neither 'agreement' nor a local model directory.")
    check_model_directory(directory)
    if args.data is None:
        raise ValueError("--data is required with a Hugging Face model: a .txt or .csv file of examples.")
    data_path = Path(args.data)
    if not data_path.is_file():
        raise ValueError(f"--data {args.data!r} is not a file.")
    tokenizer = AutoTokenizer.from_pretrained(directory)
    label2id = AutoConfig.from_pretrained(directory).label2id or {}
    texts = _texts(data_path, {str(k): int(v) for k, v in label2id.items()})
    texts = _first(texts, args.examples, f"--data {data_path} ({len(texts)} examples)")
    # empty lines stay (recorded as failed) so that example numbers match the file's lines
    data = [(tokenizer(text, truncation=False)["input_ids"] if text.strip() else [], label) for text, label in texts]
    return functools.partial(load_huggingface, str(directory)), data


def _first(examples: list, count: int | None, source: str) -> list:
    """The first ``count`` examples (all with ``None``); more than there are is refused."""
    if not examples:
        raise ValueError(f"{source} holds no examples.")
    if count is not None and count > len(examples):
        raise ValueError(f"--examples {count} exceeds {source}; pass at most {len(examples)}.")
    return examples if count is None else examples[:count]


def _executor(args):
    if args.dask and args.workers:
        raise ValueError("choose --workers N (local processes) or --dask ADDRESS, not both.")
    if args.dask:
        from distributed import Client

        client = Client(args.dask)
        return client.get_executor(), client.close
    if args.workers:
        from captum_attnflow.evaluation.executors import process_pool

        pool = process_pool(args.workers)
        return pool, pool.shutdown
    return None, lambda: None


def run(args: argparse.Namespace) -> int:
    import torch

    from captum_attnflow.evaluation.methods import resolve_methods
    from captum_attnflow.evaluation.pipeline import cached_classifier
    from captum_attnflow.evaluation.runner import evaluate
    from captum_attnflow.utils.files import DirectoryLock, writable_directory

    torch.set_num_threads(1)
    try:
        agreement = args.model == "agreement" or args.model.endswith(".pt")
        if args.results_md is not None:
            writable_directory(args.results_md, "--results-md")
        writable_directory(args.out, "--out")
        DirectoryLock(args.out).check()  # another run writing there: refuse before loading anything
        resolve_methods(args.methods, flow_solver=args.flow_solver)  # unknown names: before loading anything
        factory, data = _agreement(args) if agreement else _huggingface(args)
        try:
            cached_classifier(factory)  # load the model once, here (evaluate reuses it): a broken one is one line
        except (ValueError, OSError, TypeError):
            raise
        except Exception as error:  # noqa: BLE001 - e.g. safetensors' own error for damaged weights
            raise ValueError(f"--model {args.model}: cannot load the model ({type(error).__name__}: {error}).") from None
        executor, close = _executor(args)
    except (ValueError, OSError, TypeError) as error:
        return fail("evaluate", error)
    try:
        result = evaluate(
            factory, data, args.methods, position=args.position, gradient_reduction=args.gradient_reduction,
            fractions=args.fractions, aopc_target=args.aopc_target, deletion=args.deletion, protected=args.protect,
            batch_size=args.batch_size, padding_side=args.padding_side, truncation=args.truncation, max_length=args.max_length, executor=executor,
            out=args.out, resume=args.resume, progress=not args.no_progress, flow_solver=args.flow_solver,
            resamples=args.resamples, seed=args.seed,
        )
    except (ValueError, TypeError, OSError) as error:
        return fail("evaluate", error)
    finally:
        close()
    out = Path(args.out)
    print(result.table)
    write_table(args.results_md, args.results_name, f"{result.table.protocol}.\n\n{evaluation_table(result.table.records)}")
    from captum_attnflow.evaluation.explorer import write_evaluation_report
    write_evaluation_report(out, data, args.model, f"{result.table.protocol}.\n\n{evaluation_table(result.table.records)}")
    print(f"\n{len(result.examples)} examples evaluated, {len(result.errors)} failed, {len(result.lost)} lost; "
          f"results in {out}")
    for index, message in sorted(result.errors.items())[:10]:
        print(f"  example {index} failed: {message}")
    if result.lost:
        print(f"lost (worker died): examples {sorted(result.lost)}; run again with --resume to finish them",
              file=sys.stderr)
        return EXIT_LOST
    return 0
