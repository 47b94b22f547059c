"""Evaluate a candidate kernel in a fresh, isolated subprocess.

The harness process never imports candidate code. Each candidate gets its own
process group, a scratch directory as HOME and TMPDIR, an environment without
secrets, a memory limit (CPU), a compile timeout and a run timeout. Whatever it
does — crash, hang, exit early, eat memory — becomes a status here, never a
harness crash and never "correct".

Builds are cached by source hash: TORCH_EXTENSIONS_DIR is one directory per
(candidate source, device, torch version), so re-evaluating a candidate reuses
its compiled extension.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kernels_eval.parsing import ParsedResponse, parse_response
from kernels_eval.problems import Problem
from kernels_eval.result import KernelEvalResult, Status
from kernels_eval.spec import HarnessSpec

# Default tolerances per output dtype (atol, rtol). float32 is strict enough to
# catch a wrong kernel and loose enough for a different summation order.
DEFAULT_TOLERANCES = {"float32": (1e-4, 1e-4), "float16": (1e-2, 1e-2), "bfloat16": (2e-2, 2e-2),
                      "float64": (1e-8, 1e-8), "default": (1e-4, 1e-4)}
LOCK_WAIT_S = 6 * 3600.0  # a build waits this long for the device (other candidates' runs) before giving up
_SECRET = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL|AUTH|COOKIE|SESSION", re.IGNORECASE)
_SECRET_PREFIXES = ("KAGGLE", "GROQ", "AWS_", "OPENAI", "HF_", "HUGGING", "GITHUB", "AZURE", "GOOGLE", "KK_API")


def cpu_count() -> int:
    """The cores this process may use (its affinity: `taskset`, a container's cpuset), not the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


BUILD_FAILED = "build_failed.txt"  # beside a source's build folder: the compiler's error, kept


def default_cache_dir() -> Path:
    return Path(os.environ.get("KK_KERNEL_CACHE", Path.home() / ".cache" / "kaggle_kit" / "kernels"))


def clean_env(env: dict[str, str]) -> dict[str, str]:
    """The environment minus anything that looks like a credential."""
    return {k: v for k, v in env.items() if not _SECRET.search(k) and not k.upper().startswith(_SECRET_PREFIXES)}


def source_hash(candidate_source: str, device: str) -> str:
    import importlib.metadata

    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = "?"
    h = hashlib.sha256(f"{device}\0{torch_version}\0{os.environ.get('TORCH_CUDA_ARCH_LIST', '')}\0".encode())
    h.update(candidate_source.encode())
    return h.hexdigest()[:20]


def evaluate(problem: Problem, candidate_source: str, device: str = "cuda", *, trials: int = 5, seed: int = 42,
             timing: bool = True, warmup: int = 3, iters: int = 10, rounds: int = 5,
             compile_timeout: float = 600.0, run_timeout: float = 180.0, memory_limit_gb: float | None = 16.0,
             tolerances: dict | None = None, implausible_speedup: float = 20.0, cache_dir: str | Path | None = None,
             flush_mb: int | None = None, compare_compile: bool = False, cpu_threads: int = 1,
             device_lock: str | Path | None = None, max_jobs: int | None = None, launch_slack_us: float = 100.0,
             harness_retries: int = 0, retry_wait_s: float = 10.0, gpu_total_mib: float | None = None) -> KernelEvalResult:
    """Compile, check and time `candidate_source` (a module defining ModelNew) against `problem`.

    memory_limit_gb caps the address space of CPU runs (CUDA needs a huge one,
    so GPU runs rely on the timeouts and CUDA's own out-of-memory errors).
    flush_mb: the L2 flush buffer (default: twice the GPU's L2, e.g. 8 MB on a T4).
    compare_compile also times the reference through torch.compile (speedup_vs_compile).
    On CPU both sides run with `cpu_threads` torch threads (1 by default, for stable timings).
    device_lock: a lock file the candidate's process takes after its build and before it
    touches the device, so builds run side by side while device runs (and timings) never overlap.
    max_jobs: compiler jobs for the build (default: every core; a pool of W builds gives each cores/W).
    launch_slack_us: on a GPU, a spin before each timed call so the host's launch latency is not timed.
    A harness_error (the evaluator ran out of GPU memory, or lost the GPU) is retried
    `harness_retries` times, `retry_wait_s` apart; it is never the kernel's verdict.
    gpu_total_mib: the most GPU memory the evaluator can ever have here, if less than the card's
    (a T4 rehearsed on a bigger GPU): an allocation beyond it is the candidate's fault.
    """
    options = dict(trials=trials, seed=seed, timing=timing, warmup=warmup, iters=iters, rounds=rounds,
                   compile_timeout=compile_timeout, run_timeout=run_timeout, memory_limit_gb=memory_limit_gb,
                   tolerances=tolerances, implausible_speedup=implausible_speedup, cache_dir=cache_dir,
                   flush_mb=flush_mb, compare_compile=compare_compile, cpu_threads=cpu_threads, device_lock=device_lock,
                   max_jobs=max_jobs, launch_slack_us=launch_slack_us, gpu_total_mib=gpu_total_mib)
    result = _evaluate_once(problem, candidate_source, device, **options)
    for attempt in range(harness_retries):
        if result.status is not Status.HARNESS_ERROR:
            break
        time.sleep(retry_wait_s)
        result = _evaluate_once(problem, candidate_source, device, **options)
        result.provenance["harness_attempts"] = attempt + 2
    return result


def _evaluate_once(problem: Problem, candidate_source: str, device: str, *, trials, seed, timing, warmup, iters,
                   rounds, compile_timeout, run_timeout, memory_limit_gb, tolerances, implausible_speedup,
                   cache_dir, flush_mb, compare_compile, cpu_threads, device_lock, max_jobs,
                   launch_slack_us, gpu_total_mib) -> KernelEvalResult:
    if device not in ("cuda", "cpu"):
        raise ValueError(f"device must be 'cuda' or 'cpu', got {device!r}")
    if not isinstance(candidate_source, str) or not candidate_source.strip():
        return KernelEvalResult(problem.name, Status.NO_CODE, message="empty candidate")
    key = source_hash(candidate_source, device)
    cache = Path(cache_dir or default_cache_dir())
    ext_dir = cache / "build" / key
    cached = ext_dir.is_dir() and any(ext_dir.rglob("*.so"))
    failed = ext_dir / BUILD_FAILED
    if failed.is_file():  # the compiler already rejected this exact source: the same verdict, no rebuild
        return KernelEvalResult(problem.name, Status.COMPILE_ERROR, source_hash=key, cached_build=True,
                                message=failed.read_text() + "\n(cached: this exact source failed to build before)")
    ext_dir.mkdir(parents=True, exist_ok=True)
    (cache / "scratch").mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"{problem.name}-", dir=cache / "scratch"))
    spec = HarnessSpec(
        problem_source=problem.source, candidate_source=candidate_source, device=device, scratch=str(scratch),
        trials=trials, seed=seed, timing=timing, warmup=warmup, iters=iters, rounds=rounds,
        tolerances={**DEFAULT_TOLERANCES, **(tolerances or {})}, implausible_speedup=implausible_speedup,
        flush_bytes=(flush_mb << 20) if flush_mb else None, compare_compile=compare_compile, cpu_threads=cpu_threads,
        device_lock=str(device_lock) if device_lock else None, sleep_us=launch_slack_us,
        gpu_total_bytes=int(gpu_total_mib * 2**20) if gpu_total_mib else None)
    env = clean_env(dict(os.environ))
    env.update(TORCH_EXTENSIONS_DIR=str(ext_dir), HOME=str(scratch), TMPDIR=str(scratch),
               PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1")
    if max_jobs:
        env["MAX_JOBS"] = str(max_jobs)
    env.setdefault("MAX_JOBS", str(cpu_count()))
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    try:
        raw, fail_status, fail_msg = _run(spec, env, scratch, compile_timeout, run_timeout,
                                          memory_limit_gb if device == "cpu" else None)
    finally:
        log_tail = _tail(scratch / "output.log")
        shutil.rmtree(scratch, ignore_errors=True)
    if raw is None:
        msg = fail_msg + (f"\n--- candidate output ---\n{log_tail}" if log_tail else "")
        return KernelEvalResult(problem.name, fail_status, message=msg, source_hash=key, cached_build=cached,
                                compiled=fail_status is Status.TIMEOUT and fail_msg.startswith("run"))
    raw["status"] = Status(raw["status"])
    if raw["status"] in (Status.COMPILE_ERROR, Status.RUNTIME_ERROR) and log_tail:
        raw["message"] = (raw.get("message") or "") + f"\n--- candidate output ---\n{log_tail}"
    if raw["status"] is Status.COMPILE_ERROR and _deterministic_build_error(raw.get("message") or ""):
        failed.write_text(raw["message"])
    known = KernelEvalResult.__dataclass_fields__
    return KernelEvalResult(problem=problem.name, source_hash=key, cached_build=cached,
                            **{k: v for k, v in raw.items() if k in known and k != "problem"})


def _deterministic_build_error(message: str) -> bool:
    """A compiler's verdict on the source (cached), not a build that was killed or starved (retried)."""
    return "Error building extension" in message and not re.search(r"Killed|signal|out of memory|No space left",
                                                                     message, re.IGNORECASE)


def unparsed_result(problem: Problem, parsed: ParsedResponse) -> KernelEvalResult:
    """The result for a response with nothing to run: no_modelnew is rejected, the rest no_code."""
    status = Status.REJECTED if parsed.status == "no_modelnew" else Status.NO_CODE
    return KernelEvalResult(problem.name, status, message=f"{parsed.status}: {parsed.message}")


def evaluate_response(problem: Problem, text: str, device: str = "cuda", *, run: bool = True,
                      **options) -> tuple[str, KernelEvalResult | None]:
    """(parse status, result) for a raw model response: its ModelNew block evaluated, or why there is none.

    With run=False a parsable response is not evaluated (its result is None).
    """
    parsed = parse_response(text)
    if not parsed.ok:
        return parsed.status, unparsed_result(problem, parsed)
    return parsed.status, evaluate(problem, parsed.code, device, **options) if run else None


def _limits(memory_limit_gb: float | None):
    def apply():
        import resource

        if memory_limit_gb:
            limit = int(memory_limit_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return apply


def _run(spec: HarnessSpec, env: dict, scratch: Path, compile_timeout: float, run_timeout: float,
         memory_limit_gb: float | None) -> tuple[dict | None, Status, str]:
    nonce = secrets.token_hex(16)
    r, w = os.pipe()
    with open(scratch / "output.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kernels_eval.harness"], stdin=subprocess.PIPE, stdout=log, stderr=log,
            cwd=scratch, env=env, pass_fds=(w,), start_new_session=True, preexec_fn=_limits(memory_limit_gb),
        )
    os.close(w)
    try:
        proc.stdin.write((json.dumps({"spec": spec.to_json(), "fd": w, "nonce": nonce}) + "\n").encode())
        proc.stdin.close()
    except BrokenPipeError:
        pass
    phase, deadline = "starting", time.monotonic() + compile_timeout + 60  # interpreter + torch import
    buf, result = b"", None
    with os.fdopen(r, "rb", buffering=0) as pipe:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                _kill(proc)
                if phase == "compiled":  # never got the device: nothing was decided about the kernel
                    return None, Status.HARNESS_ERROR, f"waited over {LOCK_WAIT_S:.0f}s for the device lock"
                limit = run_timeout if phase == "running" else compile_timeout
                what = "run" if phase == "running" else "compile"
                return None, Status.TIMEOUT, f"{what} timed out after {limit:.0f}s"
            ready, _, _ = select.select([pipe], [], [], min(left, 0.5))
            if not ready:
                continue
            chunk = pipe.read(65536)
            if not chunk:
                break  # the child closed the pipe: finished or died
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if msg.get("nonce") != nonce:
                    continue  # not from the harness
                if msg.get("phase") == "compiling":
                    phase, deadline = "compiling", time.monotonic() + compile_timeout
                elif msg.get("phase") == "compiled":  # built; waiting for the device lock, if any
                    phase, deadline = "compiled", time.monotonic() + LOCK_WAIT_S
                elif msg.get("phase") == "running":  # holds the device: the run timeout starts now
                    phase, deadline = "running", time.monotonic() + run_timeout
                elif "result" in msg:
                    result = msg["result"]
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        _kill(proc)
    _kill(proc)  # anything the candidate left running in its group
    if result is not None:
        return result, Status.CORRECT, ""
    rc = proc.returncode
    if rc is not None and rc < 0:
        name = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else str(-rc)
        why = f"killed by {name}" + (" (memory limit or out of memory?)" if name in ("SIGKILL", "SIGSEGV", "SIGABRT") else "")
    else:
        why = f"exited with code {rc} without reporting a result (os._exit or sys.exit in the candidate?)"
    return None, Status.CRASHED, f"the candidate process {why} during {phase}"


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def _tail(path: Path, n: int = 2000) -> str:
    try:
        data = path.read_bytes()[-n:]
    except OSError:
        return ""
    return data.decode("utf-8", "replace").strip()
