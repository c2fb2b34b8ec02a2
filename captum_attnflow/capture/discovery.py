"""Finding the attention modules of a model.

Every recorded module gets a *role*: ``"self"`` (its attention enters the rollout/flow graph),
``"cross"`` (encoder–decoder attention, recorded separately and never mixed into the graph) or
``"auto"`` (``nn.MultiheadAttention``: self-attention when called with ``query is key``, cross
otherwise, decided at every call).

Auto-discovery tries, in order:

1. **Hugging Face declarations.** transformers 5.x models declare which module classes produce
   ``attentions`` and ``cross_attentions`` in ``_can_record_outputs`` (the same table their own
   ``output_attentions`` uses). Composite models are walked like transformers does: every
   ``PreTrainedModel`` sub-model uses its own table.
2. **Class names** matching ``attention``/``attn`` (case-insensitive), innermost only (a
   matching module that contains another matching module is skipped): every
   ``torch.nn.MultiheadAttention`` (also inside ``nn.TransformerEncoder``/``Decoder``), timm's
   ``Attention`` and most hand-written modules.

Encoder–decoder models (:func:`encoder_decoder_parts`) have two self-attention graphs, so
auto-discovery stops there with an error naming the glob patterns of both parts; the user picks
one with ``attention_layers=``.

Explicit ``attention_layers`` are modules of the model, or names: a ``str`` is a glob pattern on
qualified module names where ``*`` matches within one dot-separated part, ``**`` across parts and
``?`` one character (``"encoder.layer.*.attention.self"``, ``"**.attn"``); a compiled
``re.Pattern`` must match the whole name. Patterns never select the model itself (pass the
module to record a model that is one attention module).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

from torch import nn

#: Role of a recorded module, see the module docstring.
SELF, CROSS, AUTO = "self", "cross", "auto"

#: Class names the generic search accepts as attention modules.
ATTENTION_CLASS_NAME = re.compile(r"attention|attn", re.IGNORECASE)  # not "atten": nn.Flatten

#: ``_can_record_outputs`` keys of Hugging Face models and the role they give.
HF_ROLES = {"attentions": SELF, "cross_attentions": CROSS}


@dataclass(frozen=True)
class AttentionLayer:
    """One hooked module: qualified ``name`` in the model, the ``module`` itself and its role.

    ``output_index`` is where the module returns its weights when it returns them at all
    (Hugging Face eager attention: ``output[1]``, or what ``_can_record_outputs`` declares).
    """

    name: str
    module: nn.Module
    role: str
    output_index: int = 1


def glob_to_regex(pattern: str) -> re.Pattern:
    """Compile a module-name glob: ``**`` any text, ``*`` any text without a dot, ``?`` one non-dot."""
    pieces = re.split(r"(\*\*|\*|\?)", pattern)
    wildcards = {"**": ".*", "*": r"[^.]*", "?": r"[^.]"}
    return re.compile("".join(wildcards.get(piece, re.escape(piece)) for piece in pieces))


def _hf_specs(table: dict) -> list[tuple[str, object]]:
    """``(role, spec)`` pairs from a Hugging Face model's ``_can_record_outputs`` table."""
    pairs = []
    for key, role in HF_ROLES.items():
        specs = table.get(key)
        for spec in specs if isinstance(specs, (list, tuple)) else [specs]:
            if spec is not None:
                pairs.append((role, spec))
    return pairs


def _hf_spec_matches(spec: object, module: nn.Module, name: str) -> bool:
    """Whether ``module`` (qualified ``name``) is what a ``_can_record_outputs`` entry targets.

    An entry is a module class, a class-name suffix (``str``) or a transformers ``OutputRecorder``
    (``target_class``, ``class_name``, ``layer_name``); the rules mirror transformers'
    ``recursively_install_hooks``.
    """
    if isinstance(spec, type):
        return isinstance(module, spec)
    if isinstance(spec, str):
        return name.endswith(spec)
    target = getattr(spec, "target_class", None)
    class_name = getattr(spec, "class_name", None)
    if not ((target is not None and isinstance(module, target)) or (class_name and name.endswith(class_name))):
        return False
    layer_name = getattr(spec, "layer_name", None)
    return layer_name is None or f".{layer_name.strip('.')}." in f".{name}."


