"""Typed TTS results: one type per concept (step, trajectory, usage, strategy result)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any


class CompletionReason(str, Enum):
    EOS = "eos"  # the model ended its answer
    STOP = "stop"  # a caller-given stop string was generated
    MAX_STEPS = "max_steps"  # the step limit was reached; the answer was finished in one final continuation
    MAX_TOKENS = "max_tokens"  # the per-trajectory token budget ran out
    CONTEXT_LIMIT = "context_limit"  # prompt + answer filled the model's window
    LOW_CONFIDENCE = "low_confidence"  # stopped early: its confidence fell under the bar (deepconf); not a candidate


@dataclass
class Step:
    """One step of a trajectory; every step ever scored is also a node of the search tree."""

    id: int
    parent: int | None  # id of the previous step on this path (None: first step)
    depth: int  # 0-based step index
    token_ids: tuple[int, ...]
    text: str
    uncertainty: float
    score: float  # 1 / (1 + uncertainty)
    path_score: float  # aggregated score of the path ending here
    finish: str  # "boundary" (more steps follow), "eos", "stop", "length", "context"
    final_continuation: bool = False  # generated after max_steps to finish the answer
    selected: bool = False  # on the chosen path

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


class StepSequence:
    """Token views of anything made of `steps` (a path during search, a finished trajectory, a result)."""

    steps: list[Step]

    @property
    def token_ids(self) -> tuple[int, ...]:
        return tuple(t for s in self.steps for t in s.token_ids)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.steps)


@dataclass
class Trajectory(StepSequence):
    """A finished answer that competed for selection."""

    steps: list[Step]
    aggregated_score: float
    completion_reason: CompletionReason
    text: str = ""


@dataclass
class Usage:
    engine_calls: int = 0
    requests: int = 0
    prompt_tokens: int = 0  # prompt tokens of every sampled sequence (a request with n samples counts n times)
    cached_prompt_tokens: int = 0  # of those, served from vLLM's prefix cache instead of computed
    generated_tokens: int = 0
    early_stopped: int = 0  # sequences the engine stopped for low confidence (deepconf), their rest never generated


@dataclass
class StrategyResult(StepSequence):
    strategy: str
    scorer: str
    text: str  # the chosen answer (special tokens removed)
    steps: list[Step]  # the chosen path
    aggregated_score: float
    completion_reason: CompletionReason
    candidates: list[Trajectory]  # every finished trajectory that competed, chosen included
    tree: list[Step]  # every step scored during the search (for score traces)
    usage: Usage
    elapsed_s: float
    prompt_tokens: int
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def chosen_index(self) -> int:
        return next(i for i, c in enumerate(self.candidates) if c.steps and c.steps[-1].selected)

    def to_row(self) -> dict[str, Any]:
        """One flat row for a results DataFrame."""
        row = {
            "strategy": self.strategy,
            "scorer": self.scorer,
            "aggregated_score": self.aggregated_score,
            "completion_reason": self.completion_reason.value,
            "num_steps": len(self.steps),
            "num_tokens": self.num_tokens,
            "num_candidates": len(self.candidates),
            "elapsed_s": self.elapsed_s,
            "prompt_tokens": self.prompt_tokens,
            "text": self.text,
        }
        row.update({f"usage_{k}": v for k, v in asdict(self.usage).items()})
        row.update({f"param_{k}": v for k, v in self.params.items() if not isinstance(v, (list, tuple, dict))})
        return row

    def to_dict(self, include_tree: bool = False) -> dict[str, Any]:
        """JSON-ready summary: the chosen path, every candidate's score, usage."""
        def step(st: Step) -> dict[str, Any]:
            return {"depth": st.depth, "text": st.text, "score": _num(st.score), "uncertainty": _num(st.uncertainty),
                    "num_tokens": st.num_tokens, "finish": st.finish, "final_continuation": st.final_continuation}

        out = {
            "strategy": self.strategy, "scorer": self.scorer, "text": self.text,
            "aggregated_score": _num(self.aggregated_score), "completion_reason": self.completion_reason.value,
            "steps": [step(st) for st in self.steps],
            "candidates": [{"text": c.text, "aggregated_score": _num(c.aggregated_score),
                            "completion_reason": c.completion_reason.value, "num_steps": len(c.steps),
                            "chosen": bool(c.steps and c.steps[-1].selected)} for c in self.candidates],
            "usage": asdict(self.usage), "elapsed_s": self.elapsed_s, "prompt_tokens": self.prompt_tokens,
            "params": {k: list(v) if isinstance(v, tuple) else v for k, v in self.params.items()},
        }
        if include_tree:
            out["tree"] = [step(st) | {"id": st.id, "parent": st.parent, "selected": st.selected,
                                       "path_score": _num(st.path_score)} for st in self.tree]
        return out

    def steps_frame(self):
        """Every scored step (the search tree) as a DataFrame."""
        import pandas as pd

        return pd.DataFrame([{k: v for k, v in asdict(s).items() if k != "token_ids"} | {"num_tokens": s.num_tokens}
                             for s in self.tree])


def to_frame(results: list[StrategyResult]):
    import pandas as pd

    return pd.DataFrame([r.to_row() for r in results])


def _num(x: float) -> float | None:
    """JSON has no NaN/inf: report them as null."""
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


def finite_or(x: float, default: float = -math.inf) -> float:
    """Rank NaN scores last."""
    return x if isinstance(x, (int, float)) and math.isfinite(x) else default
