"""Rehearse a smaller target GPU (a Kaggle T4) on a bigger one.

`KK_EMULATE_GPU="Tesla T4:7.5:14.75"` (name : compute capability : GiB) makes every visible
GPU report itself as that card to the planner and the doctor, so the plan is the target's
(dtype, attention backend, AWQ kernel, memory). Loading then keeps the target's proportions
on the real card: `gpu_memory_utilization` is rescaled so the engine's budget is the target's
in bytes, and once the engine is up a holder process takes everything but the headroom the
target would leave beside it (a T4 at 0.91 leaves 1359 MiB), as a 14B model's KV cache would
fill the rest, so the evaluator meets a T4's memory. vLLM's weight kernels that need a newer
GPU than the target are switched off (`VLLM_DISABLED_KERNELS`), so an AWQ checkpoint runs on the
kernel the target would use (Marlin on sm75, not Machete). Compute speed and the rest of the
compiled code are the real card's.
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, replace

ENV = "KK_EMULATE_GPU"


@dataclass(frozen=True)
class TargetGPU:
    name: str
    capability: tuple[int, int]
    memory_gb: float  # GiB

    def label(self, real_name: str) -> str:
        return f"{self.name} (emulated on {real_name})"


def as_target(gpus: list) -> list:
    """The visible GPUs (nvsmi.GPU) as the emulated card when one is set: its name, capability and
    memory, each remembering its real size; unchanged otherwise."""
    t = target()
    if not t:
        return list(gpus)
    size = int(t.memory_gb * 2**30)
    return [replace(g, name=t.label(g.name), capability=t.capability, total_bytes=size,
                    free_bytes=None if g.free_bytes is None else min(g.free_bytes, size), real_total_bytes=g.total_bytes)
            for g in gpus]


def target() -> TargetGPU | None:
    """The emulated card from $KK_EMULATE_GPU, or None; a malformed value is an error that says the format."""
    spec = os.environ.get(ENV, "").strip()
    if not spec:
        return None
    try:
        name, cap, gib = spec.rsplit(":", 2)
        major, minor = cap.split(".")
        return TargetGPU(name.strip(), (int(major), int(minor)), float(gib))
    except ValueError:
        raise ValueError(f"{ENV}={spec!r}: expected NAME:MAJOR.MINOR:GIB, e.g. 'Tesla T4:7.5:14.75'") from None


# vLLM's mixed-precision (AWQ/GPTQ) linear kernels and the compute capability each needs
# (`get_min_capability` in vllm/model_executor/kernels/linear/mixed_precision/*.py, 0.26-0.32);
# Marlin (75) and Exllama (60) stay available to a T4.
WEIGHT_KERNELS_MIN_CAPABILITY = {"MacheteLinearKernel": 90, "CutlassW4A8LinearKernel": 90,
                                 "ConchLinearKernel": 80, "AllSparkLinearKernel": 80}


def disabled_kernels(capability: tuple[int, int]) -> str:
    """VLLM_DISABLED_KERNELS for a target of `capability`: the weight kernels it could not run."""
    cap = capability[0] * 10 + capability[1]
    return ",".join(k for k, need in WEIGHT_KERNELS_MIN_CAPABILITY.items() if need > cap)


def scale_utilization(utilization: float, target_gb: float, real_gb: float) -> float:
    """The fraction of the real card that is `utilization` of the target card, in bytes."""
    return round(utilization * target_gb / real_gb, 4)


def free_bytes() -> list[int]:
    """Free memory of every visible GPU, from nvidia-smi (no CUDA context in this process)."""
    from kaggle_kit.engine import nvsmi

    return [g.free_bytes for g in nvsmi.query()[0]]


_HOLDER = r"""
import sys, torch
leave = [int(x) for x in sys.argv[1].split(",")]
target = int(sys.argv[2])  # the emulated card's bytes: what lies beyond them is held for good
beyond, budget = [], []
for d in range(torch.cuda.device_count()):
    free, total = torch.cuda.mem_get_info(d)
    over = max(0, min(total - target, free - leave[d]))
    beyond.append(torch.empty(over, dtype=torch.uint8, device=f"cuda:{d}"))
    budget.append(max(0, free - leave[d] - over))  # what a 14B engine's KV cache would fill
held = [torch.empty(n, dtype=torch.uint8, device=f"cuda:{d}") for d, n in enumerate(budget)]
def report():
    print(" ".join(str(torch.cuda.mem_get_info(d)[0]) for d in range(torch.cuda.device_count())), flush=True)
report()
for line in sys.stdin:  # until the parent's end of the pipe closes: when the parent exits
    if line.strip() == "lend":  # the engine sleeps: its whole budget is free on the target too
        held = []
        torch.cuda.empty_cache()
    elif line.strip() == "take":
        held = [torch.empty(n, dtype=torch.uint8, device=f"cuda:{d}") for d, n in enumerate(budget)]
    report()
"""


class Holder:
    """A process holding every visible GPU's memory but `leave_bytes[d]` on GPU d; ends with its parent.

    Of what it holds, everything beyond the target card's `target_bytes` stays held; the rest (the
    engine's budget it did not use) is lent back while the engine sleeps (`lend`/`take`)."""

    def __init__(self, leave_bytes: list[int], target_bytes: int):
        self.proc = subprocess.Popen([sys.executable, "-c", _HOLDER, ",".join(str(int(b)) for b in leave_bytes),
                                      str(int(target_bytes))], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.free_bytes = self._read()

    def _read(self) -> list[int]:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the GPU memory holder did not answer")
        return [int(x) for x in line.split()]

    def _say(self, what: str) -> list[int]:
        self.proc.stdin.write(what + "\n")
        self.proc.stdin.flush()
        return self._read()

    def lend(self) -> list[int]:
        return self._say("lend")

    def take(self) -> list[int]:
        return self._say("take")


_holder: Holder | None = None


def hold_headroom(leave_bytes: list[int], target_bytes: int) -> Holder:
    """Start (once per process) the holder that leaves GPU d `leave_bytes[d]` free."""
    global _holder
    if _holder is None or _holder.proc.poll() is not None:
        _holder = Holder(leave_bytes, target_bytes)
    return _holder


def holder() -> Holder | None:
    """The running holder, if this process emulates a smaller card."""
    return _holder if _holder is not None and _holder.proc.poll() is None else None
