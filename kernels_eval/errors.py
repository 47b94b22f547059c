"""Errors inside an evaluation's processes: the evaluator's own (HarnessFailure: no verdict on the kernel)
told apart from the candidate's (a runtime error, or an out-of-memory that is its fault). Imported by the
candidate's process and by the reference's; stdlib only."""
from __future__ import annotations

import re


class HarnessFailure(Exception):
    """The evaluator's own work failed (not the candidate's): reported as harness_error."""


# A GPU's or the host's: CUDA's "out of memory", PyTorch's CPU allocator, Python, C++.
OOM = re.compile(r"out of memory|can't allocate memory|MemoryError|std::bad_alloc", re.IGNORECASE)
NO_GPU = re.compile(r"no CUDA-capable device|busy or unavailable|driver version is insufficient|"
                     r"CUDA driver initialization failed|cudaErrorDevicesUnavailable|no CUDA GPUs are available",
                     re.IGNORECASE)
_SIZE = r"([\d.]+)\s*([KMGT]i?B)"
_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _bytes(number: str, unit: str) -> float:
    return float(number) * _UNITS[unit[0].upper()]


def classify_candidate_oom(message: str, reference_bytes: int = 0, gpu_total_bytes: int | None = None) -> str | None:
    """For an out-of-memory error raised while the candidate's code ran: "harness" when the
    allocation would fit on the whole GPU (another process holds the rest: the engine beside
    us), "candidate" when it asks for more than the GPU has, None when it is no OOM at all.

    Reads PyTorch's message: "Tried to allocate 16.00 GiB. GPU 0 has a total capacity of
    79.19 GiB ... this process has 65.06 GiB memory in use." A raw cudaMalloc failure reports
    no sizes and is charged to the candidate.

    `gpu_total_bytes`, when given, is the whole GPU the evaluator can have (a smaller card
    rehearsed on a bigger one, or what is left with the engine asleep), if less than torch's total.

    On the host (PyTorch's CPU allocator: "you tried to allocate N bytes"), under the evaluator's
    memory limit: "harness" when N is no more than the reference's own forward took
    (`reference_bytes`): the limit, not the candidate, was too tight.
    """
    if not OOM.search(message):
        return None
    host = re.search(r"tried to allocate (\d+) bytes", message)
    if host and reference_bytes:
        return "harness" if int(host.group(1)) <= reference_bytes else "candidate"
    tried = re.search(r"Tried to allocate " + _SIZE, message)
    total = re.search(r"total capacity of " + _SIZE, message)
    if not (tried and total):
        return "candidate"
    in_use = re.search(r"this process has " + _SIZE, message)
    need = _bytes(*tried.groups()) + (_bytes(*in_use.groups()) if in_use else 0.0)
    capacity = min(_bytes(*total.groups()), gpu_total_bytes or float("inf"))
    return "harness" if need <= capacity else "candidate"


class HarnessPhase:
    """Turns an out-of-memory or unusable-GPU error in the evaluator's own work into HarnessFailure."""

    def __init__(self, what: str):
        self.what = what

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None or isinstance(exc, HarnessFailure):
            return False
        text = f"{type(exc).__name__}: {exc}"
        if OOM.search(text) or NO_GPU.search(text):
            raise HarnessFailure(f"{self.what}: {text[:1500]}") from exc
        return False


def candidate_error(prefix: str, e: BaseException, reference_bytes: int = 0, gpu_total_bytes: int | None = None) -> dict:
    text = f"{type(e).__name__}: {str(e)[-2000:]}"
    if classify_candidate_oom(text, reference_bytes, gpu_total_bytes) == "harness":
        where = ("under the evaluator's memory limit for an allocation no bigger than the reference's own forward"
                 if "tried to allocate" in text and "GPU" not in text else
                 "for an allocation that would fit on a free GPU (another process holds the rest)")
        return {"status": "harness_error", "message": f"{prefix}: out of memory {where}; retry with more room. {text}"}
    if NO_GPU.search(text):
        return {"status": "harness_error", "message": f"{prefix}: the GPU became unusable: {text}"}
    return {"status": "runtime_error", "message": f"{prefix}: {text}"}
