"""kernel-metadata.json checks, bundling for a push, `kaggle kernels push` / `output`.

The checks follow the kaggle CLI's own rules, so a push fails here, with every
problem listed, rather than on Kaggle's side one problem at a time. Credentials
stay with the kaggle CLI (~/.kaggle/kaggle.json or KAGGLE_USERNAME/KAGGLE_KEY):
nothing here reads, logs or writes them, and command output is scrubbed of them.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]  # the repository (kaggle_kit/workflow/ -> root)
METADATA = ROOT / "kernel-metadata.json"
MACHINE_SHAPES = ("NvidiaTeslaT4", "NvidiaTeslaP100", "NvidiaL4", "NvidiaL4X1", "NvidiaH100", "Tpu1VmV38")
_BOOLS = ("is_private", "enable_gpu", "enable_tpu", "enable_internet")
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]*[a-z0-9]$")


def validate_metadata(meta: dict[str, Any], base_dir: str | Path = ROOT) -> list[str]:
    """Every problem with a kernel-metadata.json, as sentences; empty when it is valid."""
    errors = []
    kid = meta.get("id")
    if not isinstance(kid, str) or kid.count("/") != 1:
        errors.append("id must be 'owner/slug'")
    else:
        owner, slug = kid.split("/")
        if not owner:
            errors.append("id has no owner part")
        if len(slug) < 5:
            errors.append(f"the slug {slug!r} must be at least 5 characters")
        elif not _SLUG.match(slug):
            errors.append(f"the slug {slug!r} may hold only lowercase letters, digits and hyphens")
    title = meta.get("title")
    if not isinstance(title, str) or len(title.strip()) < 5:
        errors.append("title must be at least 5 characters")
    code = meta.get("code_file")
    if not code:
        errors.append("code_file is missing")
    elif not (Path(base_dir) / code).is_file():
        errors.append(f"code_file {code!r} does not exist (run `kaggle-kit bundle` first)")
    if meta.get("language") != "python":
        errors.append("language must be 'python'")
    if meta.get("kernel_type") != "notebook":
        errors.append("kernel_type must be 'notebook'")
    for key in _BOOLS:
        if key in meta and not isinstance(meta[key], bool):
            errors.append(f"{key} must be true or false (a JSON boolean), got {meta[key]!r}")
    if "enable_internet" not in meta:
        errors.append("set enable_internet explicitly (the kaggle CLI defaults it to true)")
    shape = meta.get("machine_shape")
    if shape is not None and shape not in MACHINE_SHAPES:
        errors.append(f"machine_shape {shape!r} is not one of {', '.join(MACHINE_SHAPES)}")
    if shape == "NvidiaTeslaT4" and meta.get("enable_gpu") is not True:
        errors.append("machine_shape NvidiaTeslaT4 needs enable_gpu: true")
    for src in meta.get("model_sources", []):
        parts = src.split("/") if isinstance(src, str) else []
        if len(parts) != 5 or not parts[-1].isdigit():
            errors.append(f"model source {src!r} must have 5 parts ending in a version number, "
                          "e.g. qwen-lm/qwen-3/transformers/14b-awq/1")
    for key in ("dataset_sources", "kernel_sources", "competition_sources", "model_sources"):
        if key in meta and not isinstance(meta[key], list):
            errors.append(f"{key} must be a list")
    for src in meta.get("dataset_sources", []):
        if not isinstance(src, str) or src.count("/") != 1:
            errors.append(f"dataset source {src!r} must be 'owner/dataset'")
    return errors


def load_metadata(path: str | Path = METADATA) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


def prepare_push(out_dir: str | Path = "build/kaggle", params: dict[str, Any] | None = None,
                 metadata_path: str | Path = METADATA, meta: dict[str, Any] | None = None) -> Path:
    """A folder ready for `kaggle kernels push`: the bundled notebook (params injected) + metadata
    (kernel-metadata.json, with the keys of `meta` replaced)."""
    from kaggle_kit.workflow.notebooks import build_bundle, inject

    meta = {**load_metadata(metadata_path), **(meta or {})}
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    name = Path(meta.get("code_file") or "kaggle_kit_bundle.ipynb").name
    bundle = build_bundle(out_path=out / "bundle.ipynb")
    if params:
        inject(bundle, params, out / name)
        bundle.unlink()
    else:
        bundle.rename(out / name)
    meta["code_file"] = name
    errors = validate_metadata(meta, out)
    if errors:
        raise ValueError("kernel-metadata.json: " + "; ".join(errors))
    (out / "kernel-metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def _scrub(text: str) -> str:
    for var in ("KAGGLE_KEY", "KAGGLE_USERNAME", "GROQ_API_KEY", "KK_API_KEY"):
        value = os.environ.get(var)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


def _kaggle(args: list[str]) -> str:
    beside = Path(sys.executable).with_name("kaggle")  # this environment's CLI when it is not activated
    exe = shutil.which("kaggle") or (str(beside) if beside.is_file() else None)
    if exe is None:
        raise RuntimeError("the kaggle CLI is not installed (pip install kaggle) or not on PATH")
    proc = subprocess.run([exe, *args], capture_output=True, text=True)
    output = _scrub(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"kaggle {' '.join(args[:2])} failed (exit {proc.returncode}): {output.strip()[-1500:]}")
    return output


def push(params: dict[str, Any] | None = None, out_dir: str | Path = "build/kaggle") -> str:
    """Validate, bundle and `kaggle kernels push`; returns the CLI's (scrubbed) output."""
    return push_folder(prepare_push(out_dir, params))[1]


