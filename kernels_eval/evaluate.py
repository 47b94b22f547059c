"""Evaluate a candidate kernel: the parent's side (trusted), which never imports candidate code.

An evaluation is three phases (kernels_eval.spec names what each is asked and hands back):
  1. reference (kernels_eval.reference), a process where no candidate code has run: the reference's
     outputs for seeded inputs and its timing, kept in the trusted cache (hidden from candidates) and
     reused for every candidate of the problem;
  2. candidate (kernels_eval.candidate), the one process that runs candidate code: walled in first
     (kernels_eval.sandbox: its own uid when we are root, Landlock, seccomp, no network, a scratch folder as
     HOME and TMPDIR, no secrets in its environment, a memory limit on CPU, compile and run timeouts);
     builds, runs, writes its outputs; a C++ build may read a precompiled torch header (kernels_eval.pch);
  3. judge (kernels_eval.judge), here in the parent: compares those outputs, read back as raw bytes, with
     the reference's.
Whatever the candidate does (crash, hang, exit early, eat memory, patch torch) becomes a status here,
never a harness crash and never "correct".

Builds are cached by source hash: TORCH_EXTENSIONS_DIR is one directory per (candidate source, device,
torch version and place), so re-evaluating a candidate reuses its compiled extension.
"""
from __future__ import annotations

import fcntl
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

from kernels_eval import pch, zygote
from kernels_eval.parsing import ParsedResponse, parse_response
from kernels_eval.problems import Problem
from kernels_eval.result import KernelEvalResult, Status
from kernels_eval.sandbox import Sandbox, secret_paths
from kernels_eval.spec import CandidateRun, CandidateSpec, JudgeSpec, Judgement, ReferenceOutputs, ReferenceSpec
from kernels_eval.static import static_flags

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


def default_cache_dir() -> Path:
    return Path(os.environ.get("KK_KERNEL_CACHE", Path.home() / ".cache" / "kaggle_kit" / "kernels"))


def clean_env(env: dict[str, str]) -> dict[str, str]:
    """The environment minus anything that looks like a credential."""
    return {k: v for k, v in env.items() if not _SECRET.search(k) and not k.upper().startswith(_SECRET_PREFIXES)}


def source_hash(candidate_source: str, device: str) -> str:
    """The build folder's key: the source, the device and the torch it builds against, by version and by place.
    torch writes its include folders into the build's ninja file, so a build made for another venv (another
    clone's) is rebuilt from scratch by ninja, and a key without the place would call that rebuild cached."""
    import importlib.metadata
    import importlib.util

    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = "?"
    spec = importlib.util.find_spec("torch")
    torch_dir = os.path.dirname(spec.origin) if spec and spec.origin else "?"
    h = hashlib.sha256(f"{device}\0{torch_version}\0{torch_dir}\0{os.environ.get('TORCH_CUDA_ARCH_LIST', '')}\0".encode())
    h.update(candidate_source.encode())
    return h.hexdigest()[:20]


