"""GPU memory plan: weights, KV cache and what is left for the kernel evaluator, per GPU.

Pure arithmetic over a model's config.json and the planned vLLM settings, so the
doctor can say before a 14B model spends minutes loading whether it fits, how many
tokens of KV cache the plan buys, how many sequences of max_model_len fit at once
(a search keeps several in flight: `TTSParams.in_flight`), and whether the memory vLLM
leaves free is enough for kernel evaluation on the same GPUs.

These are estimates (vLLM profiles the real activation peak when it starts and
logs "GPU KV cache size: N tokens"); the constants below say where each one comes from.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

GIB = 2**30
MIB = 2**20
# Non-torch memory per GPU that vLLM's budget must also cover: the CUDA context,
# cuBLAS workspaces and NCCL buffers (about 0.5-0.8 GiB on recent CUDA; we take the top).
RUNTIME_OVERHEAD_BYTES = int(0.8 * GIB)
# vLLM (v1) profiles one dummy batch of max_num_batched_tokens; the LLM class uses 8192.
PROFILE_TOKENS = 8192
# What one kernel evaluation needs on the GPU beside the engine, measured with the bundled
# CUDA reference solutions at their default sizes (benchmarks/results/t4_emulation_h100.json:
# vector_add, the largest, 610 MiB of CUDA context + 420 MiB of tensors on an H100 with CUDA 13;
# a T4 with CUDA 12.8 has a smaller context and an 8 MB instead of 100 MB L2 flush buffer):
# the subprocess's CUDA context plus the reference's and candidate's tensors at peak.
EVALUATOR_NEED_BYTES = 1030 * MIB
DTYPE_BYTES = {"float32": 4, "float16": 2, "half": 2, "bfloat16": 2, "auto": 2}


@dataclass(frozen=True)
class ModelShape:
    """What memory depends on, read from a Hugging Face config.json."""

    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool = False
    quant_method: str | None = None
    quant_bits: int | None = None
    group_size: int | None = None
    architecture: str = ""

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "ModelShape":
        text = cfg.get("text_config") or cfg  # multimodal configs nest the language model
        heads = int(text["num_attention_heads"])
        hidden = int(text["hidden_size"])
        q = cfg.get("quantization_config") or {}
        return cls(
            num_layers=int(text["num_hidden_layers"]), hidden_size=hidden, num_attention_heads=heads,
            num_kv_heads=int(text.get("num_key_value_heads") or heads),
            head_dim=int(text.get("head_dim") or hidden // heads),
            intermediate_size=int(text.get("intermediate_size") or 4 * hidden),
            vocab_size=int(text.get("vocab_size") or 0),
            tie_word_embeddings=bool(text.get("tie_word_embeddings", False)),
            quant_method=(q.get("quant_method") or "").lower() or None,
            quant_bits=int(q["bits"]) if q.get("bits") else None,
            group_size=int(q["group_size"]) if q.get("group_size") else None,
            architecture=(cfg.get("architectures") or [""])[0],
        )

    def kv_bytes_per_token(self, dtype_bytes: int = 2, tensor_parallel_size: int = 1) -> int:
        """K and V of every layer for one token on one GPU (each rank holds its share of the
        KV heads; with fewer KV heads than ranks, a head is replicated)."""
        heads = max(1, self.num_kv_heads // max(1, tensor_parallel_size))
        return 2 * self.num_layers * heads * self.head_dim * dtype_bytes

    def estimate_weight_bytes(self, dtype_bytes: int = 2) -> int:
        """Weights from the shapes: quantized linear layers (+ their group scales and zeros), fp16 rest."""
        attn = self.hidden_size * self.head_dim * (2 * self.num_attention_heads + 2 * self.num_kv_heads)
        mlp = 3 * self.hidden_size * self.intermediate_size
        linear = self.num_layers * (attn + mlp)
        if self.quant_bits:
            per_weight = self.quant_bits / 8 + (dtype_bytes + self.quant_bits / 8) / (self.group_size or 128)
            linear_bytes = linear * per_weight
        else:
            linear_bytes = linear * dtype_bytes
        embed = self.vocab_size * self.hidden_size * dtype_bytes * (1 if self.tie_word_embeddings else 2)
        return int(linear_bytes + embed)


def weights_on_disk(model_path: str | Path) -> int | None:
    """Bytes of the checkpoint's weight files, or None when there are none (a described model)."""
    files = [p for p in Path(model_path).glob("*") if p.suffix in (".safetensors", ".bin", ".pt")]
    return sum(p.stat().st_size for p in files) or None


