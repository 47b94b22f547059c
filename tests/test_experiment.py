"""`kernels-eval run` / `report` / `eval`: resume after kill -9, execution verifier, CLIs."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fake_servers import FakeServer
from kernels_eval.problems import load_problems
from kernels_eval.runner import Generated, RunConfig, _select_by_execution, read_records, run

BIN = Path(sys.executable).parent
# A candidate that is correct but reuses the reference (so it is flagged): quick, no build.
REUSE = ("Here you go.\n\n```python\nimport sys\nclass ModelNew(sys.modules['kk_reference'].Model):\n    pass\n```\n")


def test_torn_last_line_is_dropped_and_repaired(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text('{"a": 1}\n{"a": 2}\n{"a": 3, "tru')
    assert [r["a"] for r in read_records(p)] == [1, 2]
    read_records(p, repair=True)
    assert p.read_text() == '{"a": 1}\n{"a": 2}\n'


def test_resume_after_kill_9(tmp_path):
    with FakeServer("openai", respond=lambda body: REUSE) as srv:
        cmd = [BIN / "kernels-eval", "run", "--tts_service_url", srv.url, "--model_name", "fake-model",
               "--experiment_name", "resume", "--out_dir", str(tmp_path), "--device", "cpu", "--problem", "relu",
               "--problem", "gelu", "--problem", "softmax", "--num_samples", "2", "--batch_size", "1",
               "--tts_strategy", "online_bon"]
        results = tmp_path / "resume" / "results.jsonl"
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and len(read_records(results)) < 2:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        partial = read_records(results)
        assert 2 <= len(partial) < 6
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        records = read_records(results)
        keys = [(r["problem"], r["sample"], r["strategy"]) for r in records]
        assert len(records) == 6 and len(set(keys)) == 6  # nothing lost beyond the record in flight, nothing twice
        assert records[: len(partial)] == partial  # finished records were kept as they were
        assert all(r["eval"]["status"] == "correct" and "no_custom_kernel" in r["eval"]["flags"] for r in records)
        sent = srv.requests[-1]["body"]
        assert sent["tts_strategy"] == "online_bon" and sent["model"] == "fake-model" and "seed" in sent

    report = subprocess.run([BIN / "kernels-eval", "report", str(results)], capture_output=True, text=True, check=True)
    assert "fast_0       0 / 6" in report.stdout and "flag:no_custom_kernel=6" in report.stdout
    counted = subprocess.run([BIN / "kernels-eval", "report", str(results), "--count-flagged", "--json"],
                             capture_output=True, text=True, check=True)
    assert json.loads(counted.stdout)["fast_0"] == {"rate": 1.0, "num": 6, "den": 6}


def test_execution_verifier_prefers_working_code_over_confidence():
    cfg = RunConfig(experiment_name="x", device="cpu", verifier="execution", eval_options={"trials": 2})
    relu = load_problems(names=["relu"])[0]
    wrong = REUSE.replace("    pass", "    def forward(self, x):\n        return x * 2.0")
    gen = Generated(text="", tts={}, candidates=[("no code at all", 0.9), (wrong, 0.8), (REUSE, 0.1)])
    cfg.eval_options["trials"] = 2
    chosen, by_score, statuses = _select_by_execution(RunConfig(experiment_name="x", device="cpu", verifier="execution"), relu, gen)
    assert by_score == 0 and statuses[0] == "no_code" and statuses[1] == "incorrect" and statuses[2] == "correct"
    # the flagged-but-correct candidate still beats code that fails; nothing passes cleanly, so compiled+score decide
    assert chosen in (1, 2)


def test_eval_cli_json(tmp_path):
    relu = load_problems(names=["relu"])[0]
    cand = tmp_path / "response.md"
    cand.write_text(REUSE)
    out = subprocess.run([BIN / "kernels-eval", "eval", str(relu.path), str(cand), "--device", "cpu", "--json", "--trials", "2"],
                         capture_output=True, text=True, timeout=300)
    data = json.loads(out.stdout)
    for key in ("status", "compiled", "correct", "speedup", "runtime_ms", "ref_runtime_ms", "flags", "message", "provenance"):
        assert key in data
    assert data["status"] == "correct" and "no_custom_kernel" in data["flags"] and out.returncode == 0
    assert data["provenance"]["device"] == "cpu" and data["provenance"]["timing"] == "perf_counter_ns"
    cand.write_text("no code here")
    out = subprocess.run([BIN / "kernels-eval", "eval", str(relu.path), str(cand), "--device", "cpu", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert json.loads(out.stdout)["status"] == "no_code" and out.returncode == 1


@pytest.mark.vllm
def test_run_with_the_local_engine(registered, tiny_model_dir, tmp_path):
    cfg = RunConfig(experiment_name="local", model_name=tiny_model_dir, device="cpu", problems=["relu"], num_samples=1,
                    tts_strategy="offline_bon", tts_num_trajectories=2, max_tokens=48, out_dir=str(tmp_path))
    path = run(cfg, progress=False)
    (rec,) = read_records(path)
    assert rec["problem"] == "01_relu" and rec["tts"]["usage"]["engine_calls"] == 1
    assert rec["parse_status"] in ("no_code", "syntax_error", "no_modelnew", "ok") and rec["response"] is not None
