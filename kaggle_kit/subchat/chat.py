"""generate_response / generate_response_stream: one turn of a node, persisted.

The user's message is stored first. A failed generation keeps it and records the
error on it; an interrupted stream keeps what was generated, marked incomplete.
"""
from __future__ import annotations

from typing import Iterator

from kaggle_kit.subchat.store import Message, Node


def _check(node, prompt) -> None:
    if not isinstance(node, Node):
        raise TypeError(f"expected a subchat Node, got {type(node).__name__}")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("the message is empty")


def generate_response(client, node: Node, prompt: str, **options) -> Message:
    """Send `prompt` in `node` (with its inherited context); returns the stored assistant message."""
    _check(node, prompt)
    store = node.store
    user = store.add_message(node.id, "user", prompt)
    try:
        context = node.context(max_tokens=options.get("max_tokens", 1024))
        result = client.generate_result(context, **options)
    except BaseException as e:
        store.update_message(user.id, status="error", error=f"{type(e).__name__}: {e}")
        raise
    return store.add_message(node.id, "assistant", result.text, thinking=result.thinking, backend=result.backend,
                             prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens)


def generate_response_stream(client, node: Node, prompt: str, **options) -> Iterator[str]:
    """Like generate_response, yielding the answer as it arrives."""
    _check(node, prompt)
    store = node.store
    user = store.add_message(node.id, "user", prompt)
    parts: list[str] = []
    stream, error, finished = None, None, False
    try:
        stream = client.stream(node.context(max_tokens=options.get("max_tokens", 1024)), **options)
        for piece in stream:
            parts.append(piece)
            yield piece
        finished = True
    except BaseException as e:  # GeneratorExit too: the consumer stopped early
        if not isinstance(e, GeneratorExit):
            error = f"{type(e).__name__}: {e}"
        raise
    finally:
        text = "".join(parts)
        meta = dict(thinking=getattr(stream, "thinking", "") or "", backend=getattr(stream, "backend", None) or None,
                    prompt_tokens=getattr(stream, "prompt_tokens", None),
                    completion_tokens=getattr(stream, "completion_tokens", None))
        if finished:
            store.add_message(node.id, "assistant", text, **meta)
        elif parts:
            store.add_message(node.id, "assistant", text, status="incomplete",
                              error=error or "the stream was interrupted", **meta)
        else:
            store.update_message(user.id, status="error", error=error or "the stream was interrupted before any text")

