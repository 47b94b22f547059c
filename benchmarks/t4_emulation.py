"""The kernel evaluator beside vLLM on a Kaggle T4, emulated on a bigger NVIDIA GPU.

A T4 has 14.75 GiB; vLLM at gpu_memory_utilization 0.91 leaves 0.09 of it, 1359 MiB, for
everything else. This script:
  1. measures every bundled problem's footprint in the evaluator on a free GPU (a pure
     PyTorch ModelNew for the problems without a CUDA reference; the CUDA references for
     relu, vector_add and softmax): the subprocess's whole GPU memory (NVML) and the
     allocator's peak;
  2. starts a blocker process that holds all GPU memory but --leave MiB (default 1359),
     then evaluates the bundled CUDA reference solutions built for the T4
     (TORCH_CUDA_ARCH_LIST=7.5+PTX: sm75 code, PTX the bigger GPU JIT-compiles), with the
     CPU affinity the caller gives (run it under `taskset -c 0-3`: Kaggle's 4 cores);
  3. checks the out-of-memory rules on real CUDA errors beside the blocker: a candidate
     needing 2 GiB that would fit a free GPU (harness_error), and one asking for more than
     the whole GPU (runtime_error: the candidate's fault).

    TORCH_CUDA_ARCH_LIST=7.5+PTX taskset -c 0-3 python benchmarks/t4_emulation.py --json OUT
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kernels_eval.evaluate import evaluate  # noqa: E402
from kernels_eval.problems import load_problems, reference_solution  # noqa: E402
from kernels_eval.result import Status  # noqa: E402

T4_TOTAL_MIB = 14.75 * 1024
PLAN_UTILIZATION = 0.91

BLOCKER = r"""
import sys, time, torch
leave = int(sys.argv[1]) << 20
free, total = torch.cuda.mem_get_info()
hold = torch.empty(max(0, free - leave), dtype=torch.uint8, device="cuda")
free, total = torch.cuda.mem_get_info()
print(free, total, flush=True)
time.sleep(100000)
"""

TORCH_CANDIDATE = '''import importlib.util, sys
import torch.nn as nn
Model = sys.modules["kk_reference"].Model


class ModelNew(nn.Module):  # the reference's own computation, as a stand-in candidate for the footprint
    def __init__(self, *args):
        super().__init__()
        self.inner = Model(*args)

    def forward(self, *xs):
        return self.inner(*xs)
'''

WORKSPACE = '''import torch
import torch.nn as nn
import sys
Model = sys.modules["kk_reference"].Model


class ModelNew(Model):
    def forward(self, x):
        scratch = torch.empty(2 << 30, dtype=torch.uint8, device=x.device)  # a 2 GiB workspace
        return torch.relu(x) + scratch[:1].float() * 0
'''

BOMB = '''import torch
import torch.nn as nn


class ModelNew(nn.Module):
    def forward(self, x):
        hog = torch.empty(1 << 40, dtype=torch.uint8, device=x.device)  # 1 TiB: more than any GPU has
        return torch.relu(x)
'''


def nvidia_smi_free_mib() -> int:
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.free", "--format=csv,noheader,nounits", "-i", "0"],
                         capture_output=True, text=True).stdout
    return int(out.strip().splitlines()[0])


def summary(r) -> dict:
    p = r.provenance or {}
    return {"status": r.status.value, "flags": r.flags, "speedup": r.speedup, "runtime_ms": r.runtime_ms,
            "runtime_spread": r.runtime_spread, "compile_s": r.compile_s, "message": (r.message or "")[:300],
            **{k: p.get(k) for k in ("gpu_process_mb", "gpu_context_mb", "gpu_peak_allocated_mb", "gpu_peak_reserved_mb",
                                     "flush_bytes", "l2_bytes", "device_name", "arch_list")}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--leave", type=int, default=int(T4_TOTAL_MIB * (1 - PLAN_UTILIZATION)),
                    help="MiB the blocker leaves free (default: what vLLM at 0.91 leaves on a T4)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--skip-footprints", action="store_true")
    ap.add_argument("--slack", type=float, nargs="+", default=[100.0],
                    help="launch slack(s) in microseconds to time the references with (0 = none)")
    args = ap.parse_args()
    cache = Path(os.environ.get("KK_KERNEL_CACHE") or tempfile.mkdtemp(prefix="kk-t4-"))
    report = {"leave_mib": args.leave, "cpu_affinity": sorted(os.sched_getaffinity(0)),
              "arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST", "auto"), "footprints": {}, "beside_engine": {},
              "oom_rules": {}}

    if not args.skip_footprints:  # 1. on the free GPU
        for problem in load_problems():
            source = reference_solution(problem, "cuda") or TORCH_CANDIDATE
            r = evaluate(problem, source, "cuda", trials=2, cache_dir=cache)
            report["footprints"][problem.name] = {"candidate": "cuda reference" if reference_solution(problem, "cuda")
                                                  else "pytorch stand-in", **summary(r)}
            print(problem.name, json.dumps(report["footprints"][problem.name]), flush=True)

    blocker = subprocess.Popen([sys.executable, "-c", BLOCKER, str(args.leave)], stdout=subprocess.PIPE, text=True)
    try:
        free, total = map(int, blocker.stdout.readline().split())
        time.sleep(1)
        report["blocker"] = {"free_mib_torch": free >> 20, "total_mib": total >> 20, "free_mib_nvidia_smi": nvidia_smi_free_mib()}
        print("blocker:", report["blocker"], flush=True)
        for slack in args.slack:  # 2. the CUDA references beside the "engine"
            for name in ("relu", "vector_add", "softmax"):
                problem = load_problems(names=[name])[0]
                t = time.perf_counter()
                r = evaluate(problem, reference_solution(problem, "cuda"), "cuda", cache_dir=cache, launch_slack_us=slack)
                label = name if slack == args.slack[-1] else f"{name}@slack{slack:g}"
                report["beside_engine"][label] = {"wall_s": round(time.perf_counter() - t, 1), "launch_slack_us": slack,
                                                  **summary(r)}
                print(label, json.dumps(report["beside_engine"][label]), flush=True)
        relu = load_problems(names=["relu"])[0]
        for label, src in (("workspace_2GiB", WORKSPACE), ("memory_bomb", BOMB)):  # 3. the rules on real errors
            r = evaluate(relu, src, "cuda", trials=1, timing=False, cache_dir=cache)
            report["oom_rules"][label] = summary(r)
            print(label, json.dumps(report["oom_rules"][label]), flush=True)
    finally:
        blocker.kill()
    ok = [v["status"] == Status.CORRECT.value and (v["runtime_spread"] or 9) <= 1.05
          for k, v in report["beside_engine"].items() if "@" not in k]
    report["all_references_correct_with_spread_le_1.05"] = all(ok)
    report["oom_rules_hold"] = (report["oom_rules"].get("workspace_2GiB", {}).get("status") == "harness_error"
                                and report["oom_rules"].get("memory_bomb", {}).get("status") == "runtime_error")
    print(json.dumps({k: report[k] for k in ("all_references_correct_with_spread_le_1.05", "oom_rules_hold")}))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
