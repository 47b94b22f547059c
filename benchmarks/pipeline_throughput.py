"""Throughput of the kernel pipeline: the build pool, and generation overlapped with evaluation.

Prints, in one run:
  1. N distinct candidates (C++ on CPU, CUDA on a GPU) evaluated serially, then with a pool
     of W workers: wall times, the ratio, and the target (parallel <= serial / (0.7 W));
     on a GPU also the largest timing spread of each way (target <= 1.05);
  2. a small generate + evaluate run (generation simulated: each batch takes --gen-s seconds
     and returns a distinct candidate per item) without overlap (generate everything, then
     evaluate) and with it (the experiment runner), same pool: wall times and the ratio.

    .venv/bin/python benchmarks/pipeline_throughput.py [--device cpu|cuda] [--n 4] [--workers W] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from kernels_eval.evaluate import evaluate
from kernels_eval.pool import EvalPool, cpu_count
from kernels_eval.problems import load_problems, reference_solution


def variants(problem, device: str, n: int, tag: str) -> list[str]:
    """n sources that differ only in a comment inside the compiled code: each needs its own build."""
    base = reference_solution(problem, device)
    marker = "#include <torch/extension.h>"
    assert marker in base, "the reference solution has no include line to tag"
    return [base.replace(marker, f"{marker}\n// variant {tag}-{i}", 1) for i in range(n)]


def builds(device: str, n: int, workers: int, cache: Path, tag: str) -> dict:
    problem = load_problems(names=["relu"])[0]
    opts = dict(trials=2, cache_dir=cache) if device == "cuda" else dict(trials=2, iters=3, rounds=2, warmup=1, cache_dir=cache)
    serial_src, pool_src = variants(problem, device, n, tag + "s"), variants(problem, device, n, tag + "p")
    t = time.perf_counter()
    serial = [evaluate(problem, s, device, **opts) for s in serial_src]
    serial_s = time.perf_counter() - t
    t = time.perf_counter()
    with EvalPool(device, workers=workers, **opts) as pool:
        pooled = [f.result() for f in [pool.submit(problem, s) for s in pool_src]]
    pool_s = time.perf_counter() - t
    out = {"n": n, "workers": workers, "serial_s": round(serial_s, 1), "pool_s": round(pool_s, 1),
           "speedup": round(serial_s / pool_s, 2), "target_speedup": round(0.7 * workers, 2),
           "meets_target": pool_s <= serial_s / (0.7 * workers),
           "statuses": sorted({r.status.value for r in serial + pooled}),
           "compile_s_serial": [round(r.compile_s or 0, 1) for r in serial],
           "compile_s_pool": [round(r.compile_s or 0, 1) for r in pooled]}
    if device == "cuda":
        out["max_spread_serial"] = round(max(r.runtime_spread or 0 for r in serial), 4)
        out["max_spread_pool"] = round(max(r.runtime_spread or 0 for r in pooled), 4)
    return out


def end_to_end(device: str, n: int, workers: int, gen_s: float, cache: Path, tag: str) -> dict:
    """Simulated generation (sleep gen_s per batch) feeding real evaluations, without and with overlap."""
    from kaggle_kit.experiment import ExperimentConfig
    from kaggle_kit.experiment import runner as runner_mod
    from kaggle_kit.experiment.generate import make_record
    from kernels_eval.records import Candidate

    problem = load_problems(names=["relu"])[0]
    sources = {}

    def fake_generate(cfg, jobs, engine=None):
        time.sleep(gen_s)  # the engine working on this batch
        out = []
        for job in jobs:
            # one distinct source per (mode, item): no run may reuse the other's builds
            src = sources.setdefault((cfg.experiment_name, job.key(cfg)),
                                     variants(problem, device, 1, f"{tag}-{cfg.experiment_name}-{job.sample}")[0])
            out.append(make_record(cfg, job, [Candidate(0, f"```python\n{src}\n```", 0.5)]))
        return out

    walls = {}
    for name, overlap in (("sequential", False), ("overlapped", True)):
        folder = Path(tempfile.mkdtemp(prefix=f"kk-e2e-{name}-"))
        cfg = ExperimentConfig(experiment_name=name, out_dir=str(folder), problems=["relu"], num_samples=n,
                               device=device, batch_size=1, workers=workers, trials=2, service_url="simulated",
                               evaluate_candidates=False)
        t = time.perf_counter()
        if overlap:
            runner_mod.run(cfg, progress=False, log=lambda m: None, generator=fake_generate, cache_dir=cache)
        else:  # generate everything first, then evaluate what was generated (a resume does exactly that)
            runner_mod.run(ExperimentConfig(**{**cfg.__dict__, "evaluate": False}), progress=False,
                           log=lambda m: None, generator=fake_generate, cache_dir=cache)
            runner_mod.run(cfg, progress=False, log=lambda m: None, generator=fake_generate, cache_dir=cache)
        walls[name] = round(time.perf_counter() - t, 1)
        from kernels_eval.records import RecordStore

        gen, ev = RecordStore(cfg.folder / "records.jsonl").latest()
        walls[f"{name}_statuses"] = sorted(e.result.status.value for e in ev.values())
        walls[f"{name}_compile_s"] = [round(e.result.compile_s or 0, 1) for e in ev.values()]
        shutil.rmtree(folder, ignore_errors=True)
    return {"items": n, "generation_s_per_item": gen_s, "workers": workers, **walls,
            "ratio_overlapped_to_sequential": round(walls["overlapped"] / walls["sequential"], 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--gen-s", type=float, default=None, help="simulated generation seconds per item")
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--skip-builds", action="store_true", help="only the end-to-end part (give --gen-s)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    workers = args.workers or cpu_count()
    cache = Path(tempfile.mkdtemp(prefix="kk-bench-cache-"))
    tag = str(int(time.time()))
    report = {"device": args.device, "cores": cpu_count(), "arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST", "auto")}
    if not args.skip_builds:
        report["builds"] = builds(args.device, args.n, workers, cache, tag)
        print(json.dumps(report["builds"], indent=1), flush=True)
    if not args.skip_e2e:
        gen_s = args.gen_s or report["builds"]["serial_s"] / args.n  # generation as long as one build
        report["end_to_end"] = end_to_end(args.device, args.n, workers, gen_s, cache, tag)
        print(json.dumps(report["end_to_end"], indent=1), flush=True)
    shutil.rmtree(cache, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
