"""The OpenAI-compatible service: a real server on 127.0.0.1, the openai SDK and httpx."""
import json
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

import kaggle_kit as kk
from conftest import TINY

pytestmark = pytest.mark.vllm
PROMPT = [{"role": "user", "content": "Optimize this CUDA kernel: relu"}]
SMALL_TTS = {"tts_max_steps": 4, "tts_candidates_per_step": 2, "tts_beam_size": 2, "tts_num_trajectories": 3}


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    kk.ensure_model(tiny_model_dir, **TINY)
    srv = kk.serve(port=0)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return OpenAI(base_url=server.url, api_key="dummy", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def model_id(client):
    return client.models.list().data[0].id


def test_the_issue_request_exactly(client, model_id):
    r = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": "Optimize this CUDA kernel: ..."}],
        temperature=0.6, max_tokens=16000,
        extra_body={"tts_strategy": "online_bon", "tts_candidates_per_step": 4, "tts_max_steps": 100, "tts_scorer": "entropy"})
    content = r.choices[0].message.content
    assert isinstance(content, str) and content
    meta = r.model_dump()["tts_metadata"]
    assert meta["strategy"] == "online_bon" and meta["scorer"] == "entropy"
    assert "".join(s["text"] for s in meta["steps"]).endswith(content) or content in "".join(s["text"] for s in meta["steps"])
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens == sum(s["num_tokens"] for s in meta["steps"]) and r.usage.prompt_tokens > 0
    assert meta["usage"]["engine_calls"] >= 1


# Every strategy and every scorer through the service once; their every pairing runs on the engine itself
# (tests/test_tts_vllm.py): the service passes both names through to the same generators.
@pytest.mark.parametrize("strategy, scorer", [("offline_bon", "entropy"), ("online_bon", "perplexity"),
                                              ("beam_search", "sequence_prob"), ("beam_search", "confidence"),
                                              ("dvts", "perplexity"), ("adaptive_bon", "entropy"),
                                              ("deepconf", "confidence"), ("online_bon", "critic")])
def test_every_strategy_and_scorer(client, model_id, strategy, scorer):
    r = client.chat.completions.create(model=model_id, messages=PROMPT, temperature=0.8, max_tokens=200, seed=5,
                                       extra_body={"tts_strategy": strategy, "tts_scorer": scorer, **SMALL_TTS})
    meta = r.model_dump()["tts_metadata"]
    assert r.choices[0].message.content and meta["strategy"] == strategy and meta["scorer"] == scorer
    assert len(meta["candidates"]) >= 1 and sum(c["chosen"] for c in meta["candidates"]) == 1
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_plain_generation_honours_sampling(client, model_id):
    a = client.chat.completions.create(model=model_id, messages=PROMPT, temperature=0, max_tokens=12)
    b = client.chat.completions.create(model=model_id, messages=PROMPT, temperature=0, max_tokens=12)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage.completion_tokens <= 12 and "tts_metadata" not in a.model_dump()
    assert a.choices[0].finish_reason in ("length", "stop")
    c = client.chat.completions.create(model=model_id, messages=PROMPT, temperature=0, max_tokens=200, stop=[" "])
    assert " " not in c.choices[0].message.content.strip() and c.choices[0].finish_reason == "stop"
    s1 = client.chat.completions.create(model=model_id, messages=PROMPT, temperature=1.0, max_tokens=30, seed=1)
    s2 = client.chat.completions.create(model=model_id, messages=PROMPT, temperature=1.0, max_tokens=30, seed=1)
    assert s1.choices[0].message.content == s2.choices[0].message.content


@pytest.mark.parametrize("extra", [{}, {"tts_strategy": "online_bon", **SMALL_TTS}, {"tts_strategy": "beam_search", **SMALL_TTS}])
def test_streaming_through_the_sdk_matches_non_streaming(client, model_id, extra):
    kwargs = dict(model=model_id, messages=PROMPT, temperature=0.7, max_tokens=120, seed=3, extra_body=extra)
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == whole
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    if not extra:
        assert len(pieces) > 3  # tokens as they come, not one blob
    else:
        assert chunks[-1].model_dump()["tts_metadata"]["strategy"] == extra["tts_strategy"]


