"""The /v1/chat/completions request: OpenAI's schema plus the tts_* fields.

Unknown fields are rejected (400) rather than silently dropped, so a client never
believes an option it sent was honoured.
"""
from __future__ import annotations

import typing
from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from kaggle_kit.tts.params import WIRE_FIELDS, TTSParams, wire_name


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

    def tts_params(self) -> dict:
        """The tts_* fields (and the sampling fields) as `TTSParams` keyword arguments."""
        out = {k[4:]: v for k, v in self.model_dump().items() if k.startswith("tts_") and k != "tts_strategy" and v is not None}
        out["strategy"] = self.tts_strategy
        for k in ("temperature", "top_p", "top_k", "seed"):
            if getattr(self, k) is not None:
                out[k] = getattr(self, k)
        if self.stop:
            out["stop"] = tuple(self.stop)
        out["enable_thinking"] = self.enable_thinking
        return out


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
