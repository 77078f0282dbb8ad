"""Data influence from per-sample embedding-table gradients (TracIn-WE): which training
examples drove a prediction, and which are probably mislabeled.

``InfluenceIndex.build`` indexes training examples (in memory or as Parquet shards),
``InfluenceIndex.query`` gives an :class:`Influence` (scores, top, by_token),
``InfluenceIndex.self_influence`` ranks training examples. See docs/influence.md.
"""

from .index import InfluenceIndex
from .result import Influence, Top

__all__ = ["Influence", "InfluenceIndex", "Top"]
