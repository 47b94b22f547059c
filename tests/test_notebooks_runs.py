"""Papermill runs and sweeps, bundling, plots, Kaggle metadata and push (up to the network call)."""
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

from kaggle_kit.experiment import plots
from kaggle_kit.workflow import kaggle
from kaggle_kit.workflow import notebooks as runs
from kaggle_kit.workflow.golden import KEEP_GOLDEN_RUNS

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_every_stage_has_a_parameters_cell_and_shared_defaults_agree():
    merged = runs.merged_parameters()
    for name in ("model_path", "tiny", "strategy", "scorer", "num_trajectories", "candidates_per_step", "beam_size",
                 "max_steps", "score_aggregation", "temperature", "seed", "problems", "out_dir", "backend"):
        assert name in merged, name
    for stage in runs.stage_paths():
        assert runs.parameter_defaults(stage)


def test_notebook_02_shows_the_defaults_kernels_eval_run_has():
    """One set of defaults: the stage's parameters are ExperimentConfig's (None: TTSParams' own)."""
    from kaggle_kit.experiment import ExperimentConfig

    shown, cfg = runs.parameter_defaults(runs.NOTEBOOKS / "02_tts_kernels.ipynb"), ExperimentConfig()
    assert (shown["strategy"], shown["scorer"], shown["verifier"]) == (cfg.tts.strategy, cfg.tts.scorer, cfg.verifier)
    for name in ("refine_rounds", "refine_width", "target_speedup", "resample", "batch_size", "seed", "deadline",
                 "workers", "evaluate", "problems_dir", "level"):
        assert shown[name] == getattr(cfg, name), name
    for name in ("num_trajectories", "candidates_per_step", "beam_size", "max_steps", "score_aggregation",
                 "temperature", "tts_max_tokens"):
        assert shown[name] is None, name  # run_tts_kernels leaves it to TTSParams


def test_misspelt_parameters_are_refused():
    with pytest.raises(ValueError, match="unknown notebook parameter.*'stratgy'.*did you mean 'strategy'"):
        runs.check_parameters({"stratgy": "beam_search"}, runs.merged_parameters())
    with pytest.raises(ValueError, match="unknown notebook parameter"):
        runs.sweep({"grid": {"scorr": ["entropy"]}}, out_dir="/nonexistent")  # refused before anything runs


