"""What the parent (`kernels_eval.evaluate`) asks each of an evaluation's processes, and what each hands back.

An evaluation is three phases; only the middle one ever runs candidate code, in a process of its own:

    reference  (kernels_eval.reference, trusted process)  ReferenceSpec  -> ReferenceOutputs  (outputs and
                                                                            timing, cached per problem)
    candidate  (kernels_eval.candidate, sandboxed process) CandidateSpec -> CandidateRun      (claims)
    judge      (kernels_eval.judge, in the parent)         JudgeSpec     -> Judgement         (the verdict)

Specs go to a child as JSON on its stdin; results come back as JSON on an inherited pipe.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


class _Json:
    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict):
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class ReferenceSpec(_Json):
    """The reference's outputs for `trials` seeded inputs and, when `time`, its timing (as a candidate's)."""
    problem_source: str
    device: str  # "cuda" or "cpu"
    seed: int
    trials: int
    dir: str  # the trusted folder its outputs and state_dict are written to / read from
    cpu_threads: int = 1
    lock_fd: int | None = None  # the device lock, opened by the parent, taken before the device is touched
    warmup: int = 3
    iters: int = 10
    rounds: int = 5
    flush_bytes: int | None = None
    sleep_us: float = 0.0
    compare_compile: bool = False
    time: bool = False


@dataclass
class ReferenceOutputs(_Json):
    dir: str
    trials: int
    has_state: bool  # the reference has parameters or buffers (a state_dict worth copying)
    degenerate: bool  # every trial's output equal although the inputs differ: it ignores its inputs
    peak_bytes: int = 0  # the most the reference's forward took on the host (CPU)
    cached: bool = False
    timing: dict = field(default_factory=dict)  # {"ms", "spread", "launch", "compiled_ms"?} when timed


@dataclass(frozen=True)
class CandidateSpec(_Json):
    problem_source: str
    candidate_source: str
    device: str
    scratch: str  # the child's working folder (HOME, TMPDIR); outputs go to scratch/outputs
    trials: int
    seed: int
    timing: bool
    warmup: int
    iters: int
    rounds: int
    flush_bytes: int | None = None  # the L2 flush buffer (None: twice the GPU's L2)
    cpu_threads: int = 1
    lock_fd: int | None = None
    sleep_us: float = 0.0  # a GPU-side spin before each timed call (also timed without)
    gpu_total_bytes: int | None = None  # the most GPU memory the evaluator may ever have, if less than the card
    reference_bytes: int = 0  # the reference's own forward on the host: an OOM under that is the limit's fault
    state_dict: str | None = None  # the reference's weights, copied in only when a same-seed model fails


@dataclass
class CandidateRun(_Json):
    """What the sandboxed process says it did. Its outputs are judged elsewhere; its timing is its own."""
    status: str  # "ran", or an early verdict: compile_error, runtime_error, rejected, incorrect
    message: str = ""
    compiled: bool = False
    compile_s: float | None = None
    variants: list[str] = field(default_factory=list)  # outputs written: "same_seed", then maybe "copied"
    runtime_ms: float | None = None
    runtime_spread: float | None = None
    timing: dict = field(default_factory=dict)  # how the runtime was taken (launch slack or not)
    flags: list[str] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)
    trials: int = 0


@dataclass(frozen=True)
class JudgeSpec(_Json):
    reference_dir: str
    outputs_dir: str
    variants: list
    trials: int
    tolerances: dict  # dtype -> (atol, rtol), "default" among them
    owner: int | None = None  # the candidate's uid: files of anyone else are refused
    max_bytes: int = 0  # the most one trial's outputs may take on disk


@dataclass
class Judgement(_Json):
    correct: bool
    message: str = ""
    trials: int = 0
    max_abs_diff: float | None = None
    weights: str | None = None  # which of the candidate's models passed: "same_seed" or "copied"
    output_signature: list | None = None
