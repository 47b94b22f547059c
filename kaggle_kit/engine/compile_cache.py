"""Compile caches that outlive a Kaggle session.

A fresh session starts the engine cold: Triton compiles the attention kernels (47 s of a 107 s
tensor-parallel start, measured on the emulated T4 x2) and vLLM inspects the model's architecture in a
subprocess that imports vLLM again unless its `modelinfos` cache has the answer (vLLM 0.19.1:
model_executor/models/registry.py, under VLLM_CACHE_ROOT). On Kaggle both live under /root, which a
session loses. Here they live in /kaggle/working (kept as the notebook's output), and a session that
has a previous session's output attached (a kernel source, mounted under /kaggle/input) starts from
its copy. Both caches are keyed by what they depend on (Triton: kernel source, Triton version, target
GPU; vLLM: the model module's hash), so a copy from another image or GPU misses; it never misleads.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from kaggle_kit.config import attached_inputs

DIRNAME = "kk-compile-cache"
ENV = "KK_COMPILE_CACHE"  # a directory, or "off"; unset: /kaggle/working/kk-compile-cache on Kaggle
KAGGLE_WORKING = Path("/kaggle/working")
# What each cache is called in the environment, and its folder under the cache root.
CACHES = {"TRITON_CACHE_DIR": "triton", "VLLM_CACHE_ROOT": "vllm"}


@dataclass(frozen=True)
class CompileCache:
    root: Path | None  # None: left to Triton's and vLLM's own defaults
    restored_files: int = 0
    restored_from: tuple[str, ...] = ()
    files: int = 0  # in the cache after restoring: 0 means this start compiles everything

    def describe(self) -> str:
        if self.root is None:
            return "compile caches: Triton's and vLLM's defaults"
        src = f", {self.restored_files} restored from {', '.join(self.restored_from)}" if self.restored_from else ""
        state = f"{self.files} files{src}" if self.files else "empty: this start compiles its kernels (~50 s on a T4 x2)"
        return f"compile caches in {self.root}: {state}"


def cache_root(environ: dict[str, str] | None = None, working: Path = KAGGLE_WORKING) -> Path | None:
    env = os.environ if environ is None else environ
    value = env.get(ENV, "").strip()
    if value.lower() in ("off", "0", "none"):
        return None
    if value:
        return Path(value)
    return working / DIRNAME if working.is_dir() else None


def previous_caches(inputs: Path, root: Path | None = None) -> list[Path]:
    """Copies of this cache in attached inputs: /kaggle/input/<slug>/kk-compile-cache, or deeper."""
    own = root.resolve() if root is not None and root.exists() else None
    return [p for p in attached_inputs(f"*/{DIRNAME}", inputs) if p.resolve() != own]


def _count(root: Path) -> int:
    return sum(1 for p in root.rglob("*") if p.is_file()) if root.is_dir() else 0


def _merge(src: Path, dst: Path) -> int:
    """Copy the files of `src` that `dst` lacks; a file already there is this session's and is kept."""
    copied = 0
    for path in src.rglob("*"):
        if not path.is_file():
            continue
        target = dst / path.relative_to(src)
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".kk-tmp")
        shutil.copyfile(path, tmp)
        os.replace(tmp, target)  # a reader never sees half a file
        copied += 1
    return copied


def use_compile_cache(inputs: str | Path = "/kaggle/input", environ: dict[str, str] | None = None,
                      working: Path = KAGGLE_WORKING) -> CompileCache:
    """Point Triton and vLLM at a cache that is kept with the session's output, seeded from attached inputs.

    Call before the engine starts. A TRITON_CACHE_DIR or VLLM_CACHE_ROOT the user set is left alone.
    """
    env = os.environ if environ is None else environ
    root = cache_root(env, working)
    if root is None:
        return CompileCache(root=None)
    root.mkdir(parents=True, exist_ok=True)
    restored, sources = 0, []
    for src in previous_caches(Path(inputs), root):
        n = _merge(src, root)
        if n:
            restored += n
            sources.append(str(src))
    for var, sub in CACHES.items():
        if not env.get(var):
            (root / sub).mkdir(exist_ok=True)
            env[var] = str(root / sub)
    return CompileCache(root=root, restored_files=restored, restored_from=tuple(sources), files=_count(root))
