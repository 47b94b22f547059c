"""Tables over the records: what the notebook shows, the plots read and `kernels-eval report` counts.

    results     one row per item: the strategy's scores and usage, the reported answer's evaluation
    candidates  one row per finished candidate: its score, tokens and evaluation
    steps       every scored step of every search tree (score traces)
The records file is the truth; these are rebuilt from it at any time (`load_run`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from kernels_eval.metrics import summary as metrics_summary
from kernels_eval.records import EvaluatedRecord, GeneratedRecord, RecordStore

from kaggle_kit.experiment.verifiers import method_label

EVAL_COLUMNS = ("status", "compiled", "correct", "speedup", "runtime_ms", "ref_runtime_ms", "runtime_spread")


@dataclass
class Tables:
    results: pd.DataFrame
    candidates: pd.DataFrame
    steps: pd.DataFrame
    summary: dict
    out_dir: Path
    rounds: pd.DataFrame | None = None  # refinement: fast_p and speedup per round (kaggle_kit.experiment.refine)


def _eval_fields(prefix: str, ev) -> dict:
    if ev is None:
        return {f"{prefix}{k}": None for k in EVAL_COLUMNS} | {f"{prefix}flags": "", f"{prefix}evaluated": False}
    r = ev.result
    d = r.to_dict()
    return ({f"{prefix}{k}": d[k] for k in EVAL_COLUMNS}
            | {f"{prefix}flags": ",".join(r.flags), f"{prefix}counts": r.counts_as_correct,
               f"{prefix}evaluated": r.evaluated})


def run_verifier(folder: Path) -> str:
    """The verifier a run folder's records were made with (run.json), 'uncertainty' if unknown."""
    try:
        return json.loads((Path(folder) / "run.json").read_text())["fingerprint"].get("verifier") or "uncertainty"
    except (OSError, ValueError, KeyError):
        return "uncertainty"


def tables(gen: dict[str, GeneratedRecord], ev: dict[str, EvaluatedRecord], out_dir: Path,
           verifier: str = "uncertainty") -> Tables:
    rows, cand_rows, step_rows = [], [], []
    for key, g in gen.items():
        e = ev.get(key)
        by_index = {x.index: x for x in (e.evaluations if e else [])}
        chosen = e.chosen if e else g.chosen
        row = {"key": key, "problem": g.problem, "sample": g.sample, "round": g.round, "parent": g.parent,
               "strategy": g.strategy, "scorer": g.scorer, "method": method_label(g.strategy, g.scorer, verifier),
               "chosen": chosen, "uncertainty_choice": g.chosen,
               "aggregated_score": g.tts.get("aggregated_score"), "completion_reason": g.tts.get("completion_reason"),
               "num_candidates": len(g.candidates), "num_steps": g.candidates[g.chosen].num_steps if g.candidates else 0,
               "num_tokens": g.candidates[g.chosen].num_tokens if g.candidates else 0,
               "generation_s": g.generation_s, "evaluation_s": e.evaluation_s if e else None,
               "parse_status": by_index[chosen].parse_status if chosen in by_index else None}
        row.update({f"usage_{k}": v for k, v in (g.tts.get("usage") or {}).items()})
        row.update(_eval_fields("eval_", by_index.get(chosen)))
        row["eval_correct"] = bool(by_index[chosen].result.counts_as_correct) if chosen in by_index else False
        rows.append(row)
        for c in g.candidates:
            x = by_index.get(c.index)
            cand_rows.append({"key": key, "problem": g.problem, "sample": g.sample, "round": g.round,
                              "strategy": g.strategy, "scorer": g.scorer,
                              "method": method_label(g.strategy, g.scorer, verifier), "candidate": c.index,
                              "chosen": c.index == chosen, "picked_by_score": c.index == g.chosen,
                              "aggregated_score": c.score, "num_tokens": c.num_tokens, "num_steps": c.num_steps,
                              "completion_reason": c.completion_reason,
                              "parse_status": x.parse_status if x else None,
                              "eval_status": x.result.status.value if x else None,
                              "correct": bool(x.result.counts_as_correct) if x else False,
                              "speedup": x.result.speedup if x else None})
        for s in g.steps:
            step_rows.append({"key": key, "problem": g.problem, "sample": g.sample, "round": g.round,
                              "strategy": g.strategy, "scorer": g.scorer,
                              "method": method_label(g.strategy, g.scorer, verifier), **s})
    results, candidates, steps = pd.DataFrame(rows), pd.DataFrame(cand_rows), pd.DataFrame(step_rows)
    summary = summarise(gen, ev)
    rounds = rounds_of(gen, ev, verifier)
    if rounds is not None:
        summary["rounds"] = rounds.to_dict(orient="records")
    return Tables(results, candidates, steps, summary, out_dir, rounds)


