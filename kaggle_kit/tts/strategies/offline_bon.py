"""Offline best-of-N: one call with n = N, every answer split into steps afterwards, the best aggregate wins."""
from __future__ import annotations

from kaggle_kit.tts.search import Search, StepPath, best
from kaggle_kit.tts.strategies.common import StrategyGen, whole


def offline_bon(s: Search, tokenizer) -> StrategyGen:
    """One call with n = N; split each answer into steps afterwards; pick the best aggregate."""
    empty = StepPath()
    req = s.request(empty, n=s.p.num_trajectories, final=True)
    if req is None:  # the prompt leaves no room: `empty` now says why
        return empty, [empty]
    outs = yield from s.sample([req])
    paths = [whole(s, tokenizer, c) for c in outs[0]]
    return best(paths), paths
