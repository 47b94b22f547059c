"""The kernel experiment: one pipeline for the notebook and `kernels-eval run`.

    cfg = ExperimentConfig.of(experiment_name="e1", strategy="beam_search", device="cuda", deadline="kaggle")
    run(cfg)                          # generate, evaluate, record (resumable); then
    load_tables(cfg.folder)           # results / candidates / steps DataFrames over the records

`run_tts_kernels(...)` is the notebook's one call (notebook 02), kept with its seed-era
signature; it runs the same pipeline and returns the tables.
"""
from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path

import pandas as pd

from kaggle_kit.engine.shared import SharedGenerations
from kaggle_kit.experiment import merge
from kaggle_kit.experiment.config import ExperimentConfig
from kaggle_kit.experiment.driver import run
from kaggle_kit.experiment.runner import RunOutcome, local_engine
from kaggle_kit.experiment.verifiers import VERIFIERS, method_label
from kaggle_kit.experiment.views import Tables, load_rounds, load_run, load_tables, write_tables

Experiment = Tables  # the notebook's name for the tables of a run

__all__ = ["ExperimentConfig", "RunOutcome", "Tables", "Experiment", "run", "run_tts_kernels", "load_run",
           "load_rounds", "load_tables", "write_tables"]


def _names(value: str | list[str] | tuple[str, ...]) -> list[str]:
    """'a,b' (papermill-friendly) or a list -> names."""
    names = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
    return [n for n in names if n] or [""]


def run_tts_kernels(problems: list[str] | None = None, *, strategy: str | list[str] | None = None,
                    scorer: str | list[str] | None = None,
                    device: str = "cuda", out_dir: str | Path = "runs/latest", evaluate_kernels: bool = True,
                    evaluate_candidates: bool = True, thinking: bool = False, eval_options: dict | None = None,
                    progress: bool | None = None, deadline=None, workers: int | None = None,
                    verifier: str | list[str] | None = None,
                    refine_rounds: int | None = None, refine_width: int | None = None, target_speedup: float | None = None,
                    resample: bool | None = None, resume_from: str | list[str] | None = None, **tts_params) -> Tables:
    """Notebook 02: run (or resume) the experiment in `out_dir` and return its tables (also written as CSV).
    A setting left None is ExperimentConfig's (its search: TTSParams'), the default `kernels-eval run` shows.

    refine_rounds > 1 refines with execution feedback (`kaggle_kit.experiment.refine`) and
    keeps the attempts as a subchat tree in `out_dir/attempts.sqlite`; with resample=True the later
    rounds answer the prompt afresh instead (an adaptive budget: a lineage stops at a correct kernel).

    Several strategies, scorers or verifiers ("offline_bon,beam_search", or lists) run as a grid,
    one run folder each (`out_dir/<strategy>-<scorer>`, `out_dir/<strategy>-execution`; the execution
    verifier picks by running the candidates, so it runs once per strategy, not once per scorer),
    on the same engine; the tables returned cover them all. The grid's runs share their seeded samples: what
    one run drew, a later run asking the same is answered from memory (the same samples for every method).

    resume_from names earlier sessions' outputs attached as inputs (or folders): their records are
    merged into `out_dir` first, so the run continues where they stopped (a Kaggle shard re-pushed).
    """
    if resume_from:
        merge.resume_from(resume_from, out_dir)
    default = ExperimentConfig()
    rounds = {k: v for k, v in dict(refine_rounds=refine_rounds, refine_width=refine_width,
                                    target_speedup=target_speedup, resample=resample).items() if v is not None}
    eval_options = {"trials": 3, **(eval_options or {})}
    points = grid_points(strategy or default.tts.strategy, scorer or default.tts.scorer, verifier or default.verifier)
    grid = len(points) > 1
    parts = []
    began = time.perf_counter()
    shared = None  # a grid's runs on the local engine draw their seeded samples once (kaggle_kit.engine.shared)
    for i, (s, sc, v) in enumerate(points, 1):
        name = point_folder(s, sc, v, grid)
        if grid:  # a line per run of the grid (stderr: progress, which nbval does not compare)
            print(f"run {i}/{len(points)}: {method_label(s, sc, v)} ({time.perf_counter() - began:.0f} s into the grid)",
                  file=sys.stderr, flush=True)
        cfg = ExperimentConfig.of(experiment_name=name, out_dir=str(out_dir), problems=problems, strategy=s,
                                  scorer=sc, device=device, evaluate=evaluate_kernels,
                                  evaluate_candidates=evaluate_candidates, thinking=thinking, deadline=deadline,
                                  workers=workers, verifier=v, **rounds, **eval_options, **tts_params)
        if grid and shared is None and not cfg.service_url:
            shared = SharedGenerations(local_engine(cfg.model))
        run(cfg, engine=shared, progress=progress)
        parts.append(write_tables(load_tables(cfg.folder)))
    if shared is not None:
        print(f"grid: {shared.hits} of {shared.hits + shared.misses} engine requests answered with samples an "
              f"earlier run of the grid drew", file=sys.stderr, flush=True)
    if not grid:
        return parts[0]
    return write_tables(combine(parts, Path(out_dir)))  # the grid's tables beside its run folders


def grid_points(strategy, scorer, verifier) -> list[tuple[str, str, str]]:
    """The (strategy, scorer, verifier) runs a notebook's comma lists ask for. The execution verifier
    picks by running the candidates, so it runs once per strategy, not once per scorer."""
    points = []
    for s, v in itertools.product(_names(strategy), _names(verifier)):
        for sc in (_names(scorer) if VERIFIERS[v].uses_scorer else _names(scorer)[:1]):
            if (s, sc, v) not in points:
                points.append((s, sc, v))
    return points


def point_folder(strategy: str, scorer: str, verifier: str, grid: bool) -> str:
    """A grid point's run folder below out_dir: its method; a single run is out_dir itself."""
    return method_label(strategy, scorer, verifier).replace("/", "-") if grid else ""


def combine(parts: list[Tables], out_dir: Path) -> Tables:
    """One set of tables over several runs (a grid): rows concatenated, summaries by run folder."""
    frames = {name: pd.concat([getattr(p, name) for p in parts], ignore_index=True)
              for name in ("results", "candidates", "steps")}
    rounds = [p.rounds for p in parts if p.rounds is not None]
    summary = {"runs": {p.out_dir.name: p.summary for p in parts}}
    return Tables(frames["results"], frames["candidates"], frames["steps"], summary, out_dir,
                  pd.concat(rounds, ignore_index=True) if rounds else None)
