"""The candidate's side: the one process of an evaluation that runs candidate code (untrusted).

Started by the parent (kernels_eval.evaluate) as root or as the user; the first thing it does is wall
itself in (kernels_eval.sandbox), before it reads the candidate (it was forked with torch
imported: kernels_eval.zygote). Then: build (import the
candidate; load_inline compiles here), make ModelNew after the reference's seed (and, if the reference
has weights, a second one with the reference's weights copied in), run every trial's inputs through
each and write the outputs to disk, time the first. Everything it reports is a claim: the verdict is the
judge's (kernels_eval.judge), from the written outputs, in a process this one cannot reach; the
reference's outputs and timing come from a process of their own.
"""
from __future__ import annotations

import os
import sys
import threading
import time

_perf = time.perf_counter  # captured before any candidate code exists

from kernels_eval.child import Channel, load_module, make_inputs, problem_module, take_lock, trial_seed, \
    TIMING_SEED_OFFSET, host_peak  # noqa: E402
from kernels_eval.errors import HarnessFailure, HarnessPhase, candidate_error  # noqa: E402


class _Verdict(Exception):
    """A phase decided the candidate's outcome early: `result` is what this process reports."""

    def __init__(self, result: dict):
        super().__init__(result.get("status"))
        self.result = result


def _clip(text: str, limit: int = 3000) -> str:
    """A failure's text within `limit`: its first line (torch's "Error building extension 'x'", which marks a
    compiler's verdict, heads pages of include chains) and its end, where the compiler's errors are."""
    if len(text) <= limit:
        return text
    head = text.splitlines()[0][:200]
    return f"{head}\n[...]\n{text[-(limit - len(head) - 7):]}"


# Threads: who started each. torch.compile and other torch internals start threads of their own; only
# those the candidate's code starts count as its extra threads.
_thread_origins: list[str] = []


def _watch_threads() -> None:
    import torch

    torch_dir = os.path.dirname(torch.__file__)
    start = threading.Thread.start
    skip = (os.path.dirname(threading.__file__),)

    def started(self, *a, **k):
        frame, origin = sys._getframe(1), "candidate"
        while frame is not None:  # the first frame outside the standard library (threading, concurrent.futures)
            name = frame.f_code.co_filename
            if not name.startswith(skip) or "site-packages" in name:
                origin = "torch" if name.startswith(torch_dir) else "candidate"
                break
            frame = frame.f_back
        _thread_origins.append(origin)
        return start(self, *a, **k)

    threading.Thread.start = started


