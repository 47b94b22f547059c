"""The one experiment driver: a run is `refine_rounds` rounds, and an ordinary run is one round.

Round 1 generates the problems' prompts; each later round generates the refinements of the
round before it (kaggle_kit.experiment.refine). Every round goes through the same records, pool
and deadline (kaggle_kit.experiment.runner), so a kill or a deadline resumes mid-round. A run that
refines also keeps its attempts as a subchat tree (attempts.sqlite).
"""
from __future__ import annotations

from typing import Callable

from kaggle_kit.engine.types import Engine
from kaggle_kit.experiment.config import ExperimentConfig
from kaggle_kit.experiment.refine import next_jobs, open_attempts, previous_round, write_attempts
from kaggle_kit.experiment.runner import RunOutcome, Runner, _stderr, initial_jobs, run_round


def run(cfg: ExperimentConfig, engine: Engine | None = None, progress: bool | None = None,
        log: Callable[[str], None] = _stderr, **runner_options) -> RunOutcome:
    """Run (or resume) the experiment `cfg` describes; returns what this run did."""
    runner = Runner(cfg, engine, progress, log, **runner_options)
    attempts = open_attempts(cfg.folder) if cfg.refine_rounds > 1 else None
    try:
        for round_ in range(1, cfg.refine_rounds + 1):
            jobs = initial_jobs(cfg, runner.problems) if round_ == 1 else \
                next_jobs(cfg, runner, previous_round(runner, round_), round_)
            if not jobs:
                log(f"refinement: every lineage is solved after round {round_ - 1}")
                break
            run_round(runner, jobs, round_)
            runner.drain()  # the next round needs this round's feedback
            if attempts is not None:
                write_attempts(attempts, cfg, *runner.store.latest())
            if runner.outcome.stopped_early:
                break
    finally:
        runner.close()
        if attempts is not None:
            attempts.close()
    for m in runner.outcome.messages:
        log(m)
    return runner.outcome
