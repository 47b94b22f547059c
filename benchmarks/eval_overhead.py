"""What the evaluator's trust boundary costs: wall time per candidate evaluation, before and after.

Evaluates the same candidates with two checkouts' `kernels_eval` (e.g. the commit before the reference got
its own process and the sandbox, and this one), alternating between them round by round so both see the
same machine load; prints per-candidate medians and the after/before ratio measured in this one run.

    git worktree add /tmp/before <commit>
    python benchmarks/eval_overhead.py --before /tmp/before --after . --rounds 5 [--device cpu] [--json OUT]

Candidates: a Python-only ModelNew (no build), the bundled C++ relu (its build cached by the first round:
the steady state of a run), and a wrong one (judged incorrect). Each round's process imports torch before
timing anything, as a notebook beside the engine has: since the judge runs in the parent, a process that
has not imported torch pays that once (~2 s on this machine) at its first evaluation.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
os.environ["PYTHONPATH"] = sys.argv[1]  # the evaluator's own children import the same checkout
import torch  # as in a notebook or `kernels-eval run` (the engine's): the judge's import is paid once per process
from kernels_eval.evaluate import evaluate
from kernels_eval.problems import load_problems, reference_solution
relu = load_problems(names=["relu"])[0]
py = "import torch\nimport torch.nn as nn\n\nclass ModelNew(nn.Module):\n    def forward(self, x):\n        return torch.relu(x)\n"
wrong = py.replace("torch.relu(x)", "x * 1.0")
out = {}
for name, src in (("python", py), ("cpp_cached", reference_solution(relu, sys.argv[3])), ("incorrect", wrong)):
    t = time.perf_counter()
    r = evaluate(relu, src, sys.argv[3], cache_dir=sys.argv[2])
    out[name] = {"s": time.perf_counter() - t, "status": r.status.value}
print(json.dumps(out))
"""


def one(root: str, cache: str, device: str) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, root, cache, device], capture_output=True, text=True,
                          timeout=1800)
    if done.returncode:
        raise SystemExit(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", default=".")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json")
    args = ap.parse_args()
    caches = {k: tempfile.mkdtemp(prefix=f"overhead-{k}-") for k in ("before", "after")}
    for k in ("before", "after"):  # warm: the C++ build is made once per cache, not timed
        one(str(Path(getattr(args, k)).resolve()), caches[k], args.device)
    runs: dict = {"before": [], "after": []}
    for _ in range(args.rounds):
        for k in ("before", "after"):
            runs[k].append(one(str(Path(getattr(args, k)).resolve()), caches[k], args.device))
    table = {}
    for name in runs["after"][0]:
        b = statistics.median(r[name]["s"] for r in runs["before"])
        a = statistics.median(r[name]["s"] for r in runs["after"])
        table[name] = {"before_s": round(b, 2), "after_s": round(a, 2), "ratio": round(a / b, 2),
                       "status": [runs["before"][0][name]["status"], runs["after"][0][name]["status"]]}
        print(f"{name:<12} before {b:6.2f} s   after {a:6.2f} s   after/before {a / b:5.2f}   "
              f"({table[name]['status'][0]} / {table[name]['status'][1]})")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": args.device, "rounds": args.rounds, "per_candidate": table},
                                              indent=2) + "\n")


if __name__ == "__main__":
    main()
