"""Pretraining: settings -> batches -> sharded steps -> checkpoints and metrics; loop.train_and_evaluate runs it.

docs/training.md describes the run; each module's docstring says what it owns.
"""
