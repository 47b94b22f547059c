"""The TTS-over-kernel-problems experiment that notebook 02 runs (logic here, tested).

For each problem: build the prompt, run the strategy (one engine call per step
for all problems), parse the chosen answer and every finished candidate, evaluate
the kernels with kernels_eval, and write three tables to the run folder:
  results.csv     one row per problem: the chosen answer, its scores and evaluation
  candidates.csv  one row per finished candidate: score, tokens, evaluation
  steps.csv       every scored step of the search tree (for score traces)
plus summary.json.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd


@dataclass
class Experiment:
    results: pd.DataFrame
    candidates: pd.DataFrame
    steps: pd.DataFrame
    summary: dict
    out_dir: Path


def run_tts_kernels(problems: list[str] | None = None, *, strategy: str = "online_bon", scorer: str = "entropy",
                    device: str = "cuda", out_dir: str | Path = "runs/latest", evaluate_kernels: bool = True,
                    evaluate_candidates: bool = True, thinking: bool = False, eval_options: dict | None = None,
                    progress: bool | None = None, **tts_params) -> Experiment:
    import kaggle_kit as kk
    from kernels_eval.evaluate import evaluate_response
    from kernels_eval.problems import load_problems
    from kernels_eval.prompts import build_messages

    probs = load_problems(names=problems or None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    messages = [build_messages(p, device, thinking) for p in probs]
    results = kk.run_strategy_batch(messages, strategy=strategy, scorer=scorer, enable_thinking=thinking,
                                    progress=progress, **tts_params)
    rows, cand_rows, step_rows = [], [], []
    opts = {"trials": 3, **(eval_options or {})}
    for p, r in zip(probs, results):
        parse_status, ev = evaluate_response(p, r.text, device, run=evaluate_kernels, **opts)
        row = {"problem": p.name, **r.to_row(), "parse_status": parse_status}
        row.pop("text")
        row.update({f"eval_{k}": v for k, v in (ev.to_dict() if ev else {}).items()
                    if k in ("status", "compiled", "correct", "speedup", "runtime_ms", "ref_runtime_ms")})
        row["eval_flags"] = ",".join(ev.flags) if ev else ""
        rows.append(row)
        for i, c in enumerate(r.candidates):
            chosen = bool(c.steps and c.steps[-1].selected)
            if chosen:
                status, cev = parse_status, ev
            elif evaluate_candidates:
                status, cev = evaluate_response(p, c.text, device, run=evaluate_kernels, **opts)
            else:
                status, cev = None, None
            cand_rows.append({"problem": p.name, "strategy": strategy, "scorer": scorer, "candidate": i, "chosen": chosen,
                              "aggregated_score": c.aggregated_score, "num_tokens": c.num_tokens, "num_steps": len(c.steps),
                              "completion_reason": c.completion_reason.value, "parse_status": status,
                              "eval_status": cev.status.value if cev else None,
                              "correct": bool(cev.counts_as_correct) if cev else False})
        for s in r.tree:
            step_rows.append({"problem": p.name, "strategy": strategy, "scorer": scorer, "id": s.id, "parent": s.parent,
                              "depth": s.depth, "score": s.score, "path_score": s.path_score, "num_tokens": s.num_tokens,
                              "selected": s.selected, "finish": s.finish})
    results_df, cand_df, steps_df = pd.DataFrame(rows), pd.DataFrame(cand_rows), pd.DataFrame(step_rows)
    summary = {
        "strategy": strategy, "scorer": scorer, "problems": len(probs), "device": device,
        "correct": int(results_df.get("eval_correct", pd.Series(dtype=bool)).fillna(False).astype(bool).sum()),
        "parse_status": results_df["parse_status"].value_counts().to_dict(),
        "engine_calls": int(results_df["usage_engine_calls"].max()),
        "generated_tokens": int(results_df["usage_generated_tokens"].sum()),
        "mean_aggregated_score": float(results_df["aggregated_score"].mean()),
    }
    results_df.to_csv(out / "results.csv", index=False)
    cand_df.to_csv(out / "candidates.csv", index=False)
    steps_df.to_csv(out / "steps.csv", index=False)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return Experiment(results_df, cand_df, steps_df, summary, out)


def load_run(out_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(results, candidates, steps) of a run folder (or of every run folder below it, for sweeps)."""
    out = Path(out_dir)
    frames = []
    for name in ("results.csv", "candidates.csv", "steps.csv"):
        files = sorted(out.rglob(name))
        if not files:
            raise FileNotFoundError(f"no {name} under {out}: run notebook 02 (or `kaggle-kit run-notebooks`) first")
        frames.append(pd.concat([pd.read_csv(f) for f in files], ignore_index=True))
    return tuple(frames)
