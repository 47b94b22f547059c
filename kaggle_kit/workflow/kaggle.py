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
                 metadata_path: str | Path = METADATA) -> Path:
    """A folder ready for `kaggle kernels push`: the bundled notebook (params injected) + metadata."""
    from kaggle_kit.workflow.notebooks import build_bundle, inject

    meta = load_metadata(metadata_path)
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    name = Path(meta.get("code_file") or "kaggle_kit_bundle.ipynb").name
    bundle = build_bundle()
    if params:
        inject(bundle, params, out / name)
    else:
        shutil.copy(bundle, out / name)
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
    exe = shutil.which("kaggle")
    if exe is None:
        raise RuntimeError("the kaggle CLI is not installed (pip install kaggle) or not on PATH")
    proc = subprocess.run([exe, *args], capture_output=True, text=True)
    output = _scrub(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"kaggle {' '.join(args[:2])} failed (exit {proc.returncode}): {output.strip()[-1500:]}")
    return output


def push(params: dict[str, Any] | None = None, out_dir: str | Path = "build/kaggle") -> str:
    """Validate, bundle and `kaggle kernels push`; returns the CLI's (scrubbed) output."""
    folder = prepare_push(out_dir, params)
    return _kaggle(["kernels", "push", "-p", str(folder)])


def fetch(kernel_id: str | None = None, out_dir: str | Path = "runs/kaggle") -> Path:
    """Download a finished kernel's output (`kaggle kernels output`)."""
    kernel_id = kernel_id or load_metadata()["id"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _kaggle(["kernels", "output", kernel_id, "-p", str(out)])
    return out
