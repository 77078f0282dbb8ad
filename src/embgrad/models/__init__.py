"""Bundled and user models for :class:`embgrad.explain.Explainer`.

``minilm`` loads the bundled all-MiniLM-L6-v2 (PyTorch, offline), ``minilm_gluon`` ports the same
safetensors weights into gluonnlp's BERTModel, ``hf`` loads HF sequence classifiers and encoders,
``heads`` defines the explained quantities (class log-probability, pair cosine similarity).
"""
