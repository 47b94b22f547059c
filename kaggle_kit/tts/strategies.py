"""Offline best-of-N (fixed or adaptive), online best-of-N, beam search, diverse verifier tree search and
DeepConf's online early stop.

Each strategy is a generator for one prompt: it yields the engine requests of its
next step and receives their completions. `drive` merges the pending requests of
every live strategy into one engine call per round, so a batch of prompts (or the
service's concurrent requests) costs one call per step, not one per prompt.
"""
from __future__ import annotations

import time
from typing import Generator, Sequence

import numpy as np

from kaggle_kit.engine.types import Completion, ConfidenceStop, Engine, GenerationRequest
from kaggle_kit.tts.aggregation import MONOTONE_NON_INCREASING
from kaggle_kit.tts.params import STRATEGIES
from kaggle_kit.tts.results import CompletionReason, StrategyResult, finite_or
from kaggle_kit.tts.scorers import CONFIDENCE_WINDOW, lowest_group_confidence
from kaggle_kit.tts.search import StepPath, Search, best, slices
from kaggle_kit.tts.steps import split_points, token_pieces

StrategyGen = Generator[list[GenerationRequest], list[list[Completion]], tuple[StepPath, list[StepPath]]]


def offline_bon(s: Search, tokenizer) -> StrategyGen:
    """One call with n = N; split each answer into steps afterwards; pick the best aggregate."""
    empty = StepPath()
    req = s.request(empty, n=s.p.num_trajectories, final=True)
    if req is None:  # the prompt leaves no room: `empty` now says why
        return empty, [empty]
    outs = yield from s.sample([req])
    paths = [_whole(s, tokenizer, c) for c in outs[0]]
    return best(paths), paths


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
        paths += [_whole(s, tokenizer, c) for c in outs[0]]
        if best(paths).rank_key >= p.stop_score:
            break
    return best(paths), paths


# DeepConf-high keeps the traces above the 10th percentile of the warm-up's confidence (arXiv 2508.15260).
DEEPCONF_KEEP = 0.9


def deepconf(s: Search, tokenizer) -> StrategyGen:
    """DeepConf's online mode (arXiv 2508.15260): `warmup_traces` whole answers set the bar, the 10th
    percentile of their lowest group confidence (DeepConf-high: mean token confidence over windows of
    CONFIDENCE_WINDOW tokens); the other traces run under a ConfidenceStop, so the engine aborts each one
    the moment its current window falls under the bar, and what it would have generated is never
    generated (Usage.early_stopped counts them). The best finished answer by the scorer wins; stopped
    traces stay in the tree, not among the candidates. The samples are offline best-of-N's with the same
    seed, so the two spend tokens on the same traces but for the stopped ones' tails."""
    p = s.p
    empty = StepPath()
    warm = s.request(empty, n=min(p.warmup_traces, p.num_trajectories), final=True)
    if warm is None:
        return empty, [empty]
    outs = yield from s.sample([warm])
    finished = [_whole(s, tokenizer, c) for c in outs[0]]
    lowest = [lowest_group_confidence(c.returned_logprobs, CONFIDENCE_WINDOW, p.logprobs) for c in outs[0] if c.num_tokens]
    rest = p.num_trajectories - len(finished)
    if rest > 0 and lowest:
        bar = float(np.quantile(lowest, 1 - DEEPCONF_KEEP))
        seed = None if warm.sampling.seed is None else warm.sampling.seed + warm.sampling.n  # offline's next samples
        req = s.request(empty, n=rest, final=True, confidence_stop=ConfidenceStop(bar, CONFIDENCE_WINDOW), seed=seed)
        outs = yield from s.sample([req])
        traces = [_whole(s, tokenizer, c) for c in outs[0]]
        finished += [q for q in traces if q.reason is not CompletionReason.LOW_CONFIDENCE]
    return best(finished), finished


def _whole(s: Search, tokenizer, c: Completion) -> StepPath:
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
    path = yield from _finish([path], s)
    return path[0], path


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
        reqs, owners, full = _requests(beams, s, p.candidates_per_step)
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
        finished += yield from _finish(beams, s)
    return best(finished), finished


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
        reqs, owners, full = _requests(paths, s, n)
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
    finished += yield from _finish(paths, s)
    return finished


def _requests(paths: list[StepPath], s: Search, n: int, final: bool = False):
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


def _finish(paths: list[StepPath], s: Search):
    """max_steps reached: finish every live path with one final continuation (one engine call)."""
    reqs, owners, done = _requests(paths, s, 1, final=True)
    if reqs:
        outs = yield from s.sample(reqs)
        done += [s.extend(path, cs[0], final=True) for path, cs in zip(owners, outs)]
    return done


STRATEGY_FUNCS = {"offline_bon": offline_bon, "online_bon": online_bon, "beam_search": beam_search, "dvts": dvts,
                  "adaptive_bon": adaptive_bon, "deepconf": deepconf}
assert tuple(STRATEGY_FUNCS) == STRATEGIES, "a strategy needs its Shape in tts/params.py and its function here"


def start(s: Search, tokenizer) -> StrategyGen:
    """The generator of `s`'s strategy (what `drive` and the service's worker both run)."""
    s.tokenizer = tokenizer
    return STRATEGY_FUNCS[s.p.strategy](s, tokenizer)


def drive(engine: Engine, searches: Sequence[Search], progress: bool | None = None) -> list[StrategyResult]:
    """Run one strategy per Search, one engine call per round for all of them."""
    from tqdm.auto import tqdm

    tokenizer = engine.tokenizer
    t0 = time.perf_counter()
    gens = [start(s, tokenizer) for s in searches]
    pending: dict[int, list[GenerationRequest]] = {}
    finals: dict[int, tuple[StepPath, list[StepPath], float]] = {}

    def advance(i: int, value=None):
        try:
            pending[i] = gens[i].send(value)
        except StopIteration as stop:
            pending.pop(i, None)
            finals[i] = (*stop.value, time.perf_counter() - t0)

    for i in range(len(gens)):
        advance(i)
    bar = tqdm(desc="tts steps", unit="call", disable=True if progress is False else None, leave=False)
    while pending:
        order = sorted(pending)
        batch = [r for i in order for r in pending[i]]
        outputs = engine.generate(batch)
        bar.update(1)
        bar.set_postfix(live=len(order))
        at = 0
        for i in order:
            n = len(pending[i])
            advance(i, outputs[at: at + n])
            at += n
    bar.close()
    return [build_result(searches[i], *finals[i], tokenizer) for i in range(len(gens))]


def build_result(s: Search, chosen: StepPath, paths: list[StepPath], elapsed: float, tokenizer) -> StrategyResult:
    for step in chosen.steps:
        step.selected = True
    trajectories = [s.trajectory(p, tokenizer) for p in paths]
    chosen_traj = next((t for t, p in zip(trajectories, paths) if p is chosen), None) or s.trajectory(chosen, tokenizer)
    return StrategyResult(
        strategy=s.p.strategy, scorer=s.p.scorer, text=chosen_traj.text, steps=chosen.steps,
        aggregated_score=chosen.score, completion_reason=chosen.reason, candidates=trajectories,
        tree=s.tree, usage=s.usage, elapsed_s=elapsed, prompt_tokens=len(s.prompt_ids), params=s.p.to_dict(),
    )
