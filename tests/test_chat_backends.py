"""HTTP backends and the fallback chain, over real sockets on 127.0.0.1."""
import logging

import pytest

from fake_servers import FakeServer, free_port
from kaggle_kit.chat.backends import EchoBackend, OllamaBackend, OpenAICompatBackend
from kaggle_kit.chat.client import SimpleLLMClient
from kaggle_kit.chat.types import AllBackendsFailed, BackendError
from kaggle_kit.config import ConfigError, Settings

MSGS = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "tile it"}]


@pytest.fixture
def no_model(monkeypatch):
    """No engine registered here, whatever an earlier test in this process loaded (the vLLM backend
    then reports itself unavailable, as on a machine without a model)."""
    from kaggle_kit.engine import registry

    monkeypatch.setattr(registry._State, "llm", None)
    monkeypatch.setattr(registry._State, "engine", None)


@pytest.fixture
def openai_srv():
    with FakeServer("openai", reply="openai says") as s:
        yield s


@pytest.fixture
def ollama_srv():
    with FakeServer("ollama", reply="ollama says", model="qwen3:14b") as s:
        yield s


def test_openai_compatible_generate_and_stream(openai_srv):
    openai_srv.api_key = "k1"
    b = OpenAICompatBackend(openai_srv.url, api_key="k1")
    assert b.available()
    r = b.generate(MSGS, max_tokens=33, temperature=0.2, seed=5, stop=["END"])
    assert r.text == "openai says: tile it" and r.backend == "openai" and r.completion_tokens == 4
    sent = openai_srv.requests[-1]
    assert sent["path"] == "/v1/chat/completions" and sent["headers"]["Authorization"] == "Bearer k1"
    body = sent["body"]
    assert body["model"] == "fake-model"  # discovered through /models
    assert body["messages"] == MSGS and body["max_tokens"] == 33 and body["temperature"] == 0.2
    assert body["seed"] == 5 and body["stop"] == ["END"] and body["stream"] is False
    stream = b.stream(MSGS)
    pieces = list(stream)
    assert len(pieces) > 1 and "".join(pieces) == "openai says: tile it"
    assert stream.complete and stream.finish_reason == "stop"
    assert openai_srv.requests[-1]["body"]["stream"] is True


def test_openai_wrong_key_is_not_available(openai_srv):
    openai_srv.api_key = "right"
    assert not OpenAICompatBackend(openai_srv.url, api_key="wrong").available()


def test_ollama_generate_and_stream(ollama_srv):
    b = OllamaBackend(f"http://127.0.0.1:{ollama_srv.port}", "qwen3:14b")
    assert b.available()
    r = b.generate(MSGS, max_tokens=20, enable_thinking=True)
    assert r.text == "ollama says: tile it" and r.finish_reason == "stop"
    body = ollama_srv.requests[-1]["body"]
    assert body["options"]["num_predict"] == 20 and body["think"] is True and body["stream"] is False
    pieces = list(b.stream(MSGS))
    assert len(pieces) > 1 and "".join(pieces) == "ollama says: tile it"


def test_down_servers_are_unavailable_quickly():
    port = free_port()
    assert not OllamaBackend(f"http://127.0.0.1:{port}", "m", health_timeout_s=0.5).available()
    assert not OpenAICompatBackend(f"http://127.0.0.1:{port}/v1", health_timeout_s=0.5).available()
    assert not OpenAICompatBackend("https://api.groq.com/openai/v1", api_key=None, name="groq", probe=False).available()


def test_default_chain_falls_through_in_order(ollama_srv, caplog, no_model):
    # No engine registered, Ollama up, no Groq key: Ollama answers.
    settings = Settings.from_env(ollama_host=f"http://127.0.0.1:{ollama_srv.port}", groq_api_key=None)
    client = SimpleLLMClient(settings=settings)
    assert [b.name for b in client.backends] == ["vllm", "ollama", "groq", "echo"]
    with caplog.at_level(logging.INFO, logger="kaggle_kit.chat.client"):
        assert client.generate(MSGS) == "ollama says: tile it"
    assert client.backend == "ollama"
    assert any("answered by backend ollama" in r.message for r in caplog.records)
    assert client.failures[0] == ("vllm", "not available")


