"""TTS parameters (the seed's names) with checks that list the allowed values."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable

from kaggle_kit.engine.types import check_sampling
from kaggle_kit.tts.aggregation import AGGREGATIONS, check_aggregation
from kaggle_kit.tts.scorers import SCORERS, check_scorer

@dataclass(frozen=True)
class Shape:
    """A strategy's size, in terms of its parameters (`p`: TTSParams). The one place each formula is written."""
    width_param: str  # the parameter that sets how many sequences it weighs at once
    in_flight: Callable[[Any], int]  # sequences it keeps in the engine at once
    finalists: Callable[[Any], int]  # candidates it returns (those a verifier may run)
    sizes: tuple[str, ...] = ()  # the parameters `in_flight` reads (named in a limit's error), width_param first

    def size_params(self) -> tuple[str, ...]:
        return self.sizes or (self.width_param,)


SHAPES: dict[str, Shape] = {
    "offline_bon": Shape("num_trajectories", lambda p: p.num_trajectories, lambda p: p.num_trajectories),
    "online_bon": Shape("candidates_per_step", lambda p: p.candidates_per_step, lambda p: 1),
    "beam_search": Shape("beam_size", lambda p: p.beam_size * p.candidates_per_step, lambda p: p.beam_size,
                         ("beam_size", "candidates_per_step")),
    "dvts": Shape("beam_size", lambda p: p.beam_size * p.candidates_per_step, lambda p: p.beam_size,
                  ("beam_size", "candidates_per_step")),
    "adaptive_bon": Shape("num_trajectories", lambda p: min(p.candidates_per_step, p.num_trajectories),
                          lambda p: p.num_trajectories, ("num_trajectories", "candidates_per_step")),
    "deepconf": Shape("num_trajectories", lambda p: max(min(p.warmup_traces, p.num_trajectories),
                                                        p.num_trajectories - p.warmup_traces),
                      lambda p: p.num_trajectories, ("num_trajectories", "warmup_traces")),
}
STRATEGIES = tuple(SHAPES)  # every list of strategy names derives from this table


def check_strategy(name: str) -> str:
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    return name


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


def _param(default, help: str, wire: bool = False, positive: bool = False, **meta):
    """A TTS parameter: its default and what it means (the CLIs' help). `wire`: a tts_* request field
    (its name on the wire is "tts_" + its own); `positive`: a positive integer; `flag` names its
    `kernels-eval run` flag where that is not its request name (`flag=None`: not a flag there)."""
    return field(default=default, metadata={"help": help, "wire": wire, "positive": positive, **meta})


