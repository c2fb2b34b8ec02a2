"""``AttentionRecorder``: per-layer attention of any self-attention model, by forward hooks."""

from __future__ import annotations

import threading
from typing import Callable, Sequence

import torch
from torch import nn

from captum_attnflow.capture.discovery import (
    AUTO,
    CROSS,
    SELF,
    AttentionLayer,
    discover_attention_layers,
    select_attention_layers,
)
from captum_attnflow.capture.masks import live_tokens_from_key_padding_mask, mask_arguments, mask_from_call
from captum_attnflow.capture.passes import MODEL_TURNS, Call, Pass, call_weights, check_recorder_arguments, complete_pass
from captum_attnflow.capture.sdpa import SDPAInterceptor
from captum_attnflow.capture.terms import LayerTerms, TermsCollector, ValueTap
from captum_attnflow.capture.torch_mha import (
    FastPathOff,
    bind_mha_arguments,
    is_self_attention_call,
    prepare_mha_call,
    restore_mha_output,
    route_gradient_to_weights,
)
from captum_attnflow.capture.training import check_no_dropout
from captum_attnflow.utils.attention import as_attention_stack, fuse_heads

Extractor = Callable[[nn.Module, tuple, dict, object], torch.Tensor]


class AttentionRecorder:
    r"""Record the per-layer attention of a model during its forward pass.

    Forward hooks on the model's attention modules collect, for every call, the attention
    weights ``(batch, heads, n, n)`` (row = query, column = key; Hugging Face's
    ``output_attentions`` format), without editing the model::

        with AttentionRecorder(model) as recorder:
            model(input_ids, attention_mask=attention_mask)
        rollout(recorder.attentions, mask=recorder.mask)

    **Where the weights come from.** For each call of a recorded module, in this order:

    1. ``extractor(module, args, kwargs, output)`` when one is given (custom modules).
    2. ``torch.nn.MultiheadAttention``: the recorder rewrites every call to
       ``need_weights=True, average_attn_weights=False`` so that PyTorch computes the per-head
       weights, and hands the caller the output it asked for (``need_weights=False`` — as
       ``nn.TransformerEncoderLayer`` calls it — gives ``None``, averaged weights stay averaged);
       see :mod:`~captum_attnflow.capture.torch_mha`.
    3. A call of ``F.scaled_dot_product_attention`` inside the module (Hugging Face
       ``attn_implementation="sdpa"``, the transformers 5.x default; timm-style fused attention;
       hand-written modules). While a recorded module runs, the recorder evaluates SDPA calls with
       the explicit math of PyTorch's SDPA reference, ``softmax(Q Kᵀ · scale + mask) · V``
       (causal flag, ``scale``, boolean and additive masks and grouped-query ``enable_gqa``
       honoured), instead of the fused kernel. The model's output is therefore computed from
       exactly the recorded weights (it equals the fused kernel's output up to floating-point
       rounding); nothing is recomputed after the fact and the model is never switched to
       another attention implementation.
    4. Weights the module returns as ``output[1]`` (Hugging Face ``attn_implementation="eager"``;
       the index its ``_can_record_outputs`` entry declares, e.g. ``-1`` for T5): taken as they
       are — equal to ``output_attentions``.

    A module for which none of these yields weights (e.g. flash or flex attention) is an error
    naming the module — never a silently missing layer. For Hugging Face grouped-query models
    (Llama, Qwen2, ...) the weights have ``num_attention_heads`` heads (key/value heads repeated),
    like transformers' own eager ``output_attentions``.

    **Which modules.** ``attention_layers=None`` discovers them (see
    :mod:`captum_attnflow.capture.discovery`: Hugging Face ``_can_record_outputs`` declarations,
    then ``nn.MultiheadAttention`` and classes named ``*Attention*``/``*Attn*``, innermost);
    ``registered_layers`` lists what was found. A module called several times in one forward pass
    contributes one layer per call. Layers are reported in the order they ran (``layers``).

    **Cross-attention** (Hugging Face ``cross_attentions`` modules; ``nn.MultiheadAttention``
    called with ``query is not key``, e.g. ``nn.TransformerDecoderLayer.multihead_attn``) is
    recorded separately in ``cross_attentions``/``cross_layers`` and never enters
    ``attentions``: its ``(target, source)`` matrices are not part of the self-attention graph.

    **Forward passes.** A pass starts when ``model`` is called; the recorder keeps the *last
    complete* pass (a pass that raised leaves nothing behind). Call the same ``model`` object
    the recorder was built with; ``reset()`` forgets the recorded pass. Run the model without a
    key/value cache.

    **Training mode is refused.** A pass in which a recorded module is in training mode with
    dropout active raises ``ValueError`` naming ``model.eval()`` — for eager, SDPA,
    ``nn.MultiheadAttention`` and custom modules alike (dropped weights form no attention graph;
    see :mod:`~captum_attnflow.capture.training`). Training mode without active dropout is
    recorded as it is.

    **Threads.** A recorder records the forward passes of the thread that attached it; passes
    that other threads run meanwhile (through the same model) are left alone: not recorded, not
    intercepted. Several threads can therefore each record one shared model with their own
    recorder (``with AttentionRecorder(model) as recorder:`` in each thread) — the attribution
    classes do this. One recorder cannot be attached twice at once. Threads take turns on a model:
    ``attach()`` waits for other threads' recorders at most ``timeout`` s, and refuses at once when
    their thread has ended (:class:`~captum_attnflow.capture.passes.ModelTurns`). Recorders of one
    thread nest, on SDPA models too (every one gets the weights).

    **Padding mask.** ``mask`` is the ``(batch, n)`` padding mask of the pass, ``True`` for real
    tokens: the model call's 2-D ``attention_mask`` (Hugging Face convention, 1 = real token), or
    its ``src_key_padding_mask``/``key_padding_mask`` (PyTorch convention, ``True`` = padding) —
    for encoder–decoder models the mask of the recorded part (see
    :mod:`~captum_attnflow.capture.masks`) — or else the ``key_padding_mask`` of the first
    self-attention ``nn.MultiheadAttention`` call; None when there is none. Causal masking needs
    nothing: causal layers simply record lower-triangular attention.

    **Encoder–decoder models** (Hugging Face ``config.is_encoder_decoder``, ``nn.Transformer``)
    have two self-attention graphs; auto-discovery refuses to guess and names the modules to pass
    as ``attention_layers=`` (the encoder's, or the decoder's with its cross-attention).

    **Hooks and global state.** Hooks are registered by ``attach()``/``__enter__`` and removed by
    ``remove()``/``__exit__`` — also when the forward pass raises. While any recorder is attached,
    PyTorch's MHA fast path (``torch.backends.mha``, a process-wide switch) is disabled, because
    it bypasses ``nn.MultiheadAttention`` without computing weights; when the last attached
    recorder (over all threads, nested ones included) is removed, the switch gets back the value
    it had before the first one was attached (:class:`~captum_attnflow.capture.torch_mha.FastPathOff`).

    Args:
        model: the model that will be called.
        attention_layers: ``None`` to discover the attention modules, or a list of modules of
            ``model`` and/or qualified-name patterns (``str``: glob where ``*`` stays within one
            dot-separated part and ``**`` crosses parts, e.g. ``"encoder.layer.*.attention.self"``;
            compiled ``re.Pattern``: full match).
        extractor: ``fn(module, args, kwargs, output) -> Tensor (batch, heads, n, n)`` returning a
            recorded module's attention weights; replaces rules 2–4 above for every layer.
        head_fusion: ``None`` keeps every head. ``"mean"``, ``"max"`` or ``"min"`` fuses the heads
            inside the hook, so only ``L`` matrices ``(batch, 1, n, n)`` are kept (memory
            ``O(L·n²)`` instead of ``O(L·H·n²)``). Rollout/flow of the full recording with
            ``head_fusion=h`` equal rollout/flow of an ``h``-fused recording given the same
            ``head_fusion=h`` (a single head with ``"max"``/``"min"`` is taken as already fused).
        keep_graph: ``False`` (default) stores detached tensors. ``True`` keeps the recorded
            attention attached to the autograd graph and calls ``retain_grad()`` on it, so that
            after ``output.backward()`` ``recorder.attentions[l].grad`` holds the gradient of the
            output with respect to that layer's attention (the weights that actually multiplied
            the values) — what gradient-weighted rollout (Chefer et al. 2021) needs. Requires
            gradients enabled during the forward pass and ``head_fusion=None``; an extractor must
            then return the very tensor that multiplied the values (not a copy).
        contributions: also record what the value-norm and ALTI graphs need (``terms``; see
            :mod:`~captum_attnflow.capture.terms`, which also states the extractor's dict form).
        timeout: seconds ``attach()`` waits for other threads' recorders on the model; ``None``:
            :attr:`default_timeout` (30 s, settable on the class).

    Raises:
        TypeError, ValueError: invalid arguments, or no attention module found (the message
            lists what was tried and how to pass ``attention_layers=``/``extractor=``).
    """

    default_timeout: float = 30.0  #: seconds ``attach()`` waits when ``timeout=None``

    def __init__(
        self,
        model: nn.Module,
        attention_layers: Sequence | None = None,
        extractor: Extractor | None = None,
        head_fusion: str | None = None,
        keep_graph: bool = False,
        contributions: bool = False,
        timeout: float | None = None,
    ) -> None:
        check_recorder_arguments(model, extractor, head_fusion, keep_graph, timeout)
        self.timeout = timeout
        self.model = model
        self.extractor = extractor
        self.head_fusion = head_fusion
        self.keep_graph = bool(keep_graph)
        if attention_layers is None:
            self._layers = discover_attention_layers(model)
        else:
            self._layers = select_attention_layers(model, attention_layers)
        self._mask_arguments = mask_arguments(model, self._layers)
        self._terms = TermsCollector(model, [layer.module for layer in self._layers]) if contributions else None
        self._handles: list = []
        self._calls: list[Call] = []
        self._running: Pass | None = None
        self._recorded: Pass | None = None
        self._holds_fastpath = False
        self._holds_turn = False  # this recorder's turn on the model (see _ModelTurns)
        self._owner: threading.Thread | None = None  # the thread that attached the hooks
        self._passes_elsewhere = False  # a pass ran in another thread while attached

    # --- Attaching and removing ---

    @property
    def attached(self) -> bool:
        """Whether the hooks are currently registered."""
        return bool(self._handles)

    def attach(self) -> "AttentionRecorder":
        """Register the hooks (``with recorder:`` does this). Returns ``self``."""
        if self.attached:
            raise RuntimeError(
                "this AttentionRecorder is already attached; call remove() first. To record one model "
                "from several threads, give each thread its own AttentionRecorder."
            )
        MODEL_TURNS.acquire(self.model, self, self.default_timeout if self.timeout is None else self.timeout)
        self._owner = threading.current_thread()
        self._passes_elsewhere = False
        self._holds_turn = True
        try:
            for layer in self._layers:
                pre_hook = self._layer_pre_hook(layer)
                self._handles.append(layer.module.register_forward_pre_hook(pre_hook, with_kwargs=True))
                self._handles.append(
                    layer.module.register_forward_hook(self._layer_hook, with_kwargs=True, always_call=True)
                )
            # The pass hooks wrap the layer hooks, also when the model itself is a recorded layer.
            self._handles.append(
                self.model.register_forward_pre_hook(self._pass_pre_hook, with_kwargs=True, prepend=True)
            )
            self._handles.append(self.model.register_forward_hook(self._pass_hook, always_call=True))
            if self._terms is not None:
                self._handles.extend(self._terms.attach(self._in_owner_thread))
            FastPathOff.acquire()
            self._holds_fastpath = True
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        """Remove every hook and release the MHA fast-path switch (``with`` does this on exit).

        Raises:
            RuntimeError: called from another thread while the attaching thread is inside a
                recorded module (its interception cannot be undone from here).
        """
        if self._calls and not self._in_owner_thread():
            raise RuntimeError(
                "remove() was called from another thread while the thread that attached this recorder "
                "is running a recorded module; remove it from the thread that attached it."
            )
        for handle in self._handles:
            handle.remove()
        self._handles = []
        while self._calls:
            call = self._calls.pop()
            for mode in (call.tap, call.interceptor):
                if mode is not None:
                    mode.__exit__(None, None, None)
        if self._holds_fastpath:
            self._holds_fastpath = False
            FastPathOff.release()
        if self._holds_turn:
            self._holds_turn = False
            MODEL_TURNS.release(self.model, self)
        self._running = None

    def __enter__(self) -> "AttentionRecorder":
        return self.attach()

    def __exit__(self, *exc_info) -> None:
        self.remove()

    def reset(self) -> None:
        """Forget the recorded forward pass."""
        self._recorded = None

    # --- Hooks ---

    def _in_owner_thread(self) -> bool:
        return threading.current_thread() is self._owner

    def _pass_pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if not self._in_owner_thread():
            self._passes_elsewhere = True
            return
        self._recorded = None
        self._running = None
        check_no_dropout(self._layers)
        self._running = Pass(mask=mask_from_call(module, args, kwargs, self._mask_arguments))

    def _pass_hook(self, module: nn.Module, args: tuple, output) -> None:
        if not self._in_owner_thread():
            return
        running, self._running = self._running, None
        if output is not None and running is not None:  # output None: the forward pass raised
            self._recorded = running

    def _layer_pre_hook(self, layer: AttentionLayer):
        def hook(module: nn.Module, args: tuple, kwargs: dict):
            if not self._in_owner_thread():
                return None
            call = Call(layer, layer.role)
            self._calls.append(call)
            if isinstance(module, nn.MultiheadAttention):
                arguments = bind_mha_arguments(module, args, kwargs)
                call.key_padding_mask = arguments["key_padding_mask"]
                if call.role == AUTO:
                    call.role = SELF if is_self_attention_call(arguments) else CROSS
                if self.extractor is None:
                    kwargs, call.mha = prepare_mha_call(arguments)
                    return (), kwargs
            if self.extractor is None:
                where = f"attention layer {layer.name or '<model>'!r} ({type(module).__name__})"
                call.interceptor = SDPAInterceptor(call.sdpa_weights.append, where)
                call.interceptor.__enter__()
            if self._terms is not None:  # on top of the interceptor: sees the SDPA call first
                call.tap = ValueTap().__enter__()
            return None

        return hook

    def _layer_hook(self, module: nn.Module, args: tuple, kwargs: dict, output):
        if not self._in_owner_thread() or not self._calls or self._calls[-1].layer.module is not module:
            return None  # another thread's call, or the pre-hook never ran (an earlier hook raised)
        call = self._calls.pop()  # pushed by this module's pre-hook, which knows the layer
        for mode in (call.tap, call.interceptor):  # the tap was entered last
            if mode is not None:
                mode.__exit__(None, None, None)
        if output is None:  # the module raised
            return None
        if self._running is not None:  # None: the module was called outside a model call
            weights = call_weights(call, module, args, kwargs, output, extractor=self.extractor, model=self.model)
            self._store(call, weights)
            if self._terms is not None and call.role == SELF:
                self._running.terms.append(self._terms.collect(call, module, args, kwargs, weights))
        return None if call.mha is None else restore_mha_output(output, call.mha)

    # --- Turning a call into a recorded layer ---

    def _store(self, call: Call, weights: torch.Tensor) -> None:
        layer, running, role = call.layer, self._running, call.role
        name = layer.name or "<model>"
        running.fired.add(layer.name)
        if role == SELF and running.mask is None and call.key_padding_mask is not None:
            running.mask = live_tokens_from_key_padding_mask(call.key_padding_mask)
        if self.keep_graph:
            if not weights.requires_grad:
                raise RuntimeError(
                    f"keep_graph=True but the attention of layer {name!r} does not require grad: run "
                    f"the forward pass with gradients enabled (not under torch.no_grad())."
                )
            if call.mha is not None:
                route_gradient_to_weights(weights)
            else:
                weights.retain_grad()
        else:
            weights = weights.detach()
            if self.head_fusion is not None:
                weights = fuse_heads(weights, self.head_fusion).unsqueeze(1)
        if role == SELF:
            running.attentions.append(weights)
            running.layers.append(name)
        else:
            running.cross_attentions.append(weights)
            running.cross_layers.append(name)

    # --- Results ---

    @property
    def registered_layers(self) -> list[str]:
        """Qualified names of the hooked modules, in module order (known before any forward pass)."""
        return [layer.name or "<model>" for layer in self._layers]

    def _complete_pass(self) -> Pass:
        return complete_pass(self._recorded, self._layers, self.model, self._passes_elsewhere)

    @property
    def attentions(self) -> list[torch.Tensor]:
        """``L`` tensors ``(batch, heads, n, n)`` (``heads = 1`` with ``head_fusion``), first layer first."""
        return list(self._complete_pass().attentions)

    @property
    def layers(self) -> list[str]:
        """Qualified module names of ``attentions``, in the order they ran."""
        return list(self._complete_pass().layers)

    @property
    def cross_attentions(self) -> list[torch.Tensor]:
        """Cross-attention tensors ``(batch, heads, n_target, n_source)`` of the last pass, in order."""
        return list(self._complete_pass().cross_attentions)

    @property
    def cross_layers(self) -> list[str]:
        """Qualified module names of ``cross_attentions``, in the order they ran."""
        return list(self._complete_pass().cross_layers)

    @property
    def mask(self) -> torch.Tensor | None:
        """``(batch, n)`` bool padding mask of the last pass (``True`` = real token), or None.

        Raises:
            ValueError: the recorded mask does not fit the recorded attention (the model changes
                the sequence length internally); pass your own mask to rollout/flow.
        """
        recorded = self._complete_pass()
        if recorded.mask is None:
            return None
        batch, n = recorded.attentions[0].shape[0], recorded.attentions[0].shape[-1]
        if tuple(recorded.mask.shape) != (batch, n):
            raise ValueError(
                f"the padding mask of the model call has shape {tuple(recorded.mask.shape)} but the "
                f"attention is over (batch, n) = ({batch}, {n}) tokens: the model changes the "
                f"sequence length internally. Build the (batch, n) mask yourself."
            )
        return recorded.mask

    @property
    def terms(self) -> list[LayerTerms]:
        """One :class:`~captum_attnflow.capture.terms.LayerTerms` per entry of ``attentions`` (``contributions=True``)."""
        if self._terms is None:
            raise RuntimeError("recorder.terms needs AttentionRecorder(..., contributions=True).")
        return list(self._complete_pass().terms)

    def stack(self) -> torch.Tensor:
        """The recorded attention as one tensor ``(batch, L, heads, n, n)``."""
        return as_attention_stack(self.attentions, name="recorder.attentions")[0]
