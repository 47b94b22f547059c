"""A run split over Kaggle sessions: planned, pushed with the real kaggle CLI to a fake of Kaggle's API,
broken on purpose, pulled, re-pushed where broken, merged; and merges of real CPU runs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from kernels_eval.records import RecordStore

from kaggle_kit.config import ConfigError
from kaggle_kit.experiment import ExperimentConfig, run
from kaggle_kit.experiment.deadline import SAFETY_MARGIN_S, session_start
from kaggle_kit.experiment.merge import merge_roots
from kaggle_kit.workflow import shards

BIN = Path(sys.executable).parent
# Long enough for the tiny model to write its kernels (264-328 tokens: runs/selection_quality).
FAST = {"strategy": "offline_bon", "num_trajectories": 1, "tts_max_tokens": 400, "batch_size": 1, "device": "cpu"}


def report(folder: Path) -> tuple[dict, list[str]]:
    """`kernels-eval report` of a run folder: its summary without the timing-dependent numbers (speedups are
    measured again in every session), and its table's verdict columns."""
    out = subprocess.run([str(BIN / "kernels-eval"), "report", str(folder), "--json"], capture_output=True,
                         text=True, check=True).stdout
    s = json.loads(out)
    kept = {k: v for k, v in s.items() if k in ("samples", "problems", "not_evaluated", "fast_0", "taxonomy")
            or k.startswith("pass@")}
    text = subprocess.run([str(BIN / "kernels-eval"), "report", str(folder)], capture_output=True, text=True,
                          check=True).stdout
    table = text.split("\n\n")[0].splitlines()[1:]  # the per-item table, before the metrics
    return kept, [" ".join(line.split()[:3]) for line in table]  # problem, status, correct


def answers(folder: Path) -> dict[str, tuple]:
    """Per item: the chosen candidate (None when two candidates' scores tie within 1e-4: vLLM on CPU is not
    bit-reproducible across runs, so a near tie may fall either way), the texts and the chosen's verdict."""
    gen, ev = RecordStore(folder / "records.jsonl").latest()

    def chosen(g):
        scores = sorted((c.score for c in g.candidates), reverse=True)
        return None if len(scores) > 1 and scores[0] - scores[1] < 1e-4 else g.chosen

    return {k: (chosen(g), [c.text for c in g.candidates], ev[k].result.status.value if k in ev else None)
            for k, g in gen.items()}


# -- the plan --------------------------------------------------------------------------------------

def test_a_plan_splits_deterministically_and_refuses_a_shard_bigger_than_a_session(tmp_path):
    a = shards.plan("sweep1", 3, {"problems": "all"}, owner="me")
    b = shards.plan("sweep1", 3, {"problems": "all"}, owner="me")
    assert [s.problems for s in a.shards] == [s.problems for s in b.shards]
    names = [p for s in a.shards for p in s.problems]
    assert len(names) == len(set(names)) == 13 and [len(s.problems) for s in a.shards] == [5, 4, 4]
    text = shards.describe_plan(a)
    assert "kk-sweep1-s1of3" in text and "30 h weekly quota" in text and "floats" in text
    # Refinement multiplies the work: 13 problems x 60 rounds of 8-wide beam search cannot fit 2 sessions.
    with pytest.raises(ConfigError, match=r"more than one 12 h session .* use --shards \d+"):
        shards.plan("big", 2, {"problems": "all", "strategy": "beam_search", "refine_rounds": 60,
                               "tts_max_tokens": 4096}, owner="me")
    with pytest.raises(ValueError, match="unknown notebook parameter"):
        shards.plan("x1", 2, {"problemz": "all"}, owner="me")
    with pytest.raises(ConfigError, match="set per shard"):
        shards.plan("x1", 2, {"out_dir": "elsewhere"}, owner="me")
    a.save(tmp_path)
    again = shards.Manifest.load("sweep1", tmp_path)
    assert again == a


def test_kernels_eval_run_takes_the_same_shard_as_the_plan():
    from kaggle_kit.experiment.config import parse_shard, shard_of

    m = shards.plan("same1", 4, {"problems": "all"}, owner="me")
    names = [p for s in m.shards for p in s.problems]
    assert [shard_of(names, *parse_shard(f"{i}/4")) for i in range(1, 5)] == [s.problems for s in m.shards]
    assert shard_of(["a", "b"], 2, 3) == []  # more shards than problems: the last ones are empty
    with pytest.raises(ConfigError, match="I/N"):
        parse_shard("2-4")
    with pytest.raises(ConfigError, match="between 1 and N"):
        parse_shard("5/4")


# -- merging real runs -----------------------------------------------------------------------------

