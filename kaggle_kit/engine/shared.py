"""One set of samples for several runs: a seeded engine call is answered once, then from memory.

A grid of methods over the same prompts (`run_tts_kernels` with several scorers or verifiers) asks the
engine for the same seeded samples run after run: offline best-of-N draws the same N whichever scorer
or verifier picks among them, and a step-wise search asks the same until its scorer first prunes
differently. A seeded request is deterministic by the engine's contract, so its answer is kept and every
method of the grid is judged on the same samples (a paired comparison; vLLM on a CPU does not redraw
them bit for bit across batch shapes). Unseeded requests always go to the engine.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

from kaggle_kit.engine.types import Completion, Engine, GenerationRequest


class SharedGenerations:
    """`engine` with `generate` memoised for seeded requests (at most `max_entries`, least recent out);
    every other attribute is the engine's own."""

    def __init__(self, engine: Engine, max_entries: int = 4096):
        self._engine = engine
        self._memo: OrderedDict[GenerationRequest, list[Completion]] = OrderedDict()
        self._max = max_entries
        self.hits = self.misses = 0

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def generate(self, requests: Sequence[GenerationRequest], use_tqdm: bool = False) -> list[list[Completion]]:
        out: list[list[Completion] | None] = [None] * len(requests)
        todo = []
        for i, r in enumerate(requests):
            if r.sampling.seed is not None and r in self._memo:
                self._memo.move_to_end(r)
                out[i] = list(self._memo[r])
                self.hits += 1
            else:
                todo.append(i)
        if todo:  # the misses together, in one engine call, as they came
            self.misses += len(todo)
            for i, answer in zip(todo, self._engine.generate([requests[i] for i in todo], use_tqdm=use_tqdm)):
                out[i] = answer
                if requests[i].sampling.seed is not None:
                    self._memo[requests[i]] = list(answer)
                    if len(self._memo) > self._max:
                        self._memo.popitem(last=False)
        return out  # type: ignore[return-value]
