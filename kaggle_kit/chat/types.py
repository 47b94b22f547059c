"""Typed chat options and results shared by every backend."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterator

from kaggle_kit.config import KaggleKitError


class BackendError(KaggleKitError, RuntimeError):
    """A backend could not answer (unreachable, HTTP error, no engine...)."""

    def __init__(self, backend: str, message: str):
        super().__init__(f"{backend}: {message}")
        self.backend = backend


class AllBackendsFailed(KaggleKitError, RuntimeError):
    def __init__(self, failures: list[tuple[str, str]]):
        detail = "; ".join(f"{name}: {why}" for name, why in failures) or "no backend configured"
        super().__init__(f"no chat backend could answer ({detail})")
        self.failures = failures


@dataclass(frozen=True)
class ChatOptions:
    max_tokens: int = 1024
    temperature: float | None = None  # None -> the model's recommended value for the mode
    top_p: float | None = None
    top_k: int | None = None
    enable_thinking: bool = False
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self):
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive integer, got {self.max_tokens!r}")
        if self.temperature is not None and self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        object.__setattr__(self, "stop", tuple([self.stop] if isinstance(self.stop, str) else self.stop or ()))

    @classmethod
    def of(cls, **options) -> "ChatOptions":
        try:
            return cls(**options)
        except TypeError as e:
            allowed = ", ".join(cls.__dataclass_fields__)
            raise TypeError(f"{e}; chat options are: {allowed}") from None

    def sampling(self) -> tuple[float, float, int]:
        """(temperature, top_p, top_k) with Qwen3's recommended defaults per mode."""
        t, p, k = (0.6, 0.95, 20) if self.enable_thinking else (0.7, 0.8, 20)
        return (
            t if self.temperature is None else self.temperature,
            p if self.top_p is None else self.top_p,
            k if self.top_k is None else self.top_k,
        )


@dataclass
class ChatResult:
    text: str  # the answer, thinking removed
    backend: str
    thinking: str = ""
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    model: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ChatStream:
    """An iterator of answer pieces that knows, once exhausted, the whole result.

    If iteration stops early (an error, or the consumer breaks), `complete` stays
    False and `text` holds what had arrived, so callers can keep partial output.
    """

    pieces: Iterator[str]
    backend: str
    text: str = ""
    thinking: str = ""
    finish_reason: str | None = None
    complete: bool = False
    completion_tokens: int | None = None
    prompt_tokens: int | None = None

    def __iter__(self) -> Iterator[str]:
        for piece in self.pieces:
            self.text += piece
            yield piece
        self.complete = True

    def result(self) -> ChatResult:
        return ChatResult(
            text=self.text,
            backend=self.backend,
            thinking=self.thinking,
            finish_reason=self.finish_reason,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
        )
