"""Peer attribution methods on a Hugging Face decoder LLM, for ``captum-attnflow llm-faithfulness``.

Three peers, each giving, for teacher-forced targets, one score per (output token, prompt token):

* :func:`inseq_attention` -- inseq 0.7.1 ``"attention"``: attention weights of the query that predicts each
  target token, mean over all layers and heads (inseq's default aggregation).
* :func:`inseq_value_zeroing` -- inseq 0.7.1 ``"value_zeroing"`` (Mohebbi et al. 2023): for every token, zero
  its value vectors in every layer (all heads), one layer at a time, and measure ``1 - cosine`` between the
  clean and the corrupted block output; normalised per layer and row, mean over layers (inseq's default).
* :func:`attnlrp` -- AttnLRP (Achtibat et al. 2024) through ``lxt`` 2.1 ``lxt.efficient``: Gradient x Input of
  the target token's *logit* after lxt's rule patches; relevance summed over the embedding dimension.

Every function returns ``np.ndarray`` of shape ``(n_target, n_prompt)``: row ``j`` explains ``target_ids[j]``
given ``prompt_ids + target_ids[:j]``, over the prompt positions only. The peer packages are imported lazily;
a missing package or an incompatible version raises :class:`PeerUnavailable` with the reason and the pip line.

Both inseq 0.7.1 and lxt 2.1 were written for transformers 4.x. The shims needed for transformers 5 (measured on
transformers 5.25.0, torch 2.13.0+cpu) are applied inside each call and undone afterwards (the docs' LLM page lists the install lines):

* inseq ``value_zeroing``: ``ValueZeroing.get_states_extract_and_patch_hook`` assumes a decoder layer returns a
  tuple; transformers 5 ``LlamaDecoderLayer`` returns a tensor (``TypeError: unsupported operand type(s) for +:
  'Tensor' and 'tuple'``; with batch size 1 ``output[0]`` would even silently take the first *batch row*). The
  shim wraps the hook so a tensor output is handed over as ``(output,)`` and unwrapped again.
  Optional speed-up, ``fast=True`` (default): additionally replaces inseq's ``sys.settrace``
  value-zeroing hook by an exactly equivalent one-shot forward hook on ``v_proj`` (zeroing a token's rows of the
  ``v_proj`` output = zeroing ``value_states[:, :, token]`` for all heads, values get no rotary embedding);
  identical scores (max |diff| 0.0 on SmolLM2) without line-tracing every frame of the forward pass (5.1 s
  vs 7.2 s on one prompt under load). ``fast=False`` keeps inseq's own hook. Head subsets (``decoder_zeroed_units_indices``) fall back to it.
* lxt: (1) ``import lxt.efficient`` fails: ``lxt/efficient/models/bert.py`` imports
  ``find_pruneable_heads_and_indices`` from ``transformers.pytorch_utils`` (removed in transformers 5), and
  ``vit_torch.py`` imports ``torchvision`` (kept out of the install: its PyPI wheel is a CUDA build). Shim: stub
  these two lxt submodules (BERT and torchvision ViT patch maps) in ``sys.modules`` during the import only.
  (2) lxt's ``patch_attention`` replaces ``modeling_llama.ALL_ATTENTION_FUNCTIONS`` (a transformers 5
  ``AttentionInterface``) by a plain ``dict``; ``LlamaAttention.forward`` then fails with ``AttributeError: 'dict'
  object has no attribute 'get_interface'``. Shim: our own patch for the modeling module that wraps the same
  functions with lxt's own ``wrap_attention_forward`` but keeps an ``AttentionInterface``. (3) lxt patches classes
  globally and never restores them (``LlamaMLP.forward``, ``LlamaRMSNorm.forward``, ``torch.nn.Dropout.forward``
  for every model in the process, the attention functions); we save and restore all of them.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import sys
import types

import numpy as np
import torch

__all__ = ["PeerUnavailable", "inseq_attention", "inseq_value_zeroing", "attnlrp", "PEERS", "peer_available"]

INSEQ_PIP = "pip install -c constraints.txt inseq==0.7.1   # constraints.txt: torch==2.13.0"
LXT_PIP = "pip install --no-deps lxt==2.1   # lxt.efficient needs only torch + transformers"


class PeerUnavailable(RuntimeError):
    """A peer method cannot run here; the message says why and how to install it."""


# ----------------------------------------------------------------------------------------------------------------
# helpers


def _ids(x) -> torch.Tensor:
    """1-D LongTensor of token ids from a list, array or (1, n)/(n,) tensor."""
    t = torch.as_tensor(np.asarray(x.cpu() if isinstance(x, torch.Tensor) else x), dtype=torch.long)
    if t.dim() == 2 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 1 or t.numel() == 0:
        raise ValueError(f"expected a non-empty 1-D sequence of token ids, got shape {tuple(t.shape)}")
    return t


def _check_inputs(model, prompt_ids, target_ids) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    p, t = _ids(prompt_ids), _ids(target_ids)
    device = next(model.parameters()).device
    return p.to(device), t.to(device), torch.cat([p, t]).to(device)


@contextlib.contextmanager
def _restore_attrs(*pairs):
    """Save ``obj.name`` for every ``(obj, name)`` (also when absent from ``obj.__dict__``) and put it back."""
    saved = [(obj, name, name in vars(obj), vars(obj).get(name)) for obj, name in pairs]
    try:
        yield
    finally:
        for obj, name, present, value in reversed(saved):
            if present:
                setattr(obj, name, value)
            elif name in vars(obj):
                delattr(obj, name)


@contextlib.contextmanager
def _tokenizer_state(tokenizer):
    keep = {k: getattr(tokenizer, k, None) for k in ("padding_side", "truncation_side", "pad_token")}
    try:
        yield
    finally:
        for k, v in keep.items():
            if v is not None and getattr(tokenizer, k, None) != v:
                setattr(tokenizer, k, v)


def _import(name: str, pip: str):
    try:
        return importlib.import_module(name)
    except ImportError as e:  # missing, or broken by a dependency
        raise PeerUnavailable(f"{name} cannot be imported ({type(e).__name__}: {e}); install it with: {pip}") from e


# ----------------------------------------------------------------------------------------------------------------
# inseq


def _inseq():
    inseq = _import("inseq", INSEQ_PIP)
    version = getattr(inseq, "__version__", None) or importlib.metadata.version("inseq")
    if not version.startswith("0.7."):
        raise PeerUnavailable(f"inseq {version} found; these shims are written and checked for inseq 0.7.1 ({INSEQ_PIP})")
    return inseq


@contextlib.contextmanager
def _inseq_transformers5_shims(fast_value_zeroing: bool):
    """The value-zeroing shims (see module docstring); restored on exit."""
    import inseq.attr.feat.ops.value_zeroing as vz

    orig_states_hook = vz.ValueZeroing.get_states_extract_and_patch_hook
    orig_trace_hook = vz.get_post_variable_assignment_hook

    def get_states_extract_and_patch_hook(self, block_idx: int, hidden_state_idx: int = 0):
        hook = orig_states_hook(self, block_idx, hidden_state_idx)

        def tuple_safe_hook(module, args, output):
            if isinstance(output, torch.Tensor):  # transformers >= 5: decoder layers return the hidden states alone
                return hook(module, args, (output,))[0]
            return hook(module, args, output)

        return tuple_safe_hook

    def v_proj_zeroing_hook(module, varname, fname="forward", hook_fn=None, zeroed_token_index=None,
                            zeroed_units_indices=None, batch_size=1, **kwargs):
        v_proj = getattr(module, "v_proj", None)
        if zeroed_units_indices is not None or v_proj is None or fname != "forward":
            # head subsets (or no v_proj): inseq's own sys.settrace hook
            return orig_trace_hook(module, varname, fname, hook_fn, zeroed_token_index=zeroed_token_index,
                                   zeroed_units_indices=zeroed_units_indices, batch_size=batch_size, **kwargs)

        def pre_hook(attn_module, args):
            if zeroed_token_index is None:
                return None
            handle = None

            def zero_rows(lin, lin_args, out):
                handle.remove()  # one shot: only this forward of this attention module
                out = out.clone()
                out[:, zeroed_token_index] = 0  # (batch, seq, n_kv_heads * head_dim): the token's values, all heads
                return out

            handle = v_proj.register_forward_hook(zero_rows)
            return None

        return pre_hook

    vz.ValueZeroing.get_states_extract_and_patch_hook = get_states_extract_and_patch_hook
    if fast_value_zeroing:
        vz.get_post_variable_assignment_hook = v_proj_zeroing_hook
    try:
        yield
    finally:
        vz.ValueZeroing.get_states_extract_and_patch_hook = orig_states_hook
        vz.get_post_variable_assignment_hook = orig_trace_hook


def _inseq_scores(model, tokenizer, prompt_ids, target_ids, method: str, fast: bool = True, **method_kwargs):
    inseq = _inseq()
    from inseq.data import BatchEncoding

    p, t, full = _check_inputs(model, prompt_ids, target_ids)
    n_p, n_t = len(p), len(t)
    ids = full[None]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    # exact token ids: inseq's text interface re-tokenises the strings (e.g. "\n"+"\n" -> "\n\n"), so the
    # BatchEncoding is built from the ids and passed to the attribution method directly
    encoding = BatchEncoding(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        input_tokens=[tokenizer.convert_ids_to_tokens(full.tolist())],
        baseline_ids=torch.full_like(ids, pad),
    )
    was_training = model.training
    with _tokenizer_state(tokenizer), _inseq_transformers5_shims(fast_value_zeroing=fast):
        scale = getattr(model.config, "scale_decoder_outputs", None)
        try:
            attribution_model = inseq.load_model(model, method, tokenizer=tokenizer, device=str(full.device))
            attribution_method = attribution_model.get_attribution_method(method)
            out = attribution_method.prepare_and_attribute(
                "",  # decoder-only: the source only sets attr_pos_start, given explicitly
                encoding,
                attr_pos_start=n_p,
                show_progress=False,
                attributed_fn=attribution_model.get_attributed_fn(None),
                attribution_args=method_kwargs,
            )
        finally:
            if scale is None and hasattr(model.config, "scale_decoder_outputs"):
                with contextlib.suppress(Exception):
                    delattr(model.config, "scale_decoder_outputs")
            model.train(was_training)
    out = out[0] if isinstance(out, list) else out
    seq = out.sequence_attributions[0]
    got = [tok.id for tok in seq.target]
    if got != full.tolist():
        raise RuntimeError(f"inseq attributed other tokens than requested: {got} != {full.tolist()}")
    scores = seq.target_attributions  # (n_prompt + n_target, n_target, layers[, heads])
    if scores is None or scores.shape[1] != n_t:
        raise RuntimeError(f"unexpected inseq output shape {None if scores is None else tuple(scores.shape)}")
    scores = scores[:n_p].float()
    scores = scores.reshape(n_p, n_t, -1).mean(-1)  # mean over layers (and heads): inseq's default aggregation
    return scores.T.contiguous().cpu().numpy().astype(np.float64)


def inseq_attention(model, tokenizer, prompt_ids, target_ids) -> np.ndarray:
    """inseq ``attention``, mean over layers and heads: ``(n_target, n_prompt)``; rows sum to <= 1."""
    return _inseq_scores(model, tokenizer, prompt_ids, target_ids, "attention")


def inseq_value_zeroing(model, tokenizer, prompt_ids, target_ids, *, fast: bool = True) -> np.ndarray:
    """inseq ``value_zeroing`` (cosine), mean over layers: ``(n_target, n_prompt)``.

    ``fast=False`` keeps inseq's ``sys.settrace`` hook (same scores, slower); either way the transformers-5
    tuple shim is applied.
    """
    return _inseq_scores(model, tokenizer, prompt_ids, target_ids, "value_zeroing", fast=fast)


# ----------------------------------------------------------------------------------------------------------------
# AttnLRP (lxt)

_LXT_STUBBED = ("bert", "vit_torch")


def _lxt_efficient():
    """Import ``lxt.efficient`` with its BERT and torchvision-ViT patch modules stubbed (import-time only)."""
    if "lxt.efficient" in sys.modules:
        return sys.modules["lxt.efficient"]
    _import("lxt", LXT_PIP)
    version = importlib.metadata.version("lxt")
    if version != "2.1":
        raise PeerUnavailable(f"lxt {version} found; these shims are written and checked for lxt 2.1 ({LXT_PIP})")
    added = []
    for sub, reference in (("bert", "modeling_bert"), ("vit_torch", "vision_transformer")):
        name = f"lxt.efficient.models.{sub}"
        if name not in sys.modules:
            stub = types.ModuleType(name, f"stub: lxt's {sub} patches are not importable with transformers 5 / no torchvision")
            setattr(stub, reference, types.ModuleType(f"<unavailable {reference}>"))
            stub.attnLRP, stub.cp_LRP = {}, {}
            sys.modules[name] = stub
            added.append(name)
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "'zennit' library is not available" (only for vision transformers)
            return importlib.import_module("lxt.efficient")
    except Exception as e:
        raise PeerUnavailable(f"lxt.efficient cannot be imported: {type(e).__name__}: {e}") from e
    finally:
        for name in added:
            sys.modules.pop(name, None)


@contextlib.contextmanager
def _lxt_patched(model):
    """lxt's AttnLRP patches for the model's modeling module, with an AttentionInterface kept; all undone on exit."""
    efficient = _lxt_efficient()
    from lxt.efficient.models import DEFAULT_MAP
    from lxt.efficient.patches import wrap_attention_forward

    modeling = sys.modules[type(model).__module__]
    lrp_map = next((m for mod, m in DEFAULT_MAP.items() if mod is modeling), None)
    if lrp_map is None:
        supported = [mod.__name__ for mod in DEFAULT_MAP if isinstance(mod, types.ModuleType) and hasattr(mod, "__file__")]
        raise PeerUnavailable(f"lxt 2.1 has no AttnLRP patch map for {modeling.__name__} (it has: {', '.join(supported)})")

    def patch_attention_keep_interface(module):
        module.eager_attention_forward = wrap_attention_forward(module.eager_attention_forward)
        old = module.ALL_ATTENTION_FUNCTIONS
        if isinstance(old, dict):  # transformers 4.x style
            module.ALL_ATTENTION_FUNCTIONS = {k: wrap_attention_forward(v) for k, v in old.items()}
        else:  # transformers 5: AttentionInterface, whose get_interface() the attention forward calls
            new = type(old)()
            for key in list(old):
                new[key] = wrap_attention_forward(old[key])
            module.ALL_ATTENTION_FUNCTIONS = new
        return True

    patch_map = {target: (patch_attention_keep_interface if target is modeling else patch)
                 for target, patch in lrp_map.items()}
    saved = []
    for target in patch_map:
        if target is modeling:
            saved += [(modeling, "eager_attention_forward"), (modeling, "ALL_ATTENTION_FUNCTIONS")]
        else:
            saved.append((target, "forward"))
    with _restore_attrs(*saved):
        import warnings

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            efficient.monkey_patch(modeling, patch_map=patch_map)
        failed = [str(w.message) for w in caught if "patch" in str(w.message).lower()]
        if failed:
            raise RuntimeError(f"lxt patches did not apply cleanly: {failed}")
        yield


def attnlrp(model, tokenizer, prompt_ids, target_ids) -> np.ndarray:
    """AttnLRP relevance of each prompt token for each teacher-forced target logit: ``(n_target, n_prompt)``.

    One forward pass and one backward pass per target token (``torch.autograd.grad`` on the input embeddings,
    so no parameter ``.grad`` is touched). Signed relevance (positive = supports the target token).
    """
    p, t, full = _check_inputs(model, prompt_ids, target_ids)
    n_p, n_t = len(p), len(t)
    was_training = model.training
    model.eval()
    rows = []
    try:
        with _lxt_patched(model), torch.enable_grad():
            embeds = model.get_input_embeddings()(full[None]).detach().requires_grad_(True)
            logits = model(inputs_embeds=embeds, use_cache=False).logits[0]
            for j in range(n_t):
                target_logit = logits[n_p + j - 1, t[j]]
                (grad,) = torch.autograd.grad(target_logit, embeds, retain_graph=j < n_t - 1)
                rows.append((grad * embeds).sum(-1)[0, :n_p].detach().float().cpu().numpy())
    finally:
        model.train(was_training)
    return np.stack(rows).astype(np.float64)


PEERS = {"inseq_attention": inseq_attention, "inseq_value_zeroing": inseq_value_zeroing, "attnlrp": attnlrp}


def peer_available(name: str) -> str | None:
    """``None`` when the peer ``name`` of :data:`PEERS` can run here, else why not (with the pip line)."""
    try:
        if name == "attnlrp":
            _lxt_efficient()
        else:
            _inseq()
    except PeerUnavailable as error:
        return str(error)
    return None
