"""DeepConf's online early stop (arXiv 2508.15260), through the engine seam's confidence stop."""
from __future__ import annotations

import numpy as np

from kaggle_kit.engine.types import ConfidenceStop
from kaggle_kit.tts.results import CompletionReason
from kaggle_kit.tts.scorers import CONFIDENCE_WINDOW, lowest_group_confidence
from kaggle_kit.tts.search import Search, StepPath, best
from kaggle_kit.tts.strategies.common import StrategyGen, whole


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
    finished = [whole(s, tokenizer, c) for c in outs[0]]
    lowest = [lowest_group_confidence(c.returned_logprobs, CONFIDENCE_WINDOW, p.logprobs) for c in outs[0] if c.num_tokens]
    rest = p.num_trajectories - len(finished)
    if rest > 0 and lowest:
        bar = float(np.quantile(lowest, 1 - DEEPCONF_KEEP))
        seed = None if warm.sampling.seed is None else warm.sampling.seed + warm.sampling.n  # offline's next samples
        req = s.request(empty, n=rest, final=True, confidence_stop=ConfidenceStop(bar, CONFIDENCE_WINDOW), seed=seed)
        outs = yield from s.sample([req])
        traces = [whole(s, tokenizer, c) for c in outs[0]]
        finished += [q for q in traces if q.reason is not CompletionReason.LOW_CONFIDENCE]
    return best(finished), finished
