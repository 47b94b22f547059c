"""Figures over the run tables (results, candidates, steps): matplotlib, one function each."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)  # headless unless a notebook backend is already active
    import matplotlib.pyplot as plt

    return plt


def auroc(scores, labels) -> float:
    """Probability that a correct sample scores above an incorrect one (ties count half); NaN with one class."""
    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels, dtype=bool)
    ok = np.isfinite(s)
    s, y = s[ok], y[ok]
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def step_score_traces(steps: pd.DataFrame, problem: str | None = None):
    """Per-step scores of every beam/candidate; the chosen path drawn bold."""
    plt = _plt()
    problem = problem or steps["problem"].iloc[0]
    df = steps[steps["problem"] == problem]
    if "method" in df.columns:  # a grid: the runs of several methods share item keys
        df = df[df["method"] == df["method"].iloc[0]]
    if "key" in df.columns:  # one search tree: the first item of that problem (ids restart per item)
        df = df[df["key"] == df["key"].iloc[0]]
    by_id = df.set_index("id")
    fig, ax = plt.subplots(figsize=(7, 4))
    for _, s in df.iterrows():
        if pd.notna(s["parent"]) and int(s["parent"]) in by_id.index:
            p = by_id.loc[int(s["parent"])]
            ax.plot([p["depth"], s["depth"]], [p["score"], s["score"]], color="#999", lw=0.8, alpha=0.6, zorder=1)
    ax.scatter(df["depth"], df["score"], s=14, color="#999", alpha=0.7, label="candidate steps", zorder=2)
    chosen = df[df["selected"].astype(bool)].sort_values("depth")
    ax.plot(chosen["depth"], chosen["score"], color="#c0392b", lw=2.5, marker="o", label="chosen path", zorder=3)
    ax.set(title=f"Step scores: {problem} ({df['strategy'].iloc[0]}, {df['scorer'].iloc[0]})",
           xlabel="step", ylabel="step score 1/(1+U)")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(loc="best")
    fig.tight_layout()
    return fig


def chosen_vs_rejected(candidates: pd.DataFrame):
    """Aggregated scores of chosen vs rejected candidates."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    chosen = candidates[candidates["chosen"].astype(bool)]["aggregated_score"].dropna()
    rejected = candidates[~candidates["chosen"].astype(bool)]["aggregated_score"].dropna()
    bins = np.linspace(0, 1, 21)
    ax.hist(rejected, bins=bins, alpha=0.6, label=f"rejected (n={len(rejected)})", color="#7f8c8d")
    ax.hist(chosen, bins=bins, alpha=0.8, label=f"chosen (n={len(chosen)})", color="#2980b9")
    ax.set(title="Aggregated score: chosen vs rejected candidates", xlabel="aggregated score", ylabel="candidates")
    ax.legend()
    fig.tight_layout()
    return fig


def _method(df: pd.DataFrame) -> pd.Series:
    """A run's method label ('beam_search/entropy'); tables from before the label have the strategy."""
    return df["method"] if "method" in df.columns else df["strategy"]


def selection_table(results: pd.DataFrame, candidates: pd.DataFrame) -> pd.DataFrame:
    """Per method (round 1): how often the chosen kernel is correct, against a random pick among the
    same candidates (the mean fraction correct per item) and the oracle (any candidate correct), with
    the AUROC of the score for correctness, the tokens spent (and sequences stopped early for low
    confidence, deepconf's saving) and the geomean speedup of correct picks."""
    rows = []
    res = results[results["round"] == 1] if "round" in results.columns else results
    cand = candidates[candidates["round"] == 1] if "round" in candidates.columns else candidates
    for method, g in res.groupby(_method(res)):
        c = cand[_method(cand) == method] if len(cand) else cand
        per_item = c.groupby("key")["correct"] if len(c) else None
        sp = g["eval_speedup"][g["eval_correct"].astype(bool)].dropna() if "eval_speedup" in g else pd.Series(dtype=float)
        rows.append({"method": method, "items": len(g), "chosen_correct": g["eval_correct"].astype(bool).mean(),
                     "random_pick": per_item.mean().mean() if per_item is not None else np.nan,
                     "oracle": per_item.any().mean() if per_item is not None else np.nan,
                     "auroc": auroc(c["aggregated_score"], c["correct"]) if len(c) else np.nan,
                     "tokens_per_item": g["usage_generated_tokens"].mean(),
                     "stopped_per_item": g["usage_early_stopped"].mean() if "usage_early_stopped" in g else np.nan,
                     "geomean_speedup": float(np.exp(np.log(sp[sp > 0]).mean())) if (sp > 0).any() else np.nan})
    return pd.DataFrame(rows)


