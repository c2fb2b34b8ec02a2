"""What a recorder keeps while it runs: the state of one module call, the record of one forward
pass and its completeness check, and the per-model turns that serialise recording across threads."""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from captum_attnflow.capture.discovery import SELF, AttentionLayer
from captum_attnflow.capture.sdpa import SDPAInterceptor
from captum_attnflow.capture.torch_mha import MHACall, per_head_weights
from captum_attnflow.utils.attention import HEAD_FUSIONS


@dataclass
class Call:
    """State of one running call of a recorded module (``role`` resolved: self or cross)."""

    layer: AttentionLayer
    role: str
    interceptor: SDPAInterceptor | None = None
    sdpa_weights: list[torch.Tensor] = field(default_factory=list)
    mha: MHACall | None = None
    key_padding_mask: torch.Tensor | None = None
    tap: object | None = None  # a terms.ValueTap while the module runs (contributions=True)
    extracted: dict | None = None  # the extractor's dict when it returned one


@dataclass
class Pass:
    """What one forward pass of the model recorded."""

    mask: torch.Tensor | None = None
    attentions: list[torch.Tensor] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)
    cross_attentions: list[torch.Tensor] = field(default_factory=list)
    cross_layers: list[str] = field(default_factory=list)
    fired: set[str] = field(default_factory=set)
    terms: list = field(default_factory=list)  # terms.LayerTerms per self-attention layer (contributions=True)


@dataclass
class Turn:
    """The recorders of one thread attached to one model (they may nest)."""

    thread: threading.Thread
    recorders: "weakref.WeakSet" = field(default_factory=weakref.WeakSet)
    count: int = 0


def _thread_text(thread: threading.Thread) -> str:
    return f"thread {thread.name!r} (ident {thread.ident})"


class ModelTurns:
    """One thread at a time records a given model; recorders of one thread may nest.

    torch registers and runs a module's hooks without a lock: a hook registered by one thread
    while another thread is inside the module's forward can be called with the wrong arguments.
    So attaching a recorder waits until recorders attached by other threads on the same model are
    removed (recording from several threads is serialised per model; different models run freely)
    — never forever: a holder thread that has ended is named at once (nothing will remove its
    recorder), a live one after ``timeout`` seconds. Threads are told apart by their
    ``threading.Thread`` object, not by their ident, which the OS reuses after a thread ends.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._turns: "weakref.WeakKeyDictionary[nn.Module, Turn]" = weakref.WeakKeyDictionary()

    def acquire(self, model: nn.Module, recorder, timeout: float) -> None:
        """Give the calling thread a turn on ``model`` for ``recorder`` (see the class docstring).

        Raises:
            RuntimeError: the holder thread has ended without removing its recorder.
            TimeoutError: the holder thread kept its turn for ``timeout`` seconds.
        """
        me = threading.current_thread()
        deadline = time.monotonic() + timeout
        with self._condition:
            while model in self._turns and self._turns[model].thread is not me:
                holder = self._turns[model].thread
                how = (
                    f"Remove it: recorder.remove() ends its turn — captum_attnflow.capture.attached_recorders(model) "
                    f"returns it — and attach recorders with `with AttentionRecorder(model) as recorder:` so they are "
                    f"always removed."
                )
                if not holder.is_alive():
                    raise RuntimeError(
                        f"{type(model).__name__} is held by an AttentionRecorder that {_thread_text(holder)} attached "
                        f"and never removed; that thread has ended, so the recorder would block every other thread "
                        f"for good. {how}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"waited {timeout:g} s for a turn on {type(model).__name__}: {_thread_text(holder)} has an "
                        f"AttentionRecorder attached to it (recording one model is serialised between threads). "
                        f"{how} A longer wait: AttentionRecorder(..., timeout=seconds) or "
                        f"AttentionRecorder.default_timeout."
                    )
                self._condition.wait(min(remaining, 0.25))  # also notice a holder that ends
            turn = self._turns.setdefault(model, Turn(me))
            turn.count += 1
            turn.recorders.add(recorder)

    def release(self, model: nn.Module, recorder) -> None:
        """End ``recorder``'s turn on ``model`` (from any thread)."""
        with self._condition:
            turn = self._turns.get(model)
            if turn is None:
                return
            turn.recorders.discard(recorder)
            turn.count -= 1
            if turn.count <= 0:
                del self._turns[model]
                self._condition.notify_all()

    def recorders(self, model: nn.Module) -> list:
        """The recorders attached to ``model`` (all by one thread)."""
        with self._condition:
            turn = self._turns.get(model)
            return [] if turn is None else list(turn.recorders)


MODEL_TURNS = ModelTurns()


def attached_recorders(model: nn.Module) -> list:
    """The :class:`~captum_attnflow.capture.AttentionRecorder` s currently attached to ``model``
    (by one thread; nested ones included) — e.g. to ``remove()`` one a finished thread left behind."""
    return MODEL_TURNS.recorders(model)


