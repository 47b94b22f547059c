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
import sys
import time

_perf_ns = time.perf_counter_ns  # captured before any candidate code exists
_perf = time.perf_counter
_time = time.time


def _send(out, nonce, obj):
    out.write(json.dumps({**obj, "nonce": nonce}) + "\n")
    out.flush()


def main() -> None:
    spec = json.loads(sys.stdin.readline())
    sys.stdin.close()
    nonce = spec.pop("nonce")
    out = os.fdopen(spec.pop("fd"), "w", buffering=1)
    try:
        result = _evaluate(spec, lambda obj: _send(out, nonce, obj))
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


def _clone(x):
    import torch

    if isinstance(x, torch.Tensor):
        return x.clone()
    if isinstance(x, (list, tuple)):
        return type(x)(_clone(i) for i in x)
    return x


def _compare(ref_out, new_out, new_inputs, tol: dict) -> tuple[bool, str, float]:
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
        if n.device != r.device:
            return False, f"output {i}: on {n.device}, expected {r.device}", float("nan")
        if n.numel() and n.untyped_storage().data_ptr() in input_storages:
            return False, f"output {i} aliases an input tensor (the kernel must write a new output)", float("nan")
        if not torch.isfinite(n).eq(torch.isfinite(r)).all():
            return False, f"output {i}: NaN/Inf where the reference has none (or the reverse)", float("nan")
        atol, rtol = tol.get(str(r.dtype).replace("torch.", ""), tol["default"])
        diff = (n.double() - r.double()).abs()
        finite = torch.isfinite(r)
        if finite.any():
            worst = max(worst, float(diff[finite].max()))
        if not torch.allclose(n, r, atol=atol, rtol=rtol, equal_nan=True):
            return False, f"output {i}: max abs diff {worst:.3g} exceeds atol={atol}, rtol={rtol}", worst
    return True, "", worst


