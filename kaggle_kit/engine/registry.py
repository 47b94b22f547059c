"""The process-wide model registry.

One engine per process: re-creating a `vllm.LLM` in the same Kaggle kernel is
unreliable (TP=2 on T4s), so everything — TTS, subchat, the service — takes the
engine from here, and `ensure_model` loads at most once. The registry knows
nothing of its consumers: the seed's chat calls (`kk.VLLMClient.generate`) live
in `kaggle_kit.chat.vllm_client`, on top of it.
"""
from __future__ import annotations

import gc
import logging
import os
import threading
from typing import Any

from kaggle_kit.config import ConfigError, KaggleKitError
from kaggle_kit.engine.types import Engine

log = logging.getLogger(__name__)


class NoModelError(KaggleKitError, RuntimeError):
    """Raised when the toolkit needs an engine and none is registered."""


class _State:
    """The one registered engine (shared by `ModelRegistry` and every subclass, e.g. `kk.VLLMClient`)."""

    llm = None
    engine = None
    load_key: tuple | None = None  # (model path, frozen overrides) of a model loaded by ensure_model
    lock = threading.RLock()


class ModelRegistry:
    """Class-level singleton: `set_model(llm)` once, `get_engine()` anywhere."""

    @classmethod
    def set_model(cls, llm, *, _load_key: tuple | None = None) -> None:
        """Register a `vllm.LLM` (one you built yourself, or from `kk.load_model()`)."""
        if not hasattr(llm, "llm_engine") or not hasattr(llm, "generate"):
            raise TypeError(f"set_model expects a vllm.LLM, got {type(llm).__name__}")
        from kaggle_kit.engine.vllm_engine import VLLMEngine

        with _State.lock:
            if _State.llm is not None and _State.llm is not llm:
                raise ConfigError("a model is already registered; call kk.VLLMClient.clear() first (one engine per process)")
            _State.llm = llm
            _State.engine = VLLMEngine(llm)
            _State.load_key = _load_key

    @classmethod
    def get_model(cls):
        if _State.llm is None:
            raise NoModelError("no model registered: call kk.ensure_model() or kk.VLLMClient.set_model(llm)")
        return _State.llm

    @classmethod
    def get_engine(cls) -> Engine:
        """The registered model behind the Engine seam (token-id prompts, logprobs)."""
        cls.get_model()
        return _State.engine

    @classmethod
    def is_ready(cls) -> bool:
        return _State.llm is not None

    @classmethod
    def model_path(cls) -> str | None:
        return _State.engine.model_name if _State.engine is not None else None

    @classmethod
    def clear(cls) -> None:
        """Free the engine (vLLM's distributed state, gc, CUDA cache) so another can load."""
        with _State.lock:
            llm, _State.llm, _State.engine, _State.load_key = _State.llm, None, None, None
            if llm is None:
                return
            core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                try:
                    core.shutdown()
                except Exception as e:  # cleanup must not mask the user's next load
                    log.warning("engine shutdown raised %r", e)
            del llm, core
            try:
                from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

                destroy_model_parallel()
                destroy_distributed_environment()
            except Exception as e:
                log.debug("vLLM distributed cleanup: %r", e)
            gc.collect()
            try:
                import torch

                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            except ImportError:
                pass


def registered_engine() -> Engine | None:
    """The registered engine, or None: the service's default provider (it answers 503 without one)."""
    return _State.engine


def current_engine(engine: Engine | None = None) -> Engine:
    """`engine` if given, else the registered one (NoModelError says how to register one): the one place
    the façade (`kk.run_strategy`, the chat backend, the experiment) resolves the engine it runs on."""
    return engine if engine is not None else ModelRegistry.get_engine()


def _load_key(model_path: str, overrides: dict[str, Any]) -> tuple:
    return (model_path, tuple(sorted((k, repr(v)) for k, v in overrides.items())))


def ensure_model(model_path: str | None = None, *, replace: bool = False, **overrides):
    """Load and register the model once per process; later calls return the same `vllm.LLM`.

    Asking for a different model (or different settings) while one is loaded is an
    error unless ``replace=True``, which frees the old engine first.
    """
    from kaggle_kit.engine.loader import find_model_path, load_model

    with _State.lock:
        if ModelRegistry.is_ready() and model_path is None and not overrides and not replace:
            return ModelRegistry.get_model()  # whatever is registered, e.g. an LLM the user built
        path = find_model_path(model_path)
        key = _load_key(path, overrides)
        if ModelRegistry.is_ready():
            current = _State.load_key
            user_built_same = current is None and not overrides and _same_path(ModelRegistry.model_path(), path)
            if current == key or user_built_same:
                return ModelRegistry.get_model()
            if not replace:
                what = current[0] if current else ModelRegistry.model_path()
                differs = "with other settings" if _same_path(what, path) else f"(asked for {path!r})"
                raise ConfigError(f"{what!r} is already loaded {differs}; pass replace=True to swap models")
            ModelRegistry.clear()
        llm = load_model(path, **overrides)
        ModelRegistry.set_model(llm, _load_key=key)
        return llm


def _same_path(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and os.path.realpath(a) == os.path.realpath(b)
