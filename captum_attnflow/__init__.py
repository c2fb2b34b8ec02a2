"""captum-attnflow: attention rollout and attention flow (Abnar & Zuidema, ACL 2020) for Captum."""

from captum_attnflow.attr import (
    AttentionFlow,
    AttentionRollout,
    GradientWeightedRollout,
    LLMAttentionAttribution,
    LLMKeyAblation,
    RawAttention,
    patch_grid,
)
from captum_attnflow.capture import AttentionRecorder
from captum_attnflow.flow import BoundedFlow, FlowCostWarning, attention_flow, head_flow
from captum_attnflow.graph import head_rollout, raw_attention, rollout

__version__ = "0.1.0"

__all__ = [
    "AttentionFlow",
    "AttentionRecorder",
    "AttentionRollout",
    "BoundedFlow",
    "FlowCostWarning",
    "GradientWeightedRollout",
    "LLMAttentionAttribution",
    "LLMKeyAblation",
    "RawAttention",
    "patch_grid",
    "attention_flow",
    "head_flow",
    "head_rollout",
    "raw_attention",
    "rollout",
    "__version__",
]