def _time_pair(ref_fn, new_fn, device: str, warmup: int, iters: int, rounds: int, flush_bytes: int, clocks: dict):
    """Median ms of reference and candidate, interleaved per round; spread = max/min of round medians."""
    import statistics

    import torch

    for _ in range(warmup):
        ref_fn()
        new_fn()
    if device == "cuda":
        clocks["sync"]()
        flush = torch.empty(max(flush_bytes // 4, 1), dtype=torch.float32, device="cuda")
        Event, elapsed, record = clocks["Event"], clocks["elapsed"], clocks["record"]

        def one(fn):
            flush.zero_()  # evict the L2 so every call starts cold, as in a real pipeline
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


def _evaluate(spec: dict, send) -> dict:
    import threading

    import torch

    device = spec["device"]
    if device == "cuda" and not torch.cuda.is_available():
        return {"status": "rejected", "message": "device=cuda but no CUDA device is visible"}
    clocks = _clock_functions(device)  # captured before the candidate exists
    provenance = {"device": device, "torch": torch.__version__, "timing": "cuda_events+l2_flush" if device == "cuda" else "perf_counter_ns",
                  "cuda": torch.version.cuda, "dtype": "float32"}
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        provenance.update(device_name=p.name, capability=f"{p.major}.{p.minor}",
                          arch_list=os.environ.get("TORCH_CUDA_ARCH_LIST", "auto"))
    else:
        # One thread for reference and candidate alike: a shared CPU's thread pool stalls on
        # busy cores and would make either side look arbitrarily slow.
        torch.set_num_threads(int(spec.get("cpu_threads") or 1))
        provenance.update(device_name="cpu", threads=torch.get_num_threads())

    ref_mod = _load_module("kk_reference", spec["problem_source"], os.path.join(spec["scratch"], "reference.py"))
    if device == "cpu":
        for k, v in (getattr(ref_mod, "cpu_sizes", None) or {}).items():
            setattr(ref_mod, k, v)
    init_inputs = ref_mod.get_init_inputs()
    seed = spec["seed"]
    torch.manual_seed(seed)
    ref = ref_mod.Model(*init_inputs).to(device).eval()
    threads_before = threading.active_count()

    send({"phase": "compiling"})
    t0 = _perf()
    try:
        cand = _load_module("kk_candidate", spec["candidate_source"], os.path.join(spec["scratch"], "candidate.py"))
    except Exception as e:
        text = f"{type(e).__name__}: {e}"
        building = "Error building extension" in text or type(e).__name__ in ("CalledProcessError", "SyntaxError")
        return {"status": "compile_error" if building else "runtime_error", "message": text[-3000:],
                "provenance": provenance}
    compile_s = _perf() - t0
    send({"phase": "compiled", "compile_s": compile_s})
    result = {"compiled": True, "compile_s": compile_s, "provenance": provenance, "flags": []}
    flags = result["flags"]

    ModelNew = getattr(cand, "ModelNew", None)
    if ModelNew is None or not isinstance(ModelNew, type):
        return {**result, "status": "rejected", "message": "the candidate defines no class ModelNew"}
    if issubclass(ModelNew, ref_mod.Model):
        flags.append("no_custom_kernel")
    ext_dir = os.path.realpath(os.environ.get("TORCH_EXTENSIONS_DIR", "/nonexistent"))
    # load_inline imports the built module without registering it in sys.modules: find it by type
    import gc
    import types
    import warnings

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
    src = spec["candidate_source"]
    if any(s in src for s in ("cudaStreamCreate", "torch.cuda.Stream(", "torch.cuda.stream(", "at::cuda::getStreamFromPool")):
        flags.append("extra_streams")
    if "std::thread" in src or "threading.Thread" in src or "multiprocessing" in src:
        flags.append("extra_threads")

    torch.manual_seed(seed)
    try:
        new = ModelNew(*init_inputs).to(device).eval()
    except Exception as e:
        return {**result, "status": "runtime_error", "message": f"ModelNew(*get_init_inputs()) failed: {type(e).__name__}: {e}"}
    try:
        new.load_state_dict(ref.state_dict(), strict=True)
        provenance["weights"] = "copied"
    except Exception:
        provenance["weights"] = "same_seed"  # names differ: both were built after the same manual_seed

    tol = spec["tolerances"]
    worst = 0.0
    for trial in range(spec["trials"]):
        torch.manual_seed(seed + 1000 + trial)  # fresh inputs every trial: replayed or constant answers fail
        inputs = _to(ref_mod.get_inputs(), device)
        ref_in, new_in = _clone(inputs), _clone(inputs)
        try:
            with torch.no_grad():
                ref_out = ref(*ref_in)
                new_out = new(*new_in)
            if device == "cuda":
                clocks["sync"]()
        except Exception as e:
            return {**result, "status": "runtime_error", "trials": trial,
                    "message": f"trial {trial}: {type(e).__name__}: {str(e)[-2000:]}"}
        ok, why, diff = _compare(ref_out, new_out, new_in, tol)
        worst = max(worst, diff) if diff == diff else worst
        if not ok:
            return {**result, "status": "incorrect", "trials": trial + 1, "max_abs_diff": diff,
                    "message": f"trial {trial}: {why}"}
    result.update(status="correct", correct=True, trials=spec["trials"], max_abs_diff=worst)
    if extensions and calls["n"] == 0:
        flags.append("no_custom_kernel")
    if not extensions and "no_custom_kernel" not in flags:
        flags.append("no_custom_kernel")
    if threading.active_count() > threads_before:
        flags.append("extra_threads")

    if spec["timing"]:
        torch.manual_seed(seed + 99)
        inputs = _to(ref_mod.get_inputs(), device)
        ref_in, new_in = _clone(inputs), _clone(inputs)

        def run_ref():
            with torch.no_grad():
                ref(*ref_in)

        def run_new():
            with torch.no_grad():
                new(*new_in)

        ref_ms, new_ms, spread, ref_spread = _time_pair(run_ref, run_new, device, spec["warmup"], spec["iters"],
                                                        spec["rounds"], spec["flush_bytes"], clocks)
        result.update(ref_runtime_ms=ref_ms, runtime_ms=new_ms, runtime_spread=spread,
                      speedup=ref_ms / new_ms if new_ms > 0 else None)
        provenance.update(iters=spec["iters"], rounds=spec["rounds"], ref_spread=ref_spread)
        if spec.get("compare_compile"):  # the stronger baseline: the reference through torch.compile
            compiled = torch.compile(ref)

            def run_compiled():
                with torch.no_grad():
                    compiled(*ref_in)

            comp_ms, new_ms2, _, _ = _time_pair(run_compiled, run_new, device, spec["warmup"], spec["iters"],
                                                spec["rounds"], spec["flush_bytes"], clocks)
            result.update(compiled_ref_runtime_ms=comp_ms, speedup_vs_compile=comp_ms / new_ms2 if new_ms2 > 0 else None)
        if result["speedup"] and result["speedup"] > spec["implausible_speedup"]:
            flags.append("implausible_speedup")
    now = _clock_functions(device)
    tampered = [k for k, v in clocks.items() if now[k] is not v]
    if tampered:
        flags.append("timer_tampering")
        result["message"] = f"replaced timing functions: {', '.join(tampered)}"
    result["flags"] = sorted(set(flags))
    return result


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