def complete_pass(
    recorded: Pass | None, layers: Sequence[AttentionLayer], model: nn.Module, passes_elsewhere: bool
) -> Pass:
    """``recorded`` if it holds one complete self-attention graph; else a RuntimeError saying why.

    Args:
        recorded: the last forward pass (None: no pass completed).
        layers: the modules the recorder hooked.
        model: the recorded model (named in the message).
        passes_elsewhere: whether a forward pass ran in another thread meanwhile.
    """
    if recorded is None:
        elsewhere = (
            " A forward pass ran in another thread meanwhile: a recorder records only the thread "
            "that attached it; attach one recorder in each thread that runs the model."
            if passes_elsewhere
            else ""
        )
        raise RuntimeError(
            f"no complete forward pass has been recorded: call the model "
            f"({type(model).__name__}) while the recorder is attached (inside "
            f"`with AttentionRecorder(model) as recorder:`). A forward pass that raised, or a "
            f"reset(), leaves nothing recorded. recorder.registered_layers lists the hooked "
            f"modules before any pass.{elsewhere}"
        )
    missing = [layer.name or "<model>" for layer in layers if layer.name not in recorded.fired]
    if missing:
        raise RuntimeError(
            f"the last forward pass recorded {len(recorded.layers)} attention layer(s) but "
            f"{len(missing)} of the {len(layers)} registered attention modules never ran: "
            f"{missing}. An early exit or skipped layers leave the attention graph incomplete; "
            f"pass attention_layers= with the modules that run."
        )
    recorded = recorded
    if not recorded.attentions:
        raise RuntimeError(
            f"the last forward pass recorded only cross-attention ({recorded.cross_layers}); "
            f"there is no self-attention graph."
        )
    first = recorded.attentions[0]
    for name, layer in zip(recorded.layers, recorded.attentions):
        if layer.shape[0] != first.shape[0] or layer.shape[-1] != first.shape[-1]:
            raise RuntimeError(
                f"self-attention layer {name!r} has shape {tuple(layer.shape)} but layer "
                f"{recorded.layers[0]!r} has {tuple(first.shape)}: these layers do not form one "
                f"attention graph over the same tokens (an encoder and a decoder, or a model "
                f"that drops or merges tokens). Record the layers of one graph with "
                f"attention_layers=."
            )
    return recorded


def returned_tensor(output, index: int) -> torch.Tensor | None:
    """``output[index]`` when ``output`` is a tuple/list holding a tensor there, else None."""
    if isinstance(output, (tuple, list)) and -len(output) <= index < len(output):
        item = output[index]
        return item if isinstance(item, torch.Tensor) else None
    return None


def call_weights(
call: Call, module: nn.Module, args: tuple, kwargs: dict, output, *, extractor: Callable | None, model: nn.Module
) -> torch.Tensor:
    """The ``(batch, heads, n_q, n_k)`` weights of one call of a recorded module: from ``extractor``,
    ``nn.MultiheadAttention``'s output, the intercepted ``F.scaled_dot_product_attention`` or the
    module's returned weights (see :class:`~captum_attnflow.capture.AttentionRecorder`)."""
    name = call.layer.name or "<model>"
    where = f"attention layer {name!r} ({type(module).__name__})"
    if extractor is not None:
        weights = extractor(module, args, kwargs, output)
        source = "the extractor"
        if isinstance(weights, Mapping):  # the extended contract: weights plus what contribution graphs need
            call.extracted, weights = dict(weights), weights.get("weights")
    elif call.mha is not None:
        weights = per_head_weights(output, call.mha)
        source = "nn.MultiheadAttention"
    elif len(call.sdpa_weights) > 1:
        raise ValueError(
            f"{where} called F.scaled_dot_product_attention {len(call.sdpa_weights)} times in one "
            f"call; record the submodules that each compute one attention (attention_layers=) or "
            f"pass extractor=."
        )
    elif call.sdpa_weights:
        weights = call.sdpa_weights[0]
        source = "F.scaled_dot_product_attention"
    elif returned_tensor(output, call.layer.output_index) is not None:
        weights = returned_tensor(output, call.layer.output_index)
        source = f"output[{call.layer.output_index}]"
    else:
        implementation = getattr(getattr(model, "config", None), "_attn_implementation", None)
        hint = (
            f" The model uses attn_implementation={implementation!r}; call "
            f"model.set_attn_implementation('eager') or ('sdpa') before recording."
            if implementation is not None
            else ""
        )
        raise ValueError(
            f"{where} produced no attention weights: it neither called "
            f"F.scaled_dot_product_attention nor returned weights as "
            f"output[{call.layer.output_index}].{hint} For a custom module pass "
            f"extractor=fn(module, args, kwargs, output) -> (batch, heads, n, n)."
        )
    if not isinstance(weights, torch.Tensor) or weights.dim() != 4:
        shape = tuple(weights.shape) if isinstance(weights, torch.Tensor) else type(weights).__name__
        raise ValueError(
            f"{where}: {source} gave attention of shape {shape}; expected a tensor of shape "
            f"(batch, heads, n, n)."
        )
    if call.role == SELF and weights.shape[-1] != weights.shape[-2]:
        raise ValueError(
            f"{where} recorded non-square attention of shape {tuple(weights.shape)}; self-attention needs "
            f"(batch, heads, n, n). Cross-attention modules cannot enter the rollout/flow graph: leave them out "
            f"of attention_layers. A key/value cache also makes attention non-square: call the model without "
            f"past_key_values (use_cache=False)."
        )
    return weights


def check_recorder_arguments(model, extractor, head_fusion, keep_graph: bool, timeout) -> None:
    """The checks of :class:`~captum_attnflow.capture.AttentionRecorder`'s arguments (errors name the argument)."""
    if timeout is not None and not (isinstance(timeout, (int, float)) and timeout >= 0):
        raise ValueError(f"timeout={timeout!r} must be a number of seconds >= 0, or None for default_timeout.")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}.")
    if extractor is not None and not callable(extractor):
        raise TypeError(
            f"extractor must be a function (module, args, kwargs, output) -> (batch, heads, n, n) "
            f"tensor; got {type(extractor).__name__}."
        )
    if head_fusion is not None and head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"unknown head_fusion {head_fusion!r}; choose None (keep heads) or one of {HEAD_FUSIONS}.")
    if keep_graph and head_fusion is not None:
        raise ValueError(
            "keep_graph=True records the per-head weights that multiply the values, so their "
            "gradients exist; a head-fused copy has no gradient. Use head_fusion=None."
        )