@pytest.mark.vllm
def test_two_shards_of_a_real_cpu_run_merge_into_the_one_run_report(registered, tiny_model_dir, tmp_path):
    def one(name, problems):
        cfg = ExperimentConfig.of(experiment_name="r", out_dir=str(tmp_path / name), model=tiny_model_dir,
                               device="cpu", problems=problems, strategy="offline_bon", num_trajectories=2,
                               max_tokens=400, trials=2, batch_size=1)
        run(cfg, progress=False, log=lambda m: None)
        return cfg.folder

    whole = one("whole", ["gelu", "vector_add"])
    a, b = one("a", ["gelu"]), one("b", ["vector_add"])
    merged = merge_roots([a.parent, b.parent], tmp_path / "merged")["r"]
    assert merged.generated == 2 == merged.evaluated and not merged.incomplete
    assert answers(merged.folder) == answers(whole)
    assert report(merged.folder) == report(whole)
    # Copies made with other settings are refused, as a resumed run refuses them.
    other = tmp_path / "c" / "r"
    other.mkdir(parents=True)
    fp = json.loads((a / "run.json").read_text())
    fp["fingerprint"]["temperature"] = 1.0
    (other / "run.json").write_text(json.dumps(fp))
    with pytest.raises(ConfigError, match="temperature: 0.6 .* vs 1.0"):
        merge_roots([a.parent, other.parent], tmp_path / "m2")


# -- the whole flow through the real kaggle CLI ----------------------------------------------------

def _notebook_namespace(text: str) -> tuple[dict, str]:
    """The pushed notebook's parameters (its own cell, then papermill's injected one) and its run cell."""
    nb = json.loads(text)
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    src = lambda c: c["source"] if isinstance(c["source"], str) else "".join(c["source"])  # noqa: E731
    ns: dict = {}
    for c in code:
        tags = c.get("metadata", {}).get("tags", [])
        if "parameters" in tags or "injected-parameters" in tags:
            exec(src(c), ns)  # literal assignments only
    run_cell = next(src(c) for c in code if "run_tts_kernels(" in src(c))
    return ns, run_cell


@contextmanager
def _inside(working: Path, env: dict[str, str]):
    """A session's working directory and environment (sessions run one at a time)."""
    old_cwd, old_env = os.getcwd(), {k: os.environ.get(k) for k in env}
    os.chdir(working)
    os.environ.update(env)
    try:
        yield
    finally:
        os.chdir(old_cwd)
        for k, v in old_env.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def run_pushed_notebook(text: str, working: Path, inputs: Path, behaviour: str = "complete") -> None:
    """A session: the pushed notebook's parameter cells and stage-02 cell, run in its /kaggle/working with
    its /kaggle/input. "deadline": the 12 h end (deadline='kaggle') is set to come right after the start."""
    import kaggle_kit as kk

    import time

    ns, cell = _notebook_namespace(text)
    # deadline="kaggle" counts 12 h from this machine's container start (Kaggle starts one per session):
    # a session here starts now, and a "deadline" one ends a second after it starts.
    left = 1.0 if behaviour == "deadline" else 12 * 3600.0
    env = {"KAGGLE_INPUT_DIR": str(inputs), "KK_COMPILE_CACHE": "off",
           "KK_SESSION_HOURS": str((time.time() - session_start() + SAFETY_MARGIN_S + left) / 3600)}
    ns["kk"] = kk
    with _inside(working, env):
        exec(cell, ns)


@pytest.fixture
def kaggle_env(tmp_path, monkeypatch):
    from fake_kaggle import FakeKaggle

    if not (BIN / "kaggle").exists():
        pytest.skip("the kaggle CLI is not installed (the dev extra installs it on Python >= 3.11)")
    fake = FakeKaggle(tmp_path / "kaggle", session=lambda v, w, i, b: run_pushed_notebook(v.request["text"], w, i, b))
    for k in ("KAGGLE_API_TOKEN", "KAGGLE_API_V1_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    for k in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "LOCALHOST")  # the CLI calls http://localhost ...
    monkeypatch.setenv("HTTP_PROXY", fake.proxy)  # ... which reaches the fake
    monkeypatch.setenv("http_proxy", fake.proxy)
    monkeypatch.setenv("KAGGLE_USERNAME", fake.user)
    monkeypatch.setenv("KAGGLE_KEY", fake.key)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "kaggle-config"))
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ['PATH']}")  # this environment's kaggle CLI
    yield fake
    fake.close()


def kk_shards(*args: str, root: Path) -> subprocess.CompletedProcess:
    done = subprocess.run([str(BIN / "kaggle-kit"), "shards", *args, "--root", str(root)], capture_output=True,
                          text=True, timeout=600)
    print(f"$ kaggle-kit shards {' '.join(args)}\n{done.stdout}")  # with -s: what each command prints
    return done


