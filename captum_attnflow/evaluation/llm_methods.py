"""The methods ``llm-faithfulness`` compares: one registry, name -> how to score a prompt.

A method is a function ``score(context, prompt, target) -> (T, P)`` numpy array: for each of
the ``T`` output tokens one score per prompt token (higher: more important). ``context`` is the
worker's :class:`LLMContext` (the model, its tokenizer, and attribution objects built once).

**Register new methods in :data:`LLM_METHODS` below** (or call :func:`register_llm_method`).
The attention-graph variants plug in through :func:`attention`, which passes its keywords to the
attribution class — e.g. ``attention(AttentionRollout, graph="value_norm")`` once the classes
take ``graph=`` — and a correction of rollout's / flow's positional prior through its
``transform=`` (a function ``(rows, context, ids) -> rows`` applied to the ``(T, n)`` rows over
prompt + target before the prompt's columns are kept). The ``--methods`` option takes the names.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from captum_attnflow.attr import AttentionFlow, AttentionRollout, LLMAttentionAttribution, LLMKeyAblation, RawAttention
from captum_attnflow.attr.text import pretty_tokens
from captum_attnflow.evaluation.llm_metrics import random_scores
from captum_attnflow.flow.prior import divide_prior, positional_prior

#: Integrated-gradients steps of the LayerIntegratedGradients method (cost grows linearly)
IG_STEPS = 8
#: random rankings averaged into the "random" reference row
RANDOM_SEEDS = 3


class LLMContext:
    """What every method of one worker shares: the model, the tokenizer and built attributions."""

    def __init__(self, model, tokenizer) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.cache: dict[Any, Any] = {}

    def get(self, key: Any, build: Callable[[], Any]) -> Any:
        if key not in self.cache:
            self.cache[key] = build()
        return self.cache[key]


Score = Callable[[LLMContext, Tensor, Tensor], np.ndarray]


@dataclass(frozen=True)
class LLMMethod:
    """One row of the benchmark.

    Attributes:
        name: the ``--methods`` name. label: the table's text. score: see the module docstring.
        reference: a baseline ranking (random, earliest-first, latest-first), not an explanation.
        seeds: for ``random``: how many seeded rankings are averaged (``score`` gets ``seed=``).
        optional: a peer package outside the default install (inseq, lxt): left out of the
            default methods, and refused up front by name when it cannot be imported.
    """

    name: str
    label: str
    score: Score
    reference: bool = False
    seeds: int = 0
    optional: bool = False


def _prompt_rows(rows: Tensor, prompt_length: int) -> np.ndarray:
    return rows[:, :prompt_length].detach().double().cpu().numpy()


def token_input(context: LLMContext, prompt: Tensor):
    """A Captum ``TextTokenInput`` holding exactly the token ids ``prompt`` ``(P,)``."""
    from captum.attr import TextTokenInput

    inp = TextTokenInput(context.tokenizer.decode(prompt), context.tokenizer)
    inp.inp_tensor = inp.itp_tensor = prompt[None].clone().cpu()
    inp.values = context.tokenizer.convert_ids_to_tokens(prompt.tolist())
    inp.n_itp_features = prompt.shape[0]
    return inp


def teacher_forced(prompt: Tensor, target: Tensor) -> tuple[Tensor, list[int]]:
    """``(1, P + T - 1)`` ids of prompt + target without its last token, and the ``T`` positions
    that predict the target's tokens (the last prompt position first)."""
    ids = torch.cat([prompt, target[:-1]])[None]
    return ids, list(range(prompt.shape[0] - 1, ids.shape[1]))


def attention(cls, *, layer: int = -1, graph: str = "attention", drop_sink: int | None = None,
              transform: Callable | None = None, **options) -> Score:
    """An attention method through :class:`LLMAttentionAttribution` at ``layer`` over ``graph``
    (``"attention"``, ``"value_norm"``, ``"alti"``), without the sink's column with ``drop_sink``;
    ``options`` go to ``cls(model, **options)``;
    ``transform(rows, context, ids)`` post-processes the rows over prompt + target (``(T, n)``)
    before the prompt's columns are kept (the place of a positional-prior correction)."""

    def score(context: LLMContext, prompt: Tensor, target: Tensor) -> np.ndarray:
        key = (cls.__name__, tuple(sorted(options.items())))
        method = context.get(key, lambda: LLMAttentionAttribution(cls(context.model, **options), context.tokenizer))
        ids, positions = teacher_forced(prompt, target)
        layers = [layer % len(method.attr_method.layer_names)]
        rows, _ = method.rows(ids, target, positions, layers, None, True, "mean", graph, drop_sink)
        if transform is not None:
            rows = transform(rows, context, ids)
        return _prompt_rows(rows, prompt.shape[0])

    return score


