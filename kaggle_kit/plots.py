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


def cost_benefit(results: pd.DataFrame):
    """Correctness and speedup against tokens spent, per strategy."""
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for strat, g in results.groupby("strategy"):
        tokens = g["usage_generated_tokens"].mean()
        correct = g.get("eval_correct", pd.Series([False] * len(g))).fillna(False).astype(bool).mean()
        sp = g.get("eval_speedup", pd.Series(dtype=float)).dropna()
        speed = float(np.exp(np.log(sp[sp > 0]).mean())) if (sp > 0).any() else np.nan
        a1.scatter([tokens], [correct], s=60, label=strat)
        a2.scatter([tokens], [speed if np.isfinite(speed) else 0], s=60, label=strat,
                   marker="o" if np.isfinite(speed) else "x")
    a1.set(title="Correct kernels vs tokens spent", xlabel="generated tokens per problem (all candidates)",
           ylabel="fraction correct", ylim=(-0.05, 1.05))
    a2.set(title="Speedup vs tokens spent (x: nothing correct)", xlabel="generated tokens per problem (all candidates)",
           ylabel="geomean speedup over PyTorch")
    a1.legend(title="strategy")
    a2.legend(title="strategy")
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
    ax.set(title=f"Confidence vs kernel correctness (AUROC {'n/a: one class only' if np.isnan(a) else f'{a:.2f}'})",
           ylabel="aggregated score (higher = more confident)")
    fig.tight_layout()
    return fig


def refinement_rounds(rounds: pd.DataFrame):
    """Per refinement round: the fraction of lineages with a correct kernel faster than PyTorch (fast_1)
    and the geometric-mean speedup, a line per strategy; solid = execution-first selection,
    dashed = what the uncertainty score alone would have reported."""
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for i, (strategy, g) in enumerate(rounds.groupby("strategy")):
        color = f"C{i}"
        for selection, style in (("execution", "-"), ("uncertainty", "--")):
            h = g[g["selection"] == selection].sort_values("round")
            label = f"{strategy} ({selection})"
            a1.plot(h["round"], h["fast_1"].astype(float), style, color=color, marker="o", label=label)
            a2.plot(h["round"], h["geomean_speedup"].astype(float).fillna(0), style, color=color, marker="o", label=label)
    a1.set(title="fast_1 per refinement round", xlabel="round", ylabel="fraction of lineages", ylim=(-0.05, 1.05))
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
        "cost_benefit.png": cost_benefit(results),
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
