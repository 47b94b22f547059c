"""Test-time scaling: strategies, scorers, step boundaries, aggregation, typed results.

Nothing here imports vLLM: strategies talk to the Engine seam only.
"""
from kaggle_kit.tts import scorers  # noqa: F401  (kk.tts.scorers.uncertainty)