def hugging_face_roles(model: nn.Module) -> dict[nn.Module, AttentionLayer]:
    """Attention modules declared by Hugging Face ``_can_record_outputs`` tables, in module order.

    Every sub-model that carries a table (a ``PreTrainedModel``) governs its own descendants,
    as in transformers.
    """
    found: dict[nn.Module, AttentionLayer] = {}

    def walk(module: nn.Module, name: str, specs: list[tuple[str, object]]) -> None:
        if hasattr(module, "_can_record_outputs"):  # a transformers PreTrainedModel
            table = module._can_record_outputs
            specs = _hf_specs(table if isinstance(table, dict) else {})
        for role, spec in specs:
            if module not in found and _hf_spec_matches(spec, module, name):
                index = spec.index if isinstance(getattr(spec, "index", None), int) else 1
                found[module] = AttentionLayer(name, module, role, index)
        for child_name, child in module.named_children():
            walk(child, f"{name}.{child_name}" if name else child_name, specs)

    walk(model, "", [])
    return found


def _contains(outer: str, inner: str) -> bool:
    """Whether the module named ``inner`` lies inside the module named ``outer`` ("" = the model)."""
    return inner != outer and (outer == "" or inner.startswith(outer + "."))


def _innermost(candidates: list[tuple[str, nn.Module]]) -> list[tuple[str, nn.Module]]:
    """Drop candidates that contain another candidate."""
    names = [name for name, _ in candidates]
    return [(name, module) for name, module in candidates if not any(_contains(name, other) for other in names)]


def _as_layer(name: str, module: nn.Module, declared: dict[nn.Module, AttentionLayer]) -> AttentionLayer:
    """The recorded layer for ``module``: Hugging Face's declaration if any, else the default role."""
    if module in declared:
        return AttentionLayer(name, module, declared[module].role, declared[module].output_index)
    return AttentionLayer(name, module, AUTO if isinstance(module, nn.MultiheadAttention) else SELF)


