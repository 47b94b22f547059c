"""Settings and load planning: every hardware rule, without a GPU."""
import json

import pytest

from kaggle_kit.config import ConfigError, Settings, parse_backend_list
from kaggle_kit.engine import emulate
from kaggle_kit.engine.loader import GPU, Hardware, find_model_path, plan_load

GIB = 2**30
T4x2 = Hardware((GPU("Tesla T4", (7, 5), 15 * GIB), GPU("Tesla T4", (7, 5), 15 * GIB)))
H100 = Hardware((GPU("NVIDIA H100", (9, 0), 80 * GIB),))
CPU = Hardware()


def write_model(path, **cfg):
    path.mkdir(parents=True, exist_ok=True)
    base = {"architectures": ["Qwen3ForCausalLM"], "num_attention_heads": 40, "max_position_embeddings": 40960}
    base.update(cfg)
    (path / "config.json").write_text(json.dumps(base))
    return str(path)


@pytest.fixture
def awq_model(tmp_path):
    # Qwen3-14B's shapes (its config.json), AWQ 4-bit group 128 with zero point as published.
    return write_model(tmp_path / "qwen3-14b-awq", hidden_size=5120, intermediate_size=17408, num_key_value_heads=8,
                       head_dim=128, torch_dtype="float16", quantization_config={
                           "quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"})


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
    assert k["dtype"] == "half" and "quantization" not in k and k["tensor_parallel_size"] == 2
    assert any("awq_marlin" in n for n in plan.notes)  # vLLM's own conversion, as its log advises
    assert k["disable_custom_all_reduce"] is True and k["enforce_eager"] is True
    assert k["gpu_memory_utilization"] == 0.91 and k["max_model_len"] == 5120 and k["enable_prefix_caching"]
    assert k["attention_config"] == {"backend": "TRITON_ATTN"}
    assert plan.env["VLLM_USE_FLASHINFER_SAMPLER"] == "0"  # no FlashInfer JIT on Kaggle (it cannot link there)
    assert k["enable_sleep_mode"] is True  # a kernel problem too big beside the engine runs while it sleeps
    # Deciding the (compile-only) allreduce fusion imports FlashInfer, which initialises CUDA here and
    # makes vLLM spawn its two workers instead of forking them (148 s -> 107 s start, emulated T4 x2).
    assert k["compilation_config"] == {"pass_config": {"fuse_allreduce_rms": False}}
    assert "compilation_config" not in plan_load(awq_model, T4x2, {"tensor_parallel_size": 1}).llm_kwargs


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


# The tiny model's shapes (kaggle_kit/tiny/model.py): 2 layers, 4/2 heads of 64, MLP 256.
TINY_SHAPES = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=64, vocab_size=151936, max_position_embeddings=32768)
H200 = Hardware((GPU("NVIDIA H200", (9, 0), int(139.8 * GIB)),))


def test_kv_cache_is_sized_to_the_session_on_a_card_far_too_big(tmp_path, awq_model):
    tiny = write_model(tmp_path / "tiny", torch_dtype="float16", **TINY_SHAPES)
    plan = plan_load(tiny, H200)
    kv = plan.llm_kwargs["kv_cache_memory_bytes"]
    per_token = 2 * 2 * 2 * 64 * 2  # K and V, 2 layers, 2 KV heads of 64, fp16
    assert kv == 256 * 5120 * per_token  # SESSION_SEQUENCES at max_model_len, not 0.91 of 140 GB
    assert any("sized to the session" in n for n in plan.notes)
    assert plan_load(tiny, H200, {"kv_cache_memory_bytes": None}).llm_kwargs["kv_cache_memory_bytes"] is None  # opt out
    assert plan_load(tiny, H200, {"kv_cache_memory_bytes": 1 << 30}).llm_kwargs["kv_cache_memory_bytes"] == 1 << 30
    # Qwen3-14B-AWQ on two T4s needs the whole card: vLLM sizes its cache as before.
    assert "kv_cache_memory_bytes" not in plan_load(awq_model, T4x2).llm_kwargs