def uniform_prior(method: str) -> Callable:
    """A ``transform`` dividing rollout's / flow's rows by their positional prior: the same method
    on uniform causal attention with the model's number of layers
    (:func:`~captum_attnflow.flow.prior.positional_prior`, :func:`~captum_attnflow.flow.prior.divide_prior`)."""

    def transform(rows: Tensor, context: LLMContext, ids: Tensor) -> Tensor:
        n, count = ids.shape[1], rows.shape[0]
        layers = context.model.config.num_hidden_layers
        positions = list(range(n - count, n))
        prior = context.get(("prior", method, n, count, layers), lambda: positional_prior(method, n, layers, positions))
        return divide_prior(rows, prior)

    return transform


def mean_raw_attention(context: LLMContext, prompt: Tensor, target: Tensor) -> np.ndarray:
    """Raw attention (heads averaged) averaged over every layer, from one recorded pass."""
    method = context.get("raw_all", lambda: RawAttention(context.model))
    ids, positions = teacher_forced(prompt, target)
    attentions, mask, _ = method.record(ids, None, head_fusion="mean")
    matrices = method.graph_rows(attentions, mask, gradients=None, layers=list(range(len(attentions))),
                                 positions=positions, head=None, residual=True, head_fusion="mean")
    return _prompt_rows(matrices[0].mean(0)[positions], prompt.shape[0])


@contextlib.contextmanager
def captum_output_labels():
    """Within the block, Captum's ``LLMAttribution`` / ``LLMGradientAttribution`` label their output
    tokens with :func:`~captum_attnflow.attr.text.pretty_tokens`: Captum's own conversion raises
    ``IndexError`` when the target splits one UTF-8 character (SmolLM2 generating ``¡`` as two
    byte-level pieces), which lost the prompt's scores with it. Labels only; the scores are
    Captum's. Restored on exit (a module attribute: one benchmark method at a time per process).
    """
    from captum.attr._core import llm_attr

    original = llm_attr._convert_ids_to_pretty_tokens
    llm_attr._convert_ids_to_pretty_tokens = pretty_tokens
    try:
        yield
    finally:
        llm_attr._convert_ids_to_pretty_tokens = original


def layer_integrated_gradients(context: LLMContext, prompt: Tensor, target: Tensor) -> np.ndarray:
    """Captum ``LLMGradientAttribution(LayerIntegratedGradients)`` on the token embeddings."""
    from captum.attr import LayerIntegratedGradients, LLMGradientAttribution

    model, tokenizer = context.model, context.tokenizer
    method = context.get("lig", lambda: LLMGradientAttribution(
        LayerIntegratedGradients(model, model.get_input_embeddings()), tokenizer))
    inp = token_input(context, prompt)
    with captum_output_labels():
        result = method.attribute(inp, target=target.clone(), n_steps=IG_STEPS)
    return result.token_attr.detach().double().cpu().numpy()


def feature_ablation(context: LLMContext, prompt: Tensor, target: Tensor) -> np.ndarray:
    """Captum ``LLMAttribution(FeatureAblation)`` with Captum's default baseline (token id 0)."""
    from captum.attr import FeatureAblation, LLMAttribution

    model, tokenizer = context.model, context.tokenizer
    method = context.get("fa", lambda: LLMAttribution(FeatureAblation(model), tokenizer))
    inp = token_input(context, prompt)
    with captum_output_labels():
        result = method.attribute(inp, target=target.clone(), forward_in_tokens=False)
    return result.token_attr.detach().double().cpu().numpy()


def key_ablation(context: LLMContext, prompt: Tensor, target: Tensor) -> np.ndarray:
    """:class:`LLMKeyAblation`: each prompt token removed as a key in every layer."""
    method = context.get("key_ablation", lambda: LLMKeyAblation(context.model, context.tokenizer))
    inp = token_input(context, prompt)
    return method.attribute(inp, target=target.clone()).token_attr.detach().double().cpu().numpy()


def peer(name: str) -> Score:
    """A peer method of :mod:`~captum_attnflow.evaluation.llm_peers` (inseq, AttnLRP) by name."""

    def score(context: LLMContext, prompt: Tensor, target: Tensor) -> np.ndarray:
        from captum_attnflow.evaluation.llm_peers import PEERS

        return PEERS[name](context.model, context.tokenizer, prompt, target)

    return score


def earliest_first(context: LLMContext, prompt: Tensor, target: Tensor) -> np.ndarray:
    return np.tile(-np.arange(prompt.shape[0], dtype=np.float64), (target.shape[0], 1))


def latest_first(context: LLMContext, prompt: Tensor, target: Tensor) -> np.ndarray:
    return np.tile(np.arange(prompt.shape[0], dtype=np.float64), (target.shape[0], 1))


def random_ranking(context: LLMContext, prompt: Tensor, target: Tensor, *, seed: int = 0) -> np.ndarray:
    keys = [int(v) for v in prompt.tolist()] + [int(v) for v in target.tolist()]
    return np.stack([random_scores(prompt.shape[0], seed, t, *keys) for t in range(target.shape[0])])


