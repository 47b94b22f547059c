"""KernelEvalResult: the one typed result of evaluating a candidate kernel."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any


class Status(str, Enum):
    CORRECT = "correct"
    INCORRECT = "incorrect"
    COMPILE_ERROR = "compile_error"
    RUNTIME_ERROR = "runtime_error"
    TIMEOUT = "timeout"
    CRASHED = "crashed"  # died without reporting: a signal, os._exit, an out-of-memory kill
    NO_CODE = "no_code"  # the response had nothing to run (see parse_response's reasons)
    REJECTED = "rejected"  # refused before running (e.g. no ModelNew)
    # The evaluator, not the kernel, failed: out of GPU memory in its own work (the reference,
    # the inputs, the comparison) or for an allocation that would fit on a free GPU, or the GPU
    # was not usable. Not a verdict on the kernel: metrics leave it out, runs retry it.
    HARNESS_ERROR = "harness_error"
    # Not run: the problem needs more GPU memory than this GPU has even with the engine asleep
    # (its measured footprint). No verdict, not retried: the same GPU cannot hold it next time either.
    SKIPPED = "skipped"


RULES = ("ours", "kernelbench")  # what counts as a correct kernel (KernelEvalResult.counts_as_correct_under)


@dataclass
class KernelEvalResult:
    problem: str
    status: Status
    compiled: bool = False
    correct: bool = False
    speedup: float | None = None  # reference runtime / candidate runtime
    runtime_ms: float | None = None  # candidate, median
    ref_runtime_ms: float | None = None  # reference, median, timed once per problem in a process of its own
    runtime_spread: float | None = None  # max/min of the candidate's repeat medians
    compiled_ref_runtime_ms: float | None = None  # the reference through torch.compile (compare_compile=True)
    speedup_vs_compile: float | None = None
    flags: list[str] = field(default_factory=list)  # suspicions: no_custom_kernel, timer_tampering, ...
    message: str = ""
    max_abs_diff: float | None = None
    trials: int = 0
    compile_s: float | None = None
    cached_build: bool = False
    provenance: dict[str, Any] = field(default_factory=dict)  # device, capability, torch/CUDA, dtype, timing method
    source_hash: str = ""
    # the first trial's output, summarised (kernels_eval.consensus); None: no output (it failed before one)
    output_signature: list[dict] | None = None

    @property
    def evaluated(self) -> bool:
        """False when the kernel got no verdict (harness error or skipped): metrics leave it out."""
        return self.status not in (Status.HARNESS_ERROR, Status.SKIPPED)

    @property
    def retryable(self) -> bool:
        """A harness error: the evaluator failed this time; a rerun tries again."""
        return self.status is Status.HARNESS_ERROR

    @property
    def counts_as_correct(self) -> bool:
        """Correct and not flagged (our rules): what metrics count unless asked otherwise."""
        return self.counts_as_correct_under("ours")

    def counts_as_correct_under(self, rules: str = "ours") -> bool:
        """"ours": correct with none of our flags. "kernelbench": correct with none of KernelBench's static
        checker's categories ("kb:" flags, kernels_eval.static); our dynamic flags are not its rules."""
        if rules not in RULES:
            raise ValueError(f"rules must be one of {RULES}, got {rules!r}")
        if rules == "kernelbench":
            return self.correct and not any(f.startswith("kb:") for f in self.flags)
        return self.correct and not any(not f.startswith("kb:") for f in self.flags)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = self.status.value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "KernelEvalResult":
        d = dict(d)
        d["status"] = Status(d["status"])
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in known})