def evaluate(problem: Problem, candidate_source: str, device: str = "cuda", *, trials: int = 5, seed: int = 42,
             timing: bool = True, warmup: int = 3, iters: int = 10, rounds: int = 5,
             compile_timeout: float = 600.0, run_timeout: float = 180.0, memory_limit_gb: float | None = 16.0,
             tolerances: dict | None = None, implausible_speedup: float = 20.0, cache_dir: str | Path | None = None,
             flush_mb: int | None = None, compare_compile: bool = False, cpu_threads: int = 1,
             device_lock: str | Path | None = None, max_jobs: int | None = None, launch_slack_us: float = 100.0,
             harness_retries: int = 0, retry_wait_s: float = 10.0, gpu_total_mib: float | None = None,
             sandbox: bool = True) -> KernelEvalResult:
    """Compile, check and time `candidate_source` (a module defining ModelNew) against `problem`.

    memory_limit_gb caps the address space of CPU runs (CUDA needs a huge one,
    so GPU runs rely on the timeouts and CUDA's own out-of-memory errors).
    flush_mb: the L2 flush buffer (default: twice the GPU's L2, e.g. 8 MB on a T4).
    compare_compile also times the reference through torch.compile (speedup_vs_compile).
    On CPU both sides run with `cpu_threads` torch threads (1 by default, for stable timings).
    device_lock: a lock file the candidate's process takes after its build and before it
    touches the device, so builds run side by side while device runs (and timings) never overlap.
    max_jobs: compiler jobs for the build (default: every core; a pool of W builds gives each cores/W).
    launch_slack_us: on a GPU, a spin before each timed call so the host's launch latency is not timed;
    both sides are also timed without it and charged the larger (provenance "launch" says which).
    sandbox=False runs the candidate without its walls (provenance says so): for debugging only.
    A harness_error (the evaluator ran out of GPU memory, or lost the GPU) is retried
    `harness_retries` times, `retry_wait_s` apart; it is never the kernel's verdict.
    gpu_total_mib: the most GPU memory the evaluator can ever have here, if less than the card's
    (a T4 rehearsed on a bigger GPU): an allocation beyond it is the candidate's fault.
    """
    options = dict(trials=trials, seed=seed, timing=timing, warmup=warmup, iters=iters, rounds=rounds,
                   compile_timeout=compile_timeout, run_timeout=run_timeout, memory_limit_gb=memory_limit_gb,
                   tolerances=tolerances, implausible_speedup=implausible_speedup, cache_dir=cache_dir,
                   flush_mb=flush_mb, compare_compile=compare_compile, cpu_threads=cpu_threads, device_lock=device_lock,
                   max_jobs=max_jobs, launch_slack_us=launch_slack_us, gpu_total_mib=gpu_total_mib,
                   sandbox=sandbox)
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
                   launch_slack_us, gpu_total_mib, sandbox) -> KernelEvalResult:
    if device not in ("cuda", "cpu"):
        raise ValueError(f"device must be 'cuda' or 'cpu', got {device!r}")
    if not isinstance(candidate_source, str) or not candidate_source.strip():
        return KernelEvalResult(problem.name, Status.NO_CODE, message="empty candidate")
    key = source_hash(candidate_source, device)
    cache = Path(cache_dir or default_cache_dir())
    (cache / "locks").mkdir(parents=True, exist_ok=True)
    return _evaluate_locked(problem, candidate_source, device, key, cache, trials=trials, seed=seed,
                            timing=timing, warmup=warmup, iters=iters, rounds=rounds,
                            compile_timeout=compile_timeout, run_timeout=run_timeout,
                            memory_limit_gb=memory_limit_gb, tolerances=tolerances,
                            implausible_speedup=implausible_speedup, flush_mb=flush_mb,
                            compare_compile=compare_compile, cpu_threads=cpu_threads, device_lock=device_lock,
                            max_jobs=max_jobs, launch_slack_us=launch_slack_us, gpu_total_mib=gpu_total_mib,
                            sandbox=sandbox)


