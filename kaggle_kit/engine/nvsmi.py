"""The visible NVIDIA GPUs, read with nvidia-smi: no CUDA context in this process.

A process that has initialized CUDA makes vLLM start its workers with `spawn` (each re-imports
vLLM: ~20 s apiece on the GPU machine) instead of `fork`, and the notebook kernel is that process.
So hardware is read here, not through torch.cuda.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass

MIB = 2**20


@dataclass(frozen=True)
class GPU:
    """One visible GPU: the one view of it that the loader, the doctor and the emulation share."""
    name: str
    capability: tuple[int, int]
    total_bytes: int
    free_bytes: int | None = None
    l2_bytes: int | None = None
    real_total_bytes: int | None = None  # set when it stands for a smaller card it emulates ($KK_EMULATE_GPU)


def query(timeout: float = 30.0) -> tuple[list[GPU], str | None, str | None]:
    """(visible GPUs, driver version, the newest CUDA the driver runs); ([], None, None) without nvidia-smi."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return [], None, None
    try:
        rows = subprocess.run([exe, "--query-gpu=name,compute_cap,memory.total,memory.free,driver_version",
                               "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=timeout).stdout
        header = subprocess.run([exe], capture_output=True, text=True, timeout=timeout).stdout
    except (OSError, subprocess.TimeoutExpired):
        return [], None, None
    gpus, driver = [], None
    for line in rows.strip().splitlines():
        try:
            name, cap, total, free, driver = [x.strip() for x in line.split(",")]
            major, minor = cap.split(".")
            gpus.append(GPU(name, (int(major), int(minor)), int(float(total)) * MIB, int(float(free)) * MIB))
        except ValueError:
            continue  # a row nvidia-smi could not fill ("[N/A]")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and all(v.strip().isdigit() for v in visible.split(",") if v.strip()):
        gpus = [gpus[int(v)] for v in visible.split(",") if v.strip() and int(v) < len(gpus)]
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", header)
    return gpus, driver, cuda.group(1) if cuda else None
