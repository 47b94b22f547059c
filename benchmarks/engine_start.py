"""How long `kk.ensure_model` takes on this machine with the plan's settings (one engine per process).

    python benchmarks/engine_start.py --model DIR [--json OUT]

Prints the seconds from the call to a registered engine that has answered one request, the
tensor-parallel size, the KV cache the plan asked for, and how vLLM started its workers.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import kaggle_kit as kk

    t = time.perf_counter()
    kk.ensure_model(args.model)
    load_s = time.perf_counter() - t
    engine = kk.VLLMClient.get_engine()
    t = time.perf_counter()
    kk.VLLMClient.generate([{"role": "user", "content": "hi"}], max_tokens=8, temperature=0.0)
    row = {"ensure_model_s": round(load_s, 1), "first_request_s": round(time.perf_counter() - t, 2),
           "tensor_parallel_size": engine.llm.llm_engine.vllm_config.parallel_config.tensor_parallel_size,
           "kv_cache_tokens": engine.kv_cache_tokens, "emulate": os.environ.get("KK_EMULATE_GPU"),
           "cpu_affinity": len(os.sched_getaffinity(0)),
           "worker_start_method": os.environ.get("VLLM_WORKER_MULTIPROC_METHOD") or multiprocessing.get_start_method(),
           "compile_cache": os.environ.get("TRITON_CACHE_DIR")}
    print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
