"""Captum attribution classes for attention-based explanations.

One class per method, all sharing :class:`AttentionAttribution`'s call signature:
:class:`RawAttention`, :class:`AttentionRollout`, :class:`AttentionFlow` (Abnar & Zuidema 2020)
and the class-specific :class:`GradientWeightedRollout` (Chefer et al. 2021);
:class:`LLMAttentionAttribution` explains generated text with any of them, as Captum's
``LLMAttribution`` does; :class:`LLMKeyAblation` is its neutral leave-one-out ablation (a prompt
token removed as a key in every layer);
:func:`patch_grid` lays ViT token scores out on the patch grid.
"""

from captum_attnflow.attr.ablation import LLMKeyAblation
from captum_attnflow.attr.base import AttentionAttribution
from captum_attnflow.attr.flow import AttentionFlow
from captum_attnflow.attr.gradient import GradientWeightedRollout
from captum_attnflow.attr.llm import LLMAttentionAttribution
from captum_attnflow.attr.text import LLMAttentionResult
from captum_attnflow.attr.raw import RawAttention
from captum_attnflow.attr.rollout import AttentionRollout
from captum_attnflow.attr.vision import patch_grid

__all__ = [
    "AttentionAttribution",
    "AttentionFlow",
    "AttentionRollout",
    "GradientWeightedRollout",
    "LLMAttentionAttribution",
    "LLMAttentionResult",
    "LLMKeyAblation",
    "RawAttention",
    "patch_grid",
]
