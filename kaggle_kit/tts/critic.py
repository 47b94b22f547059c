"""The critic scorer: the same model judges the answer so far with one yes/no token.

llm-tts-service's LLM critic (after Tree of Thoughts' state evaluator) asks the model to grade a
step in words and parses them; here the judgement is the probability of one token. The judged
text is the conversation's prompt ids, the answer's token ids so far (never re-tokenised), then a
user turn with `QUESTION` and the assistant's turn opening, rendered by the model's own chat
template. One greedy token with its top-k logprobs comes back; with p = P(yes) / (P(yes) + P(no))
over the top-k the step's uncertainty is U = (1 - p) / p, so its score 1 / (1 + U) is p.
Neither token among the top-k: no evidence (NaN), which aggregation skips.

The judge's prompt shares the prompt and answer with the generation, so vLLM's prefix cache
serves them and only the question is computed. Its requests count in the search's usage.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from kaggle_kit.engine.types import Completion, GenerationRequest, SamplingSpec

QUESTION = ("Is the answer above correct so far, with no bug in its code? "
            "Reply with one word: Yes or No.")
YES = ("Yes", "yes", " Yes", " yes", "YES")
NO = ("No", "no", " No", " no", "NO")
_MARK = "\x00kk-critic-answer\x00"


class CriticError(ValueError):
    """The model's tokenizer cannot express the critic's question or its yes/no answer."""


@lru_cache(maxsize=8)
def _suffix_ids(tokenizer) -> tuple[int, ...]:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": _MARK},
         {"role": "user", "content": QUESTION}], tokenize=False, add_generation_prompt=True, enable_thinking=False)
    if text.count(_MARK) != 1:
        raise CriticError("the chat template does not render an assistant turn verbatim: the critic cannot "
                          "append its question to an answer")
    return tuple(tokenizer.encode(text.split(_MARK, 1)[1], add_special_tokens=False))


@lru_cache(maxsize=8)
def _answer_ids(tokenizer) -> tuple[frozenset[int], frozenset[int]]:
    def single(words):
        ids = [tokenizer.encode(w, add_special_tokens=False) for w in words]
        return frozenset(i[0] for i in ids if len(i) == 1)
    yes, no = single(YES), single(NO)
    if not yes or not no:
        raise CriticError("the tokenizer has no single token for Yes / No: the critic scorer needs one")
    return yes, no


def judge_request(tokenizer, request: GenerationRequest, completion: Completion, top_k: int) -> GenerationRequest:
    """The request that asks the model to judge `request`'s prompt continued by `completion`."""
    _answer_ids(tokenizer)  # fail before any judge request goes out
    ids = request.prompt_ids + tuple(completion.token_ids) + _suffix_ids(tokenizer)
    return GenerationRequest(ids, SamplingSpec(n=1, temperature=0.0, max_tokens=1, logprobs=max(1, top_k)))


def judged_uncertainty(tokenizer, judgement: Completion) -> float:
    """U = P(no) / P(yes) over the judge's first-token top-k; NaN when neither appears."""
    yes, no = _answer_ids(tokenizer)
    if judgement.returned_ids.shape[0] == 0:
        return math.nan
    ids, lps = judgement.returned_ids[0], judgement.returned_logprobs[0]
    probs = np.exp(np.nan_to_num(lps, nan=-np.inf))
    p_yes = float(sum(p for i, p in zip(ids, probs) if int(i) in yes))
    p_no = float(sum(p for i, p in zip(ids, probs) if int(i) in no))
    if p_yes + p_no == 0:
        return math.nan
    return math.inf if p_yes == 0 else p_no / p_yes