def test_committed_bundle_is_up_to_date(tmp_path):
    fresh = runs.build_bundle(out_path=tmp_path / "b.ipynb")
    assert fresh.read_text() == runs.BUNDLE.read_text(), "run `kaggle-kit bundle` and commit notebooks/kaggle_kit_bundle.ipynb"
    nb = nbformat.read(str(fresh), as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and "strategy = 'online_bon'" in tagged[0].source


def test_prepare_only_injects_parameters(tmp_path):
    out = runs.inject(runs.build_bundle(out_path=tmp_path / "b.ipynb"), {"strategy": "beam_search", "tiny": True}, tmp_path / "p.ipynb")
    nb = nbformat.read(str(out), as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and "strategy = \"beam_search\"" in injected[0].source
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")  # not executed


def _tables(n=3):
    rng = np.random.default_rng(0)
    results = pd.DataFrame({"problem": [f"p{i}" for i in range(n)], "strategy": ["beam_search"] * n,
                            "usage_generated_tokens": [100, 200, 300][:n], "eval_correct": [True, False, True][:n],
                            "eval_speedup": [1.5, None, 0.8][:n]})
    candidates = pd.DataFrame({"problem": ["p0"] * 6, "chosen": [True] + [False] * 5,
                               "aggregated_score": rng.uniform(size=6), "correct": [True, False, True, False, False, True]})
    steps = pd.DataFrame({"problem": ["p0"] * 5, "strategy": ["beam_search"] * 5, "scorer": ["entropy"] * 5,
                          "id": [0, 1, 2, 3, 4], "parent": [None, None, 0, 1, 2], "depth": [0, 0, 1, 1, 2],
                          "score": [0.5, 0.6, 0.7, 0.4, 0.9], "selected": [True, False, True, False, True]})
    return results, candidates, steps


def test_plots_are_written_and_labelled(tmp_path):
    results, candidates, steps = _tables()
    paths = plots.save_all(results, candidates, steps, tmp_path)
    assert [p.name for p in paths] == ["step_score_traces.png", "chosen_vs_rejected.png", "cost_benefit.png",
                                       "uncertainty_vs_correctness.png"]
    assert all(p.stat().st_size > 5000 for p in paths)
    fig = plots.uncertainty_vs_correctness(candidates)
    ax = fig.axes[0]
    assert "AUROC" in ax.get_title() and ax.get_ylabel()
    assert plots.auroc([0.9, 0.8, 0.1, 0.2], [True, True, False, False]) == 1.0
    assert plots.auroc([0.1, 0.9], [True, False]) == 0.0
    assert np.isnan(plots.auroc([0.1, 0.2], [False, False]))


VALID = {"id": "someone/kaggle-kit-tts", "title": "kaggle_kit TTS", "code_file": "nb.ipynb", "language": "python",
         "kernel_type": "notebook", "is_private": True, "enable_gpu": True, "enable_tpu": False, "enable_internet": False,
         "machine_shape": "NvidiaTeslaT4", "dataset_sources": ["someone/wheels"], "model_sources": ["qwen-lm/qwen-3/transformers/14b-awq/1"]}


@pytest.mark.parametrize("change, message", [
    ({"id": "someone/abc"}, "at least 5 characters"),
    ({"id": "no-slash"}, "owner/slug"),
    ({"id": "someone/Has_Caps"}, "lowercase"),
    ({"title": "abc"}, "title"),
    ({"code_file": "missing.ipynb"}, "does not exist"),
    ({"enable_gpu": "true"}, "JSON boolean"),
    ({"enable_internet": None}, "enable_internet"),
    ({"model_sources": ["qwen-lm/qwen-3/14b-awq"]}, "5 parts"),
    ({"model_sources": ["qwen-lm/qwen-3/transformers/14b-awq/latest"]}, "version number"),
    ({"kernel_type": "script"}, "kernel_type"),
    ({"machine_shape": "NvidiaTeslaK80"}, "machine_shape"),
])
def test_metadata_rules(tmp_path, change, message):
    (tmp_path / "nb.ipynb").write_text("{}")
    meta = {**VALID, **change}
    if change.get("enable_internet", 1) is None:
        meta.pop("enable_internet")
    assert kaggle.validate_metadata(VALID, tmp_path) == []
    errors = kaggle.validate_metadata(meta, tmp_path)
    assert any(message in e for e in errors), errors


def test_repo_metadata_is_valid_for_two_t4s():
    meta = kaggle.load_metadata()
    assert kaggle.validate_metadata(meta) == []
    assert meta["machine_shape"] == "NvidiaTeslaT4" and meta["enable_gpu"] is True and meta["enable_internet"] is False
    assert meta["model_sources"] == ["qwen-lm/qwen-3/transformers/14b-awq/1"] and meta["dataset_sources"]


def test_push_runs_the_kaggle_cli_and_never_leaks_credentials(tmp_path, monkeypatch):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    log = tmp_path / "kaggle_args.json"
    script = fake_bin / "kaggle"
    script.write_text(f"#!{sys.executable}\nimport json, os, sys\njson.dump(sys.argv[1:], open({str(log)!r}, 'w'))\n"
                      "print('Kernel version 1 successfully pushed. key=' + os.environ.get('KAGGLE_KEY', ''))\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("KAGGLE_KEY", "kaggle-secret-123")
    out = kaggle.push({"strategy": "beam_search"}, tmp_path / "push")
    args = json.loads(log.read_text())
    assert args[:3] == ["kernels", "push", "-p"] and Path(args[3]) == tmp_path / "push"
    assert "successfully pushed" in out and "kaggle-secret-123" not in out  # scrubbed
    meta = json.loads((tmp_path / "push" / "kernel-metadata.json").read_text())
    pushed = tmp_path / "push" / meta["code_file"]
    assert pushed.exists() and "beam_search" in pushed.read_text()
    for f in (tmp_path / "push").iterdir():
        assert "kaggle-secret-123" not in f.read_text()
    kaggle.fetch("someone/kaggle-kit-tts", tmp_path / "fetched")
    assert json.loads(log.read_text())[:3] == ["kernels", "output", "someone/kaggle-kit-tts"]


def test_push_refuses_bad_metadata(tmp_path):
    bad = tmp_path / "kernel-metadata.json"
    bad.write_text(json.dumps({**VALID, "id": "x/ab", "enable_internet": "no"}))
    with pytest.raises(ValueError, match="slug.*5 characters.*enable_internet"):
        kaggle.prepare_push(tmp_path / "out", metadata_path=bad)


def test_changing_a_golden_output_fails_nbval(tmp_path):
    """The regression tests bite: the golden notebook passes as committed, and fails once one
    compared output is edited."""
    import shutil

    golden = ROOT / "tests" / "golden" / "04_plot_scores.ipynb"
    if not golden.exists():
        pytest.skip("no golden notebooks: run `kaggle-kit golden`")
    if not (ROOT / "tests" / "golden" / "runs" / "latest").exists():  # written by the golden notebooks, collected first
        pytest.skip("no golden runs: run the whole suite (tests/golden runs first) or `kaggle-kit golden`")
    work = tmp_path / "golden"
    work.mkdir()
    shutil.copy(ROOT / "tests" / "conftest.py", work / "conftest.py")  # the same stderr handling as `make test`
    (work / "runs").symlink_to(ROOT / "tests" / "golden" / "runs", target_is_directory=True)  # 02's tables
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval", "--nbval-current-env",
           "--nbval-sanitize-with", str(ROOT / "tests" / "nbval_sanitize.cfg"), "-o", "addopts=", golden.name]
    shutil.copy(golden, work / golden.name)
    env = {**os.environ, KEEP_GOLDEN_RUNS: "1"}
    same = subprocess.run(cmd, capture_output=True, text=True, cwd=work, timeout=600, env=env)
    assert same.returncode == 0, same.stdout[-3000:]
    nb = nbformat.read(str(golden), as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == "code" and "figures:" in c.source)
    stream = next(o for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")
    stream.text = stream.text.replace("cost_benefit.png", "cost_benefit_CHANGED.png")
    nbformat.write(nb, str(work / golden.name))
    changed = subprocess.run(cmd, capture_output=True, text=True, cwd=work, timeout=600, env=env)
    assert changed.returncode != 0 and "mismatch 'stdout'" in changed.stdout and "_CHANGED.png" in changed.stdout


SMALL = {"tiny": True, "problems": "relu", "max_steps": 2, "tts_max_tokens": 64, "candidates_per_step": 2,
         "num_trajectories": 2, "beam_size": 2}


@pytest.mark.vllm
def test_run_notebooks_in_one_kernel(tmp_path, tiny_model_dir):
    # A grid of two scorers: one run folder each, one table over both, a progress line per run.
    executed = runs.run_notebooks({**SMALL, "tiny_dir": tiny_model_dir, "scorer": "entropy,perplexity"},
                                  tmp_path / "run", stages=["02_tts_kernels.ipynb", "04_plot_scores.ipynb"],
                                  progress_bar=False)
    nb = nbformat.read(str(executed), as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells)
    assert (tmp_path / "run" / "results.csv").exists() and len(list((tmp_path / "run" / "figures").glob("*.png"))) == 4
    results = pd.read_csv(tmp_path / "run" / "results.csv")
    assert results["problem"].tolist() == ["01_relu"] * 2 and results["scorer"].tolist() == ["entropy", "perplexity"]
    progress = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
                       if o.get("name") == "stderr")
    assert "run 1/2: online_bon/entropy" in progress and "run 2/2: online_bon/perplexity" in progress, progress[-3000:]
    # the second run's search asks what the first asked at least at its first step: answered from memory
    reused = re.search(r"grid: (\d+) of (\d+) engine requests answered", progress)
    assert reused and 0 < int(reused.group(1)) < int(reused.group(2)), progress[-3000:]


@pytest.mark.vllm
def test_sweep_continues_past_a_failed_point(tmp_path, tiny_model_dir):
    spec = tmp_path / "sweep.yaml"
    spec.write_text(json.dumps({"base": {**SMALL, "tiny_dir": tiny_model_dir}, "stages": ["02_tts_kernels.ipynb"],
                                "grid": {"strategy": ["no_such_strategy", "offline_bon"]}}))
    r = subprocess.run([BIN / "kaggle-kit", "sweep", str(spec), "--out", str(tmp_path / "sw")],
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 1 and "1/2 points ran" in r.stdout  # exit 1: one point failed, the next still ran
    failed = json.loads((tmp_path / "sw" / "sweep_failed.json").read_text())
    assert [f["strategy"] for f in failed] == ["no_such_strategy"] and "choose from" in failed[0]["error"]
    assert not list((tmp_path / "sw").glob("000-*/executed.ipynb"))  # refused before a kernel started
    table = pd.read_csv(tmp_path / "sw" / "sweep_results.csv")
    assert list(table["sweep_strategy"]) == ["offline_bon"] and set(table["strategy"]) == {"offline_bon"}


@pytest.mark.parametrize("bad", [{"strategy": "online_bon,beam_serch"}, {"scorer": "entropy,perplexty"},
                                 {"verifier": "exection"}])
def test_a_misspelt_choice_is_refused_before_a_kernel_starts(tmp_path, bad):
    with pytest.raises(ValueError, match="choose from"):
        runs.run_notebooks({"tiny": True, **bad}, tmp_path / "run", progress_bar=False)
    assert not (tmp_path / "run" / "executed.ipynb").exists()


def test_selection_table_compares_the_choice_with_a_random_pick_and_the_oracle():
    results = pd.DataFrame({"key": ["k1", "k2", "k3"], "method": ["a/entropy", "a/entropy", "b/execution"],
                            "round": [1, 1, 1], "eval_correct": [True, False, False],
                            "eval_speedup": [2.0, None, None], "usage_generated_tokens": [100, 300, 50]})
    candidates = pd.DataFrame({"key": ["k1", "k1", "k2", "k2", "k3", "k3", "k3"],
                               "method": ["a/entropy"] * 4 + ["b/execution"] * 3, "round": [1] * 7,
                               "correct": [True, False, False, False, True, True, False],
                               "aggregated_score": [0.9, 0.1, 0.5, 0.4, 0.2, 0.3, 0.8]})
    t = plots.selection_table(results, candidates).set_index("method")
    assert t.loc["a/entropy", ["chosen_correct", "random_pick", "oracle"]].tolist() == [0.5, 0.25, 0.5]
    assert t.loc["b/execution", "random_pick"] == pytest.approx(2 / 3) and t.loc["b/execution", "oracle"] == 1.0
    assert t.loc["a/entropy", "tokens_per_item"] == 200 and t.loc["a/entropy", "geomean_speedup"] == 2.0
    assert t.loc["b/execution", "auroc"] == 0.0 and np.isnan(t.loc["b/execution", "geomean_speedup"])


def test_step_traces_of_a_grid_draw_one_run_s_tree(tmp_path):
    """A grid's runs share item keys (same problem, sample, strategy): the traces take one method's tree."""
    _, _, steps = _tables()
    steps = pd.concat([steps.assign(key="k", method="beam_search/entropy"),
                       steps.assign(key="k", method="beam_search/perplexity", score=steps["score"] / 2)])
    fig = plots.step_score_traces(steps)
    assert "entropy" in fig.axes[0].get_title()
    chosen = [line for line in fig.axes[0].get_lines() if line.get_label() == "chosen path"][0]
    assert list(chosen.get_ydata()) == [0.5, 0.7, 0.9]


def test_the_heartbeat_names_the_running_cell_and_its_last_line(tmp_path):
    # What make demo prints every 20 s while a long cell runs, read from papermill's autosave.
    nb = nbformat.v4.new_notebook()
    done = nbformat.v4.new_code_cell("import kaggle_kit as kk")
    done.metadata["papermill"] = {"status": "completed"}
    running = nbformat.v4.new_code_cell("# the kernels\nresults = kk.run_tts_kernels(**params)")
    running.metadata["papermill"] = {"status": "running"}
    running.outputs = [nbformat.v4.new_output("stream", name="stdout", text="generate: 3/9 items\rgenerate: 6/9 items\n")]
    nb.cells = [done, running, nbformat.v4.new_code_cell("plots()")]
    path = tmp_path / "executed.ipynb"
    nbformat.write(nb, path)
    assert runs._running_cell(path) == "cell 2/3 `results = kk.run_tts_kernels(**params)`: generate: 6/9 items"
    assert runs._running_cell(tmp_path / "absent.ipynb") == ""


@pytest.mark.parametrize("level", ["WARNING", "INFO"])
def test_the_notebook_kernel_keeps_its_warnings_to_itself_unless_asked(tmp_path, level):
    # A real kernel through run_notebooks: its own "running over TCP without encryption" warning reaches
    # the terminal (its stderr is ours) only when KK_LOG_LEVEL asks for INFO; the cell's output always does.
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1\nout_dir = ''", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("import sys\nprint('cell says', x, file=sys.stderr)")]
    nb.metadata = {"kernelspec": {"name": "python3", "language": "python", "display_name": "Python 3"},
                   "language_info": {"name": "python"}}
    nbformat.write(nb, tmp_path / "one.ipynb")
    code = ("from kaggle_kit.workflow.notebooks import run_notebooks; "
            f"run_notebooks({{'x': 2}}, {str(tmp_path / 'out')!r}, stages=[{str(tmp_path / 'one.ipynb')!r}], progress_bar=False)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "KK_LOG_LEVEL": level})
    assert p.returncode == 0, p.stderr[-2000:]
    executed = nbformat.read(tmp_path / "out" / "executed.ipynb", as_version=4)
    assert "cell says 2" in executed.cells[-1].outputs[0]["text"]
    assert ("without encryption" in p.stderr) is (level == "INFO"), p.stderr[-2000:]


def test_the_heartbeat_shows_a_long_cell_s_latest_line_as_it_streams(tmp_path, capsys):
    # papermill saves the notebook only when a later output comes, so the saved copy cannot show the line a
    # long cell printed last; the heartbeat reads the kernel's stream as it comes.
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"name": "python3", "language": "python", "display_name": "Python 3"},
                   "language_info": {"name": "python"}}
    nb.cells = [nbformat.v4.new_code_cell("out_dir = ''", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("import sys, time\nprint('building 3 kernels', file=sys.stderr)\n"
                                          "time.sleep(1)\nprint('built 1/3', file=sys.stderr)\ntime.sleep(4)")]
    nbformat.write(nb, tmp_path / "slow.ipynb")
    runs.run_notebooks({}, tmp_path / "out", stages=[str(tmp_path / "slow.ipynb")], progress_bar=False, heartbeat_s=1)
    out = capsys.readouterr().out
    beats = [ln for ln in out.splitlines() if "cell 3/3" in ln]  # the injected parameters, ours, the slow one
    assert any(ln.endswith("`import sys, time`: built 1/3") for ln in beats), out


def test_third_party_logs_are_quiet_unless_asked(monkeypatch):
    import logging

    from kaggle_kit.config import QUIET_LOGGERS, quiet_logs

    levels = {n: logging.getLogger(n).level for n in QUIET_LOGGERS}
    for name in ("VLLM_LOGGING_LEVEL", "KK_LOG_LEVEL", "TRANSFORMERS_VERBOSITY", "PYTHONWARNINGS"):
        monkeypatch.setenv(name, "")  # recorded, so what quiet_logs sets is undone after the test
        monkeypatch.delenv(name)
    try:
        assert quiet_logs() is False and os.environ["VLLM_LOGGING_LEVEL"] == "ERROR"
        assert logging.getLogger("jupyter_client").level == logging.ERROR
        monkeypatch.setenv("KK_LOG_LEVEL", "INFO")
        assert quiet_logs() is True
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)
