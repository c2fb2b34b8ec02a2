"""Checks of plain-number arguments shared by the Python entry points (counts, sizes, seeds)."""

from __future__ import annotations


def check_count(value: object, name: str, *, minimum: int = 1, optional: bool = False) -> int | None:
    """``value`` if it is an integer ``>= minimum`` (``None`` too when ``optional``).

    ``minimum=1`` is for counts and sizes, ``minimum=0`` for seeds. Booleans and floats such as
    ``1e9`` are refused: a count must be an exact integer.

    Raises:
        ValueError: naming ``name``, what it must be and the value received.
    """
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        if minimum == 0:
            kind = "a non-negative integer"
        raise ValueError(f"{name} must be {kind}{' or None' if optional else ''}; got {value!r}.")
    return value


def check_loaded(module: object, name: str = "model") -> None:
    """Refuse a model whose weights are not loaded: any parameter or buffer on the ``meta`` device
    (``device_map="meta"``, ``init_empty_weights``, ``torch.device("meta")``) has no values to run.

    Raises:
        ValueError: naming ``name``, the first such tensor and how to load the weights.
    """
    tensors = []
    for attribute in ("named_parameters", "named_buffers"):
        method = getattr(module, attribute, None)
        if callable(method):
            tensors.extend(method())
    meta = next((key for key, tensor in tensors if getattr(tensor, "is_meta", False)), None)
    if meta is not None:
        raise ValueError(
            f"{name} has its weights on the meta device (e.g. {meta}): they hold no values, so nothing can be "
            f"computed; load the weights first (from_pretrained without device_map='meta', or to_empty() + "
            f"load_state_dict())."
        )
