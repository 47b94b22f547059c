"""Evaluate many candidates at once: builds side by side, device runs one at a time.

Each evaluation is still one isolated subprocess (`kernels_eval.evaluate`). `workers`
of them run concurrently, so their builds (CPU-bound: a load_inline build is a minute
of nvcc) overlap; each takes the device lock after its build, so correctness checks
and timings never overlap each other, nor whatever else holds the lock (the
experiment holds it while the local engine generates). Identical sources are built
and evaluated once.

Beside an engine that leaves little GPU memory (`headroom_mib`, with `room` a callable that
puts the engine to sleep for the length of a `with` block), a problem whose measured
footprint does not fit, or an evaluation that ran out of memory there, waits in a batch
that `run_deferred()` evaluates with the engine asleep: one sleep for many evaluations.
A problem too big even for the whole GPU (`capacity_mib`) is skipped with its numbers.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, ContextManager

from kernels_eval import footprint
from kernels_eval.evaluate import cpu_count, default_cache_dir, evaluate, unparsed_result
from kernels_eval.parsing import parse_response
from kernels_eval.problems import Problem
from kernels_eval.result import KernelEvalResult, Status


def default_lock(device: str, cache_dir: str | Path | None = None) -> Path:
    """One lock per device kind under the kernel cache (shared by every process using the cache)."""
    path = Path(cache_dir or default_cache_dir()) / "locks" / f"{device}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


class EvalPool:
    def __init__(self, device: str, workers: int | None = None, device_lock: str | Path | None = None, *,
                 headroom_mib: float | None = None, capacity_mib: float | None = None,
                 room: Callable[[], ContextManager] | None = None, footprints: str | Path | None = None,
                 **eval_options):
        self.device = device
        self.headroom_mib, self.capacity_mib, self.room, self.footprints = headroom_mib, capacity_mib, room, footprints
        self._deferred: list[tuple[Problem, str, bool, Future, str]] = []
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
            fut: Future = Future()
            self._memo[(problem.name, digest, timed)] = fut
        where = footprint.route(problem, self.headroom_mib, self.capacity_mib, self.footprints)
        if where.where == footprint.SKIP:
            fut.set_result(KernelEvalResult(problem.name, Status.SKIPPED, message=where.reason,
                                            provenance={"need_mib": where.need_mib, "capacity_mib": self.capacity_mib}))
        elif where.where == footprint.ASLEEP and self.room is not None:
            self._defer(problem, source, timed, fut, where.reason)
        else:
            inner = self._executor.submit(self._run, problem, source, timed, self.room is None)
            inner.add_done_callback(lambda f: self._settle(f, problem, source, timed, fut))
        return fut

    def _run(self, problem: Problem, source: str, timed: bool, retry: bool = True,
             lock: Path | None = None) -> KernelEvalResult:
        # A build uses one compiler job per worker's share of the cores, so W builds fill the machine.
        options = dict(self.options) | ({} if retry else {"harness_retries": 0})
        options["device_lock"] = lock or self.lock
        if self.capacity_mib and self.device == "cuda":  # more than this is never ours to give
            options.setdefault("gpu_total_mib", self.capacity_mib)
        return evaluate(problem, source, self.device, timing=timed, max_jobs=max(1, cpu_count() // self.workers),
                        **options)

    def _settle(self, inner: Future, problem: Problem, source: str, timed: bool, out: Future) -> None:
        if inner.exception() is not None:
            out.set_exception(inner.exception())
            return
        result = inner.result()
        if result.retryable and self.room is not None:  # the harness failed beside the engine: again with it asleep
            self._defer(problem, source, timed, out, result.message.splitlines()[0][:300] if result.message else "")
        else:
            out.set_result(result)

    def _defer(self, problem: Problem, source: str, timed: bool, out: Future, why: str) -> None:
        with self._guard:
            self._deferred.append((problem, source, timed, out, why))

    @property
    def deferred(self) -> int:
        """Evaluations waiting for the engine to sleep."""
        with self._guard:
            return len(self._deferred)

    def run_deferred(self) -> int:
        """Evaluate every waiting evaluation inside one `room()` (the engine asleep); how many ran."""
        with self._guard:
            batch, self._deferred = self._deferred, []
        if not batch:
            return 0
        # The device lock first: no evaluation beside the engine is on the device while it sleeps (it
        # could take what the engine needs to wake). The batch, one at a time, uses a lock of its own.
        alone = self.lock.with_name(self.lock.stem + "-asleep.lock")
        with self.device_held(), self.room():
            running = [(self._executor.submit(self._run, p, src, timed, True, alone), out, why)
                       for p, src, timed, out, why in batch]
            for inner, out, why in running:
                try:
                    result = inner.result()
                except Exception as e:  # noqa: BLE001 - handed to whoever waits on the result
                    out.set_exception(e)
                    continue
                result.provenance.update(engine_asleep=True, moved_because=why)
                out.set_result(result)
        return len(batch)

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