@dataclass
class MemoryPlan:
    gpu_total_bytes: int
    gpu_memory_utilization: float
    tensor_parallel_size: int
    weights_per_gpu_bytes: int
    activation_bytes: int
    overhead_bytes: int
    kv_cache_per_gpu_bytes: int
    kv_bytes_per_token_per_gpu: int
    kv_cache_tokens: int
    max_model_len: int
    sequences_at_max_len: int  # how many sequences of max_model_len fit in the KV cache at once
    left_for_evaluator_bytes: int  # what vLLM's budget leaves free on each GPU
    evaluator_need_bytes: int
    notes: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return self.kv_cache_tokens >= self.max_model_len

    @property
    def evaluator_fits(self) -> bool:
        return self.left_for_evaluator_bytes >= self.evaluator_need_bytes

    def utilization_for_evaluator(self) -> float:
        """The largest gpu_memory_utilization that still leaves the evaluator what it needs."""
        return math.floor((1 - self.evaluator_need_bytes / self.gpu_total_bytes) * 100) / 100

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(fits=self.fits, evaluator_fits=self.evaluator_fits,
                 utilization_for_evaluator=self.utilization_for_evaluator())
        return d


def plan_memory(shape: ModelShape, gpu_total_bytes: int, *, tensor_parallel_size: int = 1,
                gpu_memory_utilization: float = 0.9, max_model_len: int = 4096, dtype_bytes: int = 2,
                kv_dtype_bytes: int | None = None, weights_bytes: int | None = None, block_size: int = 16,
                evaluator_need_bytes: int = EVALUATOR_NEED_BYTES) -> MemoryPlan:
    """The memory of one GPU of a tensor-parallel engine (every rank holds the same share)."""
    tp = max(1, tensor_parallel_size)
    weights = weights_bytes if weights_bytes is not None else shape.estimate_weight_bytes(dtype_bytes)
    weights_per_gpu = weights // tp
    # The profiled peak: one batch of PROFILE_TOKENS through the widest layer (gate and up
    # projections, split over TP) plus the residual stream, in the activation dtype.
    activation = PROFILE_TOKENS * (2 * shape.intermediate_size // tp + 4 * shape.hidden_size) * dtype_bytes
    budget = int(gpu_total_bytes * gpu_memory_utilization)
    kv = max(0, budget - weights_per_gpu - activation - RUNTIME_OVERHEAD_BYTES)
    per_token = shape.kv_bytes_per_token(kv_dtype_bytes or dtype_bytes, tp)
    tokens = (kv // per_token) // block_size * block_size
    notes = [
        f"weights {weights / GIB:.2f} GiB{' (estimated from the config)' if weights_bytes is None else ''}"
        f" / TP {tp} = {weights_per_gpu / GIB:.2f} GiB per GPU",
        f"budget {gpu_memory_utilization:.2f} x {gpu_total_bytes / GIB:.2f} GiB = {budget / GIB:.2f} GiB; "
        f"activations ~{activation / GIB:.2f} GiB, runtime ~{RUNTIME_OVERHEAD_BYTES / GIB:.2f} GiB",
        f"KV cache ~{kv / GIB:.2f} GiB at {per_token / 1024:.0f} KiB per token per GPU = ~{tokens} tokens",
    ]
    return MemoryPlan(
        gpu_total_bytes=gpu_total_bytes, gpu_memory_utilization=gpu_memory_utilization, tensor_parallel_size=tp,
        weights_per_gpu_bytes=weights_per_gpu, activation_bytes=activation, overhead_bytes=RUNTIME_OVERHEAD_BYTES,
        kv_cache_per_gpu_bytes=kv, kv_bytes_per_token_per_gpu=per_token, kv_cache_tokens=tokens,
        max_model_len=max_model_len, sequences_at_max_len=tokens // max_model_len if max_model_len else 0,
        left_for_evaluator_bytes=gpu_total_bytes - budget, evaluator_need_bytes=evaluator_need_bytes, notes=notes,
    )
