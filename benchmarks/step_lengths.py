"""Steps per answer, tokens per step, and prompt lengths, in the tiny model's tokens.

Splits answers with the same rule the strategies use (kaggle_kit.tts.steps): the
bundled kernel solutions wrapped as a model would answer, a CUDA answer written for
this script, and the tiny model's own generations on the bundled kernel prompts.
Also prints every bundled kernel prompt's length against the Kaggle window. Used to
pick the step-boundary defaults in kaggle_kit/tts/params.py.

    .venv/bin/python benchmarks/step_lengths.py [--model DIR] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import statistics

import kaggle_kit as kk
from kaggle_kit.engine.chat_template import prompt_ids
from kaggle_kit.engine.types import GenerationRequest, SamplingSpec
from kaggle_kit.tts.steps import split_points, token_pieces
from kernels_eval.problems import SOLUTIONS, load_problems
from kernels_eval.prompts import build_messages

SETTINGS = [(0, 10_000), (4, 128), (8, 256), (16, 384), (32, 512)]

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


def summarise(name, answers_pieces, stops=("\n\n",)) -> list[dict]:
    rows = []
    for lo, hi in SETTINGS:
        counts, lengths = [], []
        for pieces in answers_pieces:
            ends = split_points(pieces, stops, lo, hi)
            counts.append(len(ends))
            lengths += [b - a for a, b in zip([0] + ends[:-1], ends)]
        short = sum(n < 8 for n in lengths) / max(1, len(lengths))
        rows.append({"answers": name, "min_step_tokens": lo, "max_step_tokens": hi,
                     "steps_per_answer": statistics.mean(counts), "median_step_tokens": statistics.median(lengths),
                     "max_step": max(lengths), "short_steps": short})
        print(f"{name:>16} | min {lo:>2} max {hi:>5} | steps/answer {statistics.mean(counts):5.1f} | "
              f"tokens/step median {statistics.median(lengths):5.0f} max {max(lengths):4d} | steps < 8 tokens {short:5.1%}")
    return rows


def solution_answers() -> list[str]:
    """The bundled reference solutions as a model returns them: a sentence, then the code block."""
    return [f"Here is a faster version with a custom kernel.\n\n```python\n{p.read_text().rstrip()}\n```\n"
            for p in sorted(SOLUTIONS.glob("*.py"))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="default: the tiny model cache")
    ap.add_argument("--window", type=int, default=5120, help="the Kaggle max_model_len")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from kaggle_kit.tiny import ensure_tiny_model

    kk.ensure_model(str(ensure_tiny_model(args.model)), max_model_len=args.window)
    eng = kk.VLLMClient.get_engine()
    tok = eng.tokenizer
    out = {"model": args.model, "vocab": len(tok), "window": args.window, "prompts": [], "steps": []}

    print("bundled kernel prompts (tokens) against the window:")
    for problem in load_problems():
        for device in ("cuda", "cpu"):
            for thinking in (False, True):
                n = len(prompt_ids(tok, build_messages(problem, device, thinking), thinking))
                out["prompts"].append({"problem": problem.name, "device": device, "thinking": thinking, "tokens": n})
    lens = [p["tokens"] for p in out["prompts"]]
    print(f"  {len(lens)} prompts: min {min(lens)}, median {statistics.median(lens):.0f}, max {max(lens)} tokens; "
          f"{args.window - max(lens)} tokens left for the answer at the longest")

    problems = load_problems()
    reqs = [GenerationRequest(prompt_ids(tok, build_messages(p, "cuda", False), False),
                              SamplingSpec(n=4, max_tokens=512, temperature=0.6, top_p=0.95, top_k=20, seed=0))
            for p in problems]
    answers = [c.token_ids for outs in eng.generate(reqs) for c in outs]
    encoded = {"solutions": [tok.encode(a, add_special_tokens=False) for a in solution_answers()],
               "CUDA answer": [tok.encode(CUDA_ANSWER, add_special_tokens=False)], "tiny model": answers}
    for name, seqs in encoded.items():
        out["steps"] += summarise(name, [token_pieces(tok, ids) for ids in seqs])
    sizes = {name: [len(s) for s in seqs] for name, seqs in encoded.items()}
    for name, n in sizes.items():
        print(f"({name}: {len(n)} answers, {statistics.median(n):.0f} tokens median)")
    out["answer_tokens"] = sizes
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
