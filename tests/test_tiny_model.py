import hashlib
from pathlib import Path

from kaggle_kit.tiny import build_tiny_model


def digest(path: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


def test_same_seed_gives_byte_identical_files(tmp_path):
    a = digest(build_tiny_model(tmp_path / "a", seed=3, train_steps=10))
    b = digest(build_tiny_model(tmp_path / "b", seed=3, train_steps=10))
    c = digest(build_tiny_model(tmp_path / "c", seed=4, train_steps=10))
    assert a == b
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(a)
    assert a["model.safetensors"] != c["model.safetensors"]


def test_tiny_model_shape(tiny_model_dir):
    import json

    cfg = json.loads((Path(tiny_model_dir) / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen3ForCausalLM"]
    assert cfg["head_dim"] == 64 and cfg["num_hidden_layers"] == 2 and cfg["hidden_size"] == 128
    assert (cfg.get("dtype") or cfg.get("torch_dtype")) == "float32"