#: name -> method. THE place to register methods (graph variants, corrections, peers).
LLM_METHODS: dict[str, LLMMethod] = {}


def register_llm_method(method: LLMMethod) -> LLMMethod:
    """Add ``method`` to :data:`LLM_METHODS` (its name must be new)."""
    if method.name in LLM_METHODS:
        raise ValueError(f"an LLM method named {method.name!r} is already registered.")
    LLM_METHODS[method.name] = method
    return method


for _method in (
    LLMMethod("raw_last", "raw attention, last layer", attention(RawAttention)),
    LLMMethod("raw_mean", "raw attention, mean of layers", mean_raw_attention),
    LLMMethod("rollout", "rollout (paper's graph), last layer", attention(AttentionRollout)),
    LLMMethod("flow", "flow (paper's graph), last layer", attention(AttentionFlow)),
    LLMMethod("raw_value_norm", "raw value-norm (Kobayashi), last layer", attention(RawAttention, graph="value_norm")),
    LLMMethod("raw_alti", "raw ALTI, last layer", attention(RawAttention, graph="alti")),
    LLMMethod("rollout_value_norm", "rollout, value-norm graph", attention(AttentionRollout, graph="value_norm")),
    LLMMethod("rollout_alti", "rollout, ALTI graph", attention(AttentionRollout, graph="alti")),
    LLMMethod("flow_value_norm", "flow, value-norm graph", attention(AttentionFlow, graph="value_norm")),
    LLMMethod("flow_alti", "flow, ALTI graph", attention(AttentionFlow, graph="alti")),
    LLMMethod("rollout_uniform", "rollout ÷ its uniform-attention prior", attention(AttentionRollout, transform=uniform_prior("rollout"))),
    LLMMethod("flow_uniform", "flow ÷ its uniform-attention prior", attention(AttentionFlow, transform=uniform_prior("flow"))),
    LLMMethod("rollout_alti_uniform", "rollout (ALTI graph) ÷ uniform prior",
              attention(AttentionRollout, graph="alti", transform=uniform_prior("rollout"))),
    LLMMethod("rollout_no_sink", "rollout without the sink (token 0)", attention(AttentionRollout, drop_sink=0)),
    LLMMethod("rollout_alti_no_sink", "rollout, ALTI graph, without the sink (token 0)",
              attention(AttentionRollout, graph="alti", drop_sink=0)),
    LLMMethod("flow_alti_no_sink", "flow, ALTI graph, without the sink (token 0)", attention(AttentionFlow, graph="alti", drop_sink=0)),
    LLMMethod("lig", f"LayerIntegratedGradients (embeddings, {IG_STEPS} steps)", layer_integrated_gradients),
    LLMMethod("feature_ablation", "FeatureAblation, Captum default baseline (id 0)", feature_ablation),
    LLMMethod("key_ablation", "LLMKeyAblation (key removal)", key_ablation),
    LLMMethod("random", f"random (mean of {RANDOM_SEEDS} seeds)", random_ranking, reference=True, seeds=RANDOM_SEEDS),
    LLMMethod("earliest", "earliest first", earliest_first, reference=True),
    LLMMethod("latest", "latest first", latest_first, reference=True),
    LLMMethod("inseq_attention", "inseq 0.7.1 attention (mean of layers and heads)", peer("inseq_attention"), optional=True),
    LLMMethod("inseq_value_zeroing", "inseq 0.7.1 value zeroing", peer("inseq_value_zeroing"), optional=True),
    LLMMethod("attnlrp", "AttnLRP (lxt 2.1)", peer("attnlrp"), optional=True),
):
    register_llm_method(_method)

DEFAULT_METHODS: tuple[str, ...] = tuple(name for name, method in LLM_METHODS.items() if not method.optional)
#: the methods a quick run (CI) affords: no integrated gradients, no flow
QUICK_METHODS: tuple[str, ...] = ("raw_last", "raw_mean", "rollout", "feature_ablation", "key_ablation", "random",
                                  "earliest", "latest")


def resolve_llm_methods(names: str | list[str] | tuple[str, ...]) -> list[LLMMethod]:
    """Methods by name (a list or a comma-separated string); unknown names list the valid ones."""
    if isinstance(names, str):
        names = [part.strip() for part in names.split(",") if part.strip()]
    unknown = [name for name in names if name not in LLM_METHODS]
    if unknown or not names:
        raise ValueError(f"unknown LLM method(s) {unknown or names}; choose from {', '.join(LLM_METHODS)}.")
    from captum_attnflow.evaluation.llm_peers import peer_available

    methods = [LLM_METHODS[name] for name in dict.fromkeys(names)]
    for method in methods:
        reason = peer_available(method.name) if method.optional else None
        if reason:
            raise ValueError(f"method {method.name!r} cannot run here: {reason}")
    return methods