def _evaluate_locked(problem: Problem, candidate_source: str, device: str, key: str, cache: Path, *, trials, seed,
                     timing, warmup, iters, rounds, compile_timeout, run_timeout, memory_limit_gb, tolerances,
                     implausible_speedup, flush_mb, compare_compile, cpu_threads, device_lock, max_jobs,
                     launch_slack_us, gpu_total_mib, sandbox) -> KernelEvalResult:
    failed = cache / "failed" / f"{key}.txt"  # trusted: the compiler's verdict on this exact source
    if failed.is_file():  # the compiler already rejected this exact source: the same verdict, no rebuild
        return _kept_compile_error(problem, key, failed)
    limit = memory_limit_gb if device == "cpu" else None
    timing_spec = dict(warmup=warmup, iters=iters, rounds=rounds, flush_bytes=(flush_mb << 20) if flush_mb else None,
                       sleep_us=launch_slack_us if device == "cuda" else 0.0, cpu_threads=cpu_threads)
    # 1. the reference's outputs (and time), from a process no candidate code has run in (cached per problem)
    ref = reference_outputs(problem, device, seed, trials, cache, device_lock, limit, cpu_threads,
                            {**timing_spec, "compare_compile": compare_compile} if timing else None)
    if isinstance(ref, str):
        return KernelEvalResult(problem.name, Status.HARNESS_ERROR, message=ref, source_hash=key)
    # 2. the candidate, walled in. One build of a source at a time: two in one folder (shards or pool workers
    # at once) made the second import a library the first had failed to build, a runtime_error instead of
    # the compile_error it is (a verdict that depended on the machine's load). The lock covers the build
    # only, never a wait for the device (a run waiting on the device lock while holding it could deadlock
    # with a batch that holds the device and evaluates the same source).
    build_lock = _Lock(cache / "locks" / f"source-{key}.lock")
    try:
        return _candidate_phase(problem, candidate_source, device, key, cache, ref, build_lock, failed,
                                trials=trials, seed=seed, timing=timing, timing_spec=timing_spec, limit=limit,
                                compile_timeout=compile_timeout, run_timeout=run_timeout, tolerances=tolerances,
                                implausible_speedup=implausible_speedup, compare_compile=compare_compile,
                                device_lock=device_lock, max_jobs=max_jobs, gpu_total_mib=gpu_total_mib,
                                sandbox=sandbox)
    finally:
        build_lock.release()


