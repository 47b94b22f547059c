"""Get the candidate's code out of a model response.

The last fenced python block that defines ModelNew wins; the raw response is
always kept by the caller. Failures are named: no_code, syntax_error, no_modelnew.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass

_FENCE = re.compile(r"```[ \t]*(python|py|python3)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


@dataclass(frozen=True)
class ParsedResponse:
    code: str | None
    status: str  # "ok", "no_code", "syntax_error", "no_modelnew"
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _defines_modelnew(tree: ast.AST) -> bool:
    return any(isinstance(n, ast.ClassDef) and n.name == "ModelNew" for n in ast.walk(tree))


def parse_response(text: str) -> ParsedResponse:
    if not isinstance(text, str) or not text.strip():
        return ParsedResponse(None, "no_code", "the response is empty")
    text = re.sub(r"<think>.*?</think>", "", text, flags=re.DOTALL)  # reasoning may quote code; the answer decides
    blocks = [m.group(2) for m in _FENCE.finditer(text)]
    if not blocks:
        return ParsedResponse(None, "no_code", "no fenced code block in the response")
    syntax_error = None
    for code in reversed(blocks):
        try:
            tree = ast.parse(code)
        except SyntaxError as e:
            syntax_error = syntax_error or f"line {e.lineno}: {e.msg}"
            continue
        if _defines_modelnew(tree):
            return ParsedResponse(code, "ok")
    if syntax_error and not any(_parses_with_modelnew(b) for b in blocks):
        if any("ModelNew" in b for b in blocks):
            return ParsedResponse(None, "syntax_error", f"the code defining ModelNew does not parse: {syntax_error}")
    return ParsedResponse(None, "no_modelnew", "no code block defines class ModelNew")


def _parses_with_modelnew(code: str) -> bool:
    try:
        return _defines_modelnew(ast.parse(code))
    except SyntaxError:
        return False
