"""Uncertainty scorers: pure, vectorised functions of one step's tokens.

Inputs, for a span of T tokens:
  chosen[t]      log p of the sampled token at position t
  returned[t, :] every logprob the engine returned at position t (top-k, plus the
                 sampled token when it is outside the top-k), NaN-padded
Output: an uncertainty U >= 0 (higher = less confident). A step's score is
1 / (1 + U), so higher is better and scores aggregate the same way as in
llm-tts-service.

entropy, perplexity and sequence_prob follow lm-polygraph 0.7.0's
MeanTokenEntropy, Perplexity and MaximumSequenceProbability (its entropy sums
over the returned top-k without renormalising; its "Perplexity" is the log of
perplexity, the mean NLL).

critic is not computed from a step's tokens: the model itself judges the answer so far with one
yes/no token (kaggle_kit/tts/critic.py); the search asks it after each step.

confidence is DeepConf's token confidence (Fu et al., 2025, "Deep Think with
Confidence", arXiv:2508.15260): C_t = -mean of the top-k logprobs at position t;
the span's confidence is its lowest group confidence, the minimum over sliding
windows of `window` tokens of mean C_t. High C means confident, so U = 1 / C.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from kaggle_kit.engine.types import token_confidence


def as_returned(returned) -> np.ndarray:
    """Ragged per-position logprob lists (or dicts) -> a NaN-padded (T, W) array."""
    if isinstance(returned, np.ndarray):
        return returned.astype(np.float64, copy=False).reshape(len(returned), -1)
    rows = [list(r.values()) if isinstance(r, dict) else list(r) for r in returned]
    width = max((len(r) for r in rows), default=0)
    out = np.full((len(rows), width), np.nan)
    for t, r in enumerate(rows):
        out[t, : len(r)] = r
    return out


def mean_token_entropy(chosen: np.ndarray, returned: np.ndarray) -> float:
    p = np.exp(returned)
    return float(np.mean(np.nansum(-p * returned, axis=1)))


def perplexity(chosen: np.ndarray, returned: np.ndarray) -> float:
    return float(-np.mean(chosen))


def sequence_prob(chosen: np.ndarray, returned: np.ndarray) -> float:
    return float(-np.sum(chosen))


CONFIDENCE_WINDOW = 16  # tokens per group: the confidence scorer's and deepconf's early stop


def lowest_group_confidence(returned: np.ndarray, window: int = CONFIDENCE_WINDOW, k: int | None = None) -> float:
    token_conf = token_confidence(returned, k)
    w = max(1, min(window, len(token_conf)))
    csum = np.concatenate([[0.0], np.cumsum(token_conf)])
    return float(np.min((csum[w:] - csum[:-w]) / w))


def confidence_uncertainty(chosen: np.ndarray, returned: np.ndarray, window: int = CONFIDENCE_WINDOW) -> float:
    c = lowest_group_confidence(returned, window=window)
    return float(np.inf) if c <= 0 else 1.0 / c


_FUNCS: dict[str, Callable[[np.ndarray, np.ndarray], float] | None] = {
    "entropy": mean_token_entropy,
    "perplexity": perplexity,
    "sequence_prob": sequence_prob,
    "confidence": confidence_uncertainty,
    "critic": None,  # judged by the model (tts/critic.py), not computed from the step's tokens
}
SCORERS = tuple(_FUNCS)  # every list of scorer names derives from this table


def is_judged(name: str) -> bool:
    """Whether the scorer asks the model for a judgement instead of reading the step's own logprobs."""
    return _FUNCS[check_scorer(name)] is None


def check_scorer(name: str) -> str:
    if name not in _FUNCS:
        raise ValueError(f"unknown scorer {name!r}; choose from {', '.join(SCORERS)}")
    return name


def uncertainty(name: str, chosen: Sequence[float] | np.ndarray, returned) -> float:
    """Uncertainty U of a token span under scorer `name` (see module doc)."""
    fn = _FUNCS[check_scorer(name)]
    if fn is None:
        raise ValueError(f"scorer {name!r} is the model's own judgement, asked by the search (tts/critic.py); "
                         "it is not computed from a span's logprobs")
    chosen = np.asarray(chosen, dtype=np.float64)
    if chosen.size == 0:
        return float("nan")  # an empty span carries no evidence; aggregation skips it
    ret = as_returned(returned)
    if ret.shape[0] != chosen.shape[0]:
        raise ValueError(f"chosen has {chosen.shape[0]} positions but returned has {ret.shape[0]}")
    if name in ("entropy", "confidence") and ret.shape[1] == 0:
        raise ValueError(f"scorer {name!r} needs top-k logprobs; request logprobs >= 1")
    return fn(chosen, ret)


def step_score(u: float) -> float:
    """Uncertainty -> score in (0, 1], higher is better; NaN stays NaN (ignored later)."""
    return 1.0 / (1.0 + u) if np.isfinite(u) else (0.0 if u == np.inf else float("nan"))
