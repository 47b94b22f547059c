"""Chat backends: the registered vLLM engine, OpenAI-compatible HTTP (Groq, a vLLM
server, our own service), Ollama, and Echo. Each can say whether it is available,
answer a whole reply, or stream one.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Callable, Iterator

import httpx

from kaggle_kit.engine.chat_template import ThinkSplitter, prompt_ids, split_thinking, validate_messages
from kaggle_kit.chat.types import BackendError, ChatOptions, ChatResult, ChatStream
from kaggle_kit.config import BACKEND_NAMES, ConfigError

log = logging.getLogger(__name__)


class Backend:
    name = "backend"

    def available(self) -> bool:
        raise NotImplementedError

    def generate(self, messages, **options) -> ChatResult:
        stream = self.stream(messages, **options)
        for _ in stream:
            pass
        return stream.result()

    def stream(self, messages, **options) -> ChatStream:
        raise NotImplementedError


class EchoBackend(Backend):
    """Always available; repeats the last user message. For offline tests and as the last resort."""

    name = "echo"

    def available(self) -> bool:
        return True

    def stream(self, messages, **options) -> ChatStream:
        msgs = validate_messages(messages)
        opts = ChatOptions.of(**options)
        words = ("Echo: " + msgs[-1]["content"]).split(" ")[: opts.max_tokens]
        s = ChatStream(iter([]), self.name, finish_reason="stop", completion_tokens=len(words))
        s.pieces = iter([w if i == 0 else " " + w for i, w in enumerate(words)])
        return s


class VLLMBackend(Backend):
    """The engine registered with `kk.VLLMClient` (never loads one by itself)."""

    name = "vllm"

    def available(self) -> bool:
        from kaggle_kit.engine.registry import registered_engine

        return registered_engine() is not None

    def _prepare(self, messages, options: dict[str, Any]):
        from kaggle_kit.engine.registry import current_engine
        from kaggle_kit.engine.types import SamplingSpec

        msgs = validate_messages(messages)
        opts = ChatOptions.of(**options)
        engine = current_engine()
        ids = prompt_ids(engine.tokenizer, msgs, opts.enable_thinking)
        room = engine.max_model_len - len(ids)
        if room < 1:
            raise ValueError(
                f"the prompt is {len(ids)} tokens but the model's window is {engine.max_model_len}; shorten the conversation"
            )
        t, p, k = opts.sampling()
        spec = SamplingSpec(
            temperature=t, top_p=p, top_k=k, max_tokens=min(opts.max_tokens, room),
            stop=opts.stop, include_stop_str_in_output=False, seed=opts.seed,
        )
        return engine, ids, spec

    def generate(self, messages, **options) -> ChatResult:
        from kaggle_kit.engine.types import GenerationRequest

        engine, ids, spec = self._prepare(messages, options)
        c = engine.generate([GenerationRequest(ids, spec)])[0][0]
        thinking, answer = split_thinking(c.text)
        return ChatResult(
            text=answer, backend=self.name, thinking=thinking, finish_reason=c.finish_reason,
            prompt_tokens=len(ids), completion_tokens=c.num_tokens, model=engine.model_name,
        )

    def stream(self, messages, **options) -> ChatStream:
        engine, ids, spec = self._prepare(messages, options)
        s = ChatStream(iter([]), self.name, prompt_tokens=len(ids), completion_tokens=0)

        def pieces():
            splitter = ThinkSplitter()
            for text, toks, finish in engine.stream(ids, spec):
                s.completion_tokens += len(toks)
                s.finish_reason = finish or s.finish_reason
                out = splitter.feed(text)
                s.thinking = splitter.thinking
                if out:
                    yield out
            tail = splitter.finish()
            s.thinking = splitter.thinking.strip()
            if tail:
                yield tail

        s.pieces = pieces()
        return s


class OpenAICompatBackend(Backend):
    """Any server speaking OpenAI's /chat/completions (Groq, vLLM serve, our service)."""

    def __init__(self, base_url: str | None, api_key: str | None = None, model: str | None = None,
                 name: str = "openai", health_timeout_s: float = 1.5, timeout_s: float = 120.0,
                 probe: bool = True):
        self.base_url = (base_url or "").rstrip("/")
        self.api_key, self.model, self.name = api_key, model, name
        self.health_timeout_s, self.timeout_s, self.probe = health_timeout_s, timeout_s, probe

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def available(self) -> bool:
        if not self.base_url:
            return False
        if not self.probe:  # e.g. Groq: a key is all we can check without spending a request
            return bool(self.api_key)
        try:
            r = httpx.get(f"{self.base_url}/models", headers=self._headers(), timeout=self.health_timeout_s)
            return r.status_code == 200
        except httpx.HTTPError:
            return False

    def _model(self) -> str:
        if self.model:
            return self.model
        try:
            r = httpx.get(f"{self.base_url}/models", headers=self._headers(), timeout=self.health_timeout_s)
            r.raise_for_status()
            self.model = r.json()["data"][0]["id"]
            return self.model
        except (httpx.HTTPError, KeyError, IndexError, ValueError) as e:
            raise BackendError(self.name, f"no model given and /models did not name one ({e})") from e

    def _body(self, messages, options: dict[str, Any], stream: bool) -> dict[str, Any]:
        msgs = validate_messages(messages)
        opts = ChatOptions.of(**options)
        t, p, _ = opts.sampling()
        body: dict[str, Any] = {"model": self._model(), "messages": msgs, "max_tokens": opts.max_tokens,
                                "temperature": t, "top_p": p, "stream": stream}
        if opts.seed is not None:
            body["seed"] = opts.seed
        if opts.stop:
            body["stop"] = list(opts.stop)
        if self.name != "groq":  # vLLM-style servers read the template switch from here
            body["chat_template_kwargs"] = {"enable_thinking": opts.enable_thinking}
        return body

    def generate(self, messages, **options) -> ChatResult:
        body = self._body(messages, options, stream=False)
        r = _post(self.name, f"{self.base_url}/chat/completions", body, self._headers(), self.timeout_s)
        try:
            data = r.json()
            choice = data["choices"][0]
            content = choice["message"].get("content") or ""
            reasoning = choice["message"].get("reasoning_content") or choice["message"].get("reasoning") or ""
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise BackendError(self.name, f"malformed response: {r.text[:200]}") from e
        thinking, answer = split_thinking(content)
        usage = data.get("usage") or {}
        return ChatResult(text=answer, backend=self.name, thinking=reasoning or thinking,
                          finish_reason=choice.get("finish_reason"), model=data.get("model"),
                          prompt_tokens=usage.get("prompt_tokens"), completion_tokens=usage.get("completion_tokens"))

    def stream(self, messages, **options) -> ChatStream:
        body = self._body(messages, options, stream=True)
        s = ChatStream(iter([]), self.name)

        def handle(line: str, splitter: ThinkSplitter) -> tuple[str, bool]:
            if not line.startswith("data:"):
                return "", False
            payload = line[5:].strip()
            if payload == "[DONE]":
                return "", True
            event = json.loads(payload)
            if "error" in event:
                raise BackendError(self.name, f"stream error: {event['error']}")
            out = ""
            for choice in event.get("choices") or []:
                delta = choice.get("delta") or {}
                s.thinking += delta.get("reasoning_content") or ""
                s.finish_reason = choice.get("finish_reason") or s.finish_reason
                out += splitter.feed(delta.get("content") or "")
            if event.get("usage"):
                s.prompt_tokens = event["usage"].get("prompt_tokens")
                s.completion_tokens = event["usage"].get("completion_tokens")
            return out, False

        s.pieces = _http_stream(self.name, f"{self.base_url}/chat/completions", body, self._headers(),
                                self.timeout_s, s, handle)
        return s