def test_raw_sse_format(server, model_id):
    body = {"model": model_id, "messages": PROMPT, "max_tokens": 20, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{server.url}/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [l for l in r.iter_lines() if l]
    assert all(l.startswith("data: ") for l in lines) and lines[-1] == "data: [DONE]"
    events = [json.loads(l[6:]) for l in lines[:-1]]
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] > 0


BAD = [
    ("not json", 400, None, "not valid JSON"),
    ({"messages": PROMPT}, 400, "model", "missing required field"),
    ({"model": "M", "messages": []}, 400, "messages", "messages"),
    ({"model": "M", "messages": [{"role": "wizard", "content": "x"}]}, 400, "messages.0.role", "role"),
    ({"model": "M", "messages": PROMPT, "logprobs": True}, 400, "logprobs", "unsupported field 'logprobs'"),
    ({"model": "M", "messages": PROMPT, "n": 2}, 400, "n", "n"),
    ({"model": "M", "messages": PROMPT, "temperature": -1}, 400, "temperature", "temperature"),
    ({"model": "M", "messages": PROMPT, "tts_strategy": "greedy"}, 400, "tts_strategy", "choose from offline_bon, online_bon, beam_search"),
    ({"model": "M", "messages": PROMPT, "tts_strategy": "beam_search", "tts_scorer": "vibes"}, 400, "tts_scorer", "choose from entropy"),
    ({"model": "M", "messages": PROMPT, "tts_strategy": "beam_search", "tts_beam_size": 0}, 400, "tts_beam_size", "beam_size"),
    ({"model": "M", "messages": [{"role": "user", "content": "x y " * 30000}]}, 400, "messages", "maximum context length"),
    ({"model": "M", "messages": PROMPT, "tts_strategy": "offline_bon", "tts_num_trajectories": 100000}, 400,
     "tts_num_trajectories", "allows 64 per request (limit max_sequences)"),
]


@pytest.mark.parametrize("body, status, param, text", BAD)
def test_errors_have_openai_shape_and_server_survives(server, model_id, body, status, param, text):
    if isinstance(body, dict) and body.get("model") == "M":
        body = {**body, "model": model_id}
    kw = {"content": body} if isinstance(body, str) else {"json": body}
    r = httpx.post(f"{server.url}/chat/completions", timeout=60, headers={"content-type": "application/json"}, **kw)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and text in err["message"]
    if param:
        assert err["param"] == param
    if "context length" in text:
        assert err["code"] == "context_length_exceeded"
    ok = httpx.post(f"{server.url}/chat/completions", json={"model": model_id, "messages": PROMPT, "max_tokens": 4}, timeout=60)
    assert ok.status_code == 200


def test_sdk_raises_on_errors(client, model_id):
    import openai

    with pytest.raises(openai.BadRequestError, match="choose from"):
        client.chat.completions.create(model=model_id, messages=PROMPT, extra_body={"tts_strategy": "nope"})


def test_models_and_health(server, client, model_id):
    from kaggle_kit.service.naming import default_served_name

    assert model_id == default_served_name(kk.VLLMClient.model_path()) == Path(kk.VLLMClient.model_path()).name
    h = httpx.get(server.url.replace("/v1", "/health"), timeout=10).json()
    assert h["status"] == "ok" and h["model"] == model_id


def test_cancelled_stream_frees_its_slot(server, model_id):
    worker = kk.VLLMClient  # noqa: F841 (the server uses the registered engine)
    body = {"model": model_id, "messages": PROMPT, "max_tokens": 15000, "temperature": 1.5, "stream": True}
    with httpx.stream("POST", f"{server.url}/chat/completions", json=body, timeout=60) as r:
        it = r.iter_lines()
        got = [next(it) for _ in range(6)]
        assert all(l.startswith("data: ") or not l for l in got)
    deadline = time.monotonic() + 20
    health = server.url.replace("/v1", "/health")
    while time.monotonic() < deadline and httpx.get(health, timeout=5).json()["active"]:
        time.sleep(0.2)
    assert httpx.get(health, timeout=5).json()["active"] == 0
    assert not kk.VLLMClient.get_engine().has_unfinished()


