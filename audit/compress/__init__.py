"""Compression: pruning methods and the layer walk, quantization schemes, compressed storage."""

from audit.compress.methods import PRUNING_METHODS, LayerStats, Pattern, PruneSpec

__all__ = ["PRUNING_METHODS", "LayerStats", "Pattern", "PruneSpec"]
