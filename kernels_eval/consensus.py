"""Self-consistency by execution: group candidates whose outputs agree, choose from the largest group.

For code there is no answer string to vote on (the MBR-exec / CodeT idea): every candidate runs on
the same inputs, and two candidates agree when their outputs do. The evaluator's child process
(`kernels_eval.judge`) records an output signature of each candidate's first trial: per output
tensor its shape, dtype, values at fixed positions (the first and last few, and spread ones) and two
whole-tensor sums. The reference's output is never consulted: this is selection without a verifier
that knows the answer, unlike `execution`, which checks against the reference.

Pure Python on the parent's side: no torch here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from kernels_eval.evaluate import DEFAULT_TOLERANCES  # the correctness check's, per output dtype
from kernels_eval.result import KernelEvalResult


def _close(a: float | None, b: float | None, atol: float, rtol: float) -> bool:
    if a is None or b is None:  # None stands for NaN/Inf: they agree only with each other
        return a is None and b is None
    return abs(a - b) <= atol + rtol * abs(b)


def tensors_agree(a: dict, b: dict, tolerances: dict | None = None) -> bool:
    """Two output tensors' signatures describe the same output, within the dtype's tolerance."""
    if a.get("shape") != b.get("shape") or a.get("dtype") != b.get("dtype"):
        return False
    tol = {**DEFAULT_TOLERANCES, **(tolerances or {})}
    atol, rtol = tol.get(str(a.get("dtype")), tol["default"])
    va, vb = a.get("values") or [], b.get("values") or []
    if len(va) != len(vb) or not all(_close(x, y, atol, rtol) for x, y in zip(va, vb)):
        return False
    n = math.prod(a["shape"]) if a["shape"] else 1
    # Elementwise |x - y| <= atol + rtol |y| bounds the sums' differences (x^2 - y^2 = (x - y)(x + y)).
    abs_a, abs_b, sq_a, sq_b = a.get("abs_sum"), b.get("abs_sum"), a.get("sq_sum"), b.get("sq_sum")
    if (abs_a is None) != (abs_b is None) or (sq_a is None) != (sq_b is None):
        return False
    if abs_a is not None and abs(abs_a - abs_b) > 2 * (n * atol + rtol * max(abs_a, abs_b)) + 1e-9:
        return False
    if sq_a is not None and abs(sq_a - sq_b) > 4 * (atol * max(abs_a or 0, abs_b or 0) + rtol * max(sq_a, sq_b)) + 1e-9:
        return False
    return True


def agree(a: list[dict] | None, b: list[dict] | None, tolerances: dict | None = None) -> bool:
    """Two candidates' output signatures (one entry per output tensor) agree."""
    if not a or not b or len(a) != len(b):
        return False
    return all(tensors_agree(x, y, tolerances) for x, y in zip(a, b))


def groups(signatures: dict[int, list[dict] | None], tolerances: dict | None = None) -> list[list[int]]:
    """Candidates (by index) grouped by agreeing outputs; a candidate with no signature (it did not
    build, crashed or produced no output) is in no group. Each joins the first group whose first
    member it agrees with, in index order, so the grouping is deterministic."""
    out: list[list[int]] = []
    for i in sorted(signatures):
        sig = signatures[i]
        if not sig:
            continue
        home = next((g for g in out if agree(signatures[g[0]], sig, tolerances)), None)
        if home is None:
            out.append([i])
        else:
            home.append(i)
    return out


@dataclass(frozen=True)
class Vote:
    chosen: int | None  # None: no candidate produced an output to vote with
    groups: list[list[int]]
    weights: list[float]  # each group's weight: its size, or the sum of its members' scores


def _score(x: float | None) -> float:
    return x if isinstance(x, (int, float)) and x == x else float("-inf")


def vote(results: dict[int, KernelEvalResult], scores: Sequence[float | None], weighted: bool = False,
         tolerances: dict | None = None) -> Vote:
    """The largest group of agreeing candidates wins (by count, or by the sum of its members' uncertainty
    scores when `weighted`); ties go to the group with the best-scored member, then the earliest; within
    the group the best-scored candidate is chosen (ties: the earliest)."""
    gs = groups({i: r.output_signature for i, r in results.items()}, tolerances)
    if not gs:
        return Vote(None, [], [])
    weights = [sum(max(_score(scores[i]), 0.0) for i in g) if weighted else float(len(g)) for g in gs]
    best = max(range(len(gs)), key=lambda k: (weights[k], max(_score(scores[i]) for i in gs[k]), -gs[k][0]))
    chosen = max(gs[best], key=lambda i: (_score(scores[i]), -i))
    return Vote(chosen, gs, weights)
