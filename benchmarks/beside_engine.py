"""Kernel evaluation beside a live engine that leaves a T4's headroom, and with the engine asleep.

The pool the experiment uses (kernels_eval.pool.EvalPool with the engine's `asleep` as its room),
on the GPU machine with the T4 x2 plan emulated (KK_EMULATE_GPU): the bundled CUDA solutions, two
hostile candidates (an illegal memory access, a memory bomb), and KernelBench references chosen
from a measured table: small ones beside the engine, bigger ones that wait for it to sleep, and
one too big for a T4 at all (skipped). Checks that the engine answers the same after waking.
This process never touches CUDA itself (nvidia-smi only), as a notebook's kernel does not.

    KK_EMULATE_GPU='Tesla T4:7.5:14.75' TORCH_CUDA_ARCH_LIST='7.5+PTX' python benchmarks/beside_engine.py \\
        --model DIR --kernelbench KB/KernelBench --table gpu.jsonl --footprints footprints.json --json OUT.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_eval import BOMB, ILLEGAL  # noqa: E402
from kernelbench_refs import as_candidate  # noqa: E402


def trace_cuda_init(path: Path) -> None:
    """Write the stack of this process's first CUDA initialisation to `path` (vLLM then spawns its workers)."""
    import torch.cuda

    original = torch.cuda._lazy_init

    def traced():
        if not torch.cuda.is_initialized() and not path.exists():
            path.write_text("".join(traceback.format_stack()))
        return original()

    torch.cuda._lazy_init = traced


def pick(table: Path, headroom: float, capacity: float, context: float) -> dict[str, list[str]]:
    """KernelBench problems for each path, from the measured table: two that fit beside the engine,
    three that need it asleep (spread over the range), the smallest one too big for the whole card."""
    rows = [json.loads(line) for line in table.read_text().splitlines()]
    ok = sorted((r for r in rows if r["status"] == "correct" and r.get("gpu_peak_reserved_mb")),
                key=lambda r: r["gpu_peak_reserved_mb"])
    need = lambda r: r["gpu_peak_reserved_mb"] + context  # noqa: E731
    beside = [r for r in ok if need(r) <= headroom * 0.8]
    asleep = [r for r in ok if headroom < need(r) <= capacity * 0.9]
    too_big = [r for r in ok if need(r) > capacity]
    spread = [asleep[int(i * (len(asleep) - 1) / 2)] for i in range(3)] if len(asleep) >= 3 else asleep
    return {"beside": [r["problem"] for r in beside[-2:]], "asleep": [r["problem"] for r in spread],
            "skip": [r["problem"] for r in too_big[:1]]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--kernelbench", required=True)
    ap.add_argument("--table", required=True, help="kernelbench_refs.py's GPU table")
    ap.add_argument("--footprints", required=True)
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    out = Path(args.json)
    trace_cuda_init(out.with_suffix(".cuda_init.txt"))
    import kaggle_kit as kk
    from kaggle_kit.engine import nvsmi
    from kaggle_kit.engine.headroom import evaluator_memory
    from kaggle_kit.engine.registry import ModelRegistry
    from kaggle_kit.engine.types import GenerationRequest, SamplingSpec
    from kernels_eval import footprint
    from kernels_eval.pool import EvalPool
    from kernels_eval.problems import load_problem, load_problems, reference_solution

    free = lambda: [g.free_bytes >> 20 for g in nvsmi.query()[0]]  # noqa: E731
    t = time.perf_counter()
    kk.ensure_model(args.model)
    report: dict = {"ensure_model_s": round(time.perf_counter() - t, 1), "free_mib_awake": free()}
    engine = ModelRegistry.get_engine()
    report["can_sleep"] = engine.can_sleep
    ask = [GenerationRequest(tuple(engine.tokenizer.encode("Write a CUDA kernel for relu.")),
                             SamplingSpec(n=1, temperature=0.0, max_tokens=48))]
    before = engine.generate(ask)[0][0].token_ids
    headroom, capacity = evaluator_memory()
    context = footprint.table(args.footprints).get("context_mib", footprint.DEFAULT_CONTEXT_MIB)
    report.update(headroom_mib=headroom, capacity_mib=capacity, context_mib=context)
    cycles: list[dict] = []

    @contextmanager
    def room():
        t0 = time.perf_counter()
        with engine.asleep() as slept:
            t1 = time.perf_counter()
            asleep_free = free()
            yield
            t2 = time.perf_counter()
        cycles.append({"slept": slept, "sleep_s": round(t1 - t0, 2), "evaluate_s": round(t2 - t1, 1),
                       "wake_s": round(time.perf_counter() - t2, 2), "free_mib_asleep": asleep_free})

    picked = pick(Path(args.table), headroom, capacity, context)
    report["picked"] = picked
    kb = {f"level{p.level}/{p.name}": p for lvl in (1, 2, 3) for p in load_problems(args.kernelbench, lvl)}
    cases = []  # (label, problem, source)
    for name in ("relu", "vector_add", "softmax"):
        p = load_problems(names=[name])[0]
        cases.append((f"solution {p.name}", p, reference_solution(p, "cuda")))
    relu = load_problems(names=["relu"])[0]
    cases += [("hostile illegal_memory_access", relu, ILLEGAL), ("hostile gpu_memory_bomb", relu, BOMB)]
    for where, names in picked.items():
        cases += [(f"reference ({where}) {n}", kb[n], as_candidate(kb[n])) for n in names]
    pool = EvalPool("cuda", workers=4, headroom_mib=headroom, capacity_mib=capacity, room=room,
                    footprints=args.footprints, run_timeout=240, harness_retries=1, retry_wait_s=5)
    t = time.perf_counter()
    futures = [pool.submit(p, src) for _, p, src in cases]
    while not all(f.done() for f in futures):
        if pool.deferred and pool.deferred >= sum(not f.done() for f in futures):
            pool.run_deferred()  # the others are done or waiting: one sleep for all of them
        time.sleep(0.5)
    report["evaluate_all_s"] = round(time.perf_counter() - t, 1)
    pool.shutdown()
    after = engine.generate(ask)[0][0].token_ids
    report.update(same_tokens_after_wake=list(after) == list(before), cycles=cycles, free_mib_end=free())
    rows = []
    for (label, p, _), f in zip(cases, futures):
        r = f.result()
        rows.append({"case": label, "status": r.status.value, "engine_asleep": r.provenance.get("engine_asleep", False),
                     "moved_because": r.provenance.get("moved_because"), "speedup": r.speedup, "flags": r.flags,
                     "need_mib": footprint.need_mib(p, args.footprints),
                     "gpu_peak_reserved_mb": r.provenance.get("gpu_peak_reserved_mb"),
                     "message": (r.message or "")[:400]})
        print(json.dumps(rows[-1]), flush=True)
    report["cases"] = rows
    print(json.dumps({k: v for k, v in report.items() if k != "cases"}, indent=1), flush=True)
    out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
