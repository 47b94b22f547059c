"""The nbval golden notebooks: each stage executed on the tiny model (CPU) with papermill.

`kaggle-kit golden` (or `make golden`) rewrites tests/golden/*.ipynb; `make test`
re-runs them with nbval and compares every output not marked nbval-ignore-output
(sanitised by tests/nbval_sanitize.cfg; stderr is not compared).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from kaggle_kit.workflow.notebooks import ROOT, stage_paths

GOLDEN = ROOT / "tests" / "golden"
GOLDEN_PARAMS = {"tiny": True}
RUNS = "runs"  # what the stages write below their folder (out_dir runs/latest)
KEEP_GOLDEN_RUNS = "KAGGLE_KIT_KEEP_GOLDEN_RUNS"  # set: a test session that reads those runs, not one that makes them
# Quiet, reproducible kernels: no progress bars, vLLM logging only for errors.
GOLDEN_ENV = {"TQDM_DISABLE": "1", "VLLM_LOGGING_LEVEL": "ERROR", "HF_HUB_OFFLINE": "1", "PYTHONHASHSEED": "0"}


def regenerate(out_dir: str | Path = GOLDEN) -> list[Path]:
    import papermill as pm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / RUNS, ignore_errors=True)  # a fresh run, as in a clean clone: never resume an older one
    os.environ.update(GOLDEN_ENV)
    written = []
    for stage in stage_paths():
        target = out / stage.name
        params = GOLDEN_PARAMS if "tiny" in _names(stage) else {}
        pm.execute_notebook(str(stage), str(target), parameters=params, cwd=str(out), progress_bar=False)
        written.append(target)
    return written


def _names(path: Path) -> set[str]:
    from kaggle_kit.workflow.notebooks import parameter_defaults

    return set(parameter_defaults(path))