def encoder_decoder_parts(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """``(encoder, decoder)`` of an encoder–decoder model, or None for other models.

    Recognised: Hugging Face models with ``config.is_encoder_decoder`` (``get_encoder()`` /
    ``get_decoder()``) and ``torch.nn.Transformer`` (the model or one of its submodules).
    """
    config = getattr(model, "config", None)
    if getattr(config, "is_encoder_decoder", False) is True and hasattr(model, "get_encoder"):
        encoder, decoder = model.get_encoder(), model.get_decoder()
        if encoder is not model and decoder is not model and encoder is not decoder:
            return encoder, decoder
    for module in model.modules():
        if isinstance(module, nn.Transformer):
            return module.encoder, module.decoder
    return None


def name_patterns(names: Sequence[str], all_names: Sequence[str]) -> list[str]:
    """Short glob patterns that select exactly ``names`` among the module names ``all_names``.

    Numeric parts become ``*`` where that selects no other module: T5's
    ``encoder.block.0.layer.0`` and ``encoder.block.1.layer.0`` give ``encoder.block.*.layer.0``.
    """
    targets = set(names)
    patterns = []
    for name in names:
        parts = name.split(".")
        for index, part in enumerate(parts):
            if part.isdigit():
                trial = parts[:index] + ["*"] + parts[index + 1 :]
                regex = glob_to_regex(".".join(trial))
                if all(other in targets for other in all_names if other and regex.fullmatch(other)):
                    parts = trial
        patterns.append(".".join(parts))
    return list(dict.fromkeys(patterns))


def discover_attention_layers(model: nn.Module) -> list[AttentionLayer]:
    """Find the attention modules of ``model`` without being told (see the module docstring).

    Returns:
        The modules in ``model.named_modules()`` order.

    Raises:
        ValueError: nothing was found; the message lists what was tried and how to name the
            modules with ``attention_layers=`` (and ``extractor=``).
    """
    declared = hugging_face_roles(model)
    if declared:
        found = list(declared.values())
    else:
        found = _discover_by_class_name(model)
    if encoder_decoder_parts(model) is not None:
        all_names = [name for name, _ in model.named_modules()]
        self_names = name_patterns([layer.name for layer in found if layer.role != CROSS], all_names)
        cross_names = name_patterns([layer.name for layer in found if layer.role == CROSS], all_names)
        raise ValueError(
            f"{type(model).__name__} is an encoder-decoder model: its encoder and its decoder "
            f"self-attention form two different attention graphs. Record one of them with "
            f"attention_layers=: the self-attention modules are {self_names}"
            + (f" and the cross-attention modules {cross_names}" if cross_names else "")
            + " (cross-attention is recorded separately, in recorder.cross_attentions)."
        )
    return found


def _discover_by_class_name(model: nn.Module) -> list[AttentionLayer]:
    """Innermost modules whose class name contains attention/attn (step 2 of the module docstring)."""
    named = list(model.named_modules())
    # nn.MultiheadAttention matches the class-name rule too.
    by_class = [(name, module) for name, module in named if ATTENTION_CLASS_NAME.search(type(module).__name__)]
    chosen = _innermost(by_class)
    if not chosen:
        classes = sorted({type(module).__name__ for _, module in named})
        shown = f"{classes[:20]}{' ...' if len(classes) > 20 else ''}"
        raise ValueError(
            f"no attention module found in {type(model).__name__}. Tried: (1) Hugging Face "
            f"_can_record_outputs['attentions'] (not declared), (2) module classes whose name "
            f"contains 'attention' or 'attn', torch.nn.MultiheadAttention included (none among "
            f"{shown}). Name the modules yourself: AttentionRecorder(model, attention_layers="
            f"[module, ...] or ['encoder.layers.*.attn']), and pass extractor=fn(module, args, "
            f"kwargs, output) -> (batch, heads, n, n) if they neither call "
            f"F.scaled_dot_product_attention nor return their weights as output[1]."
        )
    return [_as_layer(name, module, {}) for name, module in chosen]


def select_attention_layers(model: nn.Module, attention_layers: Sequence) -> list[AttentionLayer]:
    """Resolve user-given ``attention_layers`` (modules, glob strings, ``re.Pattern``).

    Returns:
        The selected modules in ``model.named_modules()`` order, each with its role (Hugging Face
        cross-attention declarations and ``nn.MultiheadAttention`` are honoured).

    Raises:
        TypeError: an entry is neither a module nor a pattern.
        ValueError: the list is empty, a module is not part of ``model``, a pattern matches no
            module name, or one selected module contains another.
    """
    if isinstance(attention_layers, (str, re.Pattern, nn.Module)) or not isinstance(attention_layers, Iterable):
        raise TypeError(
            f"attention_layers must be a list of modules or name patterns; got "
            f"{type(attention_layers).__name__}. Wrap a single entry in a list."
        )
    attention_layers = list(attention_layers)
    if not attention_layers:
        raise ValueError("attention_layers is empty; pass None to discover the attention modules automatically.")
    named = list(model.named_modules())
    selected: dict[str, nn.Module] = {}
    for entry in attention_layers:
        if isinstance(entry, nn.Module):
            names = [name for name, module in named if module is entry]
            if not names:
                raise ValueError(
                    f"attention_layers contains a {type(entry).__name__} that is not a submodule of "
                    f"{type(model).__name__}."
                )
            selected.setdefault(names[0], entry)
        elif isinstance(entry, (str, re.Pattern)):
            regex = glob_to_regex(entry) if isinstance(entry, str) else entry
            hits = [(name, module) for name, module in named if name and regex.fullmatch(name)]
            if not hits:
                examples = [name for name, _ in named if name][:12]
                raise ValueError(
                    f"attention_layers pattern {getattr(entry, 'pattern', entry)!r} matches no module "
                    f"name of {type(model).__name__}; names look like {examples}."
                )
            for name, module in hits:
                selected.setdefault(name, module)
        else:
            raise TypeError(
                f"attention_layers entries must be nn.Module, str (glob pattern) or re.Pattern; "
                f"got {type(entry).__name__}."
            )
    nested = [(outer, inner) for outer in selected for inner in selected if _contains(outer, inner)]
    if nested:
        outer, inner = nested[0]
        raise ValueError(
            f"attention_layers selects {outer or '<the model itself>'!r} and {inner!r}, which is "
            f"inside it; select only the module that computes the attention (the inner one)."
        )
    declared = hugging_face_roles(model)
    order = {name: index for index, (name, _) in enumerate(named)}
    in_order = sorted(selected.items(), key=lambda item: order[item[0]])
    return [_as_layer(name, module, declared) for name, module in in_order]
