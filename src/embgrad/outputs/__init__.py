"""Explained outputs: several per text, one attribution row each — generation steps, token
labels (token classification), a span's start and end (question answering).

``driver`` plans rows (sample, output) in memory-bounded chunks and runs them through the
registered method; one ``rows.RowBuilder`` class per kind of model holds that kind's logic;
``scores`` is the registry of step scores (probability, entropy, ...).
"""

from .api import attribute_generation
from .qa_api import SpanAttribution, attribute_qa
from .route import attribute, list_tasks, register_task
from .scores import list_step_scores, register_step_score
from .token_result import TokenClassAttribution
from .tokens_api import attribute_tokens

__all__ = [
    "SpanAttribution",
    "TokenClassAttribution",
    "attribute",
    "attribute_generation",
    "attribute_qa",
    "attribute_tokens",
    "list_step_scores",
    "list_tasks",
    "register_step_score",
    "register_task",
]
