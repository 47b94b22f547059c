"""Small helpers the notebooks call, so their cells stay one-liners."""
from __future__ import annotations

import time
from pathlib import Path


def resolve_device(device: str = "auto") -> str:
    if device != "auto":
        return device
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def _model_dir(model_path: str | None, tiny: bool, tiny_dir: str | None) -> str | None:
    """The model folder a stage uses: the tiny model (built on first use, rebuilt when its recipe
    changed; None: the shared cache) or `model_path`."""
    if not tiny:
        return model_path
    from kaggle_kit.tiny import ensure_tiny_model

    return str(ensure_tiny_model(tiny_dir))


def preflight(model_path: str | None = None, tiny: bool = False, tiny_dir: str | None = None,
              max_model_len: int | None = None):
    """`kaggle-kit doctor` as the first cell: prints the checks, stops the notebook on a failure."""
    from kaggle_kit.workflow import doctor

    overrides = {"max_model_len": max_model_len} if max_model_len else {}
    return doctor.check(_model_dir(model_path, tiny, tiny_dir), overrides)


def setup_model(model_path: str | None = None, tiny: bool = False, tiny_dir: str | None = None,
                max_model_len: int | None = None) -> dict:
    """Build the tiny model if asked, then load and register the model once (later stages reuse it)."""
    import os

    import kaggle_kit as kk

    # In a notebook, stdout is the answer; vLLM's logs go to stderr (shown apart, skipped by nbval).
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    model_path = _model_dir(model_path, tiny, tiny_dir)
    overrides = {"max_model_len": max_model_len} if max_model_len else {}
    t = time.perf_counter()
    already = kk.VLLMClient.is_ready()
    kk.ensure_model(model_path, **overrides)
    engine = kk.VLLMClient.get_engine()
    return {"model": Path(engine.model_name).name, "max_model_len": engine.max_model_len,
            "reused_loaded_engine": already, "load_s": round(time.perf_counter() - t, 1)}


def problem_list(problems: str | list[str] | None) -> list[str] | None:
    """'relu,softmax' (papermill-friendly) or a list -> names; '' / 'all' / None -> every problem."""
    if problems in (None, "", "all"):
        return None
    return [p.strip() for p in problems.split(",")] if isinstance(problems, str) else list(problems)


def subchat_store(out_dir: str, attempts: bool | str = "auto"):
    """The store the notebook's widget opens: the refinement tree of the run (out_dir/attempts.sqlite)
    when there is one (or `attempts` names a file), else the notebook's own out_dir/subchat.sqlite."""
    import kaggle_kit as kk
    from kaggle_kit.experiment.refine import ATTEMPTS

    tree = Path(attempts) if isinstance(attempts, str) and attempts not in ("auto", "") else Path(out_dir) / ATTEMPTS
    if attempts and tree.exists():
        return kk.subchat.open_store(tree)
    return kk.subchat.open_store(Path(out_dir) / "subchat.sqlite")
