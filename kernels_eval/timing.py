"""The timing loop, the same for the reference (in its own process) and the candidate (in the sandbox).

Clocks and CUDA events are captured (`clock_functions`) before anything else runs in the process; a
candidate that replaces them afterwards is flagged (`timer_tampering`). On a GPU each call starts with
the L2 evicted; with `sleep_us` a GPU-side spin first lets the host queue the call, so the events time
the device's work; without it the host's launch work is charged too (both are measured: host-side work
of a launch-bound kernel must not hide behind the spin)."""
from __future__ import annotations

import statistics
import time


def clock_functions(device: str) -> dict:
    """The timing functions as they are now: read once before the candidate loads, once after."""
    clocks = {"perf_counter_ns": time.perf_counter_ns, "perf_counter": time.perf_counter, "time": time.time}
    if device == "cuda":
        import torch

        clocks.update(Event=torch.cuda.Event, elapsed=torch.cuda.Event.elapsed_time, record=torch.cuda.Event.record,
                      sync=torch.cuda.synchronize)
    return clocks


def sleep_cycles(us: float, clocks: dict) -> int:
    """GPU clock cycles that `torch.cuda._sleep` spins for `us` microseconds (measured, not looked up)."""
    import torch

    if us <= 0:
        return 0
    probe = 200_000
    start, end = clocks["Event"](enable_timing=True), clocks["Event"](enable_timing=True)
    torch.cuda._sleep(probe)  # warm the kernel up
    clocks["record"](start)
    torch.cuda._sleep(probe)
    clocks["record"](end)
    clocks["sync"]()
    per_us = probe / max(clocks["elapsed"](start, end) * 1000, 1e-3)
    return int(us * per_us)


def time_calls(fn, device: str, warmup: int, iters: int, rounds: int, flush_bytes: int, clocks: dict,
               sleep_us: float = 0.0) -> tuple[float, float]:
    """(median ms, spread = max/min of the round medians) of `fn()`."""
    import torch

    for _ in range(warmup):
        fn()
    if device == "cuda":
        from kernels_eval.errors import HarnessPhase

        clocks["sync"]()
        with HarnessPhase("allocating the L2 flush buffer"):
            flush = torch.empty(max(flush_bytes // 4, 1), dtype=torch.float32, device="cuda")
        Event, elapsed, record = clocks["Event"], clocks["elapsed"], clocks["record"]
        cycles = sleep_cycles(sleep_us, clocks)

        def one():
            flush.zero_()  # evict the L2 so every call starts cold, as in a real pipeline
            if cycles:
                torch.cuda._sleep(cycles)
            start, end = Event(enable_timing=True), Event(enable_timing=True)
            record(start)
            fn()
            record(end)
            clocks["sync"]()
            return elapsed(start, end)
    else:
        perf_ns = clocks["perf_counter_ns"]

        def one():
            t0 = perf_ns()
            fn()
            return (perf_ns() - t0) / 1e6

    meds = [statistics.median(one() for _ in range(iters)) for _ in range(rounds)]
    return statistics.median(meds), max(meds) / max(min(meds), 1e-12)


def time_both_ways(fn, device: str, warmup: int, iters: int, rounds: int, flush_bytes: int, clocks: dict,
                   sleep_us: float) -> dict:
    """On a GPU with a launch spin: timed with and without it, the larger charged (host-side work counts).
    Elsewhere: one timing. {"ms", "spread", "launch": how the charged number was taken, "ms_with_slack"?}"""
    ms, spread = time_calls(fn, device, warmup, iters, rounds, flush_bytes, clocks, 0.0)
    out = {"ms": ms, "spread": spread, "launch": "no_slack"}
    if device == "cuda" and sleep_us > 0:
        slack_ms, slack_spread = time_calls(fn, device, 0, iters, rounds, flush_bytes, clocks, sleep_us)
        out["ms_with_slack"] = slack_ms
        if slack_ms > ms:
            out.update(ms=slack_ms, spread=slack_spread, launch="with_slack")
    return out