def test_emulated_target_gpu(monkeypatch):
    monkeypatch.setenv("KK_EMULATE_GPU", "Tesla T4:7.5:14.75")
    t = emulate.target()
    assert t == emulate.TargetGPU("Tesla T4", (7, 5), 14.75)
    # 0.91 of a T4 in bytes is 0.096 of an H200: the engine gets a T4's budget.
    assert emulate.scale_utilization(0.91, 14.75, 139.8) == pytest.approx(0.096, abs=1e-3)
    # vLLM's weight kernels a T4 could not run are switched off: AWQ runs on Marlin, as on a T4.
    assert emulate.disabled_kernels((7, 5)).split(",") == ["MacheteLinearKernel", "CutlassW4A8LinearKernel",
                                                           "ConchLinearKernel", "AllSparkLinearKernel"]
    assert emulate.disabled_kernels((9, 0)) == ""
    monkeypatch.setenv("KK_EMULATE_GPU", "T4 with 15 GB")
    with pytest.raises(ValueError, match="NAME:MAJOR.MINOR:GIB"):
        emulate.target()


# vLLM 0.19.1's EngineArgs fields (vllm/engine/arg_utils.py of the 0.19.1 wheel, read with `ast`): the
# Kaggle pin, which cannot run here. Every setting the planner writes must be one of them.
VLLM_0_19_1_ENGINE_ARGS = set("""
_api_process_count _api_process_rank additional_config aggregate_engine_logging all2all_backend
allow_deprecated_quantization allowed_local_media_path allowed_media_domains async_scheduling attention_backend
attention_config block_size calculate_kv_scales code_revision collect_detailed_traces compilation_config
config_format convert cp_kv_cache_interleave_size cpu_offload_gb cpu_offload_params cudagraph_capture_sizes
cudagraph_metrics data_parallel_address data_parallel_backend data_parallel_external_lb data_parallel_hybrid_lb
data_parallel_rank data_parallel_rpc_port data_parallel_size data_parallel_size_local data_parallel_start_rank
dbo_decode_token_threshold dbo_prefill_token_threshold dcp_comm_backend dcp_kv_cache_interleave_size
decode_context_parallel_size default_mm_loras disable_cascade_attn disable_chunked_mm_input
disable_custom_all_reduce disable_hybrid_kv_cache_manager disable_log_stats disable_nccl_for_dp_synchronization
disable_sliding_window distributed_executor_backend distributed_timeout_seconds download_dir dtype
ec_transfer_config enable_chunked_prefill enable_dbo enable_elastic_ep enable_ep_weight_filter enable_eplb
enable_expert_parallel enable_flashinfer_autotune enable_layerwise_nvtx_tracing enable_logging_iteration_details
enable_lora enable_mfu_metrics enable_mm_embeds enable_mm_processor_stats enable_prefix_caching enable_prompt_embeds
enable_return_routed_experts enable_sleep_mode enable_tower_connector_lora enforce_eager eplb_config
expert_placement_strategy fail_on_environ_validation fully_sharded_loras gdn_prefill_backend generation_config
gpu_memory_utilization hf_config_path hf_overrides hf_token ignore_patterns interleave_mm_strings
io_processor_plugin kernel_config kv_cache_dtype kv_cache_dtype_skip_layers kv_cache_memory_bytes kv_cache_metrics
kv_cache_metrics_sample kv_events_config kv_offloading_backend kv_offloading_size kv_sharing_fast_prefill
kv_transfer_config language_model_only limit_mm_per_prompt load_format logits_processors logprobs_mode
long_prefill_token_threshold lora_dtype lora_target_modules mamba_block_size mamba_cache_dtype mamba_cache_mode
mamba_ssm_cache_dtype master_addr master_port max_cpu_loras max_cudagraph_capture_size max_logprobs
max_long_partial_prefills max_lora_rank max_loras max_model_len max_num_batched_tokens max_num_partial_prefills
max_num_seqs max_parallel_loading_workers media_io_kwargs mm_encoder_attn_backend mm_encoder_only mm_encoder_tp_mode
mm_processor_cache_gb mm_processor_cache_type mm_processor_kwargs mm_shm_cache_max_object_size_mb mm_tensor_ipc
model model_impl model_loader_extra_config model_weights moe_backend nnodes node_rank num_gpu_blocks_override
offload_backend offload_group_size offload_num_in_group offload_params offload_prefetch_step optimization_level
otlp_traces_endpoint override_attention_dtype override_generation_config performance_mode pipeline_parallel_size
pooler_config prefill_context_parallel_size prefix_caching_hash_algo profiler_config pt_load_map_location
quantization ray_workers_use_nsight reasoning_config reasoning_parser reasoning_parser_plugin renderer_num_workers
revision runner safetensors_load_strategy scheduler_cls scheduler_reserve_full_isl scheduling_policy seed
served_model_name show_hidden_metrics_for_version shutdown_timeout skip_mm_profiling skip_tokenizer_init
specialize_active_lora speculative_config stream_interval structured_outputs_config tensor_parallel_size tokenizer
tokenizer_mode tokenizer_revision tokens_only trust_remote_code ubatch_size use_tqdm_on_load video_pruning_rate
weight_transfer_config worker_cls worker_extension_cls

""".split())


