"""Every KernelBench reference through the evaluator as its own candidate (`ModelNew = Model`).

Each must come out `correct` with a speedup near 1: anything else is a bug of the evaluator
until shown otherwise. One JSON line per problem (status, speedup, wall time, peak host and
GPU memory); a rerun skips the problems already in OUT, so a cut run resumes.

    # KernelBench from a snapshot of ScalingIntelligence/KernelBench (not part of this repository)
    python benchmarks/kernelbench_refs.py --kernelbench DIR/KernelBench --device cuda --out gpu.jsonl \\
        [--shard 0/2] [--workers 2] [--footprints kernels_eval/footprints.json]
    python benchmarks/kernelbench_refs.py --kernelbench DIR/KernelBench --device cpu --out cpu.jsonl \\
        --fits gpu.jsonl --max-gib 2 --max-gpu-ms 5 --budget-s 2700   # on CPU: what fits, quickest first
    python benchmarks/kernelbench_refs.py --summary gpu.jsonl cpu.jsonl

--footprints writes the measured GPU footprints (kernels_eval.footprint's table) from OUT (or
from the --summary tables).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm.auto import tqdm

from kernels_eval import footprint
from kernels_eval.evaluate import evaluate
from kernels_eval.problems import Problem, load_problems


def as_candidate(problem: Problem) -> str:
    """The reference handed in as a candidate: the problem's own module, its Model as ModelNew."""
    return problem.source + "\n\nModelNew = Model\n"


def row_of(problem: Problem, result, wall_s: float) -> dict:
    p = result.provenance
    return {"problem": f"level{problem.level}/{problem.name}", "key": footprint.problem_key(problem),
            "status": result.status.value, "flags": result.flags, "speedup": result.speedup,
            "ref_ms": result.ref_runtime_ms, "ms": result.runtime_ms, "spread": result.runtime_spread,
            "max_abs_diff": result.max_abs_diff, "wall_s": round(wall_s, 1), "host_peak_mb": p.get("host_peak_mb"),
            "gpu_peak_reserved_mb": p.get("gpu_peak_reserved_mb"), "gpu_process_mb": p.get("gpu_process_mb"),
            "gpu_context_mb": p.get("gpu_context_mb"), "device": p.get("device_name"),
            "degenerate": bool((p.get("reference") or {}).get("degenerate")),
            "message": (result.message or "").strip().splitlines()[0][:300] if result.message else ""}


def sweep(args) -> None:
    problems = [p for level in args.levels for p in load_problems(args.kernelbench, level)]
    i, n = (int(x) for x in args.shard.split("/"))
    problems = [p for k, p in enumerate(problems) if k % n == i]
    out = Path(args.out)
    done = {json.loads(line)["problem"] for line in out.read_text().splitlines()} if out.exists() else set()
    measured = None
    if args.fits:  # the GPU table's measured need and time decide what this machine can take on
        measured = {r["problem"]: r for r in map(json.loads, Path(args.fits).read_text().splitlines())}
    todo = []
    for p in problems:
        name = f"level{p.level}/{p.name}"
        if name in done:
            continue
        if measured is not None:
            r = measured.get(name) or {}
            if (r.get("gpu_peak_reserved_mb") or float("inf")) > args.max_gib * 1024 \
                    or (r.get("ref_ms") or float("inf")) > args.max_gpu_ms:
                continue  # too big or too slow (or never measured) for this machine: the GPU table has it
        todo.append(p)
    if measured is not None:  # the quickest first, so a time budget covers as many as it can
        todo.sort(key=lambda p: measured[f"level{p.level}/{p.name}"]["ref_ms"])
    print(f"{len(todo)} to evaluate ({len(done)} already in {out}) on {args.device}", file=sys.stderr)
    write = threading.Lock()
    options = dict(trials=args.trials, iters=args.iters, rounds=args.rounds, run_timeout=args.run_timeout,
                   harness_retries=1, retry_wait_s=2.0)
    if args.device == "cpu":
        options.update(memory_limit_gb=args.max_gib * 2 + 4, cpu_threads=args.threads)

    stop_at = time.monotonic() + args.budget_s if args.budget_s else float("inf")

    def one(p: Problem) -> None:
        if time.monotonic() > stop_at:
            return  # out of this run's budget: a rerun continues where it stopped
        t = time.perf_counter()
        r = evaluate(p, as_candidate(p), args.device, **options)
        row = row_of(p, r, time.perf_counter() - t)
        with write, out.open("a") as f:
            f.write(json.dumps(row) + "\n")

    with ThreadPoolExecutor(args.workers) as pool:
        list(tqdm(pool.map(one, todo), total=len(todo), desc=f"references ({args.device})", unit="problem"))