@dataclass(frozen=True)
class TTSParams:
    """The one definition of every TTS parameter: the library's, the service's and a run's defaults.
    Sampling fields travel under OpenAI's own names (temperature, top_p, max_tokens, seed), the
    search's as tts_* fields (`WIRE_FIELDS`)."""

    strategy: str = _param("online_bon", "search strategy", wire=True, choices=STRATEGIES)
    scorer: str = _param("entropy", "how a step is scored", wire=True, choices=SCORERS)
    num_trajectories: int = _param(8, "offline_bon / adaptive_bon / deepconf: answers sampled (N)", wire=True,
                                   positive=True)
    candidates_per_step: int = _param(4, "online_bon / beam_search / dvts: candidates per step; adaptive_bon: answers "
                                         "per wave", wire=True, positive=True)
    beam_size: int = _param(4, "beam_search: beams kept; dvts: independent subtrees", wire=True, positive=True)
    max_steps: int = _param(100, "steps per answer (then one final continuation finishes it)", wire=True, positive=True)
    score_aggregation: str = _param("min", "how step scores make an answer's score", wire=True, choices=AGGREGATIONS)
    window_size: int | None = _param(None, "aggregate over the last W step scores (default: all)", wire=True)
    stop_score: float = _param(0.95, "adaptive_bon: stop sampling once the best answer's aggregated score reaches "
                                     "this", wire=True)
    warmup_traces: int = _param(4, "deepconf: whole answers that set the confidence bar the other traces must keep",
                                wire=True, positive=True)
    temperature: float = _param(0.6, "sampling temperature")
    top_p: float = _param(0.95, "nucleus sampling")
    top_k: int = _param(20, "top-k sampling (0: off)")
    max_tokens: int = _param(2048, "tokens per trajectory", positive=True)
    seed: int | None = _param(None, "sampling seed (each sample, step and branch offsets it)", flag=None)
    enable_thinking: bool = _param(False, "Qwen3's thinking mode", flag="thinking")
    logprobs: int = _param(10, "top-k logprobs per token for the scorers", positive=True)
    step_stop: tuple[str, ...] = _param(DEFAULT_STEP_STOP, "strings that end a step (repeatable)")
    min_step_tokens: int = _param(DEFAULT_MIN_STEP_TOKENS, "tokens a step has at least before a step_stop ends it")
    max_step_tokens: int = _param(DEFAULT_MAX_STEP_TOKENS, "tokens a step has at most", positive=True)
    stop: tuple[str, ...] = _param((), "strings that end the whole answer (repeatable)")

    def __post_init__(self):
        check_strategy(self.strategy)
        check_scorer(self.scorer)
        check_aggregation(self.score_aggregation)
        for f in fields(self):
            v = getattr(self, f.name)
            if f.metadata["positive"] and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ValueError(f"{f.name} must be a positive integer, got {v!r}")
            if isinstance(f.default, tuple):  # strings: one, or several
                v = (v,) if isinstance(v, str) else tuple(v or ())
                if any(not isinstance(x, str) or not x for x in v):
                    raise ValueError(f"{f.name} must be non-empty strings, got {v!r}")
                object.__setattr__(self, f.name, v)
        if not isinstance(self.min_step_tokens, int) or self.min_step_tokens < 0:
            raise ValueError(f"min_step_tokens must be >= 0, got {self.min_step_tokens!r}")
        if self.min_step_tokens >= self.max_step_tokens:
            raise ValueError(f"min_step_tokens ({self.min_step_tokens}) must be < max_step_tokens ({self.max_step_tokens})")
        if self.window_size is not None and (not isinstance(self.window_size, int) or self.window_size < 1):
            raise ValueError(f"window_size must be a positive integer or None, got {self.window_size!r}")
        if not isinstance(self.stop_score, (int, float)) or not 0 < self.stop_score <= 1:
            raise ValueError(f"stop_score must be in (0, 1] (scores are 1 / (1 + uncertainty)), got {self.stop_score!r}")
        check_sampling(self.temperature, self.top_p, self.top_k)

    @classmethod
    def of(cls, **kwargs) -> "TTSParams":
        """From keyword arguments; None means "the default" except where None is a value (no seed, no window)."""
        unknown = sorted(set(kwargs) - set(NAMES))
        if unknown:
            raise TypeError(f"unknown TTS parameter(s) {unknown}; known: {', '.join(sorted(NAMES))}")
        nullable = {f.name for f in fields(cls) if f.default is None}
        return cls(**{k: v for k, v in kwargs.items() if v is not None or k in nullable})

    def to_dict(self) -> dict:
        return asdict(self)

    def to_wire(self) -> dict[str, Any]:
        """The tts_* fields a request carries for these parameters (unset ones left out)."""
        return {wire_name(f): getattr(self, f) for f in WIRE_FIELDS if getattr(self, f) is not None}

    @property
    def in_flight(self) -> int:
        """Sequences this search keeps in the engine at once (its strategy's `Shape`)."""
        return SHAPES[self.strategy].in_flight(self)

    @property
    def finalists(self) -> int:
        """Candidates it returns (those a verifier may run)."""
        return SHAPES[self.strategy].finalists(self)


NAMES = tuple(f.name for f in fields(TTSParams))
# The tts_* request fields (the service's request, a remote run's extra_body, `kernels-eval run`'s flags).
WIRE_FIELDS = tuple(f.name for f in fields(TTSParams) if f.metadata["wire"])


def wire_name(name: str) -> str:
    return "tts_" + name
