"""Run the ordered notebooks with papermill: one kernel (one model load), sweeps, bundling.

papermill only warns about a misspelt parameter; here every name is checked
against the notebooks' `parameters` cells first and an unknown one is an error.
"""
from __future__ import annotations

import ast
import copy
import itertools
import json
import re
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nbformat

ROOT = Path(__file__).resolve().parents[2]  # the repository (kaggle_kit/workflow/ -> root)
NOTEBOOKS = ROOT / "notebooks"
STAGES = ("01_load_model.ipynb", "02_tts_kernels.ipynb", "03_subchat.ipynb", "04_plot_scores.ipynb")
BUNDLE = NOTEBOOKS / "kaggle_kit_bundle.ipynb"


def stage_paths(stages=None) -> list[Path]:
    return [NOTEBOOKS / s for s in (stages or STAGES)]


def _parameters_cell(nb) -> int:
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            return i
    raise ValueError("the notebook has no cell tagged 'parameters'")


def parameter_defaults(path: str | Path) -> dict[str, Any]:
    """name -> default value, read from the `parameters` cell (simple literal assignments)."""
    nb = nbformat.read(str(path), as_version=4)
    source = nb.cells[_parameters_cell(nb)].source
    out = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            out[node.targets[0].id] = ast.literal_eval(node.value)
    return out


def check_parameters(params: dict[str, Any], known: dict[str, Any]) -> None:
    unknown = sorted(set(params) - set(known))
    if unknown:
        hints = []
        for name in unknown:
            close = [k for k in known if k.replace("_", "") == name.replace("_", "") or k.startswith(name[:4])]
            hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ValueError(f"unknown notebook parameter(s) {', '.join(hints)}; known: {', '.join(sorted(known))}")


def check_choices(params: dict[str, Any]) -> None:
    """The names a run picks from (strategies, scorers, verifiers; comma lists for a grid), checked before a
    kernel starts: a misspelt one fails here at once, not after the model has loaded in the notebook (or a
    Kaggle session has run)."""
    from kaggle_kit.experiment.verifiers import VERIFIERS
    from kaggle_kit.tts.params import check_strategy
    from kaggle_kit.tts.scorers import check_scorer

    def names(key):
        value = params.get(key)
        return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else []

    for name in names("strategy"):
        check_strategy(name)
    for name in names("scorer"):
        check_scorer(name)
    for name in names("verifier"):
        if name not in VERIFIERS:
            raise ValueError(f"unknown verifier {name!r}; choose from {', '.join(VERIFIERS)}")


def merged_parameters(stages=None) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for path in stage_paths(stages):
        for name, value in parameter_defaults(path).items():
            if name in merged and merged[name] != value:
                raise ValueError(f"parameter {name!r} has different defaults in the stages ({merged[name]!r} vs {value!r})")
            merged.setdefault(name, value)
    return merged


def build_bundle(stages=None, out_path: str | Path | None = None) -> Path:
    """One notebook from the ordered stages: a merged `parameters` cell, then each stage's cells."""
    paths = stage_paths(stages)
    merged = merged_parameters(stages)
    bundle = nbformat.v4.new_notebook()
    bundle.metadata = copy.deepcopy(nbformat.read(str(paths[0]), as_version=4).metadata)
    bundle.cells.append(nbformat.v4.new_markdown_cell(
        "# kaggle_kit: the ordered stages in one notebook\n\nBuilt by `kaggle-kit bundle` from "
        + ", ".join(f"`{p.name}`" for p in paths) + ". Edit the stages, not this file."))
    params = "\n".join(f"{k} = {v!r}" for k, v in merged.items())
    bundle.cells.append(nbformat.v4.new_code_cell(params, metadata={"tags": ["parameters"]}))
    for path in paths:
        nb = nbformat.read(str(path), as_version=4)
        skip = _parameters_cell(nb)
        bundle.cells.append(nbformat.v4.new_markdown_cell(f"---\n## Stage `{path.stem}`"))
        for i, cell in enumerate(nb.cells):
            if i == skip:
                continue
            new = nbformat.v4.new_code_cell(cell.source, metadata=copy.deepcopy(cell.metadata)) if cell.cell_type == "code" \
                else nbformat.v4.new_markdown_cell(cell.source, metadata=copy.deepcopy(cell.metadata))
            bundle.cells.append(new)
    for i, cell in enumerate(bundle.cells):  # stable ids: the committed bundle must not change on every build
        cell["id"] = f"cell-{i:03d}"
    out = Path(out_path or BUNDLE)
    out.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(bundle, str(out))
    return out


def inject(bundle: str | Path, params: dict[str, Any], out_path: str | Path) -> Path:
    """papermill's prepare-only mode: the bundle with `params` injected, not executed (for Kaggle pushes)."""
    import papermill as pm

    check_parameters(params, parameter_defaults(bundle))
    check_choices(params)
    pm.execute_notebook(str(bundle), str(out_path), parameters=params, prepare_only=True, progress_bar=False)
    return Path(out_path)


