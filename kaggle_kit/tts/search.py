"""The machinery the strategies share: paths, step requests, scoring a completion.

A path is prompt ids + the token ids of its steps. The next step's request is
built from those ids (never from re-tokenised text), so step texts, per-step
scores and prefix-cache hits stay exact.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from kaggle_kit.engine.types import LOW_CONFIDENCE, Completion, ConfidenceStop, GenerationRequest, SamplingSpec
from kaggle_kit.tts.aggregation import aggregate
from kaggle_kit.tts.params import TTSParams
from kaggle_kit.tts.results import CompletionReason, Step, StepSequence, Trajectory, Usage, finite_or
from kaggle_kit.tts import critic
from kaggle_kit.tts.scorers import is_judged, step_score, uncertainty
from kaggle_kit.tts.steps import exact_step_texts


@dataclass
class StepPath(StepSequence):
    steps: list[Step] = field(default_factory=list)
    reason: CompletionReason | None = None  # None while live

    @property
    def score(self) -> float:
        return self.steps[-1].path_score if self.steps else float("nan")

    @property
    def rank_key(self) -> float:
        return finite_or(self.score)

    @property
    def live(self) -> bool:
        return self.reason is None


class Search:
    """Per-prompt state shared by a strategy: params, ids, the tree, usage, seeds (and the tokenizer,
    set when the strategy starts: `strategies.start`)."""

    def __init__(self, prompt_ids, params: TTSParams, max_model_len: int, eos_ids=frozenset()):
        self.prompt_ids = tuple(prompt_ids)
        self.p = params
        self.max_model_len = max_model_len
        self.eos_ids = eos_ids
        self.tokenizer = None
        self._judged: dict[int, tuple[Completion, float]] = {}  # id(completion) -> (it, the critic's uncertainty)
        self.tree: list[Step] = []
        self.fixed: list[Step] = []  # steps every path still in the running shares (safe to stream)
        self.usage = Usage()
        self._ids = itertools.count()
        self._seeds = itertools.count()

    # -- requests -------------------------------------------------------------
    def room(self, path: StepPath) -> tuple[int, int]:
        """(tokens left in the trajectory budget, tokens left in the context window)."""
        n = path.num_tokens
        return self.p.max_tokens - n, self.max_model_len - len(self.prompt_ids) - n

    def request(self, path: StepPath, n: int, final: bool = False, confidence_stop: ConfidenceStop | None = None,
                seed: int | None = None) -> GenerationRequest | None:
        """The request that extends `path` by one step (or finishes it if `final`), with the next seed unless
        `seed` is given; `confidence_stop`: the engine stops each sample once its confidence falls under the bar.

        None when no token fits; the path is then finished with the reason why.
        """
        budget, window = self.room(path)
        if budget < 1 or window < 1:
            path.reason = CompletionReason.MAX_TOKENS if budget < 1 else CompletionReason.CONTEXT_LIMIT
            return None
        p = self.p
        limit = min(budget, window) if final else min(p.max_step_tokens, budget, window)
        if seed is None:
            seed = None if p.seed is None else p.seed * 1_000_003 + next(self._seeds)
        spec = SamplingSpec(confidence_stop=confidence_stop,
            n=n, temperature=p.temperature, top_p=p.top_p, top_k=p.top_k, max_tokens=limit,
            stop=p.stop if final else p.step_stop + p.stop, include_stop_str_in_output=True,
            logprobs=p.logprobs, seed=seed, min_tokens=0 if final else min(p.min_step_tokens, limit - 1),
        )
        return GenerationRequest(self.prompt_ids + path.token_ids, spec)

    def sample(self, requests: list[GenerationRequest]):
        """Run `requests` (yield them, receive their completions) and return the completions; under a
        judged scorer (the critic) the model then judges every completion in one more engine call."""
        outs = yield requests
        self.count(requests, outs)
        self._judged = {}
        if is_judged(self.p.scorer):
            asked = [(c, critic.judge_request(self.tokenizer, r, c, self.p.logprobs))
                     for r, cs in zip(requests, outs) for c in cs]
            asked = [(c, j) for c, j in asked if len(j.prompt_ids) < self.max_model_len]  # no room to ask: no verdict
            if asked:
                judge = [j for _, j in asked]
                verdicts = yield judge
                self.count(judge, verdicts)
                self._judged = {id(c): (c, critic.judged_uncertainty(self.tokenizer, v[0]))
                                for (c, _), v in zip(asked, verdicts)}
        return outs

    def judgement(self, c: Completion) -> float | None:
        """The critic's uncertainty about the answer that ends with completion `c` (None: not judged)."""
        hit = self._judged.get(id(c))
        return hit[1] if hit is not None and hit[0] is c else None

    def count(self, requests: list[GenerationRequest], outputs: list[list[Completion]]) -> None:
        self.usage.engine_calls += 1
        self.usage.requests += len(requests)
        for req, outs in zip(requests, outputs):
            self.usage.prompt_tokens += len(req.prompt_ids) * len(outs)  # every sample's sequence holds the prompt
            self.usage.cached_prompt_tokens += sum(c.num_cached_tokens for c in outs)
            self.usage.generated_tokens += sum(c.num_tokens for c in outs)
            self.usage.early_stopped += sum(c.finish_reason == LOW_CONFIDENCE for c in outs)

    def fix(self, paths: list[StepPath]) -> None:
        """Record the steps that every path still in the running shares."""
        if not paths:
            return
        common = paths[0].steps
        for p in paths[1:]:
            n = 0
            while n < min(len(common), len(p.steps)) and common[n].id == p.steps[n].id:
                n += 1
            common = common[:n]
        if len(common) > len(self.fixed):
            self.fixed = list(common)

    # -- scoring --------------------------------------------------------------
    def new_step(self, parent: StepPath, token_ids, chosen, returned, text: str, finish: str, final: bool = False,
                 judged: float | None = None) -> Step:
        if is_judged(self.p.scorer):  # the critic's verdict on the answer up to this step; none: no evidence
            u = math.nan if judged is None else judged
        else:
            u = uncertainty(self.p.scorer, chosen, returned)
        s = step_score(u)
        prior = [st.score for st in parent.steps]
        step = Step(
            id=next(self._ids), parent=parent.steps[-1].id if parent.steps else None, depth=len(parent.steps),
            token_ids=tuple(token_ids), text=text, uncertainty=u, score=s,
            path_score=aggregate(prior + [s], self.p.score_aggregation, self.p.window_size),
            finish=finish, final_continuation=final,
        )
        self.tree.append(step)
        return step

    def extend(self, path: StepPath, c: Completion, final: bool = False) -> StepPath:
        """A new path: `path` plus the step in completion `c`, with why it ended."""
        finish, reason = self.classify(path, c)
        if final:
            reason = CompletionReason.MAX_STEPS
        step = self.new_step(path, c.token_ids, c.chosen_logprobs, c.returned_logprobs, c.text, finish, final,
                             judged=self.judgement(c))
        return StepPath(path.steps + [step], reason)

    def classify(self, path: StepPath, c: Completion) -> tuple[str, CompletionReason | None]:
        if c.finish_reason == LOW_CONFIDENCE:
            return "low_confidence", CompletionReason.LOW_CONFIDENCE
        if isinstance(c.stop_reason, str):
            if c.stop_reason in self.p.stop:
                return "stop", CompletionReason.STOP
            return "boundary", None
        if c.finish_reason == "stop" or (c.token_ids and c.token_ids[-1] in self.eos_ids):
            return "eos", CompletionReason.EOS
        budget, window = self.room(path)
        if c.num_tokens >= budget:
            return "length", CompletionReason.MAX_TOKENS
        if c.num_tokens >= window:
            return "context", CompletionReason.CONTEXT_LIMIT
        return "length", None  # max_step_tokens: the step ends, the answer goes on

    # -- results --------------------------------------------------------------
    def trajectory(self, path: StepPath, tokenizer) -> Trajectory:
        texts = exact_step_texts(tokenizer, [s.token_ids for s in path.steps]) if tokenizer is not None else None
        if texts is not None:
            for s, t in zip(path.steps, texts):
                s.text = t
        return Trajectory(steps=path.steps, aggregated_score=path.score, completion_reason=path.reason,
                          text="".join(s.text for s in path.steps))


def best(paths: list[StepPath]) -> StepPath:
    """Highest score; NaN last; ties go to the earliest (stable, deterministic)."""
    return max(paths, key=lambda p: p.rank_key) if paths else None


def slices(completion: Completion, ends: list[int]):
    """Per-step (token_ids, chosen, returned, text-less) slices of one completion."""
    start = 0
    ids = np.asarray(completion.token_ids)
    for end in ends:
        yield (tuple(int(t) for t in ids[start:end]), completion.chosen_logprobs[start:end],
               completion.returned_logprobs[start:end])
        start = end
