"""`kaggle-kit wheels`: a small set built offline from local wheels, with real pip runs."""
import json
import sys
import zipfile
from pathlib import Path

import pytest

from kaggle_kit.workflow.wheels import Target, WheelsError, build_own_wheel, build_wheels, check_offline, \
    read_image, write_stub_wheel

# A miniature of the real problem: `app` (like vLLM) pins `big-torch==1.0` (the image has it, with its
# CUDA libraries), needs `lib` (not in the image) and `shared>=2` (the image has 1.0: must be replaced),
# and accepts any `common` (the image's is kept).
WHEELS = {
    ("app", "1.0"): ["big-torch==1.0", "lib", "shared>=2", "common"],
    ("big-torch", "1.0"): ["big-cuda==12.8", "common"],
    ("big-cuda", "12.8"): [],
    ("lib", "3.1"): ["common>=1"],
    ("shared", "1.0"): [],
    ("shared", "2.5"): [],
    ("common", "1.0"): [],
    ("common", "1.4"): [],
}
IMAGE = {"big-torch": "1.0", "big-cuda": "12.8", "shared": "1.0", "common": "1.0"}
HERE = Target(python="%d.%d" % sys.version_info[:2])  # the test set has no markers: this interpreter will do


@pytest.fixture
def index(tmp_path):
    src = tmp_path / "index"
    src.mkdir()
    for (name, version), requires in WHEELS.items():
        write_stub_wheel(src, name, version, requires)
    return src


def test_small_set_leaves_out_what_the_image_has_and_resolves_offline(tmp_path, index):
    out = tmp_path / "wheels"
    report = build_wheels(out, ["app"], image=IMAGE, include_self=False, find_links=[str(index)], no_index=True,
                          target=HERE)
    names = sorted(w.split("-")[0] for w in report.wheels)
    assert names == ["app", "lib", "shared"]  # big-torch, its CUDA and the image's common left out
    assert report.provided_by_image == {"big-cuda": "12.8", "big-torch": "1.0", "common": "1.0"}
    assert report.replaced == {"shared": ("1.0", "2.5")}
    assert report.resolves_offline
    manifest = json.loads((out / "wheels-manifest.json").read_text())
    assert manifest["target"]["python"] == HERE.python and manifest["replaced"]["shared"] == ["1.0", "2.5"]


def test_a_missing_wheel_fails_the_offline_check(tmp_path, index):
    out = tmp_path / "wheels"
    build_wheels(out, ["app"], image=IMAGE, include_self=False, find_links=[str(index)], no_index=True,
                          target=HERE)
    next(out.glob("lib-*.whl")).unlink()
    with pytest.raises(WheelsError, match="offline install.*lib"):
        check_offline(out, ["app"], {"big-torch": "1.0", "big-cuda": "12.8", "common": "1.0"}, HERE)


def test_source_only_packages_are_refused(tmp_path, index):
    (index / "sdistonly-1.0.tar.gz").write_bytes(b"")  # binary wheels only
    with pytest.raises(WheelsError, match="sdistonly"):
        build_wheels(tmp_path / "w", ["sdistonly"], image={}, include_self=False, find_links=[str(index)], no_index=True,
                     target=HERE)


def test_own_wheel_carries_the_kaggle_pin(tmp_path):
    wheel = build_own_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith("METADATA"))).decode()
        assert "kaggle_kit/workflow/kaggle_image.txt" in z.namelist()
    assert "Requires-Dist: vllm==0.19.1; extra == \"kaggle\"" in meta


def test_pip_must_run_on_the_target_python():
    with pytest.raises(WheelsError, match="markers"):
        Target(python="2.1").pip()


def test_image_manifest_has_the_torch_stack_vllm_is_pinned_to():
    image = read_image()
    assert image["torch"] == "2.10.0" and image["triton"] == "3.6.0" and image["torchvision"] == "0.25.0"
    assert "numba" not in image  # Kaggle reinstalls "the newest": its version is not recorded
