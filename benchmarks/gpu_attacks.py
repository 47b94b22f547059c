"""The hostile candidates of tests/test_evaluator_attacks.py on CUDA, beside whatever holds the GPU.

Run on the GPU machine (vLLM staged by ../shared/gpu/stage.sh), ideally with an engine alive in another
process (`--engine-pid`): afterwards that process must still be running and the run folder untouched.
Prints one JSON line per attack (expected and actual status, the walls that stood) and exits 1 if any
verdict is wrong.

    python benchmarks/gpu_attacks.py --out OUT.jsonl [--engine-pid PID] [--run-folder DIR]

Not yet run on a GPU (issue #31's GPU half): the device machine lent no GPU in the session that wrote it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
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
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--engine-pid", type=int)
    ap.add_argument("--run-folder")
    args = ap.parse_args()
    before = {p: p.stat().st_mtime_ns for p in Path(args.run_folder).rglob("*")} if args.run_folder else {}
    wrong = 0
    with open(args.out, "w") as f:
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
        alive = os.path.exists(f"/proc/{args.engine_pid}")
        print(json.dumps({"engine_alive": alive}))
        wrong += not alive
    if args.run_folder:
        after = {p: p.stat().st_mtime_ns for p in Path(args.run_folder).rglob("*")}
        print(json.dumps({"run_folder_unchanged": after == before}))
        wrong += after != before
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
