"""Settings and load planning: every hardware rule, without a GPU."""
import json

import pytest

from kaggle_kit.config import ConfigError, Settings, parse_backend_list
from kaggle_kit.engine.loader import GPUInfo, Hardware, find_model_path, plan_load

T4x2 = Hardware((GPUInfo("Tesla T4", (7, 5), 15.0), GPUInfo("Tesla T4", (7, 5), 15.0)))
H100 = Hardware((GPUInfo("NVIDIA H100", (9, 0), 80.0),))
CPU = Hardware()


def write_model(path, **cfg):
    path.mkdir(parents=True, exist_ok=True)
    base = {"architectures": ["Qwen3ForCausalLM"], "num_attention_heads": 40, "max_position_embeddings": 40960}
    base.update(cfg)
    (path / "config.json").write_text(json.dumps(base))
    return str(path)


@pytest.fixture
def awq_model(tmp_path):
    return write_model(tmp_path / "qwen3-14b-awq", quantization_config={"quant_method": "awq", "bits": 4}, torch_dtype="float16")


def test_backend_list_parsing():
    assert parse_backend_list("vllm, Groq ,echo") == ("vllm", "groq", "echo")
    with pytest.raises(ConfigError, match="unknown backend 'gpt'.*choose from"):
        parse_backend_list("vllm,gpt")
    with pytest.raises(ConfigError, match="empty"):
        parse_backend_list(" , ")


def test_settings_env_and_overrides(monkeypatch):
    monkeypatch.setenv("LLM_BACKEND", "groq,echo")
    monkeypatch.setenv("GROQ_API_KEY", "secret")
    monkeypatch.setenv("OLLAMA_HOST", "127.0.0.1:11435")
    s = Settings.from_env()
    assert s.backends == ("groq", "echo") and s.groq_api_key == "secret"
    assert s.ollama_host == "http://127.0.0.1:11435"
    assert "secret" not in repr(s)  # keys never show up in logs
    assert Settings.from_env(backends="echo").backends == ("echo",)
    with pytest.raises(ConfigError, match="unknown setting"):
        Settings.from_env(bogus=1)


def test_t4_pair_gets_the_seed_settings(awq_model):
    plan = plan_load(awq_model, T4x2)
    k = plan.llm_kwargs
    assert plan.device == "cuda"
    assert k["dtype"] == "half" and k["quantization"] == "awq" and k["tensor_parallel_size"] == 2
    assert k["disable_custom_all_reduce"] is True and k["enforce_eager"] is True
    assert k["gpu_memory_utilization"] == 0.91 and k["max_model_len"] == 5120 and k["enable_prefix_caching"]
    assert k["attention_config"] == {"backend": "TRITON_ATTN"}


def test_ampere_or_newer_keeps_vllm_choices(awq_model):
    k = plan_load(awq_model, H100).llm_kwargs
    assert "quantization" not in k and "dtype" not in k and "disable_custom_all_reduce" not in k
    assert "attention_config" not in k  # vLLM picks FlashAttention on sm80+
    assert k["tensor_parallel_size"] == 1


def test_every_default_is_overridable(awq_model):
    k = plan_load(awq_model, T4x2, {"max_model_len": 2048, "tensor_parallel_size": 1, "enforce_eager": False}).llm_kwargs
    assert k["max_model_len"] == 2048 and k["tensor_parallel_size"] == 1 and k["enforce_eager"] is False


@pytest.mark.parametrize("overrides, message", [
    ({"dtype": "bfloat16"}, "compute capability >= 8.0.*dtype='half'"),
    ({"tensor_parallel_size": 4}, "tensor_parallel_size=4 but 2 GPU"),
    ({"tensor_parallel_size": 3}, "tensor_parallel_size=3 but 2 GPU"),
    ({"max_model_len": 100000}, "exceeds the model's max_position_embeddings"),
])
def test_impossible_gpu_requests_fail_early(awq_model, overrides, message):
    with pytest.raises(ConfigError, match=message):
        plan_load(awq_model, T4x2, overrides)


def test_heads_must_divide_by_tp(tmp_path):
    model = write_model(tmp_path / "m", num_attention_heads=5)
    with pytest.raises(ConfigError, match="does not divide"):
        plan_load(model, T4x2)


def test_cpu_plan(tmp_path, monkeypatch):
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    model = write_model(tmp_path / "tiny", torch_dtype="float32", max_position_embeddings=2048)
    plan = plan_load(model, CPU)
    assert plan.device == "cpu"
    assert plan.llm_kwargs["dtype"] == "float32" and plan.llm_kwargs["block_size"] % 32 == 0
    assert plan.llm_kwargs["max_model_len"] == 2048  # capped at the model's window
    assert plan.env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    for bad, msg in [({"dtype": "half"}, "not supported by vllm-cpu"), ({"block_size": 16}, "multiple of 32"),
                     ({"tensor_parallel_size": 2}, "needs GPUs")]:
        with pytest.raises(ConfigError, match=msg):
            plan_load(model, CPU, bad)


def test_find_model_path_order(tmp_path, monkeypatch):
    kaggle = tmp_path / "input"
    found = write_model(kaggle / "qwen-3" / "transformers" / "14b-awq" / "1")
    settings = Settings.from_env(kaggle_input_dir=str(kaggle))
    assert find_model_path(None, settings) == found
    explicit = write_model(tmp_path / "mine")
    assert find_model_path(explicit, settings) == explicit
    monkeypatch.setenv("VLLM_MODEL_PATH", explicit)
    assert find_model_path(None, Settings.from_env(kaggle_input_dir=str(kaggle))) == explicit
    with pytest.raises(ConfigError, match="has no config.json"):
        find_model_path(str(tmp_path / "nothing"), settings)


def test_no_model_lists_where_it_looked(tmp_path):
    settings = Settings.from_env(kaggle_input_dir=str(tmp_path / "empty"))
    with pytest.raises(ConfigError) as e:
        find_model_path(None, settings)
    msg = str(e.value)
    assert "argument (not set)" in msg and "VLLM_MODEL_PATH (not set)" in msg and str(tmp_path / "empty") in msg