def test_every_planned_setting_is_an_engine_arg_of_the_pin_and_of_the_installed_vllm(tmp_path, awq_model):
    import dataclasses

    from vllm.engine.arg_utils import EngineArgs

    installed = {f.name for f in dataclasses.fields(EngineArgs)}
    tiny = write_model(tmp_path / "tiny", torch_dtype="float32", **TINY_SHAPES)
    plans = [plan_load(awq_model, T4x2), plan_load(awq_model, H100), plan_load(tiny, H200), plan_load(tiny, CPU)]
    keys = set().union(*(p.llm_kwargs for p in plans))
    assert {"kv_cache_memory_bytes", "attention_config", "disable_custom_all_reduce"} <= keys  # the rules ran
    assert keys <= VLLM_0_19_1_ENGINE_ARGS, keys - VLLM_0_19_1_ENGINE_ARGS
    assert keys <= installed, keys - installed


FAKE_SMI = """#!/bin/sh
if [ "$1" = "" ]; then echo "| NVIDIA-SMI 580.159.04   Driver Version: 580.159.04   CUDA Version: 13.0 |"; exit 0; fi
echo "Tesla T4, 7.5, 15360, 15000, 580.159.04"
echo "Tesla T4, 7.5, 15360, 14000, 580.159.04"
echo "[N/A], [N/A], [N/A], [N/A], 580.159.04"
"""


def test_hardware_is_read_without_a_cuda_context(tmp_path, monkeypatch):
    # nvidia-smi, not torch.cuda: a notebook kernel that initialized CUDA makes vLLM spawn its workers.
    from kaggle_kit.engine import nvsmi
    from kaggle_kit.engine.loader import detect_hardware

    (tmp_path / "nvidia-smi").write_text(FAKE_SMI)
    (tmp_path / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:" + __import__("os").environ["PATH"])
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    gpus, driver, cuda = nvsmi.query()
    assert [(g.name, g.capability, g.free_bytes >> 20) for g in gpus] == [("Tesla T4", (7, 5), 15000),
                                                                           ("Tesla T4", (7, 5), 14000)]
    assert (driver, cuda) == ("580.159.04", "13.0")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert [g.free_bytes >> 20 for g in nvsmi.query()[0]] == [14000]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setenv("KK_EMULATE_GPU", "Tesla T4:7.5:14.75")
    hw = detect_hardware()
    assert [g.name for g in hw.gpus] == ["Tesla T4 (emulated on Tesla T4)"] * 2 and hw.min_capability == (7, 5)
    assert hw.gpus[0].real_total_bytes == 15 * GIB and hw.gpus[0].total_bytes == int(14.75 * GIB)
    assert hw.gpus[0].free_bytes == 15000 * 2**20  # what is really free, under the card it stands for
