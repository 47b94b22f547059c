"""The protocol: /v1/chat/completions' request and response models, each converting itself.

The request is OpenAI's schema plus the tts_* fields (TTSParams' WIRE_FIELDS); it turns itself into
the engine's `SamplingSpec` or the strategies' `TTSParams` (as vLLM's protocol models turn themselves
into SamplingParams). Responses are built from what the worker returns. Unknown fields are rejected
(400) rather than silently dropped, so a client never believes an option it sent was honoured.
"""
from __future__ import annotations

import typing
from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from kaggle_kit.engine.chat_template import split_thinking, validate_messages
from kaggle_kit.engine.types import SamplingSpec
from kaggle_kit.service.errors import ApiError
from kaggle_kit.tts.params import STRATEGIES, WIRE_FIELDS, TTSParams, wire_name
from kaggle_kit.tts.results import CompletionReason, StrategyResult
from kaggle_kit.tts.scorers import SCORERS


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[TextPart]]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)

    def as_chat(self) -> dict[str, str]:
        return {"role": "system" if self.role == "developer" else self.role, "content": self.text()}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class ChatTemplateKwargs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enable_thinking: bool = False


class _ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    messages: list[Message] = Field(min_length=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)  # vLLM's extension
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1, description="one choice per request; use tts_strategy for best-of-N")
    user: str | None = None
    chat_template_kwargs: ChatTemplateKwargs | None = None
    # test-time scaling: the tts_* fields, added below from TTSParams (WIRE_FIELDS)

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop takes up to 4 non-empty strings")
        return stops

    @property
    def enable_thinking(self) -> bool:
        return bool(self.chat_template_kwargs and self.chat_template_kwargs.enable_thinking)

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def strategy(self) -> str:
        """The strategy this request runs ("plain": no tts_strategy, one sampled answer)."""
        return self.tts_strategy or "plain"

    def chat_messages(self) -> list[dict[str, str]]:
        try:
            return validate_messages([m.as_chat() for m in self.messages])
        except (TypeError, ValueError) as e:
            raise ApiError(400, str(e), param="messages") from None

    def to_sampling_spec(self, max_tokens: int) -> SamplingSpec:
        """A plain request's sampling: OpenAI's defaults where the client sent nothing."""
        return SamplingSpec(temperature=1.0 if self.temperature is None else self.temperature,
                            top_p=1.0 if self.top_p is None else self.top_p, top_k=self.top_k or 0,
                            max_tokens=max_tokens, stop=tuple(self.stop or ()), include_stop_str_in_output=False,
                            seed=self.seed)

    def to_tts_params(self, max_tokens: int) -> TTSParams:
        """A TTS request's parameters: the tts_* fields and the sampling fields, TTSParams' defaults elsewhere."""
        given = {f: getattr(self, wire_name(f)) for f in WIRE_FIELDS if getattr(self, wire_name(f)) is not None}
        given |= {k: getattr(self, k) for k in ("temperature", "top_p", "top_k", "seed") if getattr(self, k) is not None}
        if self.stop:
            given["stop"] = tuple(self.stop)
        try:
            return TTSParams.of(max_tokens=max_tokens, enable_thinking=self.enable_thinking, **given)
        except (TypeError, ValueError) as e:
            raise ApiError(400, str(e), param=next((wire_name(f) for f in WIRE_FIELDS if f in str(e)), None)) from None

    def routed(self, strategy: str, scorer: str | None = None) -> "_ChatCompletionRequest":
        """The request a /v1/{strategy}[/{scorer}]/chat/completions route stands for."""
        if strategy not in STRATEGIES:
            raise ApiError(404, f"no route for strategy {strategy!r}; the routes are /v1/{{strategy}}/chat/completions "
                                f"with strategy one of {', '.join(STRATEGIES)}", type="not_found_error",
                           code="unknown_route")
        if scorer is not None and scorer not in SCORERS:
            raise ApiError(404, f"no route for scorer {scorer!r}; choose from {', '.join(SCORERS)}",
                           type="not_found_error", code="unknown_route")
        for field, routed in ((wire_name("strategy"), strategy), (wire_name("scorer"), scorer)):
            sent = getattr(self, field)
            if routed is not None and sent is not None and sent != routed:
                raise ApiError(400, f"{field}={sent!r} contradicts the route's {routed!r}: send one or the other",
                               param=field)
        return self.model_copy(update={wire_name("strategy"): strategy,
                                       wire_name("scorer"): scorer or getattr(self, wire_name("scorer"))})