def run_notebooks(params: dict[str, Any] | None = None, out_dir: str | Path = "runs/latest", stages=None,
                  kernel_name: str = "python3", log_output: bool = False, progress_bar: bool = True,
                  heartbeat_s: float | None = None) -> Path:
    """Execute the ordered stages in one kernel (so the model loads once); returns the executed notebook.
    With `heartbeat_s`, a line every so often says which cell runs and the last thing it printed."""
    import papermill as pm

    from kaggle_kit.config import kernel_log_arguments

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    params = {**(params or {}), "out_dir": str(out)}
    bundle = build_bundle(stages, out / "bundle.ipynb")
    check_parameters(params, parameter_defaults(bundle))
    check_choices(params)
    executed = out / "executed.ipynb"
    live = _LastLine()
    with _heartbeat(executed, heartbeat_s, live):
        pm.execute_notebook(str(bundle), str(executed), parameters=params, kernel_name=kernel_name,
                            log_output=log_output, progress_bar=progress_bar, cwd=str(Path.cwd()),
                            extra_arguments=kernel_log_arguments(),
                            **({"autosave_cell_every": max(5, int(heartbeat_s) // 2), "stdout_file": live,
                                "stderr_file": live} if heartbeat_s else {}))
    return executed


class _LastLine:
    """The kernel's latest non-empty output line as it streams (papermill's stdout_file/stderr_file): an
    autosave of the notebook comes only with a later output, so the saved copy lags by one line."""

    def __init__(self):
        self.line, self.at = "", 0.0

    def write(self, text: str) -> None:
        import time

        lines = [ln.strip() for ln in text.replace("\r", "\n").splitlines() if ln.strip()]
        if lines:
            self.line, self.at = lines[-1], time.time()

    def flush(self) -> None:
        pass


@contextmanager
def _heartbeat(executed: Path, every: float | None, live: _LastLine | None = None):
    """Print what the running cell is doing every `every` seconds (the cell from papermill's autosaves of
    the executed notebook, its last line as it streams), so a long cell is never silent on the terminal."""
    import threading
    import time

    if not every:
        yield
        return
    stop, start = threading.Event(), time.monotonic()

    def beat():
        while not stop.wait(every):
            line = _running_cell(executed, live)
            if line:
                print(f"  [{int(time.monotonic() - start) // 60}:{int(time.monotonic() - start) % 60:02d}] {line}",
                      flush=True)

    t = threading.Thread(target=beat, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join(2)


def _running_cell(executed: Path, live: _LastLine | None = None) -> str:
    """'cell i/n `its first line`: the last line it printed' for the running cell ('' when none runs); the
    live line counts once it was written after the cell started (papermill's start_time)."""
    from datetime import datetime

    try:
        nb = json.loads(executed.read_text())
    except (OSError, ValueError):
        return ""
    code = [c for c in nb.get("cells", []) if c.get("cell_type") == "code"]
    for i, cell in enumerate(code):
        if (cell.get("metadata", {}).get("papermill") or {}).get("status") != "running":
            continue
        text = [ln for o in cell.get("outputs", []) for ln in "".join(o.get("text", "")).splitlines() if ln.strip()]
        first = next((ln for ln in "".join(cell.get("source", "")).splitlines() if ln.strip()
                      and not ln.startswith("#")), "")
        try:
            started = datetime.fromisoformat(cell["metadata"]["papermill"]["start_time"]).timestamp()
        except (KeyError, TypeError, ValueError):
            started = 0.0
        fresh = live.line if live and live.line and live.at >= started else ""
        last = (fresh or (text[-1].split("\r")[-1].strip() if text else "(no output yet)"))[:110]
        return f"cell {i + 1}/{len(code)} `{first.strip()[:50]}`: {last}"
    return ""


def _slug(point: dict) -> str:
    return re.sub(r"[^A-Za-z0-9=._-]+", "_", ",".join(f"{k}={v}" for k, v in point.items()))[:120]


def sweep(spec: dict | str | Path, out_dir: str | Path | None = None, progress: bool | None = None) -> dict:
    """Run a grid one point at a time; a failed point is recorded and the sweep goes on.

    spec: {"base": {...}, "grid": {"strategy": [...], "scorer": [...]}, "out_dir": "runs/sweep"}
    (or the path of such a YAML file). Returns {"points", "failed", "results_csv"}.
    """
    import pandas as pd
    import yaml
    from tqdm.auto import tqdm

    from kaggle_kit.experiment import load_run

    if not isinstance(spec, dict):
        spec = yaml.safe_load(Path(spec).read_text())
    unknown_keys = set(spec) - {"base", "grid", "out_dir", "stages"}
    if unknown_keys:
        raise ValueError(f"unknown sweep key(s) {sorted(unknown_keys)}; use base, grid, out_dir, stages")
    base, grid = spec.get("base") or {}, spec.get("grid") or {}
    if not grid or any(not isinstance(v, list) or not v for v in grid.values()):
        raise ValueError("the sweep's grid must map parameter names to non-empty lists")
    known = merged_parameters(spec.get("stages"))
    check_parameters({**base, **grid}, known)  # every name, before the first point runs
    root = Path(out_dir or spec.get("out_dir") or "runs/sweep")
    points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    rows, failed = [], []
    for i, point in enumerate(tqdm(points, desc="sweep", unit="point", disable=True if progress is False else None)):
        out = root / f"{i:03d}-{_slug(point)}"
        try:
            run_notebooks({**base, **point}, out, spec.get("stages"), progress_bar=False)
            results = load_run(out)[0]
            for k, v in point.items():
                results[f"sweep_{k}"] = v
            results["sweep_point"] = i
            rows.append(results)
        except Exception as e:
            failed.append({"point": i, **point, "error": f"{type(e).__name__}: {str(e)[-500:]}"})
            (out / "error.txt").parent.mkdir(parents=True, exist_ok=True)
            (out / "error.txt").write_text(traceback.format_exc())
    table = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    root.mkdir(parents=True, exist_ok=True)
    table.to_csv(root / "sweep_results.csv", index=False)
    (root / "sweep_failed.json").write_text(json.dumps(failed, indent=2) + "\n")
    return {"points": len(points), "failed": failed, "results_csv": str(root / "sweep_results.csv")}
