"""Why each pytest-xdist worker gets its share of the cores (tests/conftest.py sets OMP_NUM_THREADS).

The same strategy workload on the tiny model (offline, online best-of-N and beam search, 3 times each) in
one process alone with torch's default threads, then in two processes at once with the default threads,
then in two at once with the cores shared out (OMP_NUM_THREADS = cores // 2). Prints each process's engine
start and generation time, and the two pairs' wall times against running the two serially.

    .venv/bin/python benchmarks/xdist_threads.py
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

WORK = """
import sys, time
import kaggle_kit as kk
from kaggle_kit.tiny.model import ensure_tiny_model
t0 = time.time()
kk.ensure_model(str(ensure_tiny_model()), max_model_len=20480)
t1 = time.time()
msgs = [{"role": "system", "content": "You are a CUDA expert."}, {"role": "user", "content": "Optimise the gelu kernel."}]
small = dict(max_tokens=120, max_steps=4, candidates_per_step=3, beam_size=2, num_trajectories=4, seed=11,
             min_step_tokens=4, max_step_tokens=40, temperature=1.0, logprobs=5)
for strategy in ["offline_bon", "online_bon", "beam_search"] * 3:
    kk.run_strategy(msgs, strategy=strategy, scorer="entropy", **small)
print(f"{t1 - t0:.1f} {time.time() - t1:.1f}")
"""


def run(n: int, threads: int | None) -> tuple[float, list[tuple[float, float]]]:
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "ERROR", "TQDM_DISABLE": "1"}
    env.pop("OMP_NUM_THREADS", None)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    t = time.time()
    procs = [subprocess.Popen([sys.executable, "-c", WORK], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True) for _ in range(n)]
    outs = [p.communicate()[0].split() for p in procs]
    return time.time() - t, [(float(a), float(b)) for a, b in outs]


def main() -> None:
    cores = len(os.sched_getaffinity(0))
    solo_wall, solo = run(1, None)
    print(f"one process, default threads ({cores}): start {solo[0][0]:.1f} s, generation {solo[0][1]:.1f} s")
    for label, threads in (("default threads", None), (f"{max(1, cores // 2)} thread(s) each", max(1, cores // 2))):
        wall, each = run(2, threads)
        gens = ", ".join(f"{g:.1f}" for _, g in each)
        print(f"two processes at once, {label}: generation {gens} s; wall {wall:.1f} s vs 2 x {solo_wall:.1f} s "
              f"serially = {2 * solo_wall / wall:.2f}x the serial throughput")


if __name__ == "__main__":
    main()
