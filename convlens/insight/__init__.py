"""Insight into what a CNN has learned: layer taps, linear probes, ablation, invariance, health."""
