"""The kernel experiment: one pipeline for the notebook and `kernels-eval run`.

    cfg = ExperimentConfig(experiment_name="e1", strategy="beam_search", device="cuda", deadline="kaggle")
    run(cfg)                          # generate, evaluate, record (resumable); then
    load_tables(cfg.folder)           # results / candidates / steps DataFrames over the records

`run_tts_kernels(...)` is the notebook's one call (notebook 02), kept with its seed-era
signature; it runs the same pipeline and returns the tables.
"""
from __future__ import annotations

from pathlib import Path

from kaggle_kit.experiment.config import ExperimentConfig
from kaggle_kit.experiment.runner import RunOutcome, run
from kaggle_kit.experiment.views import Tables, load_rounds, load_run, load_tables, write_tables

Experiment = Tables  # the notebook's name for the tables of a run

__all__ = ["ExperimentConfig", "RunOutcome", "Tables", "Experiment", "run", "run_tts_kernels", "load_run",
           "load_rounds", "load_tables", "write_tables"]


def run_tts_kernels(problems: list[str] | None = None, *, strategy: str = "online_bon", scorer: str = "entropy",
                    device: str = "cuda", out_dir: str | Path = "runs/latest", evaluate_kernels: bool = True,
                    evaluate_candidates: bool = True, thinking: bool = False, eval_options: dict | None = None,
                    progress: bool | None = None, deadline=None, workers: int | None = None, verifier: str = "uncertainty",
                    refine_rounds: int = 1, refine_width: int = 1, target_speedup: float = 1.0,
                    **tts_params) -> Tables:
    """Notebook 02: run (or resume) the experiment in `out_dir` and return its tables (also written as CSV).

    refine_rounds > 1 refines with execution feedback (`kaggle_kit.experiment.refine`) and
    keeps the attempts as a subchat tree in `out_dir/attempts.sqlite`.
    """
    eval_options = {"trials": 3, **(eval_options or {})}
    cfg = ExperimentConfig(experiment_name="", out_dir=str(out_dir), problems=problems, strategy=strategy,
                           scorer=scorer, device=device, evaluate=evaluate_kernels,
                           evaluate_candidates=evaluate_candidates, thinking=thinking, deadline=deadline,
                           workers=workers, verifier=verifier, refine_rounds=refine_rounds, refine_width=refine_width,
                           target_speedup=target_speedup, **eval_options, **tts_params)
    run(cfg, progress=progress)
    return write_tables(load_tables(cfg.folder))
