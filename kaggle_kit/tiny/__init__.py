"""The tiny model: a 2-layer Qwen3 with Qwen3's real tokenizer, fitted on text written here
(chats, and the bundled kernel solutions with planted faults), for tests, CI and the demo."""
from kaggle_kit.tiny.model import TRAIN_STEPS, build_tiny_model, ensure_tiny_model

__all__ = ["TRAIN_STEPS", "build_tiny_model", "ensure_tiny_model"]