_PUSHED = re.compile(r"Kernel version (\d+) successfully pushed")


def push_folder(folder: str | Path) -> tuple[int | None, str]:
    """`kaggle kernels push -p folder`: (the version Kaggle gave it, the CLI's output). The CLI reports a
    refused push on stdout with exit status 0 ("Kernel push error: ..."): that is an error here."""
    out = _kaggle(["kernels", "push", "-p", str(folder)])
    if "Kernel push error" in out or "successfully pushed" not in out:
        raise RuntimeError(f"kaggle kernels push {folder}: {out.strip()[-1500:]}")
    m = _PUSHED.search(out)
    return (int(m.group(1)) if m else None), out


# What `kaggle kernels status` prints: 'owner/slug has status "KernelWorkerStatus.COMPLETE"' (CLI 2.x,
# kagglesdk's KernelWorkerStatus enum) or '... has status "complete"' (1.x).
_STATUS = re.compile(r'has status "(?:KernelWorkerStatus\.)?([A-Za-z_]+)"')
_FAILURE = re.compile(r'Failure message: "(.*)"', re.S)


def kernel_status(kernel_id: str) -> tuple[str, str]:
    """(status in lower case: queued, running, complete, error, cancel_requested, ..., message)."""
    out = _kaggle(["kernels", "status", kernel_id])
    m = _STATUS.search(out)
    if not m:
        raise RuntimeError(f"kaggle kernels status {kernel_id}: unexpected output {out.strip()[-300:]!r}")
    f = _FAILURE.search(out)
    return m.group(1).lower(), (f.group(1).strip() if f else "")


def gpu_quota() -> tuple[float, float] | None:
    """(hours used, hours allowed) of this week's GPU quota (`kaggle quota`, CLI >= 2.2), or None."""
    out = _kaggle(["quota", "--csv"])
    for line in out.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if cells and cells[0] == "GPU" and len(cells) >= 4:
            return float(cells[1].rstrip("h")), float(cells[3].rstrip("h"))
    return None


def fetch(kernel_id: str | None = None, out_dir: str | Path = "runs/kaggle", file_pattern: str | None = None) -> Path:
    """Download a finished kernel's output (`kaggle kernels output`), or the files matching a regex."""
    kernel_id = kernel_id or load_metadata()["id"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _kaggle(["kernels", "output", kernel_id, "-p", str(out), "--force", "--quiet"]
            + (["--file-pattern", file_pattern] if file_pattern else []))
    return out
