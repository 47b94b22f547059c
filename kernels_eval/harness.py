"""Runs inside the isolated subprocess: build, check and time one candidate.

Never imported by the harness process itself. The parent sends a JSON spec on
stdin and reads JSON lines (phases, then the result) from an inherited pipe,
each stamped with a nonce read before any candidate code runs, so a candidate
that prints or exits early cannot pass for a result.

Clocks and CUDA events are captured before the candidate is imported; timing
uses the captured functions, and a candidate that replaces them is flagged.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time

_perf_ns = time.perf_counter_ns  # captured before any candidate code exists
_perf = time.perf_counter
_time = time.time


def _send(out, nonce, obj):
    out.write(json.dumps({**obj, "nonce": nonce}) + "\n")
    out.flush()


class HarnessFailure(Exception):
    """The evaluator's own work failed (not the candidate's): reported as harness_error."""


# A GPU's or the host's: CUDA's "out of memory", PyTorch's CPU allocator, Python, C++.
_OOM = re.compile(r"out of memory|can't allocate memory|MemoryError|std::bad_alloc", re.IGNORECASE)
_NO_GPU = re.compile(r"no CUDA-capable device|busy or unavailable|driver version is insufficient|"
                     r"CUDA driver initialization failed|cudaErrorDevicesUnavailable|no CUDA GPUs are available",
                     re.IGNORECASE)
_SIZE = r"([\d.]+)\s*([KMGT]i?B)"
_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _bytes(number: str, unit: str) -> float:
    return float(number) * _UNITS[unit[0].upper()]


def classify_candidate_oom(message: str, reference_bytes: int = 0, gpu_total_bytes: int | None = None) -> str | None:
    """For an out-of-memory error raised while the candidate's code ran: "harness" when the
    allocation would fit on the whole GPU (another process holds the rest: the engine beside
    us), "candidate" when it asks for more than the GPU has, None when it is no OOM at all.

    Reads PyTorch's message: "Tried to allocate 16.00 GiB. GPU 0 has a total capacity of
    79.19 GiB ... this process has 65.06 GiB memory in use." A raw cudaMalloc failure reports
    no sizes and is charged to the candidate.

    `gpu_total_bytes`, when given, is the whole GPU the evaluator can have (a smaller card
    rehearsed on a bigger one, or what is left with the engine asleep), if less than torch's total.

    On the host (PyTorch's CPU allocator: "you tried to allocate N bytes"), under the evaluator's
    memory limit: "harness" when N is no more than the reference's own forward took
    (`reference_bytes`): the limit, not the candidate, was too tight.
    """
    if not _OOM.search(message):
        return None
    host = re.search(r"tried to allocate (\d+) bytes", message)
    if host and reference_bytes:
        return "harness" if int(host.group(1)) <= reference_bytes else "candidate"
    tried = re.search(r"Tried to allocate " + _SIZE, message)
    total = re.search(r"total capacity of " + _SIZE, message)
    if not (tried and total):
        return "candidate"
    in_use = re.search(r"this process has " + _SIZE, message)
    need = _bytes(*tried.groups()) + (_bytes(*in_use.groups()) if in_use else 0.0)
    capacity = min(_bytes(*total.groups()), gpu_total_bytes or float("inf"))
    return "harness" if need <= capacity else "candidate"


class _HarnessPhase:
    """Turns an out-of-memory or unusable-GPU error in the evaluator's own work into HarnessFailure."""

    def __init__(self, what: str):
        self.what = what

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None or isinstance(exc, HarnessFailure):
            return False
        text = f"{type(exc).__name__}: {exc}"
        if _OOM.search(text) or _NO_GPU.search(text):
            raise HarnessFailure(f"{self.what}: {text[:1500]}") from exc
        return False


def _candidate_error(prefix: str, e: BaseException, reference_bytes: int = 0, gpu_total_bytes: int | None = None) -> dict:
    text = f"{type(e).__name__}: {str(e)[-2000:]}"
    if classify_candidate_oom(text, reference_bytes, gpu_total_bytes) == "harness":
        where = ("under the evaluator's memory limit for an allocation no bigger than the reference's own forward"
                 if "tried to allocate" in text and "GPU" not in text else
                 "for an allocation that would fit on a free GPU (another process holds the rest)")
        return {"status": "harness_error", "message": f"{prefix}: out of memory {where}; retry with more room. {text}"}
    if _NO_GPU.search(text):
        return {"status": "harness_error", "message": f"{prefix}: the GPU became unusable: {text}"}
    return {"status": "runtime_error", "message": f"{prefix}: {text}"}


def main() -> None:
    from kernels_eval.spec import HarnessSpec

    message = json.loads(sys.stdin.readline())
    sys.stdin.close()
    nonce = message["nonce"]
    out = os.fdopen(message["fd"], "w", buffering=1)
    spec = HarnessSpec(**message["spec"])
    try:
        result = _evaluate(spec, lambda obj: _send(out, nonce, obj))
    except HarnessFailure as e:
        result = {"status": "harness_error", "message": str(e)}
    except BaseException as e:  # anything left is a harness-level failure of this candidate
        import traceback

        result = {"status": "runtime_error", "message": f"{type(e).__name__}: {e}\n{traceback.format_exc()[-1500:]}"}
    _send(out, nonce, {"result": result})
    out.close()
    os._exit(0)  # skip interpreter teardown: a candidate's atexit hooks or threads must not change the outcome


def _load_module(name: str, source: str, path: str):
    import importlib.util

    with open(path, "w") as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _tensors(x):
    import torch

    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for item in x for t in _tensors(item)]
    return []


