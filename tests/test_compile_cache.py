"""Compile caches kept with a session's output and restored from the previous session's."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from kaggle_kit.engine import compile_cache as cc


def _file(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_where_the_cache_lives(tmp_path):
    working = tmp_path / "working"
    assert cc.cache_root({}, working) is None  # not on Kaggle: Triton's and vLLM's defaults
    working.mkdir()
    assert cc.cache_root({}, working) == working / cc.DIRNAME
    assert cc.cache_root({cc.ENV: str(tmp_path / "mine")}, working) == tmp_path / "mine"
    assert cc.cache_root({cc.ENV: "off"}, working) is None


def test_a_new_session_starts_from_the_previous_sessions_output(tmp_path):
    inputs, working = tmp_path / "input", tmp_path / "working"
    working.mkdir()
    # Two earlier outputs attached: one mounted at /kaggle/input/<slug>, one under its owner's name.
    _file(inputs / "shard-0" / cc.DIRNAME / "triton" / "abc" / "attn.cubin", "old")
    _file(inputs / "someone" / "shard-1" / cc.DIRNAME / "vllm" / "modelinfos" / "qwen3.json")
    _file(inputs / "a-dataset" / "unrelated.txt")
    mine = _file(working / cc.DIRNAME / "triton" / "abc" / "attn.cubin", "this session's")
    env: dict[str, str] = {"VLLM_CACHE_ROOT": "/user/choice"}

    got = cc.use_compile_cache(inputs, env, working)

    assert got.root == working / cc.DIRNAME
    assert got.restored_files == 1  # the cubin was already here
    assert (working / cc.DIRNAME / "vllm" / "modelinfos" / "qwen3.json").is_file()
    assert mine.read_text() == "this session's"  # never overwritten by an older copy
    assert not list((working / cc.DIRNAME).rglob("*.kk-tmp"))
    assert len(got.restored_from) == 1 and "shard-1" in got.restored_from[0]
    assert got.files == 2
    assert env["TRITON_CACHE_DIR"] == str(working / cc.DIRNAME / "triton")
    assert env["VLLM_CACHE_ROOT"] == "/user/choice"  # what the user set stays
    assert "restored from" in got.describe()


def test_an_empty_cache_says_the_start_will_compile(tmp_path):
    got = cc.use_compile_cache(tmp_path / "no-inputs", {cc.ENV: str(tmp_path / "c")}, tmp_path / "none")
    assert got.files == 0 and got.restored_files == 0
    assert "compiles" in got.describe()
    assert cc.use_compile_cache(tmp_path, {cc.ENV: "off"}).describe().endswith("defaults")


def test_vllm_keeps_its_model_inspection_where_we_point_it(tmp_path):
    """The installed vLLM reads VLLM_CACHE_ROOT for its modelinfo cache (what saves a re-import of vLLM
    in a subprocess at every start); a renamed variable would leave the cache in /root and fail here."""
    env = dict(os.environ)
    env.pop("VLLM_CACHE_ROOT", None)
    env[cc.ENV] = str(tmp_path / "cache")
    cc.use_compile_cache(tmp_path / "inputs", env)
    code = ("from vllm.model_executor.models.registry import ModelRegistry;"
            "ModelRegistry.models['Qwen3ForCausalLM'].inspect_model_cls()")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, timeout=300)
    assert list((tmp_path / "cache" / "vllm" / "modelinfos").glob("*Qwen3ForCausalLM*.json"))
