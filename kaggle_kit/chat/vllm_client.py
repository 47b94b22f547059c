"""`kk.VLLMClient`: the seed's entry point — the model registry plus chat over it.

The registry (`kaggle_kit.engine.registry`) holds the one engine and knows nothing
of chat; this class adds the seed's `generate` / `generate_stream` on top, so the
dependency runs one way: chat -> engine.
"""
from __future__ import annotations

from typing import Iterator

from kaggle_kit.chat.backends import VLLMBackend
from kaggle_kit.engine.registry import ModelRegistry


class VLLMClient(ModelRegistry):
    """`VLLMClient.set_model(llm)` once; `VLLMClient.generate(messages)` anywhere."""

    @classmethod
    def generate(cls, messages, **options) -> str:
        """messages -> answer text (thinking removed) from the registered model."""
        return VLLMBackend().generate(messages, **options).text

    @classmethod
    def generate_stream(cls, messages, **options) -> Iterator[str]:
        """messages -> answer text pieces as the engine produces them."""
        yield from VLLMBackend().stream(messages, **options)
