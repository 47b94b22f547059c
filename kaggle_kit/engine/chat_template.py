"""Messages -> prompt through the tokenizer's chat template; thinking kept apart."""
from __future__ import annotations

from typing import Any, Sequence

ROLES = ("system", "user", "assistant")
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def validate_messages(messages: Any) -> list[dict[str, str]]:
    """Check chat messages and return clean {role, content} dicts.

    Earlier assistant turns lose any thinking text: it is never fed back.
    Accepts dicts or objects with .role/.content (e.g. stored subchat messages).
    """
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise TypeError(f"messages must be a list of {{'role', 'content'}} dicts, got {type(messages).__name__}")
    if not messages:
        raise ValueError("messages is empty: send at least one user message")
    out = []
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, dict) else getattr(m, "role", None)
        content = m.get("content") if isinstance(m, dict) else getattr(m, "content", None)
        if role not in ROLES:
            raise ValueError(f"message {i}: unknown role {role!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise TypeError(f"message {i}: content must be a string, got {type(content).__name__}")
        if role == "assistant":
            content = split_thinking(content)[1]
        out.append({"role": role, "content": content})
    if out[-1]["role"] == "assistant":
        raise ValueError("the last message is from the assistant; end with a user message to get a reply")
    return out


def render_prompt(tokenizer, messages: list[dict[str, str]], enable_thinking: bool) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the model's tokenizer has no chat template; use a chat/instruct model")
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=enable_thinking
    )


def prompt_ids(tokenizer, messages: list[dict[str, str]], enable_thinking: bool) -> list[int]:
    # The template already contains the special tokens: adding BOS again would change the prompt.
    return list(tokenizer.encode(render_prompt(tokenizer, messages, enable_thinking), add_special_tokens=False))


class ThinkSplitter:
    """Separates `<think>...</think>` from the answer, fed incrementally.

    A reply that opens with <think> is thinking until </think>; anything else is
    answer. Pieces that might be the start of a tag are held back until decided.
    """

    def __init__(self):
        self.state = "start"
        self.buf = ""
        self.thinking = ""

    def feed(self, piece: str) -> str:
        self.buf += piece
        answer = ""
        while True:
            if self.state == "start":
                head = self.buf.lstrip()
                if head.startswith(THINK_OPEN):
                    self.buf, self.state = head[len(THINK_OPEN):], "think"
                elif not head or THINK_OPEN.startswith(head):
                    return answer  # undecided yet
                else:
                    self.state = "answer"
            elif self.state == "think":
                idx = self.buf.find(THINK_CLOSE)
                if idx < 0:
                    keep = _partial_suffix(self.buf, THINK_CLOSE)
                    self.thinking += self.buf[: len(self.buf) - keep]
                    self.buf = self.buf[len(self.buf) - keep:]
                    return answer
                self.thinking += self.buf[:idx]
                self.buf, self.state = self.buf[idx + len(THINK_CLOSE):], "after_think"
            elif self.state == "after_think":
                stripped = self.buf.lstrip("\n")
                if not stripped:
                    self.buf = ""
                    return answer
                self.buf, self.state = stripped, "answer"
            else:
                answer += self.buf
                self.buf = ""
                return answer

    def finish(self) -> str:
        """Flush what is held back once the stream ends."""
        rest, self.buf = self.buf, ""
        if self.state == "think":  # never closed: it was all thinking
            self.thinking += rest
            return ""
        return rest if self.state in ("answer", "start") else rest.lstrip("\n")


def _partial_suffix(text: str, tag: str) -> int:
    for k in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:k]):
            return k
    return 0


def split_thinking(text: str) -> tuple[str, str]:
    """'<think>t</think>\\n\\nanswer' -> ('t', 'answer'). Unclosed thinking -> (thinking, '')."""
    s = ThinkSplitter()
    answer = s.feed(text) + s.finish()
    return s.thinking.strip(), answer
