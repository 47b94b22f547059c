"""TTS parameters (the seed's names) with checks that list the allowed values."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Callable

from kaggle_kit.engine.types import check_sampling
from kaggle_kit.tts.aggregation import check_aggregation
from kaggle_kit.tts.scorers import check_scorer

@dataclass(frozen=True)
class Shape:
    """A strategy's size, in terms of its parameters (`p`: TTSParams or anything with the same
    fields, e.g. an experiment config). The one place each formula is written."""
    width_param: str  # the parameter that sets how many sequences it weighs at once
    in_flight: Callable[[Any], int]  # sequences it keeps in the engine at once
    finalists: Callable[[Any], int]  # candidates it returns (those a verifier may run)


SHAPES: dict[str, Shape] = {
    "offline_bon": Shape("num_trajectories", lambda p: p.num_trajectories, lambda p: p.num_trajectories),
    "online_bon": Shape("candidates_per_step", lambda p: p.candidates_per_step, lambda p: 1),
    "beam_search": Shape("beam_size", lambda p: p.beam_size * p.candidates_per_step, lambda p: p.beam_size),
    "dvts": Shape("beam_size", lambda p: p.beam_size * p.candidates_per_step, lambda p: p.beam_size),
    "adaptive_bon": Shape("num_trajectories", lambda p: min(p.candidates_per_step, p.num_trajectories),
                          lambda p: p.num_trajectories),
    "deepconf": Shape("num_trajectories", lambda p: max(min(p.warmup_traces, p.num_trajectories),
                                                        p.num_trajectories - p.warmup_traces),
                      lambda p: p.num_trajectories),
}
STRATEGIES = tuple(SHAPES)  # every list of strategy names derives from this table


def sequences_in_flight(p) -> int:
    """How many sequences `p.strategy` keeps in the engine at once: offline N, online candidates,
    beam x candidates."""
    return SHAPES[p.strategy].in_flight(p)


# The tts_* request fields: these TTSParams fields, each on the wire as "tts_" + its name (the
# service's request, a remote run's extra_body, `kernels-eval run`'s flags). Sampling fields travel
# under OpenAI's own names (temperature, top_p, max_tokens, seed).
WIRE_FIELDS = ("strategy", "scorer", "num_trajectories", "candidates_per_step", "beam_size", "max_steps",
               "score_aggregation", "window_size", "stop_score", "warmup_traces")


def wire_name(name: str) -> str:
    return "tts_" + name


# Step boundaries. A blank line separates paragraphs and code blocks; min_step_tokens
# stops a run of short lines (a CUDA kernel's `}` lines, a list) from becoming
# dozens of two-token steps, and max_step_tokens bounds a step with no blank line.
# Measured in Qwen3 tokens with benchmarks/step_lengths.py (benchmarks/results/
# step_lengths_qwen3.json): on the bundled solutions and a CUDA answer, min 8 leaves no
# step under 8 tokens and keeps every blank-line paragraph its own step (8 and 12 steps,
# median 34 and 30 tokens); the longest real step is 231 tokens, so 256 only stops runaways.
DEFAULT_STEP_STOP = ("\n\n",)
DEFAULT_MIN_STEP_TOKENS = 8
DEFAULT_MAX_STEP_TOKENS = 256


@dataclass(frozen=True)
class TTSParams:
    strategy: str = "online_bon"
    scorer: str = "entropy"
    num_trajectories: int = 8  # offline_bon: N
    candidates_per_step: int = 4  # online_bon / beam_search / dvts
    beam_size: int = 4  # beam_search: beams kept; dvts: independent subtrees
    max_steps: int = 100
    score_aggregation: str = "min"
    window_size: int | None = None  # aggregate over the last W step scores
    stop_score: float = 0.95  # adaptive_bon: stop sampling once the best answer's aggregated score reaches this
    warmup_traces: int = 4  # deepconf: whole answers that set the bar the other traces must stay above
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 20
    max_tokens: int = 2048  # per trajectory
    seed: int | None = None
    enable_thinking: bool = False
    logprobs: int = 10  # top-k logprobs per token for the scorers
    step_stop: tuple[str, ...] = DEFAULT_STEP_STOP
    min_step_tokens: int = DEFAULT_MIN_STEP_TOKENS
    max_step_tokens: int = DEFAULT_MAX_STEP_TOKENS
    stop: tuple[str, ...] = ()  # strings that end the whole answer

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; choose from {', '.join(STRATEGIES)}")
        check_scorer(self.scorer)
        check_aggregation(self.score_aggregation)
        for name in ("num_trajectories", "candidates_per_step", "beam_size", "max_steps", "max_tokens",
                     "max_step_tokens", "logprobs", "warmup_traces"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not isinstance(self.min_step_tokens, int) or self.min_step_tokens < 0:
            raise ValueError(f"min_step_tokens must be >= 0, got {self.min_step_tokens!r}")
        if self.min_step_tokens >= self.max_step_tokens:
            raise ValueError(f"min_step_tokens ({self.min_step_tokens}) must be < max_step_tokens ({self.max_step_tokens})")
        if self.window_size is not None and (not isinstance(self.window_size, int) or self.window_size < 1):
            raise ValueError(f"window_size must be a positive integer or None, got {self.window_size!r}")
        if not isinstance(self.stop_score, (int, float)) or not 0 < self.stop_score <= 1:
            raise ValueError(f"stop_score must be in (0, 1] (scores are 1 / (1 + uncertainty)), got {self.stop_score!r}")
        check_sampling(self.temperature, self.top_p, self.top_k)
        for name in ("step_stop", "stop"):
            v = getattr(self, name)
            v = (v,) if isinstance(v, str) else tuple(v or ())
            if any(not isinstance(s, str) or not s for s in v):
                raise ValueError(f"{name} must be non-empty strings, got {v!r}")
            object.__setattr__(self, name, v)

    @classmethod
    def of(cls, **kwargs) -> "TTSParams":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"unknown TTS parameter(s) {unknown}; known: {', '.join(sorted(known))}")
        return cls(**{k: v for k, v in kwargs.items() if v is not None or k in ("seed", "window_size")})

    def to_dict(self) -> dict:
        return asdict(self)

    def to_wire(self) -> dict[str, Any]:
        """The tts_* fields a request carries for these parameters (unset ones left out)."""
        return {wire_name(f): getattr(self, f) for f in WIRE_FIELDS if getattr(self, f) is not None}