def _candidate_phase(problem, candidate_source, device, key, cache, ref, build_lock, failed, *, trials, seed, timing,
                     timing_spec, limit, compile_timeout, run_timeout, tolerances, implausible_speedup,
                     compare_compile, device_lock, max_jobs, gpu_total_mib, sandbox) -> KernelEvalResult:
    reference_info = {"degenerate": ref.degenerate, "cached": ref.cached}
    build_lock.acquire()
    if failed.is_file():  # an evaluation of the same source that just finished: its compiler's verdict
        return _kept_compile_error(problem, key, failed)
    with Sandbox(cache, key, hidden=[cache / "reference", *secret_paths()], enabled=sandbox,
                 gpu=device == "cuda") as box:
        cached = any(box.build.rglob("*.so"))
        state = None
        if ref.has_state:
            state = str(box.scratch / "state_dict.pt")
            shutil.copyfile(Path(ref.dir) / "state_dict.pt", state)
            if box.uid is not None:
                os.chown(state, box.uid, box.uid)
        spec = CandidateSpec(
            problem_source=problem.source, candidate_source=candidate_source, device=device,
            scratch=str(box.scratch), trials=trials, seed=seed, timing=timing,
            gpu_total_bytes=int(gpu_total_mib * 2**20) if gpu_total_mib else None,
            reference_bytes=ref.peak_bytes, state_dict=state, **timing_spec)
        env = clean_env(dict(os.environ))
        env.update(TORCH_EXTENSIONS_DIR=str(box.build), HOME=str(box.scratch), TMPDIR=str(box.scratch),
                   PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1", USER="kk-sandbox", LOGNAME="kk-sandbox")
        env["MAX_JOBS"] = str(max_jobs or cpu_count())
        pch_state = None
        if not cached and pch.builds_cpp(candidate_source):
            pch_dir, pch_state = pch.ensure(candidate_source)  # made here, trusted; the candidate can read it, never write it
            if pch_dir:
                env["CPATH"] = os.pathsep.join([str(pch_dir), *filter(None, [env.get("CPATH")])])
        if device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""
        log = box.scratch / "output.log"
        message = {"spec": spec.to_json(), "sandbox": box.plan}
        raw, fail_status, fail_msg, walls = _run("kernels_eval.candidate", message, env, box.scratch, log,
                                                 compile_timeout + 60, compile_timeout, run_timeout, limit, device_lock,
                                                 on_compiled=build_lock.release)
        log_tail = _tail(log)
        provenance = {"sandbox": walls, "reference": reference_info}
        if pch_state:
            provenance["pch"] = pch_state
        if raw is None:
            msg = fail_msg + (f"\n--- candidate output ---\n{log_tail}" if log_tail else "")
            return KernelEvalResult(problem.name, fail_status, message=msg, source_hash=key, cached_build=cached,
                                    compiled=fail_status is Status.TIMEOUT and fail_msg.startswith("run"),
                                    provenance=provenance)
        run = CandidateRun.from_json(raw)
        run.provenance.update(provenance)
        if run.status != "ran":
            result = _early_result(problem, run, key, cached, log_tail, failed)
            build_lock.release()  # after the compiler's verdict is kept for the next evaluation of it
            result.flags = sorted(set(result.flags) | set(static_flags(candidate_source))) if result.compiled else result.flags
            return result
        # 3. the verdict, from what it wrote, in a process it never reached
        verdict = _judge(run, ref, box, tolerances, trials)
    if isinstance(verdict, str):
        return KernelEvalResult(problem.name, Status.HARNESS_ERROR, message=verdict, source_hash=key,
                                cached_build=cached, compiled=True, provenance=run.provenance)
    result = _combine(problem, run, verdict, ref, key, cached, implausible_speedup)
    result.flags = sorted(set(result.flags) | set(static_flags(candidate_source)))
    return result


def _kept_compile_error(problem, key: str, failed: Path) -> KernelEvalResult:
    return KernelEvalResult(problem.name, Status.COMPILE_ERROR, source_hash=key, cached_build=True,
                            message=failed.read_text() + "\n(cached: this exact source failed to build before)")


def _early_result(problem, run: CandidateRun, key: str, cached: bool, log_tail: str, failed: Path) -> KernelEvalResult:
    status = Status(run.status)
    message = run.message or ""
    if status in (Status.COMPILE_ERROR, Status.RUNTIME_ERROR) and log_tail:
        message += f"\n--- candidate output ---\n{log_tail}"
    if status is Status.COMPILE_ERROR and _deterministic_build_error(message):
        failed.parent.mkdir(parents=True, exist_ok=True)
        failed.write_text(message)
    return KernelEvalResult(problem.name, status, compiled=run.compiled, compile_s=run.compile_s, trials=run.trials,
                            flags=run.flags, message=message, provenance=run.provenance, source_hash=key,
                            cached_build=cached)


def _combine(problem, run: CandidateRun, verdict: Judgement, ref: ReferenceOutputs, key: str, cached: bool,
             implausible_speedup: float) -> KernelEvalResult:
    prov = {**run.provenance, "weights": verdict.weights}
    flags = list(run.flags)
    result = KernelEvalResult(problem.name, Status.CORRECT if verdict.correct else Status.INCORRECT, compiled=True,
                              correct=verdict.correct, flags=flags, message=verdict.message or run.message,
                              max_abs_diff=verdict.max_abs_diff, trials=verdict.trials, compile_s=run.compile_s,
                              cached_build=cached, provenance=prov, source_hash=key,
                              output_signature=verdict.output_signature)
    ref_ms = ref.timing.get("ms")
    if verdict.correct and run.runtime_ms and ref_ms:
        result.runtime_ms, result.runtime_spread, result.ref_runtime_ms = run.runtime_ms, run.runtime_spread, ref_ms
        result.speedup = ref_ms / run.runtime_ms if run.runtime_ms > 0 else None
        # timed once per problem and settings, with its outputs (provenance "reference": "cached" says reused)
        prov.update(ref_spread=ref.timing.get("spread"), ref_launch=ref.timing.get("launch"))
        if ref.timing.get("compiled_ms"):
            result.compiled_ref_runtime_ms = ref.timing["compiled_ms"]
            result.speedup_vs_compile = ref.timing["compiled_ms"] / run.runtime_ms
        if result.speedup and result.speedup > implausible_speedup:
            flags.append("implausible_speedup")
    result.flags = sorted(set(flags))
    return result


def reference_outputs(problem: Problem, device: str, seed: int, trials: int, cache: Path, device_lock,
                      memory_limit_gb, cpu_threads: int, timing: dict | None = None) -> ReferenceOutputs | str:
    """The reference's outputs for these settings (and its timing, with `timing`'s settings), made once in a
    process of their own and kept in the trusted cache; or why they could not be made (a harness error: no
    verdict on any kernel)."""
    import importlib.metadata

    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = "?"
    h = hashlib.sha256(f"{device}\0{seed}\0{trials}\0{torch_version}\0{json.dumps(timing, sort_keys=True)}\0".encode()
                       + problem.source.encode())
    root = cache / "reference"
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)  # hidden from candidates: by owner when they get their own uid, by Landlock else
    final = root / h.hexdigest()[:20]
    done = final / "reference.json"
    if done.is_file():
        return ReferenceOutputs(**{**json.loads(done.read_text())["ok"], "dir": str(final), "cached": True})
    # No lock across the child (it waits for the device, which a sleeping-engine batch may hold while it
    # waits for this very problem): two evaluations may both make it; the first to finish is kept.
    work = Path(tempfile.mkdtemp(prefix="making-", dir=root))
    spec = ReferenceSpec(problem_source=problem.source, device=device, seed=seed, trials=trials, dir=str(work),
                         **({**timing, "time": True} if timing else {"cpu_threads": cpu_threads}))
    env = _trusted_env(device)
    raw, status, msg, _ = _run("kernels_eval.reference", {"spec": spec.to_json()}, env, work, work / "output.log",
                               600.0, 600.0, 600.0, memory_limit_gb, device_lock)
    if raw is None or "ok" not in raw:
        why = (raw or {}).get("error") or f"the reference's process: {msg}\n{_tail(work / 'output.log')}"
        shutil.rmtree(work, ignore_errors=True)
        return why
    try:
        os.rename(work, final)  # atomic; fails if another evaluation's copy is already there
    except OSError:
        shutil.rmtree(work, ignore_errors=True)
        if not done.is_file():
            raise
        return ReferenceOutputs(**{**json.loads(done.read_text())["ok"], "dir": str(final), "cached": True})
    return ReferenceOutputs(**{**raw["ok"], "dir": str(final)})


