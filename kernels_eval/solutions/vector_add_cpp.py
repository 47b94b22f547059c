"""Reference CPU solution for 03_vector_add: a C++ extension (load_inline, cpp_sources)."""
import torch
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

cpp_source = r"""
#include <torch/extension.h>

torch::Tensor add_forward(torch::Tensor a, torch::Tensor b) {
    TORCH_CHECK(a.sizes() == b.sizes(), "shapes differ");
    auto y = torch::empty_like(a);
    const float* pa = a.data_ptr<float>();
    const float* pb = b.data_ptr<float>();
    float* py = y.data_ptr<float>();
    at::parallel_for(0, a.numel(), 1 << 14, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) py[i] = pa[i] + pb[i];
    });
    return y;
}
"""

ext = load_inline(name="kk_vector_add_cpp", cpp_sources=cpp_source, functions=["add_forward"],
                  extra_cflags=["-O3"], verbose=False)


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return ext.add_forward(a.contiguous(), b.contiguous())
