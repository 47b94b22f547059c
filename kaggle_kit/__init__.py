"""kaggle_kit: test-time scaling with vLLM on Kaggle dual-T4 sessions.

Imports are lazy: `import kaggle_kit` must stay well under a second, so vLLM,
torch and transformers load only when a function that needs them is called.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "Settings": "kaggle_kit.config",
    "ConfigError": "kaggle_kit.config",
    "KaggleKitError": "kaggle_kit.config",
    "load_model": "kaggle_kit.engine.loader",
    "find_model_path": "kaggle_kit.engine.loader",
    "plan_load": "kaggle_kit.engine.loader",
    "detect_hardware": "kaggle_kit.engine.loader",
    "VLLMClient": "kaggle_kit.chat.vllm_client",
    "ModelRegistry": "kaggle_kit.engine.registry",
    "ensure_model": "kaggle_kit.engine.registry",
    "build_tiny_model": "kaggle_kit.tiny",
    "SimpleLLMClient": "kaggle_kit.chat.client",
    "ChatResult": "kaggle_kit.chat.types",
    "run_strategy": "kaggle_kit.tts.api",
    "run_strategy_batch": "kaggle_kit.tts.api",
    "TTSParams": "kaggle_kit.tts.params",
    "StrategyResult": "kaggle_kit.tts.results",
    "CompletionReason": "kaggle_kit.tts.results",
    "serve": "kaggle_kit.service.server",
    "create_app": "kaggle_kit.service.app",
}
_SUBMODULES = ("tts", "engine", "chat", "subchat", "service", "experiment", "workflow", "pages")
# Short names notebooks use for the workflow modules (`kk.notebook.setup_model(...)`).
_ALIASES = {"pipeline": "kaggle_kit.experiment", "plots": "kaggle_kit.experiment.plots", "notebook": "kaggle_kit.workflow.cells", "runs": "kaggle_kit.workflow.notebooks",
            "kaggle": "kaggle_kit.workflow.kaggle", "doctor": "kaggle_kit.workflow.doctor",
            "step_tree": "kaggle_kit.pages.step_tree"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"kaggle_kit.{name}")
    if name in _ALIASES:
        return importlib.import_module(_ALIASES[name])
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kaggle_kit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
