"""Compression: recipes, pruning methods and the layer walk, quantization schemes, compressed storage.

Import the submodules: this package imports nothing itself, so that reading a recipe
(`audit.compress.recipe`, which the plan reader uses) never imports torch."""
