"""The engine seam: what algorithms send to an engine and what they get back.

Token ids are the truth: a request is prompt token ids, never a string, so a
trajectory can be extended step by step without re-tokenising text.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Protocol, Sequence

import numpy as np


def check_sampling(temperature: float, top_p: float, top_k: int) -> None:
    """The sampling ranges every engine accepts; shared by all parameter types."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 disables it), got {top_k}")


# A completion's finish_reason when its ConfidenceStop ended it (vLLM's own are "stop" and "length").
LOW_CONFIDENCE = "low_confidence"


def token_confidence(returned_logprobs: np.ndarray, k: int | None = None) -> np.ndarray:
    """DeepConf's token confidence C_t = -mean of the top-k logprobs at position t (arXiv 2508.15260),
    from every logprob returned per position (NaN-padded). k defaults to the fewest any position returned
    (a row holds k entries, or k + 1 when the sampled token was outside the top-k); a row with fewer
    than k averages what it has."""
    returned = np.asarray(returned_logprobs, dtype=np.float64).reshape(len(returned_logprobs), -1)
    if returned.shape[0] == 0:
        return np.zeros(0)
    k = int(k or np.sum(~np.isnan(returned), axis=1).min() or 1)
    top = -np.sort(-np.nan_to_num(returned, nan=-np.inf), axis=1)[:, :k]
    real = np.isfinite(top)
    return -np.where(real, top, 0.0).sum(axis=1) / np.maximum(real.sum(axis=1), 1)


@dataclass(frozen=True)
class ConfidenceStop:
    """Stop a sequence once its group confidence, the mean token confidence over its last `window` tokens,
    falls under `bar` (DeepConf's online early stop): the engine aborts it there and returns what it had,
    with finish_reason LOW_CONFIDENCE. Needs top-k logprobs (logprobs >= 1)."""

    bar: float
    window: int = 16

    def __post_init__(self):
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")

    def stop_at(self, confidences: np.ndarray, checked: int = 0) -> int | None:
        """The token count at which the rule fires (the end of the first full window under the bar, among
        windows ending after position `checked`), or None."""
        c = np.asarray(confidences, dtype=np.float64)
        if len(c) < self.window:
            return None
        csum = np.concatenate([[0.0], np.cumsum(c)])
        ends = np.arange(max(self.window, checked + 1), len(c) + 1)
        low = ends[(csum[ends] - csum[ends - self.window]) / self.window < self.bar]
        return int(low[0]) if len(low) else None


@dataclass(frozen=True)
class SamplingSpec:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = disabled
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    include_stop_str_in_output: bool = True
    logprobs: int | None = None  # top-k logprobs per position; None = none
    seed: int | None = None
    min_tokens: int = 0
    confidence_stop: ConfidenceStop | None = None  # stop early at low confidence (the engine watches every token)

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        check_sampling(self.temperature, self.top_p, self.top_k)
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.logprobs is not None and self.logprobs < 0:
            raise ValueError(f"logprobs must be >= 0 or None, got {self.logprobs}")
        if self.confidence_stop is not None and not self.logprobs:
            raise ValueError("confidence_stop reads the top-k logprobs: request logprobs >= 1")
        object.__setattr__(self, "stop", tuple(self.stop))


@dataclass(frozen=True)
class GenerationRequest:
    prompt_ids: tuple[int, ...]
    sampling: SamplingSpec = SamplingSpec()

    def __post_init__(self):
        object.__setattr__(self, "prompt_ids", tuple(int(t) for t in self.prompt_ids))
        if not self.prompt_ids:
            raise ValueError("a generation request needs at least one prompt token")

    def samples(self) -> list[SamplingSpec]:
        """The request as n single-sample specs with seeds seed, seed+1, ... (None stays None).

        Engines send n samples as n requests; every caller that does so uses this,
        so the same seeds give the same samples whichever path sends them.
        """
        s = self.sampling
        return [replace(s, n=1, seed=None if s.seed is None else s.seed + k) for k in range(s.n)]


@dataclass
class Completion:
    """One sampled continuation.

    ``chosen_logprobs[t]`` is log p of the sampled token at position t.
    ``returned_ids[t, j]`` / ``returned_logprobs[t, j]`` hold every logprob the
    engine returned at position t (top-k, plus the sampled token when it falls
    outside the top-k); unused slots are -1 / NaN so the arrays stay rectangular
    and scorers can stay vectorised.
    """

    token_ids: tuple[int, ...]
    text: str
    finish_reason: str  # "stop" (EOS or stop string), "length", or LOW_CONFIDENCE (its ConfidenceStop)
    stop_reason: str | int | None = None  # the stop string (or stop token id) hit, if any
    chosen_logprobs: np.ndarray = field(default_factory=lambda: np.zeros(0))
    returned_ids: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.int64))
    returned_logprobs: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    prompt_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def hit_stop_string(self) -> bool:
        return isinstance(self.stop_reason, str)


@dataclass
class StepEvent:
    """What one engine step produced for one request (see `Engine.step`)."""

    request_id: str
    finished: bool
    text: str  # streamed requests: the new text; others: the whole text, once finished
    token_ids: tuple[int, ...]  # streamed requests: the new tokens; others: all, once finished
    finish_reason: str | None
    completion: Completion | None  # non-streamed requests, once finished


class Engine(Protocol):
    """What the toolkit's algorithms and the service's worker need from an LLM engine.

    `generate` runs a batch to completion (the strategies' rounds). `add` / `step` /
    `abort` drive the engine one step at a time for requests that come and go (the
    service's worker); the caller holds `lock` around them so nothing else steps the
    engine meanwhile.
    """

    lock: Any

    @property
    def tokenizer(self): ...

    @property
    def eos_token_ids(self) -> frozenset[int]: ...

    @property
    def max_model_len(self) -> int: ...

    @property
    def kv_cache_tokens(self) -> int | None:
        """Tokens the engine's KV cache holds (None when unknown)."""

    def generate(self, requests: Sequence[GenerationRequest], use_tqdm: bool = False) -> list[list[Completion]]: ...

    def add(self, request_id: str, prompt_ids: Sequence[int], sampling: SamplingSpec, stream: bool = False) -> None: ...

    def step(self) -> list[StepEvent]: ...

    def abort(self, request_ids: Sequence[str]) -> None: ...

    def has_unfinished(self) -> bool: ...

