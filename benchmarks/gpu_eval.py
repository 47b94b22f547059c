"""The GPU path of kernels_eval, on a real GPU (CI has none).

  1. the bundled CUDA solutions through the isolated evaluator (built for the T4's
     sm75 and the local GPU: TORCH_CUDA_ARCH_LIST="7.5;<local>");
  2. timing: the spread (max/min) of 5 repeated measurements of one kernel with our
     method (CUDA events, L2 flush, median), and its agreement with
     triton.testing.do_bench's median for the same call;
  3. hostile GPU candidates: an illegal memory access and a GPU memory bomb.

    PYTHONPATH=. python3 benchmarks/gpu_eval.py [--out results.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from kernels_eval.evaluate import evaluate
from kernels_eval.timing import time_calls
from kernels_eval.problems import load_problems, reference_solution

ILLEGAL = r'''
import torch, torch.nn as nn
from torch.utils.cpp_extension import load_inline
src = r"""
#include <torch/extension.h>
__global__ void bad(float* y) { float* p = nullptr; y[threadIdx.x] = p[threadIdx.x + (1 << 28)]; }
torch::Tensor run(torch::Tensor x) { auto y = torch::empty_like(x); bad<<<1, 32>>>(y.data_ptr<float>()); return y; }
"""
ext = load_inline("kk_illegal", cpp_sources="torch::Tensor run(torch::Tensor x);", cuda_sources=src, functions=["run"])
class ModelNew(nn.Module):
    def forward(self, x):
        return ext.run(x)
'''
BOMB = '''
import torch, torch.nn as nn
class ModelNew(nn.Module):
    def forward(self, x):
        hog = [torch.empty(1 << 34, dtype=torch.uint8, device="cuda") for _ in range(64)]
        return torch.relu(x)
'''


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    cap = torch.cuda.get_device_capability()
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", f"7.5;{cap[0]}.{cap[1]}")
    report = {"device": torch.cuda.get_device_name(), "capability": cap, "torch": torch.__version__,
              "arch_list": os.environ["TORCH_CUDA_ARCH_LIST"], "solutions": [], "hostile": []}

    for name in ("relu", "vector_add", "softmax"):
        problem = load_problems(names=[name])[0]
        t = time.perf_counter()
        r = evaluate(problem, reference_solution(problem, "cuda"), "cuda")
        row = {"problem": problem.name, "status": r.status.value, "flags": r.flags, "wall_s": round(time.perf_counter() - t, 1),
               "compile_s": r.compile_s, "cached": r.cached_build, "runtime_ms": r.runtime_ms,
               "ref_runtime_ms": r.ref_runtime_ms, "speedup": r.speedup, "spread": r.runtime_spread,
               "message": r.message[:500]}
        report["solutions"].append(row)
        print(json.dumps(row), flush=True)

    # Timing agreement, in this process (trusted code): our relu kernel on the problem's input.
    relu = load_problems(names=["relu"])[0]
    ns: dict = {}
    exec(compile(reference_solution(relu, "cuda"), "relu_cuda", "exec"), ns)
    x = torch.randn(4096, 4096, device="cuda")
    fn = lambda: ns["ext"].relu_forward(x)  # noqa: E731
    clocks = {"Event": torch.cuda.Event, "elapsed": torch.cuda.Event.elapsed_time, "record": torch.cuda.Event.record,
              "sync": torch.cuda.synchronize}
    ours = [time_calls(fn, "cuda", warmup=3, iters=10, rounds=5, flush_bytes=256 << 20, clocks=clocks)[0] for _ in range(5)]
    import triton.testing

    triton_ms = triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")
    torch_ms = time_calls(lambda: torch.relu(x), "cuda", 3, 10, 5, 256 << 20, clocks)[0]
    report["timing"] = {
        "kernel": "relu 4096x4096 float32", "ours_ms_5_repeats": ours, "spread_max_over_min": max(ours) / min(ours),
        "ours_median_ms": statistics.median(ours), "triton_do_bench_median_ms": triton_ms,
        "ours_over_triton": statistics.median(ours) / triton_ms, "torch_relu_ms": torch_ms,
        "effective_GBps": 2 * x.numel() * 4 / (statistics.median(ours) * 1e-3) / 1e9,
    }
    print(json.dumps(report["timing"]), flush=True)

    for label, src in (("illegal_memory_access", ILLEGAL), ("gpu_memory_bomb", BOMB)):
        r = evaluate(relu, src, "cuda", run_timeout=120)
        row = {"candidate": label, "status": r.status.value, "correct": r.correct, "message": r.message[:300]}
        report["hostile"].append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
