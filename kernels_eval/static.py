"""What the candidate's source says, read as text (never run): flags of ours and KernelBench's categories.

Ours (they keep a correct kernel from counting): extra_streams, extra_threads (work the timing may not
see). KernelBench's static checker's categories (src/kernelbench/kernel_static_checker.py in
ScalingIntelligence/KernelBench), prefixed "kb:", count only under `rules="kernelbench"`
(KernelEvalResult.counts_as_correct_under): a try/except that can fall back to PyTorch, PyTorch compute
ops inside ModelNew, no kernel source at all. The patterns are ours, written for the same categories.
"""
from __future__ import annotations

import re

STREAMS = ("cudaStreamCreate", "torch.cuda.Stream(", "torch.cuda.stream(", "at::cuda::getStreamFromPool")
THREADS = ("std::thread", "threading.Thread", "multiprocessing", "concurrent.futures", "pthread_create")
KERNEL_SOURCE = ("load_inline", "cpp_extension", "@triton.jit", "@triton.autotune", "cuda_sources", "cpp_sources")
# torch calls that compute (not: tensors made empty, shapes, the extension's own call)
TORCH_COMPUTE = re.compile(
    r"\b(?:torch|F)\.(?:matmul|mm|bmm|addmm|einsum|conv[123]d|conv_transpose[123]d|relu|gelu|silu|sigmoid|tanh|"
    r"softmax|log_softmax|layer_norm|batch_norm|group_norm|linear|dropout|max_pool[123]d|avg_pool[123]d|sum|mean|"
    r"max|min|exp|log|sqrt|pow|add|mul|div|sub|where|clamp|cumsum|argmax|argmin|topk|sort|norm)\s*\(")
TORCH_MODULES = re.compile(r"\bnn\.(?!Module\b|Parameter\b|ParameterList\b|ParameterDict\b|ModuleList\b|ModuleDict\b|init\b)[A-Z]\w*\s*\(")
TRY = re.compile(r"^\s*try\s*:", re.MULTILINE)


def _strip_comments(code: str) -> str:
    code = re.sub(r"(?m)#.*$", "", code)
    return re.sub(r"//.*$", "", code, flags=re.MULTILINE)


def _modelnew_body(code: str) -> str:
    """The Python class ModelNew's text (its methods), or '' when there is none."""
    m = re.search(r"(?m)^class\s+ModelNew\b.*?:\s*$", code)
    if not m:
        return ""
    body = []
    for line in code[m.end():].splitlines():
        if line.strip() and not line[:1].isspace():
            break
        body.append(line)
    return "\n".join(body)


def static_flags(source: str) -> list[str]:
    code = _strip_comments(source)
    flags = []
    if any(s in code for s in STREAMS):
        flags.append("extra_streams")
    if any(s in code for s in THREADS):
        flags.append("extra_threads")
    body = _modelnew_body(code)
    if TRY.search(code):
        flags.append("kb:try_fallback")
    if TORCH_COMPUTE.search(body) or TORCH_MODULES.search(body):
        flags.append("kb:torch_ops_in_modelnew")
    if not any(s in code for s in KERNEL_SOURCE):
        flags.append("kb:no_kernel_source")
    return flags
