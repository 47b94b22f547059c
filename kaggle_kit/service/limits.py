"""How much work one request may ask for, checked before it starts.

A request keeps its strategy's sequences in flight (`TTSParams.in_flight`: offline BoN N, online
BoN its candidates, beam search beams x candidates), each up to prompt + max_tokens long, for up
to its step limit. Without bounds one request (tts_num_trajectories=100000) occupies
the engine for as long as it takes. The default bounds come from the engine's KV cache:
one request may not need more KV cache than the engine has.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from kaggle_kit.engine.types import Engine
from kaggle_kit.service.errors import ApiError
from kaggle_kit.tts.params import SHAPES, TTSParams, wire_name


@dataclass(frozen=True)
class Limits:
    max_sequences: int = field(default=64, metadata={"help": "sequences one request may keep in flight"})
    max_steps: int = field(default=1000, metadata={"help": "the most tts_max_steps a request may ask for"})
    max_kv_tokens: int | None = field(default=None, metadata={
        "help": "KV cache one request may need, sequences x (prompt + max_tokens) (default: the engine's whole cache)"})

    @classmethod
    def for_engine(cls, engine: Engine, **overrides) -> "Limits":
        kv = getattr(engine, "kv_cache_tokens", None)
        return cls(**{"max_kv_tokens": kv, **{k: v for k, v in overrides.items() if v is not None}})

    def to_dict(self) -> dict:
        return asdict(self)


def check(limits: Limits, params: TTSParams, prompt_tokens: int) -> None:
    """Raise a 400 naming the limit a TTS request goes over."""
    w = params.in_flight
    sizes = SHAPES[params.strategy].size_params()
    field = wire_name(sizes[0])  # the request's name for its width
    what = " and ".join(f"{wire_name(n)}={getattr(params, n)}" for n in sizes)
    if w > limits.max_sequences:
        raise ApiError(400, f"{what} keep {w} sequences in flight; this server allows {limits.max_sequences} per "
                            f"request (limit max_sequences)", param=field, code="request_too_large")
    if params.max_steps > limits.max_steps:
        raise ApiError(400, f"tts_max_steps={params.max_steps} is over this server's limit of {limits.max_steps} "
                            f"(limit max_steps)", param="tts_max_steps", code="request_too_large")
    need = w * (prompt_tokens + params.max_tokens)
    if limits.max_kv_tokens and need > limits.max_kv_tokens:
        raise ApiError(400, f"{what}: {w} sequences x ({prompt_tokens} prompt + {params.max_tokens} completion tokens) "
                            f"need {need} tokens of KV cache; this server allows {limits.max_kv_tokens} per request "
                            f"(limit max_kv_tokens: its KV cache): lower {field} or max_tokens", param=field,
                       code="request_too_large")
