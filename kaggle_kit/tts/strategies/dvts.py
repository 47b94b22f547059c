"""Diverse verifier tree search (huggingface/search-and-learn): independent subtrees, each keeping its own best."""
from __future__ import annotations

from kaggle_kit.engine.types import Completion
from kaggle_kit.tts.search import Search, StepPath, best
from kaggle_kit.tts.strategies.common import StrategyGen, finish, step_requests


def dvts(s: Search, tokenizer=None) -> StrategyGen:
    """Diverse verifier tree search (huggingface/search-and-learn's DVTS): beam_size independent
    subtrees, each expanding its own path with n = candidates_per_step per step and keeping its
    own best, so one strong early step cannot fill every beam as in beam search; the best
    finished answer of all subtrees wins. All subtrees share one engine call per step."""
    p = s.p

    def keep(q: StepPath, cs: list[Completion]) -> StepPath:
        return max((s.extend(q, c) for c in cs), key=lambda x: x.rank_key)

    finished = yield from _grow(s, [StepPath() for _ in range(p.beam_size)], p.candidates_per_step, keep)
    return best(finished), finished


def _grow(s: Search, paths: list[StepPath], n: int, keep):
    """Grow independent paths a step at a time, all in one engine call per step: each gets n samples and
    `keep(path, completions)` gives its next path. Returns every path that ended; live ones get a final
    continuation at max_steps."""
    finished: list[StepPath] = []
    for _ in range(s.p.max_steps):
        reqs, owners, full = step_requests(paths, s, n)
        finished += full
        if not reqs:
            return finished
        outs = yield from s.sample(reqs)
        grown = [keep(q, cs) for q, cs in zip(owners, outs)]
        paths = [q for q in grown if q.live]
        finished += [q for q in grown if not q.live]
        s.fix(paths + finished)
        if not paths:
            return finished
    finished += yield from finish(paths, s)
    return finished