def _to(x, device):
    import torch

    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, (list, tuple)):
        return type(x)(_to(i, device) for i in x)
    return x


# Elements compared at a time: the comparison's own memory is a few chunk-sized temporaries
# (~100 MB), whatever the outputs' size (KernelBench level 1 has multi-GB outputs; comparing them
# whole in float64 once needed 9.76 GB for one problem).
COMPARE_CHUNK = 1 << 22


def _compare(ref_out, new_out, new_inputs, tol: dict, device: str) -> tuple[bool, str, float]:
    """Compare where the reference output is: on the host when the GPU is short of room (the
    engine beside us), so the GPU only ever holds one model's tensors at a time; else on the GPU."""
    import torch

    refs, news = _tensors(ref_out), _tensors(new_out)
    if len(refs) != len(news) or (isinstance(ref_out, torch.Tensor) != isinstance(new_out, torch.Tensor)):
        return False, f"output structure differs: expected {len(refs)} tensor(s), got {type(new_out).__name__} with {len(news)}", float("nan")
    input_storages = {t.untyped_storage().data_ptr() for t in _tensors(new_inputs) if t.numel()}
    worst = 0.0
    for i, (r, n) in enumerate(zip(refs, news)):
        if n.shape != r.shape:
            return False, f"output {i}: shape {tuple(n.shape)}, expected {tuple(r.shape)}", float("nan")
        if n.dtype != r.dtype:
            return False, f"output {i}: dtype {n.dtype}, expected {r.dtype}", float("nan")
        if n.device.type != torch.device(device).type:
            return False, f"output {i}: on {n.device}, expected {device}", float("nan")
        if n.numel() and n.untyped_storage().data_ptr() in input_storages:
            return False, f"output {i} aliases an input tensor (the kernel must write a new output)", float("nan")
        atol, rtol = tol.get(str(r.dtype).replace("torch.", ""), tol["default"])
        with _HarnessPhase(f"comparing output {i}"):  # our own memory: never the candidate's fault
            finite_ok, close, diff = _close(r, n.detach().to(r.device), atol, rtol)
        if not finite_ok:
            return False, f"output {i}: NaN/Inf where the reference has none (or the reverse)", float("nan")
        worst = max(worst, diff)
        if not close:
            return False, f"output {i}: max abs diff {worst:.3g} exceeds atol={atol}, rtol={rtol}", worst
    return True, "", worst


