"""How much GPU memory evaluating a problem takes, and where it can run.

A footprint is measured, not guessed: `benchmarks/kernelbench_refs.py` evaluates each
problem's reference as its own candidate on a GPU and records the evaluator's peak
(the caching allocator's peak reserved memory: reference and candidate models, one
model's inputs and outputs, the L2 flush buffer). `footprints.json` keeps it per problem,
keyed by a hash of the problem's source, so an edited problem is unknown again rather
than wrongly known. Add the CUDA context the evaluator's process needs on top.

Where a problem runs, given the memory free beside the engine (`headroom_mib`) and the
memory the evaluator would get with the engine asleep (`capacity_mib`):
    beside   fits the headroom, or unknown (tried there; an out-of-memory then moves it)
    asleep   does not fit the headroom but fits the whole GPU: evaluated while the engine sleeps
    skip     does not fit even then: status `skipped`, with the numbers as the reason
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from kernels_eval.problems import Problem

TABLE = Path(__file__).parent / "footprints.json"
# A CUDA context with torch's kernels loaded: what nvidia-smi shows for a process beyond the allocator's
# reserved memory (measured on the GPU machine: see footprints.json's "context_mib").
DEFAULT_CONTEXT_MIB = 500.0
BESIDE, ASLEEP, SKIP = "beside", "asleep", "skip"


def problem_key(problem: Problem) -> str:
    return hashlib.sha256(problem.source.encode()).hexdigest()[:16]


@lru_cache(maxsize=4)
def _load(path: str) -> dict:
    p = Path(path)
    return json.loads(p.read_text()) if p.is_file() else {"problems": {}}


def table(path: str | Path | None = None) -> dict:
    return _load(str(path or TABLE))


def need_mib(problem: Problem, path: str | Path | None = None) -> float | None:
    """The measured peak GPU memory of evaluating `problem`, context included; None if never measured."""
    t = table(path)
    row = t["problems"].get(problem_key(problem))
    if row is None:
        return None
    return float(row["peak_reserved_mib"]) + float(t.get("context_mib", DEFAULT_CONTEXT_MIB))


@dataclass(frozen=True)
class Route:
    where: str  # BESIDE, ASLEEP or SKIP
    need_mib: float | None
    reason: str = ""


def route(problem: Problem, headroom_mib: float | None, capacity_mib: float | None,
          path: str | Path | None = None) -> Route:
    """Where `problem` is evaluated (see the module docstring). No headroom given: beside (nothing to share)."""
    need = need_mib(problem, path)
    if need is None or headroom_mib is None or need <= headroom_mib:
        return Route(BESIDE, need)
    if capacity_mib is not None and need > capacity_mib:
        return Route(SKIP, need, f"{problem.name} needs ~{need:.0f} MiB of GPU memory (measured), more than the "
                                 f"{capacity_mib:.0f} MiB this GPU offers even with the engine asleep")
    return Route(ASLEEP, need, f"needs ~{need:.0f} MiB, {headroom_mib:.0f} MiB free beside the engine")


def plan(problems, headroom_mib: float | None, capacity_mib: float | None,
         path: str | Path | None = None) -> dict[str, list[str]]:
    """Problem names per path, plus "unknown" for those never measured (they start beside the engine)."""
    out: dict[str, list[str]] = {BESIDE: [], ASLEEP: [], SKIP: [], "unknown": []}
    for p in problems:
        r = route(p, headroom_mib, capacity_mib, path)
        out["unknown" if r.need_mib is None else r.where].append(p.name)
    return out


def describe_plan(counts: dict[str, list[str]]) -> str:
    n = {k: len(v) for k, v in counts.items()}
    line = (f"{n[BESIDE]} beside the engine, {n[ASLEEP]} with the engine asleep (in batches), {n[SKIP]} skipped "
            f"(too big for this GPU)")
    if n["unknown"]:
        line += f", {n['unknown']} never measured (tried beside the engine; moved to the sleeping engine on out-of-memory)"
    return line
