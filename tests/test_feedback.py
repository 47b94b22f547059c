"""Feedback for the model, per evaluator status: what it needs, and bounded."""
import pytest

from kernels_eval.feedback import MAX_CHARS, compiler_errors, feedback
from kernels_eval.problems import load_problems
from kernels_eval.prompts import build_refinement_messages
from kernels_eval.result import KernelEvalResult, Status

NVCC_LOG = "\n".join(
    ["[1/3] /usr/local/cuda/bin/nvcc ... -c /tmp/scratch/ext/cuda.cu -o cuda.cuda.o",
     "FAILED: cuda.cuda.o"]
    + [f"In file included from /usr/include/c++/12/bits/stl_algo.h:{i}:" for i in range(40)]
    + ["/tmp/scratch/ext/cuda.cu(12): error: identifier \"blockDim_x\" is undefined",
       "      int i = blockIdx.x * blockDim_x + threadIdx.x;",
       "                           ^",
       "/tmp/scratch/ext/cuda.cu(12): error: identifier \"blockDim_x\" is undefined",  # repeated
       "/tmp/scratch/ext/cuda.cu(20): error: expected a \";\"",
       "2 errors detected in the compilation of \"/tmp/scratch/ext/cuda.cu\".",
       "ninja: build stopped: subcommand failed."]
    + ["noise"] * 500)


def R(status, **kw):
    return KernelEvalResult("01_relu", status, **kw)


def test_compile_errors_are_the_first_distinct_ones_without_include_noise():
    text = compiler_errors(NVCC_LOG)
    assert text.splitlines()[0] == 'cuda.cu(12): error: identifier "blockDim_x" is undefined'
    assert "blockIdx.x * blockDim_x" in text and 'cuda.cu(20): error: expected a ";"' in text
    assert "In file included" not in text and "/tmp/scratch" not in text and text.count("blockDim_x\" is undefined") == 1


@pytest.mark.parametrize("result, parse, must", [
    (R(Status.COMPILE_ERROR, message=NVCC_LOG), "ok", ["did not compile", "blockDim_x"]),
    (R(Status.INCORRECT, compiled=True, max_abs_diff=0.731, message="trial 2: output 0: max abs diff 0.731 exceeds atol=0.0001"),
     "ok", ["output is wrong", "trial 2", "0.731"]),
    (R(Status.RUNTIME_ERROR, message="trial 0: RuntimeError: CUDA error: an illegal memory access was encountered\n"
                                     "--- candidate output ---\n" + "x\n" * 300), "ok", ["illegal memory access"]),
    (R(Status.TIMEOUT, message="run timed out after 180s"), "ok", ["did not finish in time", "180s"]),
    (R(Status.CRASHED, message="the candidate process killed by SIGSEGV during running"), "ok", ["SIGSEGV"]),
    (R(Status.NO_CODE, message="no_code: no fenced code block"), "no_code", ["no fenced python code block"]),
    (R(Status.REJECTED, message="no_modelnew"), "no_modelnew", ["class named ModelNew"]),
    (R(Status.CORRECT, correct=True, speedup=0.8, runtime_ms=0.125, ref_runtime_ms=0.1), "ok",
     ["is correct", "0.125 ms", "0.1 ms", "0.80x", "faster than 0.05 ms"]),
    (R(Status.CORRECT, correct=True, speedup=1.3, runtime_ms=0.1, ref_runtime_ms=0.13, flags=["no_custom_kernel"]), "ok",
     ["does not count", "custom kernel"]),
])
def test_feedback_says_what_the_model_needs_and_stays_short(result, parse, must):
    text = feedback(result, parse, target_speedup=2.0)
    for m in must:
        assert m in text, (m, text)
    assert len(text) <= MAX_CHARS and "noise" not in text


def test_harness_errors_give_no_feedback():
    assert feedback(R(Status.HARNESS_ERROR, message="out of GPU memory")) is None


def test_refinement_prompt_carries_only_the_last_code_and_the_feedback():
    relu = load_problems(names=["relu"])[0]
    answer = "Let me think...\n\n```python\nclass ModelNew:\n    pass\n```\nDone."
    msgs = build_refinement_messages(relu, "cuda", answer, "Your kernel did not compile.")
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert msgs[2]["content"] == "```python\nclass ModelNew:\n    pass\n```"
    assert msgs[3]["content"].startswith("Your kernel did not compile.")
