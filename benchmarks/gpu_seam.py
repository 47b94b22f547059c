"""The engine seam's newer paths on a real GPU and real CUDA vLLM (the GPU machine; `bash
benchmarks/gpu_rehearsal.sh seam OUT` after staging). Prints what it saw, as JSON:

  1. ConfidenceStop: two same-seed samples and a bar between their lowest 8-token windows: the lower one
     is aborted where the rule fires (and is the start of the unwatched sample), the other is untouched,
     nothing is left in the engine;
  2. deepconf against offline best-of-N at the same N and seed on a kernel prompt: tokens, stopped traces;
  3. the critic scorer: its judge requests and how much of their prompts the prefix cache served;
  4. the evaluator on CUDA: each bundled CUDA solution, its planted wrong and slow variants, their verdicts
     and output signatures, and how self-consistency groups them (the slow one computes what the reference
     does, the wrong one does not).

    python benchmarks/gpu_seam.py --model DIR [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def confidence_stop(engine) -> dict:
    from kaggle_kit.engine.chat_template import prompt_ids
    from kaggle_kit.engine.types import LOW_CONFIDENCE, ConfidenceStop, GenerationRequest, SamplingSpec, token_confidence

    ids = prompt_ids(engine.tokenizer, [{"role": "user", "content": "Optimise the relu kernel."}], False)
    free = SamplingSpec(n=2, temperature=1.0, max_tokens=96, logprobs=5, seed=3)
    (whole,) = engine.generate([GenerationRequest(ids, free)])
    window = 8
    lows = [float(np.convolve(token_confidence(c.returned_logprobs, 5), np.ones(window) / window, "valid").min())
            for c in whole]
    bar = sum(lows) / 2
    rule = ConfidenceStop(bar, window)
    t = time.perf_counter()
    (watched,) = engine.generate([GenerationRequest(ids, SamplingSpec(**{**free.__dict__, "confidence_stop": rule}))])
    low = int(np.argmin(lows))
    return {"lowest_windows": lows, "bar": bar, "seconds": round(time.perf_counter() - t, 3),
            "stopped_tokens": watched[low].num_tokens, "whole_tokens": whole[low].num_tokens,
            "stopped_finish": watched[low].finish_reason, "stopped_is_prefix":
                watched[low].token_ids == whole[low].token_ids[:watched[low].num_tokens],
            "max_logprob_diff": float(np.max(np.abs(watched[low].chosen_logprobs
                                                     - whole[low].chosen_logprobs[:watched[low].num_tokens]))),
            "other_untouched": watched[1 - low].token_ids == whole[1 - low].token_ids,
            "low_confidence": watched[low].finish_reason == LOW_CONFIDENCE,
            "left_in_engine": engine.has_unfinished()}


def strategies(messages) -> dict:
    import kaggle_kit as kk

    opts = dict(num_trajectories=8, warmup_traces=4, max_tokens=1024, seed=7, scorer="perplexity")
    out = {}
    for strategy in ("offline_bon", "deepconf"):
        t = time.perf_counter()
        r = kk.run_strategy(messages, strategy=strategy, **opts)
        out[strategy] = {"generated_tokens": r.usage.generated_tokens, "early_stopped": r.usage.early_stopped,
                         "candidates": len(r.candidates), "seconds": round(time.perf_counter() - t, 2),
                         "text_sha": hash(r.text) & 0xFFFFFFFF}
    t = time.perf_counter()
    r = kk.run_strategy(messages, strategy="offline_bon", scorer="critic", num_trajectories=4, max_tokens=1024, seed=7)
    out["critic"] = {"engine_calls": r.usage.engine_calls, "prompt_tokens": r.usage.prompt_tokens,
                     "cached_prompt_tokens": r.usage.cached_prompt_tokens,
                     "verdicts": [c.aggregated_score for c in r.candidates], "seconds": round(time.perf_counter() - t, 2)}
    return out


def evaluator() -> dict:
    from concurrent.futures import ThreadPoolExecutor

    from kernels_eval.consensus import vote
    from kernels_eval.evaluate import evaluate
    from kernels_eval.problems import load_problems

    from kaggle_kit.tiny import planted

    problems = {p.name: p for p in load_problems()}
    jobs = []
    for sol, (name, device, faults) in planted.PLANTED.items():
        if device != "cuda":
            continue
        ref = planted.reference_answer(sol).removeprefix("```python\n").removesuffix("\n```")
        jobs.append((sol, "reference", problems[name], ref))
        for kind in ("incorrect", "slow"):
            fault = next(f for f in faults if f.kind == kind)
            jobs.append((sol, kind, problems[name], planted.apply(ref, [fault])))
    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(lambda j: evaluate(j[2], j[3], "cuda", trials=3), jobs))
    rows = [{"solution": s, "variant": v, "status": r.status.value, "speedup": r.speedup,
             "signature_values": len((r.output_signature or [{}])[0].get("values") or [])}
            for (s, v, _, _), r in zip(jobs, results)]
    by_problem: dict[str, list] = {}
    for (_, _, p, _), r in zip(jobs, results):
        by_problem.setdefault(p.name, []).append(r)  # reference, incorrect, slow
    groups = {name: vote(dict(enumerate(rs)), [0.5] * len(rs)).groups for name, rs in by_problem.items()}
    return {"evaluations": rows, "consensus_groups": groups}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import kaggle_kit as kk
    from kernels_eval.problems import load_problems
    from kernels_eval.prompts import build_messages

    t = time.perf_counter()
    kk.ensure_model(args.model)
    report = {"load_s": round(time.perf_counter() - t, 1)}
    engine = kk.VLLMClient.get_engine()
    report["confidence_stop"] = confidence_stop(engine)
    relu = next(p for p in load_problems() if p.short_name == "relu")
    report["strategies"] = strategies(build_messages(relu, "cuda"))
    report["evaluator"] = evaluator()
    text = json.dumps(report, indent=1, default=str)
    print(text)
    if args.json:
        open(args.json, "w").write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