class OllamaBackend(Backend):
    """Ollama's native /api/chat (NDJSON streaming)."""

    name = "ollama"

    def __init__(self, host: str, model: str, health_timeout_s: float = 1.5, timeout_s: float = 120.0):
        self.host, self.model = host.rstrip("/"), model
        self.health_timeout_s, self.timeout_s = health_timeout_s, timeout_s

    def available(self) -> bool:
        try:
            return httpx.get(f"{self.host}/api/tags", timeout=self.health_timeout_s).status_code == 200
        except httpx.HTTPError:
            return False

    def _body(self, messages, options: dict[str, Any], stream: bool) -> dict[str, Any]:
        msgs = validate_messages(messages)
        opts = ChatOptions.of(**options)
        t, p, k = opts.sampling()
        o: dict[str, Any] = {"temperature": t, "top_p": p, "top_k": k, "num_predict": opts.max_tokens}
        if opts.seed is not None:
            o["seed"] = opts.seed
        if opts.stop:
            o["stop"] = list(opts.stop)
        return {"model": self.model, "messages": msgs, "stream": stream, "think": opts.enable_thinking, "options": o}

    def generate(self, messages, **options) -> ChatResult:
        body = self._body(messages, options, stream=False)
        r = _post(self.name, f"{self.host}/api/chat", body, {}, self.timeout_s)
        try:
            data = r.json()
            msg = data["message"]
        except (ValueError, KeyError, TypeError) as e:
            raise BackendError(self.name, f"malformed response: {r.text[:200]}") from e
        thinking, answer = split_thinking(msg.get("content") or "")
        return ChatResult(text=answer, backend=self.name, thinking=msg.get("thinking") or thinking,
                          finish_reason=data.get("done_reason"), model=data.get("model"),
                          prompt_tokens=data.get("prompt_eval_count"), completion_tokens=data.get("eval_count"))

    def stream(self, messages, **options) -> ChatStream:
        body = self._body(messages, options, stream=True)
        s = ChatStream(iter([]), self.name)

        def handle(line: str, splitter: ThinkSplitter) -> tuple[str, bool]:
            if not line.strip():
                return "", False
            event = json.loads(line)
            if "error" in event:
                raise BackendError(self.name, f"stream error: {event['error']}")
            msg = event.get("message") or {}
            s.thinking += msg.get("thinking") or ""
            out = splitter.feed(msg.get("content") or "")
            if event.get("done"):
                s.finish_reason = event.get("done_reason")
                s.prompt_tokens = event.get("prompt_eval_count")
                s.completion_tokens = event.get("eval_count")
            return out, bool(event.get("done"))

        s.pieces = _http_stream(self.name, f"{self.host}/api/chat", body, {}, self.timeout_s, s, handle)
        return s


