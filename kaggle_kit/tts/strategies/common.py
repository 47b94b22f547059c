"""What the strategies share: their generator type, a whole answer split into steps, the requests that
continue paths by one step, and the final continuation at max_steps."""
from __future__ import annotations

from typing import Generator

from kaggle_kit.engine.types import Completion, GenerationRequest
from kaggle_kit.tts.search import Search, StepPath, slices
from kaggle_kit.tts.steps import split_points, token_pieces

StrategyGen = Generator[list[GenerationRequest], list[list[Completion]], tuple[StepPath, list[StepPath]]]


def whole(s: Search, tokenizer, c: Completion) -> StepPath:
    """A whole answer split into steps afterwards (offline: the steps are only for scoring)."""
    p = s.p
    finish, reason = s.classify(StepPath(), c)
    ends = split_points(token_pieces(tokenizer, c.token_ids), p.step_stop, p.min_step_tokens, p.max_step_tokens)
    path = StepPath()
    for k, (ids, chosen, returned) in enumerate(slices(c, ends)):
        last = k == len(ends) - 1  # a judged scorer's verdict is on the whole answer: its last step's
        step = s.new_step(path, ids, chosen, returned, text="", finish=finish if last else "boundary",
                          judged=s.judgement(c) if last else None)
        path = StepPath(path.steps + [step])
    path.reason = reason
    return path


def step_requests(paths: list[StepPath], s: Search, n: int, final: bool = False):
    """(requests continuing `paths` with n samples each, the paths they continue, the paths the
    window leaves no room to continue: those are done as they stand)."""
    reqs, owners, full = [], [], []
    for path in paths:
        r = s.request(path, n=n, final=final)
        if r is None:
            full.append(path)
        else:
            reqs.append(r)
            owners.append(path)
    return reqs, owners, full


def finish(paths: list[StepPath], s: Search):
    """max_steps reached: finish every live path with one final continuation (one engine call)."""
    reqs, owners, done = step_requests(paths, s, 1, final=True)
    if reqs:
        outs = yield from s.sample(reqs)
        done += [s.extend(path, cs[0], final=True) for path, cs in zip(owners, outs)]
    return done
