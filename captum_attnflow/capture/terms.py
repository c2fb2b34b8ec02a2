"""What the contribution graphs need from each self-attention call (``AttentionRecorder(...,
contributions=True)``): value vectors, output projection, block input and post-norm LayerNorm.

Notation (``docs/design.md``, "Contribution graphs"): one call of an attention module with ``H``
heads over ``n`` tokens of width ``d``; ``α^h_ij`` its weights, ``v^h_j`` the value vector of head
``h`` at token ``j`` (``dh`` numbers, after the value projection and, for grouped-query models,
after repeating the key/value heads), ``W_O^h`` the ``d × dh`` slice of the output projection that
reads head ``h``, ``b_O`` its bias, ``x_j`` the block input (the residual stream) and, for a
post-norm block, the LayerNorm applied to ``x + attention output``.

Where each part comes from, per call (first rule that applies):

* **values** ``(batch, H, n, dh)``: the extractor's ``"values"``; for ``nn.MultiheadAttention``
  its own ``in_proj`` applied to the call's ``value``; the ``value`` argument of the call's
  ``F.scaled_dot_product_attention`` (key/value heads repeated for GQA, as ``enable_gqa`` and
  transformers' ``repeat_kv`` do); else the right operand of the ``torch.matmul(weights, value)``
  whose left operand is the recorded weights (Hugging Face eager attention). :class:`ValueTap`
  watches these calls while the module runs.
* **output projection** ``(d, H·dh)`` (``nn.Linear`` layout, ``out = concat_h(o^h) @ W_Oᵀ + b_O``)
  and bias: the extractor's ``"out_proj"``/``"out_bias"``; a child named ``o_proj`` (Llama,
  Qwen2, Mistral, ...), ``out_proj`` (``nn.MultiheadAttention``, BART, CLIP, ...), ``c_proj``
  (GPT-2, a ``Conv1D`` whose weight is transposed), ``out_lin`` (DistilBERT), ``proj`` (timm),
  ``wo``, ``dense``; else the BERT layout: ``parent.output.dense`` of the module's parent.
* **block input** ``x`` ``(batch, n, d)`` and **post-norm** ``(γ, β, eps)``: the extractor's
  ``"residual"``/``"post_norm"``; BERT layout (``parent.self`` is the module and
  ``parent.output`` has ``dense`` and ``LayerNorm``): post-norm, ``x`` is the module's own input
  and the LayerNorm ``parent.output.LayerNorm``; ``nn.TransformerEncoderLayer`` /
  ``DecoderLayer`` (``self_attn``): ``x`` is the layer's input ``src``/``tgt``, post-norm with
  ``norm1`` unless ``norm_first``; pre-norm blocks whose attention child is ``self_attn``,
  ``attn``, ``attention`` or ``self_attention`` beside an ``input_layernorm`` (Llama, Qwen2,
  Mistral, ...) or ``ln_1`` (GPT-2): ``x`` is the block's input. Blocks that normalise the
  attention output before the residual (Gemma 2/3 "sandwich" norms) are not recognised. When no
  rule applies ``x`` is unknown: value-norm still works, ALTI names the module and the extractor key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from captum_attnflow.capture.sdpa import SDPA_PARAMETERS
from captum_attnflow.capture.torch_mha import bind_mha_arguments

#: Children that hold an attention module's output projection, tried in order.
OUTPUT_PROJECTIONS: tuple[str, ...] = ("o_proj", "out_proj", "c_proj", "out_lin", "proj", "wo", "dense")
#: Attribute names under which a pre-norm block holds its self-attention module.
ATTENTION_CHILDREN: tuple[str, ...] = ("self_attn", "attn", "attention", "self_attention")
#: Norms applied to the block input before the attention in pre-norm blocks.
PRE_NORMS: tuple[str, ...] = ("input_layernorm", "ln_1")
#: Keys an extractor may return besides ``"weights"``.
EXTRACTOR_KEYS: tuple[str, ...] = ("weights", "values", "out_proj", "out_bias", "residual", "post_norm")
EXTRACTOR_HINT = (
    "pass extractor=fn(module, args, kwargs, output) returning a dict with 'weights' (batch, heads, n, n), "
    "'values' (batch, heads, n, head_dim), 'out_proj' (d, heads*head_dim) and, for graph='alti', 'residual' "
    "(batch, n, d) (the block input) and 'post_norm' (the LayerNorm after the residual sum, post-norm models only)"
)
_MATMULS = (torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__)


@dataclass
class LayerTerms:
    """What one self-attention call hands to the contribution graphs.

    Attributes:
        values: ``(batch, H, n, dh)`` value vectors ``v^h_j`` (GQA heads repeated).
        out_weight: ``(d, H·dh)`` output projection (``nn.Linear`` layout); head ``h`` reads
            columns ``h·dh … (h+1)·dh − 1``.
        out_bias: ``(d,)`` or None.
        residual: ``(batch, n, d)`` block input ``x``, or None when the block layout is unknown.
        post_norm: ``(γ, β, eps)`` of the LayerNorm applied to ``x + attention output`` in a
            post-norm block (BERT), or None (pre-norm).
        where: names the module in error messages.
        missing: why ``residual`` is None.
    """

    values: Tensor
    out_weight: Tensor
    out_bias: Tensor | None
    residual: Tensor | None
    post_norm: tuple | None
    where: str
    missing: str = ""


class ValueTap(TorchFunctionMode):
    """Watch one module call for the tensor its attention weights multiply (see module docstring).

    Entered after (on top of) the recorder's SDPA interceptor, so it sees the module's
    ``F.scaled_dot_product_attention`` calls first and passes them on unchanged.
    """

    def __init__(self) -> None:
        super().__init__()
        self.sdpa_values: list[Tensor] = []
        self.products: list[tuple[int, tuple, Tensor]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            call = dict(zip(SDPA_PARAMETERS, args), **kwargs)
            value, heads = call["value"], call["query"].shape[-3]
            if value.shape[-3] != heads:  # grouped-query: query head h reads key/value head h // (H / KV)
                value = value.repeat_interleave(heads // value.shape[-3], dim=-3)
            self.sdpa_values.append(value.detach())
        elif func in _MATMULS and len(args) == 2 and all(isinstance(a, Tensor) and a.dim() == 4 for a in args):
            self.products.append((args[0].data_ptr(), tuple(args[0].shape), args[1].detach()))
        return func(*args, **kwargs)


def _layer_norm(norm) -> tuple:
    """``(γ, β, eps)`` of an ``nn.LayerNorm`` (or such a triple as it is)."""
    if isinstance(norm, nn.LayerNorm):
        return (None if norm.weight is None else norm.weight.detach(), None if norm.bias is None else norm.bias.detach(), norm.eps)
    if isinstance(norm, (tuple, list)) and len(norm) == 3:
        return tuple(norm)
    raise TypeError(f"post_norm must be an nn.LayerNorm or a (weight, bias, eps) triple; got {type(norm).__name__}.")


def _projection(sub: nn.Module) -> tuple[Tensor, Tensor | None]:
    """``(weight (d, H·dh), bias)`` of an output projection (``Conv1D`` weights are transposed)."""
    weight = sub.weight.detach()
    if type(sub).__name__ == "Conv1D":  # transformers' Conv1D: out = x @ weight + bias
        weight = weight.t()
    bias = getattr(sub, "bias", None)
    return weight, None if bias is None else bias.detach()


@dataclass
class BlockLayout:
    """Where a recorded module's block input and post-norm are (see module docstring)."""

    block: nn.Module | None = None  # read x from this module's input (None: from the module's own input)
    post_norm: nn.Module | None = None
    known: bool = True
    missing: str = ""