@pytest.mark.vllm
def test_four_shards_through_the_kaggle_cli_survive_three_faults_and_merge_to_the_one_session_run(
        registered, kaggle_env, tmp_path):
    fake, root = kaggle_env, tmp_path / "shards"
    problems = "gelu,vector_add,softmax,layer_norm,mse_loss"  # split 2, 1, 1, 1; quick to evaluate
    params = ["-p", "problems", problems] + [x for k, v in FAST.items() for x in ("-p", k, str(v))]
    planned = kk_shards("plan", "nightly", "--shards", "4", "--quota", "live", *params, root=root)
    assert planned.returncode == 0, planned.stderr
    assert "27 h weekly quota (left this week, from `kaggle quota`)" in planned.stdout  # 30 h - 3 h used
    m = shards.Manifest.load("nightly", root)
    assert [len(s.problems) for s in m.shards] == [2, 1, 1, 1]

    # Shard 1 reaches its deadline after one item; 2 fails at start; 3 never starts; 4 runs whole.
    fake.script.update({"kk-nightly-s1of4": "deadline", "kk-nightly-s2of4": "error", "kk-nightly-s3of4": "never"})
    first = kk_shards("push", "nightly", root=root)
    assert first.returncode == 0 and first.stdout.count("pushed kk-tester/") == 4, first.stdout + first.stderr
    again = kk_shards("push", "nightly", root=root)
    assert "nothing to push" in again.stdout and fake.calls.count("SaveKernel") == 4  # idempotent
    fake.wait_idle()
    status = kk_shards("status", "nightly", root=root)
    assert [line.split(": ")[-1] for line in status.stdout.splitlines()][3:] == ["complete"], status.stdout
    assert "s2of4: error (RuntimeError: CUDA error" in status.stdout and "s3of4: queued" in status.stdout
    pulled = kk_shards("pull", "nightly", root=root)
    assert pulled.returncode == 0 and "pulled 3 kernel output(s)" in pulled.stdout, pulled.stderr
    assert not list((root / "nightly" / "pulled").rglob("kk-compile-cache"))  # the run folder only
    merged = kk_shards("merge", "nightly", root=root)
    assert merged.returncode == 3, merged.stdout + merged.stderr  # work left
    m = shards.Manifest.load("nightly", root)
    assert m.shards[3].missing == [] and len(m.shards[1].missing) == 1 and m.shards[2].missing is None
    assert 1 <= len(m.shards[0].missing) <= 2  # the deadline came after its first item's generation

    # Push again: only the broken shards, each a new kernel resuming from what finished before it.
    fake.script.clear()
    repush = kk_shards("push", "nightly", "--stale-hours", "0", root=root)
    assert repush.stdout.count("pushed kk-tester/") == 3, repush.stdout + repush.stderr
    assert "s4of4" not in repush.stdout and "kk-nightly-s1of4-r2" in repush.stdout
    m = shards.Manifest.load("nightly", root)
    assert m.shards[0].last.resumes == ["kk-tester/kk-nightly-s1of4"] and m.shards[1].last.resumes == []
    pushed_params, _ = _notebook_namespace(fake._version("kk-tester/kk-nightly-s1of4-r2").request["text"])
    assert pushed_params["resume_from"] == "kk-nightly-s1of4" and pushed_params["problems"] == ",".join(m.shards[0].problems)
    fake.wait_idle()
    waited = kk_shards("status", "nightly", "--wait", "--poll", "0.2", root=root)
    assert waited.returncode == 0 and waited.stdout.count(": complete") == 4, waited.stdout
    assert kk_shards("pull", "nightly", root=root).returncode == 0
    final = kk_shards("merge", "nightly", root=root)
    assert final.returncode == 0 and "nothing missing" in final.stdout, final.stdout + final.stderr
    # The resumed deadline shard kept its first item (generated in attempt 1) rather than making it again.
    gen_before, _ = RecordStore(root / "nightly/pulled/kk-nightly-s1of4/runs/nightly/records.jsonl").latest()
    gen_after, _ = RecordStore(root / "nightly/merged/records.jsonl").latest()
    assert gen_before and all(gen_after[k].candidates == g.candidates for k, g in gen_before.items())

    # One session over every problem, the same notebook: the same answers, verdicts and report.
    single = tmp_path / "single"
    single.mkdir()
    from kaggle_kit.workflow.kaggle import prepare_push

    folder = prepare_push(tmp_path / "one-push", {**FAST, "problems": problems,
                                                  "out_dir": "runs/nightly"})
    run_pushed_notebook((folder / "kaggle_kit_bundle.ipynb").read_text(), single, tmp_path / "no-inputs")
    assert len(answers(root / "nightly/merged")) == 5
    assert answers(root / "nightly/merged") == answers(single / "runs/nightly")
    merged_report = report(root / "nightly/merged")
    assert merged_report[0]["samples"] == 5 and len(merged_report[1]) == 5
    assert merged_report == report(single / "runs/nightly")
    assert (root / "nightly/merged/results.csv").exists()