def _judge(run: CandidateRun, ref: ReferenceOutputs, box: Sandbox, tolerances, trials) -> Judgement | str:
    """The verdict, here: the candidate's outputs are bytes on disk (kernels_eval.judge reads them)."""
    from kernels_eval.errors import HarnessFailure
    from kernels_eval.judge import judge

    one_trial = sum(p.stat().st_size for p in Path(ref.dir).glob("out-0.bin"))
    spec = JudgeSpec(reference_dir=ref.dir, outputs_dir=str(box.scratch / "outputs"), variants=run.variants,
                     trials=trials, tolerances={**DEFAULT_TOLERANCES, **(tolerances or {})}, owner=box.uid,
                     max_bytes=4 * one_trial + (1 << 20))
    try:
        return judge(spec)
    except HarnessFailure as e:
        return str(e)
    except Exception as e:  # noqa: BLE001 - the judge's own failure: no verdict
        return f"the judge failed: {type(e).__name__}: {str(e)[-1500:]}"


def _trusted_env(device: str) -> dict:
    env = clean_env(dict(os.environ))
    env.update(PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1")
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


class _Lock:
    """An flock on a file, released at most once (at the build's end, or when the evaluation ends)."""

    def __init__(self, path: Path):
        self.path, self.fd = path, None

    def acquire(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def release(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)


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


def _run(module: str, message: dict, env: dict, cwd: Path, log_path: Path, start_timeout: float,
         compile_timeout: float, run_timeout: float, memory_limit_gb: float | None,
         device_lock, on_compiled=None) -> tuple[dict | None, Status, str, dict]:
    """Run one of an evaluation's processes (`python -m module`) to its answer: (answer, _, _, sandbox report),
    or (None, status, why, report) when it timed out, crashed or exited without one. The timeouts follow
    the phases it reports (compiling, compiled: waiting for the device, running)."""
    nonce = secrets.token_hex(16)
    r, w = os.pipe()
    fds = [w]
    lock_fd = None
    if device_lock:
        lock_fd = os.open(device_lock, os.O_RDWR | os.O_CREAT, 0o666)
        fds.append(lock_fd)
        message["spec"] = {**message["spec"], "lock_fd": lock_fd}
    try:
        with open(log_path, "wb") as log:
            # Forked from the warm zygote (torch already imported), else a fresh interpreter: the same process.
            proc = zygote.spawn(module, env, cwd, log.fileno(), tuple(fds),
                                int(memory_limit_gb * 2**30) if memory_limit_gb else None, zygote_env=_trusted_env("cuda"))
            if proc is None:
                proc = subprocess.Popen(
                    [sys.executable, "-m", module], stdin=subprocess.PIPE, stdout=log, stderr=log, cwd=cwd, env=env,
                    pass_fds=tuple(fds), start_new_session=True, preexec_fn=_limits(memory_limit_gb))
        if box_uid := (message.get("sandbox") or {}).get("uid"):
            os.chown(log_path, box_uid, box_uid)
    finally:
        os.close(w)
        if lock_fd is not None:
            os.close(lock_fd)  # the child's copy is the one that locks
    try:
        proc.stdin.write((json.dumps({**message, "fd": w, "nonce": nonce}) + "\n").encode())
        proc.stdin.close()
    except BrokenPipeError:
        pass
    phase, deadline = "starting", time.monotonic() + start_timeout  # interpreter + torch import
    buf, result, walls = b"", None, {}
    with os.fdopen(r, "rb", buffering=0) as pipe:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                _kill(proc)
                if phase == "compiled":  # never got the device: nothing was decided about the kernel
                    return None, Status.HARNESS_ERROR, f"waited over {LOCK_WAIT_S:.0f}s for the device lock", walls
                limit = run_timeout if phase == "running" else compile_timeout
                what = "run" if phase == "running" else "compile"
                return None, Status.TIMEOUT, f"{what} timed out after {limit:.0f}s", walls
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
                    continue  # not from our code
                if msg.get("phase") == "sandboxed":
                    walls = msg.get("sandbox") or {}
                elif msg.get("phase") == "compiling":
                    phase, deadline = "compiling", time.monotonic() + compile_timeout
                elif msg.get("phase") == "compiled":  # built; waiting for the device lock, if any
                    phase, deadline = "compiled", time.monotonic() + LOCK_WAIT_S
                    if on_compiled is not None:
                        on_compiled()
                elif msg.get("phase") == "running":  # holds the device: the run timeout starts now
                    phase, deadline = "running", time.monotonic() + run_timeout
                elif "result" in msg:
                    result = msg["result"]
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        _kill(proc)
    _kill(proc)  # anything the child left running in its group
    walls = {**walls, "started": "forked from the zygote" if isinstance(proc, zygote.Forked) else "a fresh interpreter"}
    if result is not None:
        return result, Status.CORRECT, "", walls
    rc = proc.returncode
    if rc is not None and rc < 0:
        name = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else str(-rc)
        why = f"killed by {name}" + (" (memory limit or out of memory?)" if name in ("SIGKILL", "SIGSEGV", "SIGABRT") else "")
    else:
        why = f"exited with code {rc} without reporting a result (os._exit or sys.exit in the candidate?)"
    return None, Status.CRASHED, f"the candidate process {why} during {phase}", walls


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
