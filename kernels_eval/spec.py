"""What the parent asks the isolated child (kernels_eval.harness) to do for one candidate: one typed
spec, built by `kernels_eval.evaluate` and read by the harness, sent as JSON on the child's stdin."""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class HarnessSpec:
    problem_source: str
    candidate_source: str
    device: str  # "cuda" or "cpu"
    scratch: str  # the child's working folder (HOME, TMPDIR)
    trials: int
    seed: int
    timing: bool
    warmup: int
    iters: int
    rounds: int
    tolerances: dict  # dtype -> (atol, rtol), "default" among them
    implausible_speedup: float
    flush_bytes: int | None = None  # the L2 flush buffer (None: twice the GPU's L2)
    compare_compile: bool = False
    cpu_threads: int = 1
    device_lock: str | None = None  # a lock file taken after the build, before the device is touched
    sleep_us: float = 0.0  # a GPU-side spin before each timed call
    gpu_total_bytes: int | None = None  # the most GPU memory the evaluator may ever have, if less than the card

    def to_json(self) -> dict:
        return asdict(self)
