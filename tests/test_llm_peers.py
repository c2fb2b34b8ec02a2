"""Peers of llm-faithfulness (inseq, AttnLRP): optional, refused up front by name when absent."""

from __future__ import annotations

import importlib.util

import pytest

from captum_attnflow.evaluation.llm_methods import DEFAULT_METHODS, LLM_METHODS, resolve_llm_methods
from captum_attnflow.evaluation.llm_peers import PEERS, peer_available

PEER_NAMES = ("inseq_attention", "inseq_value_zeroing", "attnlrp")


def test_peers_are_registered_but_not_default():
    for name in PEER_NAMES:
        assert name in LLM_METHODS and LLM_METHODS[name].optional and name in PEERS
        assert name not in DEFAULT_METHODS


@pytest.mark.skipif(importlib.util.find_spec("inseq") is not None, reason="inseq is installed here")
def test_an_absent_peer_is_refused_naming_the_pip_line():
    assert "inseq==0.7.1" in peer_available("inseq_attention")
    with pytest.raises(ValueError, match=r"inseq_attention.*cannot run here.*pip install"):
        resolve_llm_methods("rollout,inseq_attention")
