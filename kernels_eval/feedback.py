"""What the evaluator said, written for the model that will try again.

Each status gets what a person fixing the kernel would look at first, and no more:
the compiler's first errors (not pages of include notes), the worst difference and the
trial it happened on, the exception, the time limit, the signal, or - for a correct
kernel - its runtime, the reference's, and the speedup to beat. Every feedback is
bounded (`MAX_CHARS`), so a refinement prompt stays inside the window.
"""
from __future__ import annotations

import re

from kernels_eval.result import KernelEvalResult, Status

MAX_CHARS = 1200
MAX_ERROR_LINES = 8
_ERROR = re.compile(r"\berror\b|Error:|error:", re.IGNORECASE)
_NOISE = re.compile(r"^\s*(In file included|from |\s*\^|\s*\||[0-9]+ errors? detected|ninja: build stopped|"
                    r"FAILED: |\[\d+/\d+\]|Traceback|  File \")")


def _clip(text: str, limit: int) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 20].rstrip() + "\n[... trimmed]"


def compiler_errors(message: str, limit: int = MAX_ERROR_LINES) -> str:
    """The first distinct error lines of a build log, with the source line each points at."""
    lines = message.splitlines()
    picked, seen = [], set()
    for i, line in enumerate(lines):
        if not _ERROR.search(line) or _NOISE.match(line):
            continue
        key = re.sub(r"\d+", "#", line.strip())
        if key in seen:
            continue
        seen.add(key)
        # drop the temp directory from paths: the model never saw them
        picked.append(re.sub(r"/\S*/(\w+\.(?:cu|cpp|py))", r"\1", line.strip()))
        nxt = lines[i + 1].rstrip() if i + 1 < len(lines) else ""
        if nxt.strip() and not _ERROR.search(nxt) and not _NOISE.match(nxt):
            picked.append("    " + nxt.strip())
        if len([p for p in picked if not p.startswith("    ")]) >= limit:
            break
    return "\n".join(picked) or _clip(message.splitlines()[-1] if message else "", 300)


def _last_exception(message: str) -> str:
    lines = [l for l in message.splitlines() if l.strip() and not l.startswith("--- candidate output")]
    hit = next((l for l in reversed(lines) if re.match(r"\s*\w*(Error|Exception)\b", l)), None)
    return (hit or (lines[0] if lines else message)).strip()


def feedback(result: KernelEvalResult, parse_status: str | None = None, target_speedup: float = 1.0) -> str | None:
    """The feedback message for `result`; None when nothing about the kernel is known (not evaluated)."""
    s = result.status
    if not result.evaluated:
        return None
    if s in (Status.NO_CODE, Status.REJECTED):
        why = {"no_code": "the answer has no fenced python code block",
               "syntax_error": "the code block defining ModelNew is not valid Python",
               "no_modelnew": "no code block defines a class named ModelNew"}.get(parse_status or "", result.message)
        text = (f"Your answer could not be evaluated: {why}. Return one complete ```python code block that defines "
                "ModelNew (same constructor arguments and forward signature as Model) and everything it needs.")
    elif s is Status.COMPILE_ERROR:
        text = ("Your kernel did not compile. The compiler's first errors:\n" + compiler_errors(result.message)
                + "\nFix these errors and return the complete code again.")
    elif s is Status.INCORRECT:
        diff = f" The largest absolute difference was {result.max_abs_diff:.3g}." if result.max_abs_diff == result.max_abs_diff \
            and result.max_abs_diff is not None else ""
        text = (f"Your kernel compiled and ran but its output is wrong: {_clip(result.message, 300)}.{diff} "
                "Check the indexing, the bounds and the reduction, and return the corrected code.")
    elif s is Status.RUNTIME_ERROR:
        text = (f"Your kernel failed while running: {_clip(_last_exception(result.message), 400)}. "
                "Fix the cause (often an out-of-bounds access, a wrong launch configuration or a dtype/shape "
                "mismatch) and return the complete code.")
    elif s is Status.TIMEOUT:
        text = (f"Your kernel did not finish in time ({_clip(result.message, 120)}): look for an infinite loop, "
                "a missing synchronisation exit condition, or a far too slow launch configuration.")
    elif s is Status.CRASHED:
        text = (f"The process running your kernel died ({_clip(result.message, 200)}): usually an illegal memory "
                "access or an out-of-bounds write. Check every index against the tensor sizes.")
    else:  # correct
        flags = ""
        if "no_custom_kernel" in result.flags:
            flags = " It does not call a compiled custom kernel, so it does not count: write the custom kernel."
        elif ours := [f for f in result.flags if not f.startswith("kb:")]:
            flags = f" It was flagged ({', '.join(ours)}), so it does not count."
        if result.speedup and result.runtime_ms and result.ref_runtime_ms:
            goal = "It already beats the target: make it faster still." if result.speedup >= target_speedup else \
                f"Make it faster than {result.ref_runtime_ms / target_speedup:.4g} ms (a {target_speedup:g}x speedup)."
            text = (f"Your kernel is correct. It runs in {result.runtime_ms:.4g} ms against PyTorch's "
                    f"{result.ref_runtime_ms:.4g} ms: a speedup of {result.speedup:.2f}x.{flags} {goal} "
                    "Consider memory coalescing, vectorised loads, shared memory and fewer launches.")
        else:
            text = f"Your kernel is correct.{flags} Make it faster than PyTorch's implementation."
    return _clip(text, MAX_CHARS)