def test_concurrent_requests_match_sequential(client, model_id):
    def ask(seed):
        r = client.chat.completions.create(model=model_id, messages=PROMPT, temperature=0.8, max_tokens=120, seed=seed,
                                           extra_body={"tts_strategy": "online_bon", **SMALL_TTS})
        return r.choices[0].message.content

    seeds = [11, 12, 13, 14, 15, 16]
    sequential = [ask(s) for s in seeds]
    with ThreadPoolExecutor(len(seeds)) as pool:
        concurrent = list(pool.map(ask, seeds))
    assert all(concurrent)
    same = sum(a == b for a, b in zip(sequential, concurrent))
    assert same == len(seeds), f"{same}/{len(seeds)} identical"


def test_auth_and_no_model_and_internal_errors(tiny_model_dir, model_id):
    secured = kk.serve(port=0, api_key="s3cret")
    try:
        url = secured.url
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            r = httpx.get(f"{url}/models", headers=headers, timeout=10)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        ok = OpenAI(base_url=url, api_key="s3cret", max_retries=0).chat.completions.create(
            model=model_id, messages=PROMPT, max_tokens=4)
        assert ok.choices[0].message.content is not None
    finally:
        secured.stop()

    empty = kk.serve(port=0, engine_provider=lambda: None)
    try:
        r = httpx.post(f"{empty.url}/chat/completions", json={"model": "x", "messages": PROMPT}, timeout=10)
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_not_loaded"
        assert httpx.get(empty.url.replace("/v1", "/health"), timeout=10).status_code == 503
    finally:
        empty.stop()

    class Broken:
        model_name, max_model_len, lock = "broken", 100, threading.RLock()

        @property
        def tokenizer(self):
            raise RuntimeError("tokenizer exploded")

    broken = kk.serve(port=0, engine_provider=lambda b=Broken(): b)
    try:
        r = httpx.post(f"{broken.url}/chat/completions", json={"model": "broken", "messages": PROMPT}, timeout=10)
        assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
        assert "tokenizer exploded" in r.json()["error"]["message"]
        assert httpx.get(broken.url.replace("/v1", "/health"), timeout=10).status_code == 200  # still serving
    finally:
        broken.stop()


def test_client_defaults_are_served_and_the_changes_reported(server, client):
    """A KernelAct-style client: its own model id, a max_tokens over the window, its tts_* defaults."""
    r = client.chat.completions.with_raw_response.create(
        model="Qwen/Qwen2.5-Coder-7B-Instruct", messages=PROMPT, temperature=0.6, max_tokens=30000,
        extra_body={"tts_strategy": "online_bon", "tts_scorer": "entropy", "tts_candidates_per_step": 2,
                    "tts_max_steps": 3, "tts_window_size": 5, "tts_score_aggregation": "min"})
    assert r.headers["x-kk-adjusted"] == "model,max_tokens" and r.headers["x-request-id"]
    body = r.parse().model_dump()
    served = client.models.list().data[0].id
    assert body["model"] == served and body["choices"][0]["message"]["content"]
    adj = {a["field"]: a for a in body["kk_adjustments"]}
    assert adj["model"]["requested"] == "Qwen/Qwen2.5-Coder-7B-Instruct" and adj["model"]["used"] == served
    prompt = body["usage"]["prompt_tokens"]
    assert adj["max_tokens"]["requested"] == 30000 and adj["max_tokens"]["used"] == 20480 - prompt
    assert body["tts_metadata"]["adjustments"] == body["kk_adjustments"]


