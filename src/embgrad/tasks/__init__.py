"""Tasks: what is explained about a batch of texts — the per-sample quantity f_i a method
differentiates. One small interface (:class:`Task`) for every kind of model:

* :class:`PairTask` — the cosine similarity of two sentences' embeddings (encoders);
* :class:`ClassTask` — log p(target | text) of a sequence classifier (targets given or predicted);
* :class:`ZeroShotTask` — log p(label | text) of single texts on an encoder, by the similarity
  to label descriptions (``tasks.zeroshot``).

``heads`` holds the quantities themselves, written with ``ops_for`` (any framework).
"""

from .base import Task
from .text import ClassTask, PairTask, check_request, task_for
from .zeroshot import ZeroShotTask

__all__ = ["ClassTask", "PairTask", "Task", "ZeroShotTask", "check_request", "task_for"]
