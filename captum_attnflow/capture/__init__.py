"""Capture per-layer attention from any self-attention model with forward hooks.

``AttentionRecorder`` (see :mod:`captum_attnflow.capture.recorder`) hooks the attention modules
that :mod:`~captum_attnflow.capture.discovery` finds or the user names, reads fused
``F.scaled_dot_product_attention`` calls through :mod:`~captum_attnflow.capture.sdpa` and adapts
``torch.nn.MultiheadAttention`` calls (:mod:`~captum_attnflow.capture.torch_mha`).
"""

from captum_attnflow.capture.discovery import AttentionLayer, discover_attention_layers, select_attention_layers
from captum_attnflow.capture.passes import attached_recorders
from captum_attnflow.capture.recorder import AttentionRecorder
from captum_attnflow.capture.terms import LayerTerms
from captum_attnflow.capture.sdpa import SDPAInterceptor, sdpa_attention_weights, sdpa_with_weights

__all__ = [
    "AttentionLayer",
    "AttentionRecorder",
    "LayerTerms",
    "SDPAInterceptor",
    "attached_recorders",
    "discover_attention_layers",
    "sdpa_attention_weights",
    "sdpa_with_weights",
    "select_attention_layers",
]