def _raise_for(name: str, r: httpx.Response) -> None:
    """An HTTP error status becomes a BackendError carrying the start of the server's answer."""
    if r.status_code >= 400:
        r.read()  # a streamed response has no body until read
        raise BackendError(name, f"HTTP {r.status_code}: {r.text[:300]}")


def _post(name: str, url: str, body: dict, headers: dict, timeout: float) -> httpx.Response:
    """POST `body` as JSON; a transport failure or an error status becomes a BackendError."""
    try:
        r = httpx.post(url, json=body, headers=headers, timeout=timeout)
    except httpx.HTTPError as e:
        raise BackendError(name, f"request failed: {e!r}") from e
    _raise_for(name, r)
    return r


def _http_stream(name: str, url: str, body: dict, headers: dict, timeout: float, s: ChatStream,
                 handle: Callable[[str, ThinkSplitter], tuple[str, bool]]) -> Iterator[str]:
    """POST `body` and yield answer pieces; `handle(line, splitter)` -> (piece, finished).

    A stream that closes before the protocol's end marker is an error, not an answer.
    """
    splitter = ThinkSplitter()
    try:
        with httpx.stream("POST", url, json=body, headers=headers, timeout=timeout) as r:
            _raise_for(name, r)
            done = False
            for line in r.iter_lines():
                piece, done = handle(line, splitter)
                if piece:
                    yield piece
                if done:
                    break
            if not done:  # the connection closed mid-answer
                raise BackendError(name, "stream ended before its end marker")
    except httpx.HTTPError as e:
        raise BackendError(name, f"stream failed: {e!r}") from e
    tail = splitter.finish()
    s.thinking = (s.thinking or splitter.thinking).strip()
    if tail:
        yield tail


# One factory per name in config.BACKEND_NAMES (the one list; config stays free of this module's imports).
_FACTORIES: dict[str, Callable[..., Backend]] = {
    "vllm": lambda s: VLLMBackend(),
    "echo": lambda s: EchoBackend(),
    "ollama": lambda s: OllamaBackend(s.ollama_host, s.ollama_model, s.health_timeout_s, s.request_timeout_s),
    "groq": lambda s: OpenAICompatBackend(s.groq_base_url, s.groq_api_key, s.groq_model, name="groq",
                                          health_timeout_s=s.health_timeout_s, timeout_s=s.request_timeout_s,
                                          probe=False),
    "openai": lambda s: OpenAICompatBackend(s.openai_base_url, s.openai_api_key, s.openai_model,
                                            health_timeout_s=s.health_timeout_s, timeout_s=s.request_timeout_s),
}
assert set(_FACTORIES) == set(BACKEND_NAMES), "config.BACKEND_NAMES and the factories name different backends"


def make_backend(name: str, settings) -> Backend:
    """Backend by name, configured from a `Settings`."""
    if name not in _FACTORIES:
        raise ConfigError(f"unknown backend {name!r}; choose from {', '.join(BACKEND_NAMES)}")
    return _FACTORIES[name](settings)
