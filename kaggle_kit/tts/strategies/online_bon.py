"""Online best-of-N: per step, candidates_per_step continuations of the answer so far; the best-scored step is kept."""
from __future__ import annotations

from kaggle_kit.tts.results import finite_or
from kaggle_kit.tts.search import Search, StepPath
from kaggle_kit.tts.strategies.common import StrategyGen, finish


def online_bon(s: Search, tokenizer=None) -> StrategyGen:
    """Per step: n = candidates_per_step continuations of the current answer; keep the best-scored step."""
    p = s.p
    path = StepPath()
    for _ in range(p.max_steps):
        req = s.request(path, n=p.candidates_per_step)
        if req is None:
            return path, [path]
        outs = yield from s.sample([req])
        candidates = [s.extend(path, c) for c in outs[0]]
        path = max(candidates, key=lambda q: finite_or(q.steps[-1].score))
        s.fix([path])
        if not path.live:
            return path, [path]
    path = yield from finish([path], s)
    return path[0], path