def rounds_of(gen: dict[str, GeneratedRecord], ev: dict[str, EvaluatedRecord],
              verifier: str = "uncertainty") -> pd.DataFrame | None:
    """The refinement table of a run (None when it did not refine), labelled with its method."""
    if not any(g.round > 1 for g in gen.values()):
        return None
    from kaggle_kit.experiment.refine import round_table

    t = round_table(gen, ev)
    t.insert(1, "method", [method_label(st, sc, verifier) for st, sc in zip(t["strategy"], t["scorer"])])
    return t


def summarise(gen: dict[str, GeneratedRecord], ev: dict[str, EvaluatedRecord]) -> dict:
    results = [e.result for e in ev.values()]
    out = {"items": len(gen), "evaluated": sum(1 for e in ev.values() if e.complete),
           "strategies": sorted({g.strategy for g in gen.values()}), "scorers": sorted({g.scorer for g in gen.values()}),
           "generated_tokens": int(sum((g.tts.get("usage") or {}).get("generated_tokens", 0) for g in gen.values())),
           "parse_status": pd.Series([e.evaluations[0].parse_status for e in ev.values()] or [], dtype=object)
           .value_counts().to_dict()}
    if results:
        out["metrics"] = metrics_summary(results)
    return out


def load_tables(folder: str | Path) -> Tables:
    folder = Path(folder)
    gen, ev = RecordStore(folder / "records.jsonl").latest()
    return tables(gen, ev, folder, run_verifier(folder))


def write_tables(t: Tables) -> Tables:
    out = Path(t.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t.results.to_csv(out / "results.csv", index=False)
    t.candidates.to_csv(out / "candidates.csv", index=False)
    t.steps.to_csv(out / "steps.csv", index=False)
    if t.rounds is not None:
        t.rounds.to_csv(out / "rounds.csv", index=False)
    (out / "summary.json").write_text(json.dumps(t.summary, indent=2, default=str) + "\n")
    return t


def load_run(out_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(results, candidates, steps) of a run folder, or of every run folder below it (sweeps)."""
    out = Path(out_dir)
    folders = _run_folders(out)
    if not folders:
        raise FileNotFoundError(f"no records.jsonl under {out}: run notebook 02 (or `kaggle-kit run-notebooks`) first")
    parts = [load_tables(f) for f in folders]
    return tuple(pd.concat([getattr(p, name) for p in parts], ignore_index=True)
                 for name in ("results", "candidates", "steps"))


def load_rounds(out_dir: str | Path) -> pd.DataFrame | None:
    """The refinement table(s) under `out_dir` (None when no run there refined)."""
    parts = []
    for folder in _run_folders(Path(out_dir)):  # only the round table: the other tables are not needed here
        t = rounds_of(*RecordStore(folder / "records.jsonl").latest(), run_verifier(folder))
        if t is not None:
            parts.append(t)
    return pd.concat(parts, ignore_index=True) if parts else None


def _run_folders(out: Path) -> list[Path]:
    return sorted({p.parent for p in out.rglob("records.jsonl")})