def block_layout(module: nn.Module, parents: dict) -> BlockLayout:
    """The block layout of ``module`` given ``parents`` (child -> (parent, attribute name))."""
    parent, attribute = parents.get(module, (None, None))
    output = getattr(parent, "output", None)
    if attribute == "self" and hasattr(output, "dense") and isinstance(getattr(output, "LayerNorm", None), nn.LayerNorm):
        return BlockLayout(None, output.LayerNorm)  # BERT family, post-norm
    if isinstance(parent, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)) and attribute == "self_attn":
        return BlockLayout(parent, None if parent.norm_first else parent.norm1)
    if attribute in ATTENTION_CHILDREN and parent is not None:
        if hasattr(parent, "pre_feedforward_layernorm"):
            return BlockLayout(known=False, missing=f"{type(parent).__name__} normalises the attention output before the residual (sandwich norm)")
        if any(isinstance(getattr(parent, name, None), nn.Module) for name in PRE_NORMS):
            return BlockLayout(parent)
    return BlockLayout(known=False, missing=f"the block around it ({type(parent).__name__ if parent is not None else 'none'}) has no known residual layout")


def _first_tensor(args: tuple, kwargs: dict, names: tuple[str, ...] = ("hidden_states", "src", "tgt", "query", "x")) -> Tensor | None:
    for item in args:
        if isinstance(item, Tensor):
            return item
    for name in names:
        if isinstance(kwargs.get(name), Tensor):
            return kwargs[name]
    return None


