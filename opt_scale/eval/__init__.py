"""Evaluation: cross-modal retrieval, captioning, text-to-image (``opt-eval``)."""
