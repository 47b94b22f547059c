"""Reference CPU solution for 04_row_sum: a C++ extension (load_inline, cpp_sources)."""
import torch
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

cpp_source = r"""
#include <torch/extension.h>

torch::Tensor row_sum_forward(torch::Tensor x) {
    TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "row_sum_forward expects a contiguous 2-D tensor");
    const int64_t rows = x.size(0), cols = x.size(1);
    auto y = torch::empty({rows}, x.options());
    const float* in = x.data_ptr<float>();
    float* out = y.data_ptr<float>();
    at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
            double acc = 0.0;  // double accumulation: closer to torch's pairwise sum
            for (int64_t c = 0; c < cols; ++c) acc += in[r * cols + c];
            out[r] = static_cast<float>(acc);
        }
    });
    return y;
}
"""

ext = load_inline(name="kk_row_sum_cpp", cpp_sources=cpp_source, functions=["row_sum_forward"],
                  extra_cflags=["-O3"], verbose=False)


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ext.row_sum_forward(x.contiguous())