def _tts_fields() -> dict:
    """tts_<name>: (its TTSParams type, or None) for every field a request may set."""
    hints = typing.get_type_hints(TTSParams)
    return {wire_name(f): (hints[f] | None, None) for f in WIRE_FIELDS}


ChatCompletionRequest = create_model("ChatCompletionRequest", __base__=_ChatCompletionRequest, **_tts_fields())


# -- responses (typed; `wire()` turns them into the JSON clients get) ----------------------------

class Adjustment(BaseModel):
    """Something the server changed in a request instead of refusing it (lenient mode)."""
    field: str
    requested: Union[str, int, float, None]
    used: Union[str, int, float, None]
    reason: str


class TTSStep(BaseModel):
    depth: int
    text: str
    score: float | None
    uncertainty: float | None
    num_tokens: int
    finish: str
    final_continuation: bool


class TTSCandidate(BaseModel):
    text: str
    aggregated_score: float | None
    completion_reason: str
    num_steps: int
    chosen: bool


class TTSMetadata(BaseModel):
    strategy: str
    scorer: str
    aggregated_score: float | None
    completion_reason: str
    steps: list[TTSStep]
    candidates: list[TTSCandidate]
    usage: dict[str, int]
    elapsed_s: float
    adjustments: list[Adjustment] = Field(default_factory=list)

    @classmethod
    def of(cls, result: StrategyResult, adjustments: list[Adjustment]) -> "TTSMetadata":
        data = result.to_dict()
        return cls(**{k: data[k] for k in ("strategy", "scorer", "aggregated_score", "completion_reason", "steps",
                                           "candidates", "usage", "elapsed_s")}, adjustments=adjustments)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt: int, completion: int) -> "Usage":
        return cls(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    reasoning_content: str | None = None


class Choice(BaseModel):
    index: int = 0
    message: ResponseMessage
    finish_reason: str
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    tts_metadata: TTSMetadata | None = None
    kk_adjustments: list[Adjustment] | None = None


class ChunkDelta(BaseModel):
    role: str | None = None
    content: str | None = None
    reasoning_content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: ChunkDelta
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    tts_metadata: TTSMetadata | None = None
    kk_adjustments: list[Adjustment] | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "kaggle_kit"
    max_model_len: int
    kv_cache_tokens: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Answer(BaseModel):
    """A finished request's answer as the response reports it (from a plain answer or a strategy's result)."""
    message: ResponseMessage
    finish_reason: str
    completion_tokens: int
    tts_metadata: TTSMetadata | None = None

    @classmethod
    def of(cls, done, adjustments: list[Adjustment]) -> "Answer":
        """`done`: the worker's `PlainAnswer` or a `StrategyResult`."""
        if isinstance(done, StrategyResult):
            thinking, answer = split_thinking(done.text)
            return cls(message=ResponseMessage(content=answer, reasoning_content=thinking or None),
                       finish_reason=_finish_reason(done), completion_tokens=done.num_tokens,
                       tts_metadata=TTSMetadata.of(done, adjustments))
        thinking, answer = split_thinking(done.text)
        reasoning = done.thinking or thinking
        return cls(message=ResponseMessage(content=answer, reasoning_content=reasoning or None),
                   finish_reason=done.finish_reason or "stop", completion_tokens=done.completion_tokens)


def _finish_reason(result: StrategyResult) -> str:
    if result.completion_reason in (CompletionReason.EOS, CompletionReason.STOP):
        return "stop"
    if result.completion_reason is CompletionReason.MAX_STEPS and result.steps and result.steps[-1].finish in ("eos", "stop"):
        return "stop"
    return "length"


_OPTIONAL = ("tts_metadata", "kk_adjustments", "usage", "reasoning_content", "role", "content", "kv_cache_tokens")


def wire(model: BaseModel) -> dict:
    """The JSON form: extension fields and unset delta parts left out when empty, OpenAI's own kept (null)."""
    def clean(x):
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items() if not (k in _OPTIONAL and v in (None, []))}
        if isinstance(x, list):
            return [clean(v) for v in x]
        return x
    return clean(model.model_dump())