def test_all_down_reaches_echo(no_model):
    settings = Settings.from_env(ollama_host=f"http://127.0.0.1:{free_port()}", groq_api_key=None)
    client = SimpleLLMClient(settings=settings)
    assert client.generate(MSGS) == "Echo: tile it" and client.backend == "echo"


def test_failing_backend_hands_the_same_request_on(openai_srv, ollama_srv):
    openai_srv.fail_with = 500
    settings = Settings.from_env(openai_base_url=openai_srv.url, ollama_host=f"http://127.0.0.1:{ollama_srv.port}")
    client = SimpleLLMClient(["openai", "ollama", "echo"], settings=settings)
    assert client.generate(MSGS) == "ollama says: tile it"
    assert client.backend == "ollama"
    assert openai_srv.requests[-1]["body"]["messages"] == ollama_srv.requests[-1]["body"]["messages"] == MSGS
    assert "HTTP 500" in dict(client.failures)["openai"]


def test_stream_falls_through_before_first_piece(openai_srv, ollama_srv):
    openai_srv.fail_with = 503
    settings = Settings.from_env(openai_base_url=openai_srv.url, ollama_host=f"http://127.0.0.1:{ollama_srv.port}")
    client = SimpleLLMClient(["openai", "ollama"], settings=settings)
    stream = client.stream(MSGS)
    assert "".join(stream) == "ollama says: tile it" and stream.backend == "ollama" and client.backend == "ollama"


def test_stream_cut_mid_way_raises_and_keeps_partial_text(openai_srv):
    openai_srv.drop_mid_stream = True
    client = SimpleLLMClient(["openai", "echo"], settings=Settings.from_env(openai_base_url=openai_srv.url))
    stream = client.stream(MSGS)
    got = []
    with pytest.raises(BackendError):
        for piece in stream:
            got.append(piece)
    assert got == ["openai"] and stream.text == "openai" and not stream.complete


def test_llm_backend_env_sets_the_order(monkeypatch, ollama_srv):
    monkeypatch.setenv("LLM_BACKEND", "echo,ollama")
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{ollama_srv.port}")
    client = SimpleLLMClient()
    assert [b.name for b in client.backends] == ["echo", "ollama"]
    client.generate(MSGS)
    assert client.backend == "echo" and not ollama_srv.requests


def test_bad_input_is_raised_not_fallen_through():
    client = SimpleLLMClient(["echo"])
    with pytest.raises(ValueError, match="empty"):
        client.generate([])
    with pytest.raises(ValueError, match="unknown role"):
        client.generate([{"role": "robot", "content": "x"}])
    with pytest.raises(TypeError, match="content must be a string"):
        client.generate([{"role": "user", "content": 3}])
    with pytest.raises(TypeError, match="chat options"):
        client.generate(MSGS, temprature=0.1)
    with pytest.raises(ConfigError, match="unknown backend 'gpt4'"):
        SimpleLLMClient(["vllm", "gpt4"])


def test_nothing_available_says_why(no_model):
    client = SimpleLLMClient(["vllm"])
    with pytest.raises(AllBackendsFailed, match="vllm: not available"):
        client.generate(MSGS)


def test_echo_streams_words():
    assert list(EchoBackend().stream([{"role": "user", "content": "a b c"}])) == ["Echo:", " a", " b", " c"]


def test_ollama_stream_cut_mid_way_raises(ollama_srv):
    ollama_srv.drop_mid_stream = True
    stream = OllamaBackend(f"http://127.0.0.1:{ollama_srv.port}", "m").stream(MSGS)
    with pytest.raises(BackendError, match="stream ended before"):
        list(stream)
    assert stream.text == "ollama" and not stream.complete