def test_strict_mode_refuses_what_lenient_mode_adjusts(tiny_model_dir, model_id):
    strict = kk.serve(port=0, strict=True)
    try:
        base = {"messages": PROMPT, "max_tokens": 8}
        r = httpx.post(f"{strict.url}/chat/completions", json={**base, "model": "not-this-one"}, timeout=60)
        assert r.status_code == 404 and "is not served here" in r.json()["error"]["message"]
        r = httpx.post(f"{strict.url}/chat/completions", json={**base, "model": model_id, "max_tokens": 10**6}, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
        r = httpx.post(f"{strict.url}/chat/completions", json={**base, "model": model_id}, timeout=60)
        assert r.status_code == 200 and "kk_adjustments" not in r.json() and "x-kk-adjusted" not in r.headers
    finally:
        strict.stop()


def test_a_large_allowed_request_runs_while_the_server_answers_others(server, client, model_id):
    """The 100000-trajectory request is refused (400); a large allowed one runs and small ones still get through."""
    limited = kk.serve(port=0, limits={"max_kv_tokens": 60_000})
    try:
        r = httpx.post(f"{limited.url}/chat/completions", timeout=60, json={
            "model": model_id, "messages": PROMPT, "max_tokens": 4000, "tts_strategy": "beam_search",
            "tts_beam_size": 4, "tts_candidates_per_step": 4})
        assert r.status_code == 400 and "limit max_kv_tokens" in r.json()["error"]["message"]
    finally:
        limited.stop()
    # The big one over a raw socket: once the small ones are answered, closing it is a client going away,
    # which cancels the job (nobody waits for its 3,000 tokens).
    body = json.dumps({"model": model_id, "messages": PROMPT, "temperature": 1.0, "max_tokens": 3000, "seed": 1,
                       "tts_strategy": "beam_search", "tts_beam_size": 4, "tts_candidates_per_step": 4,
                       "tts_max_steps": 400}).encode()
    where = httpx.URL(server.url)
    big = socket.create_connection((where.host, where.port))
    big.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body) + body)
    health = server.url.replace("/v1", "/health")
    deadline = time.monotonic() + 30
    while httpx.get(health, timeout=5).json()["active"] < 1:
        assert time.monotonic() < deadline, "the big request never started"
        time.sleep(0.2)
    small = [time.perf_counter()]
    for s in range(3):
        ok = client.chat.completions.create(model=model_id, messages=PROMPT, max_tokens=16, seed=s)
        assert ok.choices[0].message.content is not None
    small.append(time.perf_counter())
    big.setblocking(False)
    with pytest.raises(BlockingIOError):  # no answer yet: the small requests were answered while the big one ran
        big.recv(1)
    assert small[1] - small[0] < 30
    big.close()
    deadline = time.monotonic() + 30
    while httpx.get(health, timeout=5).json()["active"]:
        assert time.monotonic() < deadline, "the abandoned request was not cancelled"
        time.sleep(0.2)


def test_metrics_in_prometheus_format(server, client, model_id):
    client.chat.completions.create(model=model_id, messages=PROMPT, max_tokens=8)
    client.chat.completions.create(model=model_id, messages=PROMPT, max_tokens=8,
                                   extra_body={"tts_strategy": "online_bon", **SMALL_TTS})
    httpx.post(f"{server.url}/chat/completions", json={"model": model_id, "messages": []}, timeout=30)
    text = httpx.get(server.url.replace("/v1", "/metrics"), timeout=10).text
    from prometheus_client.parser import text_string_to_metric_families

    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}
    assert samples[("kk_requests_total", (("status", "200"), ("strategy", "plain")))] >= 1
    assert samples[("kk_requests_total", (("status", "200"), ("strategy", "online_bon")))] >= 1
    assert samples[("kk_tts_rounds_total", (("strategy", "online_bon"),))] >= 1
    assert samples[("kk_generated_tokens_total", ())] > 0
    assert ("kk_queue_depth", ()) in samples and ("kk_active_sequences", ()) in samples
    assert any(name == "kk_request_latency_seconds_bucket" for name, _ in samples)


def test_every_log_line_of_a_request_carries_its_id(server, client, model_id, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="kaggle_kit.service"):
        r = client.chat.completions.with_raw_response.create(model="someone-elses-model", messages=PROMPT, max_tokens=8)
        time.sleep(0.3)
    rid = r.headers["x-request-id"]
    assert r.parse().id == f"chatcmpl-{rid}"
    mine = [rec.getMessage() for rec in caplog.records if rid in rec.getMessage()]
    assert any("started" in m for m in mine) and any("finished" in m for m in mine) and any("adjusted" in m for m in mine)
    assert all(m.startswith(f"[{rid}]") for m in mine)


