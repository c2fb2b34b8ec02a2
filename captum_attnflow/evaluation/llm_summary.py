"""``llm-faithfulness`` results: the summary table (Markdown), the deletion curves (figure) and
the report's explorer data."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from captum_attnflow.evaluation.llm_methods import LLM_METHODS
from captum_attnflow.report.page import ExplorerExample, ExplorerMethod, sentence

#: summary column -> (per-prompt metric, header, digits); "beats_random" and "seconds" are derived
COLUMNS: dict[str, tuple[str, int]] = {
    "deletion_remove": ("del. AOPC, key removal ↑", 2),
    "insertion_remove": ("ins. AOPC, key removal ↑", 2),
    "deletion_replace": ("del. AOPC, replacement ↑", 2),
    "insertion_replace": ("ins. AOPC, replacement ↑", 2),
    "beats_random": ("del. > random (% prompts)", 0),
    "spearman_loo": ("ρ with key-removal LOO", 2),
    "spearman_lig": ("ρ with LayerIG", 2),
    "subject_rr": ("subject MRR", 2),
    "subject_top1": ("subject top-1 (%)", 0),
    "contrast_deletion": ("del. AOPC, are−is logit diff. ↑", 2),
    "seconds": ("s / prompt", 2),
}


def _mean(values: Sequence[float]) -> float:
    values = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def summarize_llm(records: Sequence[dict[str, Any]], methods: Sequence[str]) -> dict[str, dict[str, float]]:
    """``{method: {column: value}}`` over the ``ok`` records: the mean over prompts of each
    per-prompt metric (agreement metrics over the agreement prompts), the share of prompts whose
    key-removal deletion AOPC beats the random reference, and the seconds per prompt."""
    ok = [r for r in records if r["status"] == "ok"]
    summary = {}
    for method in methods:
        row = {key: _mean([r["metrics"][method][key] for r in ok]) for key in COLUMNS if key not in ("beats_random", "seconds")}
        if "random" in methods and method != "random":
            wins = [r["metrics"][method]["deletion_remove"] > r["metrics"]["random"]["deletion_remove"] for r in ok]
            row["beats_random"] = 100.0 * float(np.mean(wins)) if wins else math.nan
        else:
            row["beats_random"] = math.nan
        row["subject_top1"] = 100.0 * row["subject_top1"] if math.isfinite(row["subject_top1"]) else math.nan
        row["seconds"] = _mean([r["seconds"][method] for r in ok])
        summary[method] = row
    return summary


def _cell(value: float, digits: int) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def llm_table(summary: dict[str, dict[str, float]], *, timing: bool = True) -> str:
    """The summary as one Markdown table (rows = methods); ``timing=False`` leaves the seconds
    out (for tables compared across machines)."""
    columns = [c for c in COLUMNS if timing or c != "seconds"]
    lines = ["| method | " + " | ".join(COLUMNS[c][0] for c in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for method, row in summary.items():
        label = LLM_METHODS[method].label if method in LLM_METHODS else method
        lines.append(f"| {label} | " + " | ".join(_cell(row[c], COLUMNS[c][1]) for c in columns) + " |")
    return "\n".join(lines)


def kind_table(records: Sequence[dict[str, Any]], methods: Sequence[str]) -> str:
    """Key-removal deletion AOPC by kind of prompt (rows = methods, columns = kinds)."""
    ok = [r for r in records if r["status"] == "ok"]
    kinds = list(dict.fromkeys(r["kind"] for r in ok))
    counts = {k: sum(r["kind"] == k for r in ok) for k in kinds}
    lines = ["| method | " + " | ".join(f"{k} ({counts[k]})" for k in kinds) + " |", "|---" * (len(kinds) + 1) + "|"]
    for method in methods:
        cells = [_cell(_mean([r["metrics"][method]["deletion_remove"] for r in ok if r["kind"] == k]), 2) for k in kinds]
        lines.append(f"| {LLM_METHODS[method].label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mean_curves(records: Sequence[dict[str, Any]], methods: Sequence[str]) -> dict[str, np.ndarray]:
    """Per method: the mean over prompts of the key-removal deletion curve (drop at k = 1..K)."""
    ok = [r for r in records if r["status"] == "ok"]
    out = {}
    for method in methods:
        curves = [r["curves"][method] for r in ok]
        width = max(len(c) for c in curves)
        padded = np.array([c + [np.nan] * (width - len(c)) for c in curves], dtype=np.float64)
        out[method] = np.nanmean(padded, axis=0)
    return out


def curves_figure(records: Sequence[dict[str, Any]], methods: Sequence[str], path: str | Path, title: str) -> Path:
    """The deletion curves (k vs mean drop of log p, key removal) as a PNG: attention-graph methods
    (raw / rollout / flow, any graph) on the left, the other methods on the right, the reference
    rankings (random, earliest-, latest-first) in grey on both, each panel with its own legend."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    from captum_attnflow.visualize import save_figure

    curves = mean_curves(records, methods)
    references = [m for m in curves if LLM_METHODS[m].reference]
    graphs = [m for m in curves if not LLM_METHODS[m].reference and m.split("_")[0] in ("raw", "rollout", "flow")]
    others = [m for m in curves if m not in references and m not in graphs]
    panels = [(graphs, "attention-graph methods (raw / rollout / flow)"), (others, "perturbation, gradient and peer methods")]
    panels = [(names, label) for names, label in panels if names] or [([], "references")]
    figure = Figure(figsize=(6.2 * len(panels), 6.4))
    axes = figure.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    colours = colormaps["tab20"].colors
    for ax, (names, label) in zip(axes, panels):
        for index, method in enumerate(names):
            curve = curves[method]
            ax.plot(np.arange(1, curve.size + 1), curve, marker="o", markersize=3.5, color=colours[index % 20],
                    linestyle="-" if index < 20 else "--", label=LLM_METHODS[method].label)
        for style, method in zip(("--", ":", "-."), references):
            curve = curves[method]
            ax.plot(np.arange(1, curve.size + 1), curve, color="0.45", linestyle=style, label=LLM_METHODS[method].label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("k: top-k prompt tokens removed (as keys, every layer)")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)
    axes[0].set_ylabel("mean drop of log p(output token) [nats]")
    figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    return save_figure(figure, path)


def llm_explorer(records: Sequence[dict[str, Any]], methods: Sequence[str], limit: int = 50):
    """Explorer data: each prompt with every method's scores for its first output token."""
    ok = [r for r in records if r["status"] == "ok"][:limit]
    if not ok:
        return None
    menu = [ExplorerMethod(m, f"{LLM_METHODS[m].label} (output token 1)") for m in methods]
    examples = []
    for record in ok:
        tokens = record["prompt_tokens"]
        scores = {m: np.asarray(record["scores"][m][0], dtype=np.float64) for m in methods}
        output = "".join(record["output_tokens"]).replace("Ġ", " ").replace("Ċ", "\\n")
        info = (f"prompt {record['index']} ({record['kind']}); output {output!r}; key-removal deletion AOPC: "
                + ", ".join(f"{m} {record['metrics'][m]['deletion_remove']:.2f}" for m in methods))
        examples.append(ExplorerExample(sentence(tokens), tokens, scores, info))
    return menu, examples
