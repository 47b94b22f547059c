"""Offline best-of-N that stops sampling once an answer is good enough (an adaptive budget)."""
from __future__ import annotations

from kaggle_kit.tts.search import Search, StepPath, best
from kaggle_kit.tts.strategies.common import StrategyGen, whole


def adaptive_bon(s: Search, tokenizer) -> StrategyGen:
    """Offline best-of-N that stops early: whole answers in waves of candidates_per_step, up to
    num_trajectories, until the best one's aggregated score reaches stop_score. A prompt the model
    is sure of costs one wave; a hard one gets the whole budget."""
    p = s.p
    paths: list[StepPath] = []
    while len(paths) < p.num_trajectories:
        empty = StepPath()
        req = s.request(empty, n=min(p.candidates_per_step, p.num_trajectories - len(paths)), final=True)
        if req is None:  # no room for an answer: `empty` says why
            return (best(paths), paths) if paths else (empty, [empty])
        outs = yield from s.sample([req])
        paths += [whole(s, tokenizer, c) for c in outs[0]]
        if best(paths).rank_key >= p.stop_score:
            break
    return best(paths), paths