# Values an output signature keeps per tensor: the first and last EDGE (an off-by-one at either end)
# and the rest at fixed pseudo-random positions; plus two whole-tensor sums (kernels_eval.consensus).
SIGNATURE_POINTS, SIGNATURE_EDGE = 256, 16


def _signature(out) -> list[dict] | None:
    """What the candidate's output looks like, compact enough for a record: per output tensor its shape,
    dtype, values at fixed positions and its sums of |x| and x^2 (float64, chunked). For self-consistency:
    candidates whose signatures agree computed the same output (kernels_eval.consensus)."""
    import math

    import torch

    sig = []
    for t in _tensors(out):
        if t.is_complex():
            return None
        flat = t.detach().reshape(-1)
        n = flat.numel()
        if n <= SIGNATURE_POINTS:
            idx = torch.arange(n)
        else:
            spread = torch.randint(SIGNATURE_EDGE, n - SIGNATURE_EDGE, (SIGNATURE_POINTS - 2 * SIGNATURE_EDGE,),
                                   generator=torch.Generator().manual_seed(n))
            idx = torch.cat([torch.arange(SIGNATURE_EDGE), torch.arange(n - SIGNATURE_EDGE, n), spread])
        values = flat[idx.to(flat.device)].double().cpu().tolist()
        abs_sum = sq_sum = 0.0
        for start in range(0, n, COMPARE_CHUNK):
            chunk = flat[start:start + COMPARE_CHUNK].double()
            abs_sum += float(chunk.abs().sum())
            sq_sum += float(chunk.square().sum())
        finite = math.isfinite(abs_sum) and math.isfinite(sq_sum)
        sig.append({"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""),
                    "values": [float(f"{v:.7g}") if math.isfinite(v) else None for v in values],
                    "abs_sum": abs_sum if finite else None, "sq_sum": sq_sum if finite else None})
    return sig or None


def _close(r, n, atol: float, rtol: float) -> tuple[bool, bool, float]:
    """(same NaN/Inf pattern, allclose with equal_nan, max abs diff where the reference is finite),
    chunk by chunk: no copy of a whole output beyond a non-contiguous one's flat view."""
    import torch

    a_all, b_all = r.reshape(-1), n.reshape(-1)
    close, worst = True, 0.0
    for start in range(0, a_all.numel(), COMPARE_CHUNK):
        a, b = a_all[start:start + COMPARE_CHUNK], b_all[start:start + COMPARE_CHUNK]
        fa = torch.isfinite(a)
        if not torch.equal(fa, torch.isfinite(b)):
            return False, False, float("nan")
        if bool(fa.any()):
            diff = (b.double() - a.double()).abs_()
            worst = max(worst, float(diff.masked_fill_(~fa, 0).max()))
        close = close and bool(torch.isclose(b, a, rtol=rtol, atol=atol, equal_nan=True).all())
    return True, close, worst


def _sleep_cycles(us: float, clocks: dict) -> int:
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


