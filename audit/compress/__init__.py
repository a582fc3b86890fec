"""Compression: pruning methods and the layer walk, quantization schemes, compressed storage."""

from audit.compress.methods import PRUNING_METHODS, LayerStats, Pattern, PruneSpec
from audit.compress.prune import PruneConfig, prune, prune_layers

__all__ = ["PRUNING_METHODS", "LayerStats", "Pattern", "PruneConfig", "PruneSpec", "prune", "prune_layers"]