def test_async_client_concurrent_streams(server, model_id):
    from openai import AsyncOpenAI

    async def go():
        c = AsyncOpenAI(base_url=server.url, api_key="x", max_retries=0, timeout=300)

        async def one(seed, stream):
            kw = dict(model=model_id, messages=PROMPT, temperature=0.9, max_tokens=40, seed=seed)
            if not stream:
                return (await c.chat.completions.create(**kw)).choices[0].message.content
            parts = []
            async for chunk in await c.chat.completions.create(stream=True, **kw):
                if chunk.choices and chunk.choices[0].delta.content:
                    parts.append(chunk.choices[0].delta.content)
            return "".join(parts)

        streamed = await asyncio.gather(*[one(s, True) for s in range(4)])
        whole = await asyncio.gather(*[one(s, False) for s in range(4)])
        return streamed, whole

    import asyncio

    streamed, whole = asyncio.run(go())
    assert streamed == whole and all(streamed)


def test_langchain_chat_openai(server, model_id):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=server.url, api_key="x", model=model_id, temperature=0.7, max_tokens=60, seed=4,
                     extra_body={"tts_strategy": "online_bon", **SMALL_TTS})
    msg = llm.invoke("Optimize this CUDA kernel: relu")
    assert msg.content and msg.response_metadata["model_name"] == model_id
    assert msg.response_metadata.get("finish_reason") in ("stop", "length")
    pieces = [c.content for c in llm.stream("Optimize this CUDA kernel: relu")]
    assert "".join(pieces) == msg.content  # same seed, same TTS answer, streamed step by step


def _count(server, strategy: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(server.url.replace("/v1", "/metrics"), timeout=10).text
    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
               if s.name == "kk_requests_total" and s.labels == {"status": "200", "strategy": strategy})


def test_litellm_completion(server, model_id):
    litellm = pytest.importorskip("litellm", reason="LiteLLM did not install")
    before = _count(server, "offline_bon")
    r = litellm.completion(model=f"openai/{model_id}", api_base=server.url, api_key="x", messages=PROMPT,
                           max_tokens=30, temperature=0.7, seed=2,
                           extra_body={"tts_strategy": "offline_bon", "tts_num_trajectories": 2})
    assert r.choices[0].message.content and r.model == model_id
    assert _count(server, "offline_bon") == before + 1  # the tts_* fields reached the server


def test_stop_frees_the_port():
    srv = kk.serve(port=0)
    port = srv.port
    srv.stop()
    assert not srv.thread.is_alive()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # would fail if the server still held it


def test_cli_serve(tiny_model_dir):
    from fake_servers import free_port

    port = free_port()
    cli = Path(sys.executable).parent / "kaggle-kit"
    proc = subprocess.Popen([cli, "serve", "--model", tiny_model_dir, "--port", str(port), "--served-model-name", "tiny"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
            assert proc.poll() is None, proc.stderr.read()[-3000:]
        c = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        assert [m.id for m in c.models.list().data] == ["tiny"]
        r = c.chat.completions.create(model="tiny", messages=PROMPT, max_tokens=8, extra_body={"tts_strategy": "offline_bon"})
        assert r.choices[0].message.content is not None
    finally:
        proc.terminate()
        proc.wait(30)


def test_strategy_routes_as_llm_tts_service_has_them(server, model_id):
    """/v1/{strategy}/chat/completions and /v1/{strategy}/{scorer}/chat/completions, for clients that
    cannot send extra body fields: a stock OpenAI client pointed at the route runs that strategy."""
    before = _count(server, "beam_search")
    routed = OpenAI(base_url=f"{server.url}/beam_search/perplexity", api_key="dummy", max_retries=0, timeout=300)
    r = routed.chat.completions.create(model=model_id, messages=PROMPT, max_tokens=24, seed=1,
                                       extra_body={"tts_beam_size": 2, "tts_candidates_per_step": 2, "tts_max_steps": 3})
    meta = r.model_dump()["tts_metadata"]
    assert meta["strategy"] == "beam_search" and meta["scorer"] == "perplexity"
    assert _count(server, "beam_search") == before + 1
    bad = httpx.post(f"{server.url}/greedy/chat/completions", json={"model": model_id, "messages": PROMPT}, timeout=30)
    assert bad.status_code == 404 and "offline_bon, online_bon, beam_search" in bad.json()["error"]["message"]
    clash = httpx.post(f"{server.url}/online_bon/chat/completions", timeout=30,
                       json={"model": model_id, "messages": PROMPT, "tts_strategy": "offline_bon"})
    assert clash.status_code == 400 and clash.json()["error"]["param"] == "tts_strategy"
