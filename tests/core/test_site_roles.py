"""Roles from table names (the second source; backends ask the model first)."""

from __future__ import annotations

import pytest

from embgrad.core.site import guess_role


@pytest.mark.parametrize(
    ("name", "role"),
    [
        ("gpt_neox.embed_in.weight", "word"),  # GPT-NeoX
        ("char_embeddings.HashBucketCodepointEmbedder_3.weight", "word"),  # CANINE
        ("char_embeddings.char_position_embeddings.weight", "position"),
        ("embeddings.word_embeddings.weight", "word"),
        ("embeddings.token_type_embeddings.weight", "token_type"),
        ("transformer.lang_embeddings.weight", "input"),  # XLM's languages: not words
        ("hybridsequential0_embedding0_weight", "input"),  # a Gluon auto-name: unchanged
    ],
)
def test_guess_role(name, role):
    assert guess_role(name) == role