def cost_benefit(results: pd.DataFrame, candidates: pd.DataFrame | None = None):
    """Correctness and speedup against tokens spent, a point per method (strategy/scorer); with the
    candidates, a bar from a random pick to the oracle behind each point."""
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    if candidates is None or "key" not in candidates.columns:
        candidates = pd.DataFrame(columns=["key", "correct", "aggregated_score", "method", "strategy"])
    table = selection_table(results, candidates)
    for i, row in table.iterrows():
        color, x = f"C{i % 10}", row["tokens_per_item"]
        if np.isfinite(row["random_pick"]):
            a1.plot([x, x], [row["random_pick"], row["oracle"]], color=color, lw=6, alpha=0.25, solid_capstyle="butt")
            a1.scatter([x], [row["random_pick"]], marker="_", s=120, color=color)
        a1.scatter([x], [row["chosen_correct"]], s=60, color=color, label=row["method"], zorder=3)
        speed = row["geomean_speedup"]
        a2.scatter([x], [speed if np.isfinite(speed) else 0], s=60, color=color, label=row["method"],
                   marker="o" if np.isfinite(speed) else "x")
    a1.set(title="Chosen kernel correct vs tokens spent\n(bar: random pick to oracle among the same candidates)",
           xlabel="generated tokens per problem (all candidates)", ylabel="fraction correct", ylim=(-0.05, 1.05))
    a2.set(title="Speedup of the correct chosen kernels (x: none correct)",
           xlabel="generated tokens per problem (all candidates)", ylabel="geomean speedup over PyTorch")
    a1.legend(title="method", fontsize=8)
    a2.legend(title="method", fontsize=8)
    fig.tight_layout()
    return fig


def uncertainty_vs_correctness(candidates: pd.DataFrame):
    """Do higher (more confident) scores go with correct kernels? Box plot and AUROC."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    correct = candidates["correct"].astype(bool)
    groups = [candidates[~correct]["aggregated_score"].dropna(), candidates[correct]["aggregated_score"].dropna()]
    ax.boxplot([g if len(g) else [np.nan] for g in groups])
    ax.set_xticks([1, 2], labels=[f"incorrect (n={len(groups[0])})", f"correct (n={len(groups[1])})"])
    a = auroc(candidates["aggregated_score"], correct)
    per = {sc: auroc(g["aggregated_score"], g["correct"]) for sc, g in candidates.groupby("scorer")} \
        if "scorer" in candidates.columns and candidates["scorer"].nunique() > 1 else {}
    ax.set(title=f"Confidence vs kernel correctness (AUROC {'n/a: one class only' if np.isnan(a) else f'{a:.2f}'})"
           + ("\n" + ", ".join(f"{k} {v:.2f}" for k, v in per.items() if np.isfinite(v)) if per else ""),
           ylabel="aggregated score (higher = more confident)")
    fig.tight_layout()
    return fig


def refinement_rounds(rounds: pd.DataFrame):
    """Per refinement round: the fraction of lineages with a correct kernel (fast_0)
    and the geometric-mean speedup, a line per strategy; solid = execution-first selection,
    dashed = what the uncertainty score alone would have reported."""
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for i, (strategy, g) in enumerate(rounds.groupby(_method(rounds))):
        color = f"C{i}"
        for selection, style in (("execution", "-"), ("uncertainty", "--")):
            h = g[g["selection"] == selection].sort_values("round")
            label = f"{strategy} ({selection})"
            a1.plot(h["round"], h["fast_0"].astype(float), style, color=color, marker="o", label=label)
            a2.plot(h["round"], h["geomean_speedup"].astype(float).fillna(0), style, color=color, marker="o", label=label)
    a1.set(title="fast_0 (correct) per refinement round", xlabel="round", ylabel="fraction of lineages", ylim=(-0.05, 1.05))
    a2.set(title="geomean speedup of correct kernels (0: none)", xlabel="round", ylabel="speedup over PyTorch")
    for ax in (a1, a2):
        ax.set_xticks(sorted(rounds["round"].unique()))
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def save_all(results: pd.DataFrame, candidates: pd.DataFrame, steps: pd.DataFrame, out_dir: str | Path,
             rounds: pd.DataFrame | None = None) -> list[Path]:
    """Draw every figure into out_dir; returns the files written."""
    plt = _plt()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = {
        "step_score_traces.png": step_score_traces(steps),
        "chosen_vs_rejected.png": chosen_vs_rejected(candidates),
        "cost_benefit.png": cost_benefit(results, candidates),
        "uncertainty_vs_correctness.png": uncertainty_vs_correctness(candidates),
    }
    if rounds is not None and len(rounds):
        figures["refinement_rounds.png"] = refinement_rounds(rounds)
    paths = []
    for name, fig in figures.items():
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        paths.append(out / name)
    return paths
