"""First builds of C++ candidates with and without the precompiled torch/extension.h (kernels_eval.pch).

Evaluates the bundled CPU solutions, each as written (-O3) and without its -O flag, in fresh build caches:
once with KK_PCH=0 and once with the PCH (its two variants made first, each timed apart). Prints each build's compile_s both
ways and the ratio of the totals, measured in one run.

    .venv/bin/python benchmarks/pch_builds.py [--json OUT]
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

from kernels_eval import pch
from kernels_eval.evaluate import evaluate
from kernels_eval.problems import load_problems, reference_solution


def sources() -> list[tuple[str, object, str]]:
    out = []
    for p in load_problems():
        src = reference_solution(p, "cpu")
        if src and pch.builds_cpp(src):
            out.append((f"{p.short_name} -O3", p, src))
            out.append((f"{p.short_name} no -O", p, src.replace('extra_cflags=["-O3"], ', "")))
    return out


def build(problem, src: str, use_pch: bool) -> float:
    os.environ["KK_PCH"] = "1" if use_pch else "0"
    cache = tempfile.mkdtemp(prefix="pch-bench-")
    try:
        r = evaluate(problem, src, "cpu", trials=1, timing=False, cache_dir=cache)
        if not r.compiled:
            raise SystemExit(f"{problem.name}: {r.status.value}\n{r.message[-2000:]}")
        return r.compile_s
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json")
    args = ap.parse_args()
    os.environ["KK_PCH"] = "1"
    if not pch.enabled():
        print("no C++ compiler: nothing to measure")
        return 1
    pch_root = Path(tempfile.mkdtemp(prefix="pch-root-"))
    os.environ["KK_PCH_DIR"] = str(pch_root)  # made from nothing, timed on its own
    make = {}
    for variant, flags in (("O3", 'extra_cflags=["-O3"]'), ("O0", "")):
        t = time.perf_counter()
        folder, state = pch.ensure("load_inline " + flags)
        make[variant] = round(time.perf_counter() - t, 1)
        print(f"PCH {variant} made in {make[variant]:.1f} s ({state})")
    make_s = sum(make.values()) / len(make)
    print(f"  {sum(f.stat().st_size for f in pch_root.rglob('*') if f.is_file()) / 2**30:.2f} GiB on disk")
    rows = []
    for name, problem, src in sources():
        without, with_ = build(problem, src, False), build(problem, src, True)
        rows.append({"build": name, "without_s": round(without, 2), "with_s": round(with_, 2)})
        print(f"  {name:<20} without {without:6.1f} s   with {with_:6.1f} s   {without / with_:.2f}x", flush=True)
    tw, tp = sum(r["without_s"] for r in rows), sum(r["with_s"] for r in rows)
    print(f"total: without {tw:.1f} s, with {tp:.1f} s: {tw / tp:.2f}x; a variant pays for itself after "
          f"{make_s / max((tw - tp) / len(rows), 1e-9):.1f} first builds")
    shutil.rmtree(pch_root, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"command": "python benchmarks/pch_builds.py --json " + args.json,
                                               "make_s": make, "builds": rows,
                                               "without_total_s": round(tw, 1), "with_total_s": round(tp, 1)},
                                              indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
