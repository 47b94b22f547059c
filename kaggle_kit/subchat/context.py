"""What a node's next turn sends to the model.

The root's system prompt; then, for each ancestor from the root down, its
messages up to (and including) the message the next subchat was opened at; then
the node's own messages. Never a sibling's, never a parent's messages after the
branch point, never thinking text. If it does not fit the window
(max_model_len - max_tokens), the oldest turns are dropped first and the system
prompt says how many; the current user message is never cut.
"""
from __future__ import annotations

from typing import Callable

DEFAULT_WINDOW = 5120  # the Kaggle default max_model_len, used when no engine is registered
MARKER = "[{n} earlier message(s) of this conversation were left out to fit the model's context window.]"
PER_MESSAGE_OVERHEAD = 4  # role markers and separators of a chat template


def default_budget(max_tokens: int = 1024) -> int:
    from kaggle_kit.engine.registry import registered_engine

    engine = registered_engine()
    return (engine.max_model_len if engine is not None else DEFAULT_WINDOW) - max_tokens


def default_counter() -> Callable[[str], int]:
    """Token count with the registered model's tokenizer, else about 3 characters a token."""
    from kaggle_kit.engine.registry import registered_engine

    engine = registered_engine()
    if engine is not None:
        tok = engine.tokenizer
        return lambda text: len(tok.encode(text, add_special_tokens=False)) + PER_MESSAGE_OVERHEAD
    return lambda text: len(text) // 3 + 1 + PER_MESSAGE_OVERHEAD


def _usable(m) -> bool:
    # A user message whose answer failed got no reply: leave it out rather than send two user turns.
    return m.role in ("user", "assistant") and not (m.role == "user" and m.status == "error")


def build_context(node, budget_tokens: int | None = None, count_tokens: Callable[[str], int] | None = None,
                  pending_user: str | None = None, max_tokens: int = 1024) -> list[dict[str, str]]:
    store = node.store
    chain = store.ancestors(node) + [node]
    history = []
    for ancestor, child in zip(chain[:-1], chain[1:]):
        history += [m for m in store.messages(ancestor.id, up_to=child.branch_message_id) if _usable(m)]
    history += [m for m in store.messages(node.id) if _usable(m)]
    msgs = [{"role": m.role, "content": m.content} for m in history]
    if pending_user is not None:
        msgs.append({"role": "user", "content": pending_user})
    system = chain[0].system_prompt or ""

    budget = default_budget(max_tokens) if budget_tokens is None else budget_tokens
    count = count_tokens or default_counter()
    sizes = [count(m["content"]) for m in msgs]
    marker_cost = count(MARKER.format(n=999))
    total = (count(system) if system else 0) + sum(sizes)
    dropped = 0
    # Keep the last message (the current user turn) whatever happens; drop from the oldest.
    while total > budget and dropped < len(msgs) - 1:
        total -= sizes[dropped]
        dropped += 1
        if dropped == 1:
            total += marker_cost
    while dropped < len(msgs) - 1 and msgs[dropped]["role"] != "user":
        total -= sizes[dropped]  # start the kept history with a user turn
        dropped += 1
    if total > budget:
        raise ValueError(f"the current message and system prompt need about {total} tokens but the window "
                         f"leaves {budget} (max_model_len - max_tokens); shorten the message or lower max_tokens")
    kept = msgs[dropped:]
    if dropped:
        system = (system + "\n\n" if system else "") + MARKER.format(n=dropped)
    return ([{"role": "system", "content": system}] if system else []) + kept
