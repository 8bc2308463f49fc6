"""Architectures: the lecture's grammar, the model zoo, per-layer summaries, receptive fields."""
