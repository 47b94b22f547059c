"""Our scorers vs lm-polygraph 0.7.0's estimators on the same real vLLM logprobs.

lm-polygraph is an optional extra (`polygraph`); `make test` installs it so CI runs this.
"""
import numpy as np
import pytest

pytestmark = pytest.mark.vllm
lmp_calc = pytest.importorskip("lm_polygraph.stat_calculators")
lmp_est = pytest.importorskip("lm_polygraph.estimators")

from kaggle_kit.engine.chat_template import prompt_ids  # noqa: E402
from kaggle_kit.engine.types import GenerationRequest, SamplingSpec  # noqa: E402
from kaggle_kit.engine.vllm_engine import to_sampling_params  # noqa: E402
from kaggle_kit.tts.scorers import uncertainty  # noqa: E402

MSGS = [{"role": "user", "content": "Optimise the layer norm kernel."}]


def polygraph(token_ids, logprobs):
    stats = lmp_calc.VLLMLogprobsExtractionCalculator()({"token_ids": list(token_ids), "logprobs": list(logprobs)})
    stats.update(lmp_calc.EntropyCalculator()(stats))
    return {
        "entropy": lmp_est.MeanTokenEntropy()(stats)[0],
        "perplexity": lmp_est.Perplexity()(stats)[0],
        "sequence_prob": lmp_est.MaximumSequenceProbability()(stats)[0],
    }


def test_scorers_match_lm_polygraph_on_vllm_logprobs(registered):
    from vllm.inputs import TokensPrompt

    ids = prompt_ids(registered.tokenizer, MSGS, enable_thinking=False)
    # temperature 2: the planted-kernels model is sure of most tokens, and the case of a sampled token
    # outside the returned top-5 must still occur
    spec = SamplingSpec(n=3, temperature=2.0, max_tokens=80, logprobs=5, seed=3)
    # vLLM's own output objects (dict-form logprobs), as lm-polygraph's vLLM path consumes them
    params = to_sampling_params(spec)
    params.flat_logprobs = False
    raw = registered.llm.generate([TokensPrompt(prompt_token_ids=ids)], params, use_tqdm=False)[0].outputs
    ours = registered.generate([GenerationRequest(ids, spec)])[0]  # our engine path (flat logprobs)
    checked = 0
    for r, c in zip(sorted(raw, key=lambda o: o.index), ours):
        assert tuple(r.token_ids) == c.token_ids  # same seed, same samples
        T = len(r.token_ids)
        for a, b in [(0, T), (0, T // 2), (T // 3, T)]:  # whole answers and step-like spans
            if b - a < 1:
                continue
            ref = polygraph(r.token_ids[a:b], r.logprobs[a:b])
            for name, value in ref.items():
                got = uncertainty(name, c.chosen_logprobs[a:b], c.returned_logprobs[a:b])
                assert abs(got - value) < 1e-9, (name, a, b, got, value)
                checked += 1
    assert checked >= 9
    # the sampled token fell outside the top-5 somewhere, so the k+1 case was exercised too
    assert any(c.returned_ids.shape[1] == 6 for c in ours)