def write_footprints(rows: list[dict], path: str) -> None:
    """kernels_eval.footprint's table from the GPU rows that ran to the end."""
    measured = [r for r in rows if r.get("gpu_peak_reserved_mb") is not None]
    contexts = [r["gpu_context_mb"] for r in measured if r.get("gpu_context_mb")]
    table = {"about": "peak GPU memory (caching allocator, reserved) of evaluating each problem's reference as its "
                      "own candidate; made by benchmarks/kernelbench_refs.py --footprints",
             "device": next((r["device"] for r in measured if r.get("device")), None),
             "context_mib": round(statistics.median(contexts), 1) if contexts else footprint.DEFAULT_CONTEXT_MIB,
             "problems": {r["key"]: {"problem": r["problem"], "peak_reserved_mib": r["gpu_peak_reserved_mb"]}
                          for r in sorted(measured, key=lambda r: r["problem"])}}
    Path(path).write_text(json.dumps(table, indent=1) + "\n")
    print(f"{len(measured)} footprints -> {path} (context {table['context_mib']} MiB)", file=sys.stderr)


def summary(paths: list[str]) -> None:
    for path in paths:
        rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
        by_level = Counter((r["problem"].split("/")[0], r["status"]) for r in rows)
        levels = sorted({lvl for lvl, _ in by_level})
        print(f"{path}: {len(rows)} problems on {next((r['device'] for r in rows if r.get('device')), '?')}")
        for lvl in levels:
            counts = {s: c for (l2, s), c in by_level.items() if l2 == lvl}
            print(f"  {lvl}: " + ", ".join(f"{s} {c}" for s, c in sorted(counts.items())))
        sp = [r["speedup"] for r in rows if r["status"] == "correct" and r.get("speedup")]
        if sp:
            q = statistics.quantiles(sp, n=20)
            print(f"  speedup of the reference against itself: median {statistics.median(sp):.3f}, 5%-95% "
                  f"{q[0]:.3f}-{q[-1]:.3f}, min {min(sp):.3f}, max {max(sp):.3f} ({len(sp)} timed)")
        degenerate = sorted(r["problem"] for r in rows if r.get("degenerate"))
        if degenerate:  # once per problem: its output ignores its inputs, so any kernel ignoring them passes
            print(f"  degenerate (output does not depend on the inputs): {', '.join(degenerate)}")
        for r in rows:
            if r["status"] != "correct":
                print(f"  {r['problem']}: {r['status']}: {r['message'][:160]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernelbench", help="the KernelBench folder holding level1..level3")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--out", help="JSON lines, one per problem (appended; resumable)")
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--shard", default="0/1", help="i/n: every n-th problem from the i-th")
    ap.add_argument("--workers", type=int, default=1, help="evaluations at a time")
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--run-timeout", type=float, default=300.0)
    ap.add_argument("--threads", type=int, default=1, help="CPU: torch threads per evaluation")
    ap.add_argument("--fits", help="a GPU table: evaluate only problems it measured at most --max-gib")
    ap.add_argument("--max-gib", type=float, default=4.0)
    ap.add_argument("--max-gpu-ms", type=float, default=float("inf"), help="with --fits: the GPU's reference time")
    ap.add_argument("--budget-s", type=float, default=None, help="start no problem after this many seconds")
    ap.add_argument("--footprints", help="write kernels_eval.footprint's table from --out")
    ap.add_argument("--summary", nargs="+", help="print the summary of these tables and exit")
    args = ap.parse_args()
    if args.summary:
        summary(args.summary)
        if args.footprints:
            write_footprints([json.loads(line) for path in args.summary for line in Path(path).read_text().splitlines()],
                             args.footprints)
        return
    if not (args.kernelbench and args.out):
        ap.error("--kernelbench and --out are needed (or --summary)")
    os.environ.setdefault("KK_KERNEL_CACHE", str(Path(args.out).with_suffix(".cache")))
    sweep(args)
    if args.footprints:
        write_footprints([json.loads(line) for line in Path(args.out).read_text().splitlines()], args.footprints)
    summary([args.out])


if __name__ == "__main__":
    main()