def mha_values(module: nn.MultiheadAttention, arguments: dict) -> Tensor:
    """``(batch, H, n, dh)`` value vectors of an ``nn.MultiheadAttention`` call, by its own ``in_proj``."""
    if module.bias_v is not None or module.add_zero_attn:
        raise ValueError("nn.MultiheadAttention with add_bias_kv or add_zero_attn adds keys no token owns; "
                         "contribution graphs are not defined for it.")
    value, embed, heads = arguments["value"], module.embed_dim, module.num_heads
    weight = module.in_proj_weight[2 * embed:] if module._qkv_same_embed_dim else module.v_proj_weight
    bias = None if module.in_proj_bias is None else module.in_proj_bias[2 * embed:]
    values = F.linear(value, weight, bias)
    if values.dim() == 2:
        values = values.unsqueeze(0)
    elif not module.batch_first:
        values = values.transpose(0, 1)
    return values.reshape(values.shape[0], values.shape[1], heads, embed // heads).transpose(1, 2).detach()


def _batch_major(x: Tensor, module: nn.Module) -> Tensor:
    """A block input as ``(batch, n, d)`` (``nn.MultiheadAttention`` without ``batch_first`` is ``(n, batch, d)``)."""
    if x.dim() == 2:
        return x.unsqueeze(0)
    if isinstance(module, nn.MultiheadAttention) and not module.batch_first:
        return x.transpose(0, 1)
    return x


class TermsCollector:
    """Collects :class:`LayerTerms` for the recorder: block-input hooks, value taps, projections."""

    def __init__(self, model: nn.Module, modules: list[nn.Module]) -> None:
        parents = {child: (parent, name) for parent in model.modules() for name, child in parent.named_children()}
        self.parents = parents
        self.layouts = {module: block_layout(module, parents) for module in modules}
        self.block_inputs: dict[int, Tensor] = {}

    def attach(self, in_owner_thread) -> list:
        """Register a pre-hook on every pre-norm block that stores its input; returns the handles."""
        def hook(block, args, kwargs):
            if in_owner_thread():
                self.block_inputs[id(block)] = _first_tensor(args, kwargs)

        blocks = {id(layout.block): layout.block for layout in self.layouts.values() if layout.block is not None}
        return [block.register_forward_pre_hook(hook, with_kwargs=True) for block in blocks.values()]

    def collect(self, call, module: nn.Module, args: tuple, kwargs: dict, weights: Tensor) -> LayerTerms:
        """The terms of one finished call (``call`` carries the tap and the extractor's dict)."""
        mha_arguments = bind_mha_arguments(module, args, kwargs) if isinstance(module, nn.MultiheadAttention) else None
        where = f"attention layer {call.layer.name or '<model>'!r} ({type(module).__name__})"
        extracted: Mapping = call.extracted or {}
        values = extracted.get("values")
        if values is None and isinstance(module, nn.MultiheadAttention):
            values = mha_values(module, mha_arguments)
        tap = call.tap
        if values is None and tap is not None and len(tap.sdpa_values) == 1:
            values = tap.sdpa_values[0]
        if values is None and tap is not None:
            key = (weights.data_ptr(), tuple(weights.shape))
            found = [value for pointer, shape, value in tap.products if (pointer, shape) == key]
            values = found[0] if len(found) == 1 else None
        if values is None:
            raise ValueError(f"{where}: the value vectors that its attention weights multiply were not found (no single "
                             f"F.scaled_dot_product_attention call, no torch.matmul(weights, values)); {EXTRACTOR_HINT}.")
        if "out_proj" in extracted:
            out_weight, out_bias = extracted["out_proj"], extracted.get("out_bias")
        else:
            out_weight, out_bias = self.output_projection(module, where)
        layout = self.layouts[module]
        residual, post_norm, missing = extracted.get("residual"), extracted.get("post_norm"), ""
        if residual is None and layout.known:
            source = _first_tensor(args, kwargs) if layout.block is None else self.block_inputs.get(id(layout.block))
            residual = None if source is None else _batch_major(source, module)
            post_norm = layout.post_norm
        elif residual is None:
            missing = layout.missing
        terms = LayerTerms(values.detach(), out_weight.detach(), None if out_bias is None else out_bias.detach(),
                           None if residual is None else residual.detach(),
                           None if post_norm is None else _layer_norm(post_norm), where, missing)
        check_terms(terms, weights)
        return terms

    def output_projection(self, module: nn.Module, where: str) -> tuple[Tensor, Tensor | None]:
        for name in OUTPUT_PROJECTIONS:
            sub = getattr(module, name, None)
            if isinstance(sub, nn.Module) and isinstance(getattr(sub, "weight", None), Tensor) and sub.weight.dim() == 2:
                return _projection(sub)
        parent, _ = self.parents.get(module, (None, None))
        dense = getattr(getattr(parent, "output", None), "dense", None)
        if isinstance(dense, nn.Module) and isinstance(getattr(dense, "weight", None), Tensor):
            return _projection(dense)
        raise ValueError(f"{where}: its output projection was not found (no child named one of {OUTPUT_PROJECTIONS}, "
                         f"no parent.output.dense); {EXTRACTOR_HINT}.")


def check_terms(terms: LayerTerms, weights: Tensor) -> None:
    """Shapes of one layer's terms against its ``(batch, H, n, n)`` weights; ValueError naming the module."""
    batch, heads, n, _ = weights.shape
    values, out_weight = terms.values, terms.out_weight
    if values.dim() != 4 or tuple(values.shape[:3]) != (batch, heads, n):
        raise ValueError(f"{terms.where}: values have shape {tuple(values.shape)}; expected (batch, heads, n, head_dim) = "
                         f"({batch}, {heads}, {n}, head_dim) to match its attention weights.")
    if out_weight.dim() != 2 or out_weight.shape[1] != heads * values.shape[-1]:
        raise ValueError(f"{terms.where}: output projection has shape {tuple(out_weight.shape)}; expected "
                         f"(d, heads*head_dim) = (d, {heads * values.shape[-1]}).")
    d = out_weight.shape[0]
    if terms.residual is not None and tuple(terms.residual.shape) != (batch, n, d):
        raise ValueError(f"{terms.where}: the block input has shape {tuple(terms.residual.shape)}; expected "
                         f"(batch, n, d) = ({batch}, {n}, {d}).")
