"""The service's engine worker on the scripted engine: slots, fairness, cancellation, bounds.
(The same worker runs on vLLM in test_service.py; here the steps are counted exactly.)"""
import asyncio

import pytest

from kaggle_kit.engine.chat_template import prompt_ids
from kaggle_kit.engine.types import SamplingSpec
from kaggle_kit.service import limits
from kaggle_kit.service.errors import ApiError
from kaggle_kit.service.worker import Done, EngineWorker, Failed, PlainJob, TTSJob
from kaggle_kit.tts.params import TTSParams
from kaggle_kit.tts.search import Search
from scripted_engine import ScriptedEngine, lp_for_score

MSGS = [{"role": "user", "content": "q"}]


def _tree(depth=4, width=4, length=6):
    """Every prefix has `width` continuations of `length` characters; depth steps end the answer."""
    tree, frontier = {}, [""]
    for d in range(depth):
        nxt = []
        for prefix in frontier:
            kids = [((f"{k}" * (length - 2)) + "\n\n" if d < depth - 1 else f"{k}" * length,
                     lp_for_score(0.2 + 0.15 * k), d == depth - 1) for k in range(width)]
            tree[prefix] = kids
            nxt += [prefix + t for t, _, _ in kids]
        frontier = nxt
    tree.update({p: [("zz", lp_for_score(0.5), True)] for p in frontier})
    return tree


def _search(engine, **p):
    params = TTSParams.of(scorer="perplexity", min_step_tokens=0, temperature=1.0, logprobs=2, seed=3, max_tokens=200, **p)
    ids = prompt_ids(engine.tokenizer, MSGS, False)
    return Search(ids, params, engine.max_model_len, engine.eos_token_ids)


async def _collect(job):
    events = []
    while True:
        ev = await asyncio.wait_for(job.events.get(), 30)
        events.append(ev)
        if isinstance(ev, (Done, Failed)):
            return events


def _run(coro):
    return asyncio.run(coro)


def test_a_tts_job_never_holds_more_than_the_slots():
    eng = ScriptedEngine(_tree())
    worker = EngineWorker(eng, slots=3)

    async def go():
        job = TTSJob(asyncio.get_running_loop(), [1], stream=False, search=_search(eng, strategy="beam_search",
                                                                                 beam_size=2, candidates_per_step=4))
        worker.submit(job)
        return await _collect(job)

    try:
        events = _run(go())
    finally:
        worker.stop()
    assert isinstance(events[-1], Done) and events[-1].result.text
    assert max(eng.in_flight_per_step) == 3  # 8 samples per round, 3 at a time
    assert not eng.running


def test_interactive_requests_pause_a_big_job_and_its_answer_is_unchanged():
    tree = _tree(depth=5, width=4, length=8)

    def beam(worker, eng, loop):
        return TTSJob(loop, [1], stream=False, search=_search(eng, strategy="beam_search", beam_size=4,
                                                             candidates_per_step=4))

    async def alone():
        eng = ScriptedEngine(tree)
        worker = EngineWorker(eng, slots=16)
        try:
            job = beam(worker, eng, asyncio.get_running_loop())
            worker.submit(job)
            return (await _collect(job))[-1].result
        finally:
            worker.stop()

    async def with_traffic():
        eng = ScriptedEngine(tree, step_delay=0.004)
        worker = EngineWorker(eng, slots=16, interactive_share=1)
        loop = asyncio.get_running_loop()
        try:
            big = beam(worker, eng, loop)
            worker.submit(big)
            await asyncio.sleep(0.05)  # the big job is in full flight
            plain = [PlainJob(loop, prompt_ids(eng.tokenizer, MSGS, False), SamplingSpec(temperature=1.0, max_tokens=40, seed=s),
                              stream=True) for s in range(3)]
            for p in plain:
                worker.submit(p)
            plain_events = [await _collect(p) for p in plain]
            result = (await _collect(big))[-1].result
            return eng, result, plain_events
        finally:
            worker.stop()

    reference = _run(alone())
    eng, result, plain_events = _run(with_traffic())
    assert all(isinstance(ev[-1], Done) for ev in plain_events)
    assert result.text == reference.text and result.aggregated_score == reference.aggregated_score  # paused samples rerun exactly
    assert eng.aborted, "the big job's extra sequences were paused"
    assert max(eng.in_flight_per_step) <= 16
    # while the plain requests ran, the big job kept a single sequence beside the three of them
    assert 16 in eng.in_flight_per_step and 4 in eng.in_flight_per_step


def test_cancelled_job_leaves_nothing_in_the_engine():
    eng = ScriptedEngine(_tree(depth=6, length=10), step_delay=0.004)
    worker = EngineWorker(eng, slots=8)

    async def go():
        job = TTSJob(asyncio.get_running_loop(), [1], stream=False, search=_search(eng, strategy="offline_bon",
                                                                                 num_trajectories=8))
        worker.submit(job)
        await asyncio.sleep(0.02)
        worker.cancel(job)
        return await _collect(job)

    try:
        events = _run(go())
    finally:
        worker.stop()
    assert isinstance(events[-1], Failed) and isinstance(events[-1].error, asyncio.CancelledError)
    assert not eng.running and eng.aborted and not worker.active


def test_limits_name_what_is_over_and_by_how_much():
    lim = limits.Limits(max_sequences=64, max_steps=1000, max_kv_tokens=100_000)
    with pytest.raises(ApiError, match="tts_num_trajectories=100000 keep 100000 sequences.*allows 64") as e:
        limits.check(lim, TTSParams.of(strategy="offline_bon", num_trajectories=100000), prompt_tokens=50)
    assert e.value.status == 400 and e.value.param == "tts_num_trajectories" and e.value.code == "request_too_large"
    with pytest.raises(ApiError, match="tts_beam_size=8 and tts_candidates_per_step=8: 64 sequences x .* need 147200 tokens"):
        limits.check(lim, TTSParams.of(strategy="beam_search", beam_size=8, candidates_per_step=8, max_tokens=2250),
                     prompt_tokens=50)
    with pytest.raises(ApiError, match="tts_max_steps=5000"):
        limits.check(lim, TTSParams.of(strategy="online_bon", max_steps=5000), prompt_tokens=50)
    limits.check(lim, TTSParams.of(strategy="beam_search", beam_size=4, candidates_per_step=4, max_tokens=4000),
                 prompt_tokens=700)  # the seed's beam search fits
    assert limits.Limits.for_engine(ScriptedEngine({}, kv_cache_tokens=96976)).max_kv_tokens == 96976