class Run:
    def __init__(self, spec, send, sandbox: dict):
        import torch

        from kernels_eval.timing import clock_functions

        self.spec, self.send, self.torch, self.device = spec, send, torch, spec.device
        self.clocks = clock_functions(self.device)  # captured before the candidate exists
        self.provenance = {"device": self.device, "torch": torch.__version__, "cuda": torch.version.cuda,
                           "dtype": "float32", "sandbox": sandbox,
                           "timing": "cuda_events+l2_flush" if self.device == "cuda" else "perf_counter_ns"}
        if self.device == "cpu":
            # One thread for reference and candidate alike: a shared CPU's thread pool stalls on
            # busy cores and would make either side look arbitrarily slow.
            torch.set_num_threads(int(spec.cpu_threads or 1))
            self.provenance.update(device_name="cpu", threads=torch.get_num_threads())
        self.mod = problem_module(spec.problem_source, self.device, spec.scratch)
        self.init_inputs = self.mod.get_init_inputs()
        self.out_dir = os.path.join(spec.scratch, "outputs")
        os.makedirs(self.out_dir, exist_ok=True)
        self.result: dict = {"status": "ran", "flags": [], "provenance": self.provenance}
        self.extensions: dict = {}  # module id -> (module, when it was first seen)
        self.calls = {"n": 0}
        _watch_threads()

    # -- the build ---------------------------------------------------------------------------------------
    def build(self) -> None:
        spec = self.spec
        self.send({"phase": "compiling"})
        t0 = _perf()
        try:
            cand = load_module("kk_candidate", spec.candidate_source, os.path.join(spec.scratch, "candidate.py"))
        except Exception as e:
            text = f"{type(e).__name__}: {e}"
            building = "Error building extension" in text or type(e).__name__ in ("CalledProcessError", "SyntaxError")
            raise _Verdict({"status": "compile_error" if building else "runtime_error", "message": _clip(text),
                            "provenance": self.provenance}) from None
        compile_s = _perf() - t0
        self.send({"phase": "compiled", "compile_s": compile_s})
        self.result.update(compiled=True, compile_s=compile_s)
        self.ModelNew = getattr(cand, "ModelNew", None)
        if self.ModelNew is None or not isinstance(self.ModelNew, type):
            raise _Verdict({**self.result, "status": "rejected", "message": "the candidate defines no class ModelNew"})
        if issubclass(self.ModelNew, self.mod.Model):
            self.result["flags"].append("no_custom_kernel")
        self._find_extensions("import")

    # -- on the device -----------------------------------------------------------------------------------
    def take_device(self) -> None:
        torch, device = self.torch, self.device
        waited = take_lock(self.spec.lock_fd)
        self.send({"phase": "running", "waited_s": waited})
        with HarnessPhase("setting up the device"):
            if device == "cuda":
                if not torch.cuda.is_available():
                    raise HarnessFailure("device=cuda but no CUDA device is visible")
                p = torch.cuda.get_device_properties(0)
                l2 = int(getattr(p, "L2_cache_size", 0) or 0)
                self.flush_bytes = self.spec.flush_bytes or max(2 * l2, 1 << 20)
                self.provenance.update(device_name=p.name, capability=f"{p.major}.{p.minor}", l2_bytes=l2,
                                       flush_bytes=self.flush_bytes,
                                       arch_list=os.environ.get("TORCH_CUDA_ARCH_LIST", "auto"))
                torch.cuda.reset_peak_memory_stats()
            else:
                self.flush_bytes = 0
        self.models = [("same_seed", self._construct())]
        if self.spec.state_dict:
            # A second model with the reference's weights, for a candidate that names or initialises its
            # parameters its own way; the judge tries it only when the same-seed model fails.
            state = torch.load(self.spec.state_dict, weights_only=True)
            try:
                copied = self._construct()
                copied.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=True)
                self.models.append(("copied", copied))
            except _Verdict:
                raise
            except Exception:  # noqa: BLE001 - names or shapes differ: the same-seed model is all there is
                pass
        self._find_extensions("__init__")

    def _construct(self):
        self.torch.manual_seed(self.spec.seed)
        try:
            return self.ModelNew(*self.init_inputs).to(self.device).eval()
        except Exception as e:
            raise _Verdict({**self.result, **candidate_error("ModelNew(*get_init_inputs()) failed", e,
                                                              gpu_total_bytes=self.spec.gpu_total_bytes)}) from None

    def trials(self) -> None:
        """Every trial's fresh inputs through each model; outputs written for the judge. Checked here only
        what the written bytes cannot show: an output that is an input, or not a plain tensor."""
        torch, spec = self.torch, self.spec
        from kernels_eval.compare import write_outputs

        for trial in range(spec.trials):
            for name, model in self.models:
                with HarnessPhase(f"trial {trial}: making the inputs"):
                    inputs = make_inputs(self.mod, trial_seed(spec.seed, trial), self.device)
                try:
                    with torch.no_grad():
                        out = model(*inputs)
                    if self.device == "cuda":
                        self.clocks["sync"]()
                except Exception as e:
                    raise _Verdict({**self.result, "trials": trial, **candidate_error(
                        f"trial {trial}", e, spec.reference_bytes, spec.gpu_total_bytes)}) from None
                why = _not_plain(torch, out, inputs, self.device)
                if why:
                    raise _Verdict({**self.result, "status": "incorrect", "trials": trial + 1,
                                    "message": f"trial {trial}: {why}"})
                try:
                    with HarnessPhase(f"trial {trial}: writing the output"):
                        write_outputs(os.path.join(self.out_dir, f"{name}-{trial}"), out)
                except HarnessFailure:
                    raise
                except Exception as e:  # noqa: BLE001 - reading its output ran its code (a subclass): its error
                    raise _Verdict({**self.result, **candidate_error(f"trial {trial}: reading the output", e)}) from None
                del inputs, out
            self._find_extensions("forward")
        self.result.update(variants=[name for name, _ in self.models], trials=spec.trials)
        flags = self.result["flags"]
        loaded = _mapped_builds(os.environ.get("TORCH_EXTENSIONS_DIR"))
        lazily = any(when == "forward" for _, when in self.extensions.values())
        if not (self.extensions or loaded) or (self.calls["n"] == 0 and not lazily):
            if "no_custom_kernel" not in flags:
                flags.append("no_custom_kernel")  # no compiled code loaded, or none of it called
        self.provenance["extension_built_in"] = sorted({when for _, when in self.extensions.values()})
        if "candidate" in _thread_origins:
            flags.append("extra_threads")

    def time(self) -> None:
        torch, spec = self.torch, self.spec
        from kernels_eval.timing import time_both_ways

        model = self.models[0][1]
        inputs = make_inputs(self.mod, spec.seed + TIMING_SEED_OFFSET, self.device)

        def run():
            with torch.no_grad():
                model(*inputs)

        try:
            timed = time_both_ways(run, self.device, spec.warmup, spec.iters, spec.rounds, self.flush_bytes,
                                   self.clocks, float(spec.sleep_us or 0) if self.device == "cuda" else 0.0)
        except HarnessFailure:
            raise
        except Exception as e:
            raise _Verdict({**self.result, "status": "runtime_error",
                            **candidate_error("timing", e, gpu_total_bytes=spec.gpu_total_bytes)}) from None
        self.result.update(runtime_ms=timed["ms"], runtime_spread=timed["spread"], timing=timed)
        self.provenance.update(iters=spec.iters, rounds=spec.rounds, launch=timed["launch"],
                               launch_slack_us=spec.sleep_us if self.device == "cuda" else 0.0)

    def finish(self) -> dict:
        from kernels_eval.timing import clock_functions

        if self.device == "cuda":
            self.provenance.update(_gpu_memory(self.torch))
        self.provenance["host_peak_mb"] = round(host_peak() / 2**20, 1)
        now = clock_functions(self.device)
        tampered = [k for k, v in self.clocks.items() if now[k] is not v]
        if tampered:
            self.result["flags"].append("timer_tampering")
            self.result["message"] = f"replaced timing functions: {', '.join(tampered)}"
        self.result["flags"] = sorted(set(self.result["flags"]))
        return self.result

    def _find_extensions(self, when: str) -> None:
        """Compiled extensions the candidate loaded so far (at import, in __init__ or in forward), each
        function wrapped to count its calls: a used kernel told from a decorative one."""
        import gc
        import types
        import warnings

        ext_dir = os.path.realpath(os.environ.get("TORCH_EXTENSIONS_DIR", "/nonexistent"))
        with warnings.catch_warnings():  # some torch objects warn when inspected
            warnings.simplefilter("ignore")
            found = [m for m in gc.get_objects() if type(m) is types.ModuleType
                     and getattr(m, "__file__", None) and os.path.realpath(m.__file__).startswith(ext_dir)]
        calls = self.calls
        for m in found:
            if id(m) in self.extensions:
                continue
            self.extensions[id(m)] = (m, when)
            for name in dir(m):
                fn = getattr(m, name)
                if callable(fn) and not name.startswith("_") and type(fn).__name__ == "builtin_function_or_method":
                    def wrap(f=fn):
                        def counted(*a, **k):
                            calls["n"] += 1
                            return f(*a, **k)
                        return counted
                    setattr(m, name, wrap())


