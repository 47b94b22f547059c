"""How much work one request may ask for, checked before it starts.

A request keeps `width` sequences in flight (offline BoN: N; online BoN: candidates;
beam search: beam x candidates), each up to prompt + max_tokens long, for up to
max_steps rounds. Without bounds one request (tts_num_trajectories=100000) occupies
the engine for as long as it takes. The default bounds come from the engine's KV cache:
one request may not need more KV cache than the engine has.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from kaggle_kit.service.errors import ApiError
from kaggle_kit.tts.params import SHAPES, sequences_in_flight


@dataclass(frozen=True)
class Limits:
    max_sequences: int = 64  # sequences one request keeps in flight
    max_steps: int = 1000
    max_kv_tokens: int | None = None  # width x (prompt + max_tokens); None: the engine's KV capacity

    @classmethod
    def for_engine(cls, engine, **overrides) -> "Limits":
        kv = getattr(engine, "kv_cache_tokens", None)
        return cls(**{"max_kv_tokens": kv, **{k: v for k, v in overrides.items() if v is not None}})

    def to_dict(self) -> dict:
        return asdict(self)


def check(limits: Limits, params, prompt_tokens: int) -> None:
    """Raise a 400 naming the limit a TTS request goes over."""
    w = sequences_in_flight(params)
    field = "tts_" + SHAPES[params.strategy].width_param  # the request's name for it
    width = getattr(params, field[4:])
    what = f"{field}={width}" + (f" x tts_candidates_per_step={params.candidates_per_step}" if w != width else "")
    if w > limits.max_sequences:
        raise ApiError(400, f"{what} keeps {w} sequences in flight; this server allows {limits.max_sequences} per "
                            f"request (limit max_sequences)", param=field, code="request_too_large")
    if params.max_steps > limits.max_steps:
        raise ApiError(400, f"tts_max_steps={params.max_steps} is over this server's limit of {limits.max_steps} "
                            f"(limit max_steps)", param="tts_max_steps", code="request_too_large")
    need = w * (prompt_tokens + params.max_tokens)
    if limits.max_kv_tokens and need > limits.max_kv_tokens:
        raise ApiError(400, f"{what} x ({prompt_tokens} prompt + {params.max_tokens} completion tokens) needs {need} "
                            f"tokens of KV cache; this server allows {limits.max_kv_tokens} per request (limit "
                            f"max_kv_tokens: its KV cache): lower {field} or max_tokens", param=field,
                       code="request_too_large")
