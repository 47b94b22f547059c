"""The TTS strategies, one module each, named as the strategy: a strategy is its module plus its row of
SHAPES in tts/params.py (its sizes), and the table below is derived from those names.

Each strategy is a generator for one prompt: it yields the engine requests of its
next step and receives their completions. `drive` merges the pending requests of
every live strategy into one engine call per round, so a batch of prompts (or the
service's concurrent requests) costs one call per step, not one per prompt.
"""
from __future__ import annotations

import time
from importlib import import_module
from typing import Sequence

from kaggle_kit.engine.types import Engine, GenerationRequest
from kaggle_kit.tts.params import STRATEGIES
from kaggle_kit.tts.results import StrategyResult
from kaggle_kit.tts.search import Search, StepPath
from kaggle_kit.tts.strategies.common import StrategyGen


def _load(name: str):
    try:
        return getattr(import_module(f"{__name__}.{name}"), name)
    except (ModuleNotFoundError, AttributeError):
        raise ImportError(f"strategy {name!r} has a row in tts/params.py SHAPES but no function {name} in "
                          f"kaggle_kit/tts/strategies/{name}.py") from None


STRATEGY_FUNCS = {name: _load(name) for name in STRATEGIES}


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
