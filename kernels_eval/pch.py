"""A precompiled torch/extension.h for candidates' C++ builds. Trusted: the parent makes it, candidates only read it.

`load_inline` puts `#include <torch/extension.h>` first in every C++ file it builds, and parsing that header
is about half of a first build on a CPU (benchmarks/pch_builds.py measures it). GCC looks for
`<dir>/torch/extension.h.gch` in each include folder before the header itself, and uses a precompiled file
only if it was made with compatible options; otherwise it parses the header as before. So a PCH can make a
build faster, never different. The candidate's environment names the folder in CPATH, which GCC searches
after the build's own -I folders and before torch's -isystem ones. Beside the .gch, a link to the header.

The .gch is a folder of variants, the two ways builds are asked for: optimised (-O3, which GCC also
accepts for -O1/-O2) and unoptimised (no -O). Each is ~0.75 GB and takes ~35-65 s to make on one core. A
variant is made the first time a candidate whose source asks for it (a guess from its text; a wrong
guess costs only the saving) is evaluated, under a lock, and kept per (compiler, torch, Python).
`KK_PCH=0` turns it off.
"""
from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

VARIANTS = {"O3": ["-O3"], "O0": []}
# What torch.utils.cpp_extension compiles a load_inline C++ file with, besides -DTORCH_EXTENSION_NAME
# (torch 2.13: _write_ninja_file_to_build_library); the header does not read the extension's name.
FLAGS = ["-DTORCH_API_INCLUDE_EXTENSION_H", "-fPIC", "-std=c++20"]
BUILD_TIMEOUT_S = 600.0


def builds_cpp(source: str) -> bool:
    """Whether a candidate's source compiles C++ through torch (cheap: a PCH is made only for these)."""
    return "cpp_extension" in source or "load_inline" in source


def variant_for(source: str) -> str | None:
    """The variant a source's build would use: O3 when it asks for -O1..-O3, O0 when it names no -O at all,
    None for anything else (-Os, -Ofast: options that no variant matches)."""
    levels = set(re.findall(r"""["']-O(\w*)["']""", source))
    if not levels:
        return "O0"
    return "O3" if levels <= {"1", "2", "3"} else None


def enabled() -> bool:
    return os.environ.get("KK_PCH", "1") != "0" and shutil.which(_compiler()) is not None


def root() -> Path:
    """Root's home is closed to a candidate with its own uid: then the PCH lives where that uid can read it
    (and cannot write: root owns it)."""
    from kernels_eval.sandbox import is_root, sandbox_root

    if os.environ.get("KK_PCH_DIR"):
        return Path(os.environ["KK_PCH_DIR"])
    return sandbox_root() / "pch" if is_root() else Path.home() / ".cache" / "kaggle_kit" / "pch"


def ensure(source: str) -> tuple[Path | None, str]:
    """(the folder to put on CPATH, what happened) for a candidate's source; (None, why) when there is none."""
    if not enabled():
        return None, "off (KK_PCH=0 or no C++ compiler)"
    variant = variant_for(source)
    if variant is None:
        return None, "none for the -O it asks for"
    try:
        includes = _torch_includes()
        key = _key(includes)
        top = root()
        top.mkdir(parents=True, exist_ok=True)
        os.chmod(top, 0o755)
        final = top / key
        made = final / "torch" / "extension.h.gch" / variant
        if made.is_file():
            return final, f"{variant} cached"
        failed = top / f"{key}-{variant}.failed"
        if failed.is_file():
            return None, f"{variant} failed before: " + failed.read_text()[-300:]
        with open(top / f"{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one maker; the others wait for it, then use its file
            if made.is_file():
                return final, f"{variant} cached"
            why = _make(includes, final, variant)
            if why:
                failed.write_text(why)
                return None, f"{variant} failed: " + why[-300:]
        return final, f"{variant} made"
    except OSError as e:
        return None, f"unavailable: {e}"


def _make(includes: list[str], final: Path, variant: str) -> str | None:
    """Make one variant into final/torch/extension.h.gch/ (whole or absent: written aside, then renamed)."""
    gch = final / "torch" / "extension.h.gch"
    header = Path(includes[0]) / "torch" / "extension.h"
    if not gch.is_dir():
        gch.mkdir(parents=True)
        for d in (final, final / "torch", gch):
            os.chmod(d, 0o755)
    link = final / "torch" / "extension.h"
    if not link.is_symlink():
        # The header itself beside its PCH: a second `#include <torch/extension.h>` (the candidate's own,
        # after load_inline's) finds the .gch here again, cannot use it twice, and must then find the header
        # in this same folder; the link makes it the very file already included (#pragma once holds).
        os.symlink(header, link)
    tmp = final / f"{variant}.making"
    cmd = [_compiler(), "-x", "c++-header", str(header), "-o", str(tmp), *FLAGS, *VARIANTS[variant],
           *[a for i in includes for a in ("-isystem", i)]]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        tmp.unlink(missing_ok=True)
        return f"timed out after {BUILD_TIMEOUT_S:.0f} s"
    if p.returncode:
        tmp.unlink(missing_ok=True)
        return (p.stdout + p.stderr)[-2000:]
    os.chmod(tmp, 0o644)
    os.rename(tmp, gch / variant)
    return None


def _compiler() -> str:
    return os.environ.get("CXX", "c++")  # what torch.utils.cpp_extension builds with


def _torch_includes() -> list[str]:
    """torch.utils.cpp_extension.include_paths("cpu") + Python's, found without importing torch here."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        raise OSError("torch is not installed")
    inc = Path(list(spec.submodule_search_locations)[0]) / "include"
    return [str(inc), str(inc / "torch" / "csrc" / "api" / "include"),
            sysconfig.get_path("include", scheme="posix_prefix")]


def _key(includes: list[str]) -> str:
    version = subprocess.run([_compiler(), "--version"], capture_output=True, text=True, timeout=30).stdout
    h = hashlib.sha256(version.encode())
    # GCC does not check a PCH against the headers it was made from: another torch must never reuse it.
    import importlib.metadata

    h.update(importlib.metadata.version("torch").encode())
    for i in includes:
        header = Path(i) / "torch" / "extension.h"
        h.update(i.encode() + (str(header.stat().st_mtime_ns).encode() if header.exists() else b""))
    h.update(repr((FLAGS, VARIANTS)).encode())
    return h.hexdigest()[:16]
