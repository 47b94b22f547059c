"""What GPU memory the kernel evaluator gets beside the engine, and with the engine asleep.

Read with nvidia-smi (no CUDA context in the notebook's process). The evaluator runs on the
first visible GPU. Rehearsing a smaller card ($KK_EMULATE_GPU), the capacity is the target's.
"""
from __future__ import annotations

from kaggle_kit.engine import emulate, nvsmi

# What stays in use on a GPU while vLLM sleeps at level 1: the engine worker's CUDA context, NCCL
# buffers and its allocations outside the sleep pool. Measured with a T4 x2 plan emulated on two
# H200s (benchmarks/results/kernelbench_refs/beside_engine.json): 12772 MiB free per GPU asleep of
# the T4's 15104, i.e. 2332 MiB, of which the emulation's own holder process is a CUDA context
# (~622 MiB, an evaluator's measured context): a T4 keeps ~1710 MiB. Not measured on a real T4.
ASLEEP_RESIDUE_MIB = 1710.0


def asleep_capacity_mib(total_mib: float) -> float:
    """What the evaluator gets on a GPU of `total_mib` while the engine sleeps."""
    return total_mib - ASLEEP_RESIDUE_MIB


def evaluator_memory() -> tuple[float, float] | None:
    """(MiB free now beside the engine, MiB the evaluator gets with the engine asleep) on the
    evaluator's GPU; None without a GPU."""
    gpus = emulate.as_target(nvsmi.query()[0])  # a rehearsed card: its size, and what is really free on it
    if not gpus:
        return None
    return gpus[0].free_bytes / nvsmi.MIB, asleep_capacity_mib(gpus[0].total_bytes / nvsmi.MIB)