def _time_pair(ref_fn, new_fn, device: str, warmup: int, iters: int, rounds: int, flush_bytes: int, clocks: dict,
               sleep_us: float = 0.0):
    """Median ms of reference and candidate, interleaved per round; spread = max/min of round medians.

    On a GPU each call starts with the L2 evicted (a flush buffer of twice the L2 written), then
    a short GPU-side spin (`sleep_us`) while the host queues the start event and the call: the
    events then time the device work of the call, not how fast the host (4 slow cores on
    Kaggle) got round to launching it after a flush that takes only microseconds.
    """
    import statistics

    import torch

    for _ in range(warmup):
        ref_fn()
        new_fn()
    if device == "cuda":
        clocks["sync"]()
        with _HarnessPhase("allocating the L2 flush buffer"):
            flush = torch.empty(max(flush_bytes // 4, 1), dtype=torch.float32, device="cuda")
        Event, elapsed, record = clocks["Event"], clocks["elapsed"], clocks["record"]
        cycles = _sleep_cycles(sleep_us, clocks)

        def one(fn):
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
        def one(fn):
            t0 = _perf_ns()
            fn()
            return (_perf_ns() - t0) / 1e6

    ref_meds, new_meds = [], []
    for _ in range(rounds):
        ref_meds.append(statistics.median(one(ref_fn) for _ in range(iters)))
        new_meds.append(statistics.median(one(new_fn) for _ in range(iters)))
    return statistics.median(ref_meds), statistics.median(new_meds), max(new_meds) / max(min(new_meds), 1e-12), \
        max(ref_meds) / max(min(ref_meds), 1e-12)


class _Verdict(Exception):
    """A phase decided the candidate's outcome early: `result` is what the harness reports."""

    def __init__(self, result: dict):
        super().__init__(result.get("status"))
        self.result = result


def _evaluate(spec, send) -> dict:
    """Reference module and candidate build first (CPU only, so builds can run side by side);
    then, holding the device lock if one is given, everything that touches the device. Each phase
    either hands the next what it needs or ends the evaluation with the candidate's verdict."""
    ev = _Evaluation(spec, send)
    try:
        ev.build()
        ev.take_device()
        ev.check()
        if spec.timing:
            ev.time()
    except _Verdict as v:
        return v.result
    return ev.finish()


class _Evaluation:
    """One candidate's evaluation, phase by phase, as the parent's HarnessSpec asks (kernels_eval.spec)."""

    def __init__(self, spec, send):
        import threading

        import torch

        self.spec, self.send, self.torch = spec, send, torch
        self.device = spec.device
        self.gpu_total = spec.gpu_total_bytes  # the whole GPU the evaluator may have, if less than the card
        self.clocks = _clock_functions(self.device)  # captured before the candidate exists
        self.provenance = {"device": self.device, "torch": torch.__version__, "cuda": torch.version.cuda,
                           "dtype": "float32",
                           "timing": "cuda_events+l2_flush" if self.device == "cuda" else "perf_counter_ns"}
        if self.device == "cpu":
            # One thread for reference and candidate alike: a shared CPU's thread pool stalls on
            # busy cores and would make either side look arbitrarily slow.
            torch.set_num_threads(int(spec.cpu_threads or 1))
            self.provenance.update(device_name="cpu", threads=torch.get_num_threads())
        self.ref_mod = _load_module("kk_reference", spec.problem_source, os.path.join(spec.scratch, "reference.py"))
        if self.device == "cpu":
            for k, v in (getattr(self.ref_mod, "cpu_sizes", None) or {}).items():
                setattr(self.ref_mod, k, v)
        self.init_inputs = self.ref_mod.get_init_inputs()
        self.seed = spec.seed
        self.threads_before = threading.active_count()
        self.result: dict = {}
        self.flush_bytes = 0

    # -- the build (CPU only) ------------------------------------------------------------------------
    def build(self) -> None:
        """Import the candidate (load_inline builds here) and look at what it defines."""
        spec = self.spec
        self.send({"phase": "compiling"})
        t0 = _perf()
        try:
            cand = _load_module("kk_candidate", spec.candidate_source, os.path.join(spec.scratch, "candidate.py"))
        except Exception as e:
            text = f"{type(e).__name__}: {e}"
            building = "Error building extension" in text or type(e).__name__ in ("CalledProcessError", "SyntaxError")
            raise _Verdict({"status": "compile_error" if building else "runtime_error", "message": text[-3000:],
                            "provenance": self.provenance}) from None
        compile_s = _perf() - t0
        self.send({"phase": "compiled", "compile_s": compile_s})
        self.result = {"compiled": True, "compile_s": compile_s, "provenance": self.provenance, "flags": []}
        self.ModelNew = getattr(cand, "ModelNew", None)
        if self.ModelNew is None or not isinstance(self.ModelNew, type):
            raise _Verdict({**self.result, "status": "rejected", "message": "the candidate defines no class ModelNew"})
        flags = self.result["flags"]
        if issubclass(self.ModelNew, self.ref_mod.Model):
            flags.append("no_custom_kernel")
        self.extensions, self.calls = _count_extension_calls()
        src = spec.candidate_source
        if any(s in src for s in ("cudaStreamCreate", "torch.cuda.Stream(", "torch.cuda.stream(", "at::cuda::getStreamFromPool")):
            flags.append("extra_streams")
        if "std::thread" in src or "threading.Thread" in src or "multiprocessing" in src:
            flags.append("extra_threads")

    # -- on the device --------------------------------------------------------------------------------
    def take_device(self) -> None:
        """Hold the device lock (until this process exits, whatever happens); set the device up; make
        both models, the candidate with the reference's weights where their names match."""
        torch, device = self.torch, self.device
        waited = _acquire(self.spec.device_lock)
        self.send({"phase": "running", "waited_s": waited})
        with _HarnessPhase("setting up the device"):
            if device == "cuda":
                if not torch.cuda.is_available():
                    raise HarnessFailure("device=cuda but no CUDA device is visible")
                p = torch.cuda.get_device_properties(0)
                l2 = int(getattr(p, "L2_cache_size", 0) or 0)
                self.flush_bytes = self.spec.flush_bytes or max(2 * l2, 1 << 20)  # evict the whole L2, no more
                self.provenance.update(device_name=p.name, capability=f"{p.major}.{p.minor}", l2_bytes=l2,
                                       flush_bytes=self.flush_bytes,
                                       arch_list=os.environ.get("TORCH_CUDA_ARCH_LIST", "auto"))
                torch.cuda.reset_peak_memory_stats()
            torch.manual_seed(self.seed)
            self.ref = self.ref_mod.Model(*self.init_inputs).to(device).eval()
        torch.manual_seed(self.seed)
        try:
            self.new = self.ModelNew(*self.init_inputs).to(device).eval()
        except Exception as e:
            raise _Verdict({**self.result, **_candidate_error("ModelNew(*get_init_inputs()) failed", e,
                                                                gpu_total_bytes=self.gpu_total)}) from None
        try:
            self.new.load_state_dict(self.ref.state_dict(), strict=True)
            self.provenance["weights"] = "copied"
        except Exception:
            self.provenance["weights"] = "same_seed"  # names differ: both were built after the same manual_seed

    def inputs_for(self, trial_seed: int):
        """The same seed gives the same inputs: each model gets its own fresh copy, and only one model's
        tensors are on the device at a time. Made on the device itself (torch.rand of KernelBench's
        multi-GB inputs takes seconds on a host, microseconds on a GPU); a get_inputs() that cannot run
        there makes them on the host."""
        torch, device = self.torch, self.device
        with _HarnessPhase("making the inputs"):
            torch.manual_seed(trial_seed)
            if device == "cuda":
                try:
                    with torch.device("cuda"):
                        return _to(self.ref_mod.get_inputs(), device)
                except Exception as e:  # noqa: BLE001 - out of memory is the harness's; anything else: try the host
                    if _OOM.search(str(e)):
                        raise
                    torch.manual_seed(trial_seed)
            return _to(self.ref_mod.get_inputs(), device)

    def _keep_reference_output(self, out):
        # On the GPU while it has room for both outputs and the candidate's work; else on the host.
        if self.device != "cuda":
            return out
        size = sum(t.nbytes for t in _tensors(out))
        return out if self.torch.cuda.mem_get_info()[0] > 4 * size + (512 << 20) else _to(out, "cpu")

    def check(self) -> None:
        """Correctness: fresh inputs every trial (replayed or constant answers fail), each output
        compared with the reference's; the first trial's output signature is kept whatever it says."""
        torch, device, spec, result = self.torch, self.device, self.spec, self.result
        worst, ref_bytes = 0.0, 0  # ref_bytes: the most the reference's forward took on the host (CPU runs)
        for trial in range(spec.trials):
            trial_seed = self.seed + 1000 + trial
            with _HarnessPhase(f"trial {trial}: the reference"):
                ref_in = self.inputs_for(trial_seed)
                peak = _host_peak()
                with torch.no_grad():
                    ref_out = self._keep_reference_output(self.ref(*ref_in))
                if device == "cpu":
                    ref_bytes = max(ref_bytes, _host_peak() - peak, sum(t.nbytes for t in _tensors(ref_out)))
                del ref_in
            new_in = self.inputs_for(trial_seed)
            try:
                with torch.no_grad():
                    new_out = self.new(*new_in)
                if device == "cuda":
                    self.clocks["sync"]()
            except Exception as e:
                raise _Verdict({**result, "trials": trial,
                                **_candidate_error(f"trial {trial}", e, ref_bytes, self.gpu_total)}) from None
            if trial == 0:  # what it computed, whatever the reference says (self-consistency compares these)
                try:
                    with _HarnessPhase("the output's signature"):
                        result["output_signature"] = _signature(new_out)
                except HarnessFailure:
                    raise
                except Exception:  # an output we cannot summarise has no signature: it joins no group
                    result["output_signature"] = None
            ok, why, diff = _compare(ref_out, new_out, new_in, spec.tolerances, device)
            del new_in, new_out, ref_out
            worst = max(worst, diff) if diff == diff else worst
            if not ok:
                raise _Verdict({**result, "status": "incorrect", "trials": trial + 1, "max_abs_diff": diff,
                                "message": f"trial {trial}: {why}"})
        result.update(status="correct", correct=True, trials=spec.trials, max_abs_diff=worst)
        flags = result["flags"]
        if (not self.extensions or self.calls["n"] == 0) and "no_custom_kernel" not in flags:
            flags.append("no_custom_kernel")  # no compiled code loaded, or none of it called
        import threading

        if threading.active_count() > self.threads_before:
            flags.append("extra_threads")

    def time(self) -> None:
        """Reference and candidate timed in this process, interleaved (and against torch.compile if asked)."""
        torch, device, spec, result = self.torch, self.device, self.spec, self.result
        ref_in, new_in = self.inputs_for(self.seed + 99), self.inputs_for(self.seed + 99)

        def run_ref():
            with torch.no_grad():
                self.ref(*ref_in)

        def run_new():
            with torch.no_grad():
                self.new(*new_in)

        try:
            sleep_us = float(spec.sleep_us or 0) if device == "cuda" else 0.0
            ref_ms, new_ms, spread, ref_spread = _time_pair(run_ref, run_new, device, spec.warmup, spec.iters,
                                                            spec.rounds, self.flush_bytes, self.clocks, sleep_us)
            result.update(ref_runtime_ms=ref_ms, runtime_ms=new_ms, runtime_spread=spread,
                          speedup=ref_ms / new_ms if new_ms > 0 else None)
            self.provenance.update(iters=spec.iters, rounds=spec.rounds, ref_spread=ref_spread,
                                   launch_slack_us=sleep_us)
            if spec.compare_compile:  # the stronger baseline: the reference through torch.compile
                compiled = torch.compile(self.ref)

                def run_compiled():
                    with torch.no_grad():
                        compiled(*ref_in)

                comp_ms, new_ms2, _, _ = _time_pair(run_compiled, run_new, device, spec.warmup, spec.iters,
                                                    spec.rounds, self.flush_bytes, self.clocks, sleep_us)
                result.update(compiled_ref_runtime_ms=comp_ms,
                              speedup_vs_compile=comp_ms / new_ms2 if new_ms2 > 0 else None)
        except HarnessFailure:
            raise
        except Exception as e:
            raise _Verdict({**result, "status": "runtime_error", "correct": False,
                            **_candidate_error("timing", e, gpu_total_bytes=self.gpu_total)}) from None
        if result["speedup"] and result["speedup"] > spec.implausible_speedup:
            result["flags"].append("implausible_speedup")

    def finish(self) -> dict:
        """Memory and clocks: the candidate's peak use, and whether it replaced the timing functions."""
        result = self.result
        if self.device == "cuda":
            self.provenance.update(_gpu_memory(self.torch))
        self.provenance["host_peak_mb"] = round(_host_peak() / 2**20, 1)
        now = _clock_functions(self.device)
        tampered = [k for k, v in self.clocks.items() if now[k] is not v]
        if tampered:
            result["flags"].append("timer_tampering")
            result["message"] = f"replaced timing functions: {', '.join(tampered)}"
        result["flags"] = sorted(set(result["flags"]))
        return result


def _host_peak() -> int:
    """This process's peak resident memory so far, in bytes (ru_maxrss is KiB on Linux)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _count_extension_calls():
    """The compiled extensions the candidate loaded, each function wrapped to count its calls."""
    import gc
    import types
    import warnings

    ext_dir = os.path.realpath(os.environ.get("TORCH_EXTENSIONS_DIR", "/nonexistent"))
    # load_inline imports the built module without registering it in sys.modules: find it by type
    with warnings.catch_warnings():  # some torch objects warn when inspected
        warnings.simplefilter("ignore")
        extensions = [m for m in gc.get_objects() if type(m) is types.ModuleType
                      and getattr(m, "__file__", None) and os.path.realpath(m.__file__).startswith(ext_dir)]
    calls = {"n": 0}
    for m in extensions:  # count calls into compiled code, to tell a used kernel from a decorative one
        for name in dir(m):
            fn = getattr(m, name)
            if callable(fn) and not name.startswith("_") and type(fn).__name__ == "builtin_function_or_method":
                def wrap(f=fn):
                    def counted(*a, **k):
                        calls["n"] += 1
                        return f(*a, **k)
                    return counted
                setattr(m, name, wrap())
    return extensions, calls


def _acquire(path: str | None) -> float:
    """Block on the device lock (an flock the kernel releases when this process ends); seconds waited."""
    if not path:
        return 0.0
    import fcntl

    t0 = _perf()
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)  # kept open (and locked) for the process's life
    fcntl.flock(fd, fcntl.LOCK_EX)
    return _perf() - t0


def _gpu_memory(torch) -> dict:
    """This process's GPU memory: the caching allocator's peak, and (through NVML) the whole
    process including the CUDA context, which the allocator does not see."""
    mib = 2 ** 20
    out = {"gpu_peak_allocated_mb": round(torch.cuda.max_memory_allocated() / mib, 1),
           "gpu_peak_reserved_mb": round(torch.cuda.max_memory_reserved() / mib, 1)}
    try:
        import pynvml

        pynvml.nvmlInit()
        index = int((os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0])
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        used = next((p.usedGpuMemory for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
                     if p.pid == os.getpid() and p.usedGpuMemory), None)
        if used:
            out["gpu_process_mb"] = round(used / mib, 1)
            out["gpu_context_mb"] = round((used - torch.cuda.memory_reserved()) / mib, 1)
    except Exception:  # NVML missing, or PIDs hidden in a container: the allocator figures stand
        pass
    return out


def _clock_functions(device: str) -> dict:
    """The timing functions as they are now: read once before the candidate loads, once after."""
    import torch

    clocks = {"perf_counter_ns": time.perf_counter_ns, "perf_counter": time.perf_counter, "time": time.time}
    if device == "cuda":
        clocks.update(Event=torch.cuda.Event, elapsed=torch.cuda.Event.elapsed_time, record=torch.cuda.Event.record,
                      sync=torch.cuda.synchronize)
    return clocks


if __name__ == "__main__":
    main()
