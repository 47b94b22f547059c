"""One-shot prompts: an example problem and its custom-kernel solution, then the
problem, then the instruction to return ModelNew in one python code block.
Written for this project. The chat template (and Qwen3's thinking switch) is
applied by kaggle_kit when the prompt is sent.
"""
from __future__ import annotations

from kernels_eval.problems import Problem

SYSTEM = ("You are an expert in GPU programming. You replace PyTorch operators with faster custom kernels "
          "while keeping the results numerically equivalent.")

EXAMPLE_PROBLEM = '''import torch
import torch.nn as nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, a, b):
        return a * 2.0 + b


def get_inputs():
    return [torch.randn(1 << 20, device="cuda"), torch.randn(1 << 20, device="cuda")]


def get_init_inputs():
    return []
'''

EXAMPLE_SOLUTION_CUDA = '''import torch
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

cuda_source = r"""
#include <torch/extension.h>

__global__ void axpb_kernel(const float* a, const float* b, float* out, int64_t n) {
    int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (i < n) out[i] = 2.0f * a[i] + b[i];
}

torch::Tensor axpb(torch::Tensor a, torch::Tensor b) {
    auto out = torch::empty_like(a);
    int64_t n = a.numel();
    int threads = 256;
    int blocks = (int)((n + threads - 1) / threads);
    axpb_kernel<<<blocks, threads>>>(a.data_ptr<float>(), b.data_ptr<float>(), out.data_ptr<float>(), n);
    return out;
}
"""

ext = load_inline(name="axpb_ext", cpp_sources="torch::Tensor axpb(torch::Tensor a, torch::Tensor b);",
                  cuda_sources=cuda_source, functions=["axpb"])


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, a, b):
        return ext.axpb(a.contiguous(), b.contiguous())
'''

EXAMPLE_SOLUTION_CPP = '''import torch
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

cpp_source = r"""
#include <torch/extension.h>

torch::Tensor axpb(torch::Tensor a, torch::Tensor b) {
    auto out = torch::empty_like(a);
    const float* pa = a.data_ptr<float>();
    const float* pb = b.data_ptr<float>();
    float* po = out.data_ptr<float>();
    for (int64_t i = 0; i < a.numel(); ++i) po[i] = 2.0f * pa[i] + pb[i];
    return out;
}
"""

ext = load_inline(name="axpb_ext", cpp_sources=cpp_source, functions=["axpb"])


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, a, b):
        return ext.axpb(a.contiguous(), b.contiguous())
'''


def build_messages(problem: Problem, device: str = "cuda", thinking: bool = False) -> list[dict[str, str]]:
    """Chat messages asking for a ModelNew with custom kernels for `problem`."""
    if device not in ("cuda", "cpu"):
        raise ValueError(f"device must be 'cuda' or 'cpu', got {device!r}")
    kind = "CUDA kernels (torch.utils.cpp_extension.load_inline with cuda_sources)" if device == "cuda" \
        else "C++ code (torch.utils.cpp_extension.load_inline with cpp_sources)"
    solution = EXAMPLE_SOLUTION_CUDA if device == "cuda" else EXAMPLE_SOLUTION_CPP
    how = ("Reason about memory traffic and parallelism first, then give the code."
           if thinking else "Answer with the code only, without explanations.")
    user = (
        f"Here is an example. The architecture to optimise:\n\n```python\n{EXAMPLE_PROBLEM}```\n\n"
        f"A faster version written with custom {kind}:\n\n```python\n{solution}```\n\n"
        f"Now optimise this architecture:\n\n```python\n{problem.source.rstrip()}\n```\n\n"
        f"Write a class ModelNew with the same constructor arguments and forward signature as Model, "
        f"implemented with custom {kind}. Keep the numerical results the same as Model's. {how} "
        f"Return one complete python code block that defines ModelNew and everything it needs."
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def build_refinement_messages(problem: Problem, device: str, previous_answer: str, feedback_text: str,
                              thinking: bool = False) -> list[dict[str, str]]:
    """The next attempt's chat: the problem, the last attempt (its code only), and what the evaluator said.

    Only the last attempt is sent, so the prompt does not grow with the rounds; the whole
    lineage is kept in the attempt tree for people to read.
    """
    from kernels_eval.parsing import parse_response

    parsed = parse_response(previous_answer)
    shown = f"```python\n{parsed.code.rstrip()}\n```" if parsed.ok else previous_answer.strip()[-3000:]
    return build_messages(problem, device, thinking) + [
        {"role": "assistant", "content": shown},
        {"role": "user", "content": feedback_text + "\n\nReturn one complete python code block that defines ModelNew."},
    ]
