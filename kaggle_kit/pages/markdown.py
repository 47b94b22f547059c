"""Chat messages as HTML for the widgets: code fences as highlighted monospace blocks, inline code,
paragraphs; and a refinement's code diffed against the attempt it answers. No dependencies: the
page may be a Kaggle notebook without internet, so nothing is fetched (no highlight.js)."""
from __future__ import annotations

import difflib
import html
import re

FENCE = re.compile(r"```([\w+#-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)  # an unclosed fence runs to the end
INLINE = re.compile(r"`([^`\n]+)`")
KEYWORDS = frozenset("""
    and as assert break class continue def del elif else except False finally for from global if import in is
    lambda None not or pass raise return True try while with yield self
    auto bool char const constexpr float double int long unsigned void struct template typename namespace using
    static inline __global__ __device__ __host__ __shared__ __syncthreads blockIdx threadIdx blockDim gridDim
    size_t int64_t torch at std
""".split())
# One pass over the code: comments, strings, numbers and words, each kept whole.
TOKENS = re.compile(r"(?P<com>#[^\n]*|//[^\n]*|/\*.*?\*/)|(?P<str>\"\"\".*?\"\"\"|'''.*?'''|\"(?:\\.|[^\"\\\n])*\"|"
                    r"'(?:\\.|[^'\\\n])*')|(?P<num>\b\d+(?:\.\d+)?[fFlLuU]*\b)|(?P<word>[A-Za-z_]\w*)", re.S)
CODE_STYLE = ("font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px;background:#f6f8fa;"
              "border:1px solid #e1e4e8;border-radius:4px;padding:6px 8px;margin:4px 0;overflow-x:auto;"
              "white-space:pre;line-height:1.35")
COLORS = {"com": "#6a737d", "str": "#032f62", "num": "#005cc5", "kw": "#d73a49"}


def highlight(code: str) -> str:
    out, last = [], 0
    for m in TOKENS.finditer(code):
        out.append(html.escape(code[last:m.start()]))
        kind = m.lastgroup if m.lastgroup != "word" else ("kw" if m.group() in KEYWORDS else None)
        text = html.escape(m.group())
        out.append(f"<span class='kk-{kind}' style='color:{COLORS[kind]}'>{text}</span>" if kind else text)
        last = m.end()
    out.append(html.escape(code[last:]))
    return "".join(out)


def _prose(text: str) -> str:
    parts = INLINE.split(text)  # odd pieces are inline code
    return "".join(f"<code style='font-family:monospace;background:#f6f8fa'>{html.escape(p)}</code>" if i % 2
                   else html.escape(p) for i, p in enumerate(parts)).strip("\n").replace("\n", "<br>")


def to_html(text: str) -> str:
    """A message's text as HTML: prose escaped with its line breaks, every fenced block a <pre>."""
    out, last = [], 0
    for m in FENCE.finditer(text):
        out.append(_prose(text[last:m.start()]))
        lang = html.escape(m.group(1) or "text")
        out.append(f"<pre class='kk-code' style='{CODE_STYLE}'><code class='language-{lang}'>"
                   f"{highlight(m.group(2).rstrip())}</code></pre>")
        last = m.end()
    out.append(_prose(text[last:]))
    return "".join(p for p in out if p)


def code_of(text: str) -> str:
    """The last fenced block (the answer's code, as the evaluator reads it), else the whole text."""
    blocks = FENCE.findall(text)
    return blocks[-1][1] if blocks else text


def diff_html(old: str, new: str, label: str = "changes against the attempt it answers") -> str:
    """A unified diff of two answers' code, folded under `label`."""
    lines = list(difflib.unified_diff(code_of(old).splitlines(), code_of(new).splitlines(), "before", "after",
                                      lineterm="", n=2))
    if not lines:
        return ""
    color = {"+": "#22863a", "-": "#b31d28", "@": "#6f42c1"}
    body = "\n".join(f"<span style='color:{color.get(line[:1], '#24292e')}'>{html.escape(line)}</span>"
                     for line in lines[2:])
    return (f"<details class='kk-diff'><summary>{html.escape(label)}</summary>"
            f"<pre style='{CODE_STYLE}'>{body}</pre></details>")
