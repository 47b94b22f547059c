"""`SimpleLLMClient`: the backend chain (default vLLM -> Ollama -> Groq -> Echo).

Backends that are not available (no engine registered, no key, no server answering
a short health check) are skipped; one that fails mid-request hands the same
request to the next. Bad input is the caller's error and is raised at once,
never "fixed" by falling through to another backend.
"""
from __future__ import annotations

import logging
from typing import Iterator, Sequence

from kaggle_kit.chat.backends import Backend, make_backend
from kaggle_kit.engine.chat_template import validate_messages
from kaggle_kit.chat.types import AllBackendsFailed, BackendError, ChatOptions, ChatResult, ChatStream
from kaggle_kit.config import Settings, parse_backend_list

log = logging.getLogger(__name__)

# Failures that mean "this backend cannot answer", as opposed to bad input.
_FALLTHROUGH = (BackendError, ConnectionError, TimeoutError, OSError, RuntimeError)


class SimpleLLMClient:
    def __init__(self, backends: Sequence[str | Backend] | str | None = None, settings: Settings | None = None):
        self.settings = settings or Settings.from_env()
        if backends is None:
            backends = self.settings.backends
        elif isinstance(backends, str):
            backends = parse_backend_list(backends)
        names = [b for b in backends if isinstance(b, str)]
        parse_backend_list(names) if names else None  # validates names with a clear error
        self.backends: list[Backend] = [b if isinstance(b, Backend) else make_backend(b, self.settings) for b in backends]
        if not self.backends:
            raise ValueError("SimpleLLMClient needs at least one backend")
        self.backend: str | None = None  # which backend answered last
        self.failures: list[tuple[str, str]] = []  # why the others were skipped, last call

    def _candidates(self) -> Iterator[Backend]:
        self.failures = []
        for b in self.backends:
            if b.available():
                yield b
            else:
                self.failures.append((b.name, "not available"))

    def generate_result(self, messages, **options) -> ChatResult:
        validate_messages(messages)
        ChatOptions.of(**options)
        for b in self._candidates():
            try:
                result = b.generate(messages, **options)
            except _FALLTHROUGH as e:
                log.warning("backend %s failed, trying the next: %s", b.name, e)
                self.failures.append((b.name, str(e)))
                continue
            self.backend = b.name
            log.info("answered by backend %s", b.name)
            return result
        raise AllBackendsFailed(self.failures)

    def generate(self, messages, **options) -> str:
        """messages -> answer text; `self.backend` says which backend answered."""
        return self.generate_result(messages, **options).text

    def stream(self, messages, **options) -> ChatStream:
        """A ChatStream over the first backend that starts answering.

        A backend that fails before its first piece hands over to the next; once
        pieces have been yielded, a failure is raised (the partial text stays in
        the stream's `text`) rather than silently restarting on another model.
        """
        validate_messages(messages)
        ChatOptions.of(**options)
        outer = ChatStream(iter([]), backend="")

        def pieces():
            for b in self._candidates():
                try:
                    inner = b.stream(messages, **options)
                    it = iter(inner)
                    first = next(it, None)
                except _FALLTHROUGH as e:
                    log.warning("backend %s failed before answering, trying the next: %s", b.name, e)
                    self.failures.append((b.name, str(e)))
                    continue
                self.backend = outer.backend = b.name
                log.info("streaming from backend %s", b.name)
                if first is not None:
                    yield first
                yield from it
                outer.thinking, outer.finish_reason = inner.thinking, inner.finish_reason
                outer.prompt_tokens, outer.completion_tokens = inner.prompt_tokens, inner.completion_tokens
                return
            raise AllBackendsFailed(self.failures)

        outer.pieces = pieces()
        return outer

    def generate_stream(self, messages, **options) -> Iterator[str]:
        yield from self.stream(messages, **options)

    # -- hierarchical subchat (the seed's calls; the node owns the turn) ----------
    def generate_response(self, node, prompt: str, **options):
        """One turn in a subchat node: context from its ancestors, reply persisted; returns the stored reply."""
        return _turn(node, "reply")(self, prompt, **options)

    def generate_response_stream(self, node, prompt: str, **options) -> Iterator[str]:
        yield from _turn(node, "reply_stream")(self, prompt, **options)


def _turn(node, method: str):
    turn = getattr(node, method, None)
    if turn is None:
        raise TypeError(f"expected a subchat Node, got {type(node).__name__}")
    return turn
