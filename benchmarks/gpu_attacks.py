"""The hostile candidates of tests/test_evaluator_attacks.py on CUDA, beside whatever holds the GPU.

Run on the GPU machine (vLLM staged by ../shared/gpu/stage.sh) with an engine alive in another process:
`--with-engine DIR` starts one itself (real vLLM over the tiny model's shape with untrained weights, made in
DIR if missing, generating in a loop) beside a run folder holding a records file and a SQLite database;
`--engine-pid` names one already running. Afterwards that process must still be running and still
generating, and the run folder untouched. Prints one JSON line per attack (expected and actual status, the
walls that stood) and exits 1 if any verdict is wrong.

    python benchmarks/gpu_attacks.py --out OUT.jsonl [--with-engine DIR | --engine-pid PID --run-folder DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import sqlite3
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

from kernels_eval.evaluate import evaluate
from kernels_eval.problems import load_problems, reference_solution
from kernels_eval.result import Status

RELU = load_problems(names=["relu"])[0]


def cand(forward: str, header: str = "") -> str:
    return (f"import torch\nimport torch.nn as nn\n{textwrap.dedent(header)}\n\nclass ModelNew(nn.Module):\n"
            f"    def forward(self, x):\n{textwrap.indent(textwrap.dedent(forward), ' ' * 8)}\n")


def probe(attempt: str) -> str:
    """A candidate whose import tries `attempt` and reports what happened as its runtime error."""
    return cand("return x", f"""
        import os, signal, socket
        got = []
        try:
            got.append(repr({attempt}))
        except OSError as e:
            got.append(type(e).__name__)
        raise RuntimeError('GOT ' + repr(got))
        """)


ATTACKS = {
    "python_patch": (cand("return torch.zeros_like(x)", "torch.relu = lambda x: torch.zeros_like(x)"), "incorrect"),
    "dispatcher_cuda_key": (cand("return torch.zeros_like(x)", """
        _lib = torch.library.Library("aten", "IMPL")
        _lib.impl("relu", lambda x: torch.zeros_like(x), "CUDA")
        """), "incorrect"),
    "lazy_output": (cand("return torch.relu(x).as_subclass(Lazy)", "class Lazy(torch.Tensor):\n    pass"), "incorrect"),
    "kill_parent": (probe("os.kill(os.getppid(), signal.SIGKILL) or 'killed'"), "runtime_error"),
    "proc_environ": (probe("len(open(f'/proc/{os.getppid()}/environ', 'rb').read())"), "runtime_error"),
    "network": (probe("socket.socket().connect(('127.0.0.1', 22)) or 'connected'"), "runtime_error"),
    "reference_solution": (reference_solution(RELU, "cuda"), "correct"),
    # last: every process it can see (the engine among them), SIGKILLed
    "kill_every_process": (probe("[os.kill(int(p), signal.SIGKILL) for p in os.listdir('/proc') "
                                 "if p.isdigit() and int(p) != os.getpid()] or 'none seen'"), "runtime_error"),
}


ENGINE = r"""
import faulthandler, os, sys, time
faulthandler.dump_traceback_later(150, repeat=True)  # where it waits, if it never starts
from kaggle_kit.tiny import build_tiny_model
import kaggle_kit as kk
from vllm import SamplingParams
path = sys.argv[1]
if not os.path.exists(os.path.join(path, "config.json")):
    build_tiny_model(path, train_steps=0)
llm = kk.ensure_model(path, max_model_len=2048, gpu_memory_utilization=0.3)
n = 0
while True:
    llm.generate(["Write a CUDA kernel."] * 8, SamplingParams(max_tokens=64), use_tqdm=False)
    n += 1
    with open(sys.argv[2], "w") as f:
        f.write(str(n))
"""


def start_engine(model_dir: str, work: Path) -> tuple[subprocess.Popen, Path, Path]:
    """A live engine in a process of its own, and a run folder beside it (records + SQLite), as a notebook
    session has while it evaluates."""
    beat = work / "engine_steps"
    log = open(work / "engine.log", "w")
    proc = subprocess.Popen([sys.executable, "-c", ENGINE, model_dir, str(beat)], stdout=log, stderr=log)
    for _ in range(240):
        if beat.exists() or proc.poll() is not None:
            break
        time.sleep(1)
    if not beat.exists():
        print(json.dumps({"engine": "did not start in 240 s", "log": (work / "engine.log").read_text()[-3000:]}))
        proc.kill()
        raise SystemExit(1)
    run = work / "run"
    run.mkdir()
    (run / "records.jsonl").write_text(json.dumps({"problem": "01_relu", "status": "correct"}) + "\n")
    with sqlite3.connect(run / "attempts.sqlite") as db:
        db.execute("create table attempts (id integer primary key, verdict text)")
        db.execute("insert into attempts (verdict) values ('correct')")
    return proc, beat, run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--engine-pid", type=int)
    ap.add_argument("--run-folder")
    ap.add_argument("--with-engine", metavar="MODEL_DIR")
    args = ap.parse_args()
    engine = None
    if args.with_engine:
        engine, beat, run = start_engine(args.with_engine, Path(tempfile.mkdtemp(prefix="gpu-attacks-")))
        args.engine_pid, args.run_folder = engine.pid, str(run)
        steps_before = int(beat.read_text() or 0)
    before = {p: p.stat().st_mtime_ns for p in Path(args.run_folder).rglob("*")} if args.run_folder else {}
    wrong = 0
    with open(args.out, "w", buffering=1) as f:  # line by line: a cut-off run keeps what it did
        for name, (src, want) in ATTACKS.items():
            r = evaluate(RELU, src, "cuda", trials=2)
            ok = r.status.value == want and "killed" not in r.message and "connected" not in r.message
            if name in ("proc_environ",):
                ok = ok and "GOT ['PermissionError']" in r.message
            wrong += not ok
            row = {"attack": name, "expected": want, "status": r.status.value, "ok": ok,
                   "message": (r.message or "")[:300], "sandbox": r.provenance.get("sandbox")}
            f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    if args.engine_pid:
        alive = os.path.exists(f"/proc/{args.engine_pid}") and (engine is None or engine.poll() is None)
        row = {"engine_alive": alive}
        if engine is not None:  # and still generating: its step count moved on during the attacks
            time.sleep(5)
            row["engine_steps_during_attacks"] = int(beat.read_text() or 0) - steps_before
            alive = alive and row["engine_steps_during_attacks"] > 0
        print(json.dumps(row))
        wrong += not alive
    if args.run_folder:
        after = {p: p.stat().st_mtime_ns for p in Path(args.run_folder).rglob("*")}
        print(json.dumps({"run_folder_unchanged": after == before}))
        wrong += after != before
    if engine is not None:
        engine.kill()
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
