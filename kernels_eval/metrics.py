"""fast_p, geometric-mean speedup, unbiased pass@k and the failure taxonomy.

Every rate comes with its numerator and denominator, so "fast_1 = 0.40" can be
read as "8 of 20 evaluated samples". Flagged results (suspected cheats) do not
count as correct unless `count_flagged=True`; `rules` says whose flags count: "ours" (the
default) or "kernelbench" (its static checker's categories, kernels_eval.static). A harness_error (the evaluator, not the
kernel, failed) is no verdict: it is left out of every rate and counted apart.
"""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Iterable

from kernels_eval.result import KernelEvalResult

FAST_P = (0.0, 0.5, 0.8, 1.0, 1.5, 2.0)


def _ok(r: KernelEvalResult, count_flagged: bool, rules: str = "ours") -> bool:
    return r.correct and (count_flagged or r.counts_as_correct_under(rules))


def evaluated(results: Iterable[KernelEvalResult]) -> list[KernelEvalResult]:
    """The results that are verdicts on a kernel (harness errors left out)."""
    return [r for r in results if r.evaluated]


def fast_p(results: list[KernelEvalResult], p: float, count_flagged: bool = False, rules: str = "ours") -> tuple[int, int]:
    """(numerator, denominator): correct samples with speedup > p, over all evaluated samples.

    fast_0 is the correctness rate (a correct sample with no timing counts for p = 0 only).
    """
    results = evaluated(results)
    num = sum(1 for r in results if _ok(r, count_flagged, rules) and (p == 0 or (r.speedup or 0) > p))
    return num, len(results)


def geomean_speedup(results: list[KernelEvalResult], count_flagged: bool = False, rules: str = "ours") -> float | None:
    s = [r.speedup for r in results if _ok(r, count_flagged, rules) and r.speedup and r.speedup > 0]
    return math.exp(sum(math.log(x) for x in s) / len(s)) if s else None


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al., 2021): 1 - C(n-c, k) / C(n, k)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def pass_at_k_by_problem(results: list[KernelEvalResult], k: int, count_flagged: bool = False,
                         rules: str = "ours") -> float | None:
    groups: dict[str, list[KernelEvalResult]] = defaultdict(list)
    for r in evaluated(results):
        groups[r.problem].append(r)
    vals = [pass_at_k(len(g), sum(_ok(r, count_flagged, rules) for r in g), k) for g in groups.values() if len(g) >= k]
    return sum(vals) / len(vals) if vals else None


def taxonomy(results: Iterable[KernelEvalResult]) -> dict[str, int]:
    """Counts per status, and per flag (as flag:NAME)."""
    results = list(results)
    c = Counter(r.status.value for r in results)
    for r in results:
        c.update(f"flag:{f}" for f in r.flags)
    return dict(sorted(c.items()))


def summary(results: list[KernelEvalResult], count_flagged: bool = False, ks: tuple[int, ...] = (1, 5),
            rules: str = "ours") -> dict:
    out: dict = {"samples": len(evaluated(results)), "problems": len({r.problem for r in results}),
                 "not_evaluated": len(results) - len(evaluated(results)), "rules": rules}
    for p in FAST_P:
        num, den = fast_p(results, p, count_flagged, rules)
        out[f"fast_{p:g}"] = {"rate": num / den if den else None, "num": num, "den": den}
    out["geomean_speedup"] = geomean_speedup(results, count_flagged, rules)
    for k in ks:
        out[f"pass@{k}"] = pass_at_k_by_problem(results, k, count_flagged, rules)
    out["taxonomy"] = taxonomy(results)
    out["degenerate_problems"] = degenerate_problems(results)
    return out


def degenerate_problems(results: Iterable[KernelEvalResult]) -> list[str]:
    """Problems whose reference output did not depend on its inputs (every trial's the same): a kernel that
    never reads its input passes them, so their verdicts say little. Named once per problem."""
    return sorted({r.problem for r in results if (r.provenance.get("reference") or {}).get("degenerate")})


def table(results: list[KernelEvalResult]):
    import pandas as pd

    return pd.DataFrame([{k: v for k, v in r.to_dict().items() if k not in ("provenance", "message")} |
                         {"flags": ",".join(r.flags)} for r in results])
