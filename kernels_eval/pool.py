"""Evaluate many candidates at once: builds side by side, device runs one at a time.

Each evaluation is still one isolated subprocess (`kernels_eval.evaluate`). `workers`
of them run concurrently, so their builds (CPU-bound: a load_inline build is a minute
of nvcc) overlap; each takes the device lock after its build, so correctness checks
and timings never overlap each other, nor whatever else holds the lock (the
experiment holds it while the local engine generates). Identical sources are built
and evaluated once.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from kernels_eval.evaluate import cpu_count, default_cache_dir, evaluate, unparsed_result
from kernels_eval.parsing import parse_response
from kernels_eval.problems import Problem
from kernels_eval.result import KernelEvalResult


def default_lock(device: str, cache_dir: str | Path | None = None) -> Path:
    """One lock per device kind under the kernel cache (shared by every process using the cache)."""
    path = Path(cache_dir or default_cache_dir()) / "locks" / f"{device}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


class EvalPool:
    def __init__(self, device: str, workers: int | None = None, device_lock: str | Path | None = None,
                 **eval_options):
        self.device = device
        self.workers = max(1, workers or cpu_count())
        self.lock = Path(device_lock) if device_lock else default_lock(device, eval_options.get("cache_dir"))
        self.options = eval_options
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="kk-eval")
        self._memo: dict[tuple, Future] = {}
        self._guard = threading.Lock()
        self.builds = 0  # evaluations actually started (identical sources are evaluated once)

    def submit(self, problem: Problem, source: str, timed: bool = True) -> Future:
        """Future[KernelEvalResult] for `source` (a ModelNew module). A timed result serves an untimed ask too."""
        digest = hashlib.sha256(source.encode()).hexdigest()
        with self._guard:
            done = self._memo.get((problem.name, digest, True)) or (None if timed else self._memo.get((problem.name, digest, False)))
            if done is not None:
                return done
            self.builds += 1
            # A build uses one compiler job per worker's share of the cores, so W builds fill the machine.
            env_jobs = max(1, cpu_count() // self.workers)
            fut = self._executor.submit(self._run, problem, source, timed, env_jobs)
            self._memo[(problem.name, digest, timed)] = fut
            return fut

    def _run(self, problem: Problem, source: str, timed: bool, jobs: int) -> KernelEvalResult:
        return evaluate(problem, source, self.device, timing=timed, device_lock=self.lock, max_jobs=jobs,
                        **self.options)

    def submit_response(self, problem: Problem, text: str, timed: bool = True) -> Future:
        """Future[(parse status, KernelEvalResult)] for a raw model response."""
        parsed = parse_response(text)
        if not parsed.ok:
            fut: Future = Future()
            fut.set_result((parsed.status, unparsed_result(problem, parsed)))
            return fut
        inner = self.submit(problem, parsed.code, timed)
        outer: Future = Future()
        inner.add_done_callback(lambda f: outer.set_exception(f.exception()) if f.exception()
                                else outer.set_result((parsed.status, f.result())))
        return outer

    @contextmanager
    def device_held(self):
        """Hold the device lock: none of the pool's runs use the device meanwhile (e.g. while a
        local engine generates, so no timing overlaps it)."""
        fd = os.open(self.lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def shutdown(self, cancel: bool = False) -> None:
        self._executor.shutdown(wait=not cancel, cancel_futures=cancel)

    def __enter__(self) -> "EvalPool":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown(cancel=exc[0] is not None)
