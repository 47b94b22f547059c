"""Beam search over steps, ranked by aggregated score; finished beams compete at the end."""
from __future__ import annotations

from kaggle_kit.tts.aggregation import MONOTONE_NON_INCREASING
from kaggle_kit.tts.search import Search, StepPath, best
from kaggle_kit.tts.strategies.common import StrategyGen, finish, step_requests


def beam_search(s: Search, tokenizer=None) -> StrategyGen:
    """Keep beam_size paths; per step expand every live beam with n = candidates_per_step.

    Expansions are ranked by aggregated score and the best beam_size survive;
    finished ones leave the beam and compete at the end. The search stops when
    no beam is live, when (for min/product, which never rise) the best finished
    answer beats every live beam, or at max_steps, where live beams are finished
    with one final continuation each.
    """
    p = s.p
    beams, finished = [StepPath()], []
    for _ in range(p.max_steps):
        reqs, owners, full = step_requests(beams, s, p.candidates_per_step)
        finished += full
        if not reqs:
            beams = []
            break
        outs = yield from s.sample(reqs)
        pool, seen = [], set()
        for b, completions in zip(owners, outs):
            for c in completions:
                key = b.token_ids + c.token_ids
                if key not in seen:  # identical samples would waste beam slots
                    seen.add(key)
                    pool.append(s.extend(b, c))
        pool.sort(key=lambda q: q.rank_key, reverse=True)
        top = pool[: p.beam_size]
        finished += [q for q in top if not q.live]
        beams = [q for q in top if q.live]
        s.fix(beams + finished)
        if not beams:
            break
        if (p.score_aggregation in MONOTONE_NON_INCREASING and finished
                and best(finished).rank_key >= max(b.rank_key for b in beams)):
            beams = []
            break
    if beams:
        finished += yield from finish(beams, s)
    return best(finished), finished
