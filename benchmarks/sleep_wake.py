"""What one vLLM sleep/wake cycle costs, and whether the engine answers the same after it.

A problem too big to evaluate beside the engine can be evaluated while the engine sleeps
(`enable_sleep_mode=True`; `LLM.sleep(level=1)` offloads the weights to host memory and drops
the KV cache, `wake_up()` restores them). Measured here on the real GPU engine, with the plan's
settings (tensor parallel over every visible GPU):

    python benchmarks/sleep_wake.py --model DIR [--cycles 3] [--json OUT]

Prints, per cycle: seconds to sleep and to wake, GPU memory free per GPU asleep and awake
(nvidia-smi), and whether greedy tokens after waking equal those before sleeping.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kaggle_kit.engine import emulate  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--cycles", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import kaggle_kit as kk
    from vllm import SamplingParams

    free0 = emulate.free_bytes()
    t = time.perf_counter()
    llm = kk.load_model(args.model, enable_sleep_mode=True)
    report = {"load_s": round(time.perf_counter() - t, 1), "free_mib_before_load": [b >> 20 for b in free0],
              "tensor_parallel_size": llm.llm_engine.vllm_config.parallel_config.tensor_parallel_size, "cycles": []}
    prompt = "Write a CUDA kernel for relu."
    greedy = SamplingParams(temperature=0, max_tokens=64)

    def tokens():
        return list(llm.generate([prompt], greedy, use_tqdm=False)[0].outputs[0].token_ids)

    before = tokens()
    report["free_mib_awake"] = [b >> 20 for b in emulate.free_bytes()]
    for _ in range(args.cycles):
        t = time.perf_counter()
        llm.sleep(level=1)
        sleep_s = time.perf_counter() - t
        asleep = [b >> 20 for b in emulate.free_bytes()]
        t = time.perf_counter()
        llm.wake_up()
        wake_s = time.perf_counter() - t
        after = tokens()
        row = {"sleep_s": round(sleep_s, 2), "wake_s": round(wake_s, 2), "free_mib_asleep": asleep,
               "free_mib_awake": [b >> 20 for b in emulate.free_bytes()], "same_tokens_after_wake": after == before}
        report["cycles"].append(row)
        print(json.dumps(row), flush=True)
    print(json.dumps({k: v for k, v in report.items() if k != "cycles"}))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
