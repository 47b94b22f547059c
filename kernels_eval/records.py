"""Typed records of a kernel experiment, kept in one append-only JSONL file.

An item is one (problem, sample, strategy[, round]). It is written twice, each time as
one whole line, appended, flushed and fsync'd before the next piece of work starts:
  GeneratedRecord  the answer and every finished candidate, their scores, and the search
                   tree: durable before any kernel is built, so a session that ends during
                   evaluation loses no generation;
  EvaluatedRecord  the evaluation of the chosen answer and of the candidates.
A kill -9 can tear at most the last line, which `RecordStore` cuts off on open. A key
written again (an item re-evaluated after a harness error) is read last-one-wins.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator

from kernels_eval.result import KernelEvalResult


def item_key(problem: str, sample: int, strategy: str, round: int = 1, branch: str = "") -> str:
    """problem|sample|strategy|round, and |branch for a refinement's later rounds (which
    candidate of which earlier item it refines, e.g. "2.0": candidate 0 of round 2's
    refinement of round 1's candidate 2)."""
    return f"{problem}|{sample}|{strategy}|{round}" + (f"|{branch}" if branch else "")


@dataclass
class Candidate:
    """One finished answer that competed for selection."""

    index: int
    text: str
    score: float | None = None  # the strategy's aggregated uncertainty score (higher is better)
    completion_reason: str | None = None
    num_tokens: int | None = None
    num_steps: int | None = None


@dataclass
class GeneratedRecord:
    key: str
    problem: str
    sample: int
    strategy: str
    scorer: str
    chosen: int  # the index (into candidates) the strategy picked by its score
    candidates: list[Candidate]
    round: int = 1
    parent: str | None = None  # refinement: the key of the item this one refines
    parent_candidate: int | None = None  # ... and which of its candidates
    branch: str = ""
    prompt: list[dict[str, str]] = field(default_factory=list)  # the chat messages sent
    tts: dict[str, Any] = field(default_factory=dict)  # aggregated score, completion reason, usage, elapsed
    steps: list[dict[str, Any]] = field(default_factory=list)  # the search tree (for score traces)
    generation_s: float = 0.0
    kind: str = "generated"

    @property
    def response(self) -> str:
        return self.candidates[self.chosen].text if self.candidates else ""


@dataclass
class Evaluation:
    """One candidate's evaluation: how its text parsed, and what the evaluator said."""

    index: int
    parse_status: str
    result: KernelEvalResult
    timed: bool = True

    def to_dict(self) -> dict:
        return {"index": self.index, "parse_status": self.parse_status, "result": self.result.to_dict(),
                "timed": self.timed}

    @classmethod
    def from_dict(cls, d: dict) -> "Evaluation":
        return cls(d["index"], d["parse_status"], KernelEvalResult.from_dict(d["result"]), d.get("timed", True))


@dataclass
class EvaluatedRecord:
    key: str
    chosen: int  # the candidate the run reports (execution verifier: may differ from the score's pick)
    evaluations: list[Evaluation]
    selection: dict[str, Any] = field(default_factory=dict)
    evaluation_s: float = 0.0
    kind: str = "evaluated"

    @property
    def result(self) -> KernelEvalResult:
        """The reported (chosen) candidate's result."""
        return next(e.result for e in self.evaluations if e.index == self.chosen)

    @property
    def complete(self) -> bool:
        """No evaluation is left to retry (a harness error); a skipped one stays skipped."""
        return not any(e.result.retryable for e in self.evaluations)


def to_json(record: GeneratedRecord | EvaluatedRecord) -> dict:
    if isinstance(record, EvaluatedRecord):
        d = {k: v for k, v in asdict(record).items() if k != "evaluations"}
        d["evaluations"] = [e.to_dict() for e in record.evaluations]
        return d
    return asdict(record)


def from_json(d: dict) -> GeneratedRecord | EvaluatedRecord:
    d = dict(d)
    kind = d.get("kind")
    if kind == "generated":
        d["candidates"] = [Candidate(**c) for c in d["candidates"]]
        return GeneratedRecord(**{k: v for k, v in d.items() if k in _FIELDS[GeneratedRecord]})
    if kind == "evaluated":
        d["evaluations"] = [Evaluation.from_dict(e) for e in d["evaluations"]]
        return EvaluatedRecord(**{k: v for k, v in d.items() if k in _FIELDS[EvaluatedRecord]})
    raise ValueError(f"unknown record kind {kind!r}")


_FIELDS = {cls: {f.name for f in fields(cls)} for cls in (GeneratedRecord, EvaluatedRecord)}


class RecordStore:
    """The records file: append (flush + fsync) one whole line per record; read last-one-wins."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair()

    def _repair(self) -> None:
        """Cut off a torn last line (a kill during a write), keeping every whole record."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        good = 0
        for line in data.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break
            try:
                json.loads(line)
            except ValueError:
                break
            good += len(line)
        if good < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(good)
                f.flush()
                os.fsync(f.fileno())

    def append(self, record: GeneratedRecord | EvaluatedRecord) -> None:
        line = json.dumps(to_json(record)) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def __iter__(self) -> Iterator[GeneratedRecord | EvaluatedRecord]:
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield from_json(json.loads(line))

    def latest(self) -> tuple[dict[str, GeneratedRecord], dict[str, EvaluatedRecord]]:
        """The newest generated and evaluated record of every key, in first-written order."""
        gen: dict[str, GeneratedRecord] = {}
        ev: dict[str, EvaluatedRecord] = {}
        for r in self:
            (gen if isinstance(r, GeneratedRecord) else ev)[r.key] = r
        return gen, ev