def _not_plain(torch, out, inputs, device: str) -> str:
    from kernels_eval.compare import tensors

    input_storages = {t.untyped_storage().data_ptr() for t in tensors(inputs) if type(t) is torch.Tensor and t.numel()}
    for i, t in enumerate(tensors(out)):
        if type(t) is not torch.Tensor:
            return (f"output {i} is a {type(t).__qualname__}, not a plain torch.Tensor: an output must hold its own "
                    "values (a subclass can compute them when read, outside every timed call)")
        if t.numel() and t.untyped_storage().nbytes() == 0:
            return f"output {i} has no storage of its own"
        if t.numel() and t.untyped_storage().data_ptr() in input_storages:
            return f"output {i} aliases an input tensor (the kernel must write a new output)"
        if t.device.type != device:
            return f"output {i}: on {t.device}, expected {device}"
    return ""


def _mapped_builds(ext_dir: str | None) -> bool:
    """Whether a shared object from the build folder is mapped into this process (however it was loaded)."""
    if not ext_dir:
        return False
    try:
        with open("/proc/self/maps") as f:
            return any(os.path.realpath(ext_dir) in line and ".so" in line for line in f)
    except OSError:
        return False


def _gpu_memory(torch) -> dict:
    mib = 2 ** 20
    return {"gpu_peak_allocated_mb": round(torch.cuda.max_memory_allocated() / mib, 1),
            "gpu_peak_reserved_mb": round(torch.cuda.max_memory_reserved() / mib, 1)}


def main() -> None:
    channel = Channel()
    from kernels_eval import sandbox
    from kernels_eval.spec import CandidateSpec

    walls = sandbox.apply(channel.message["sandbox"])  # before anything of the candidate exists
    channel.send({"phase": "sandboxed", "sandbox": walls})
    spec = CandidateSpec.from_json(channel.message["spec"])
    try:
        run = Run(spec, channel.send, walls)
        try:
            run.build()
            run.take_device()
            run.trials()
            if spec.timing:
                run.time()
            result = run.finish()
        except _Verdict as v:
            result = v.result
    except HarnessFailure as e:
        result = {"status": "harness_error", "message": str(e)}
    except BaseException as e:  # noqa: BLE001 - anything left is this candidate's runtime error
        import traceback

        result = {"status": "runtime_error", "message": f"{type(e).__name__}: {e}\n{traceback.format_exc()[-1500:]}"}
    channel.finish(result)


if __name__ == "__main__":
    main()
