"""`kaggle-kit wheels DIR`: the offline wheels folder for Kaggle's image, and a check that it resolves.

Kaggle notebooks run with the internet off, so vLLM and kaggle_kit are installed
from a dataset of wheels. The folder must hold every wheel the install needs for
the image's Python and platform (binary wheels only), and nothing the image already
has at a version that works: above all not torch and its CUDA libraries, which the
pinned vLLM is chosen to share with the image.

    1. resolve the requirements for the target (pip --dry-run --report, target Python/platform);
    2. keep every package the image has when its version satisfies all requirements on it
       (re-resolving with those versions pinned), and list the ones that must be replaced;
    3. download the rest, our own wheel included;
    4. check: resolve again offline, from the folder plus stand-ins for the image's packages.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from kaggle_kit.config import KaggleKitError

ROOT = Path(__file__).resolve().parents[2]
IMAGE_FILE = Path(__file__).with_name("kaggle_image.txt")
KAGGLE_PYTHON = "3.12"
# Ubuntu 22.04 ships glibc 2.35: every manylinux tag up to 2_35 runs there.
KAGGLE_PLATFORMS = tuple([f"manylinux_2_{i}_x86_64" for i in range(35, 4, -1)]
                         + ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64"])


class WheelsError(KaggleKitError, RuntimeError):
    """The folder could not be built, or does not resolve offline."""


@dataclass
class Target:
    python: str = KAGGLE_PYTHON
    platforms: tuple[str, ...] = KAGGLE_PLATFORMS
    interpreter: str | None = None  # a Python of version `python` to run pip with (found on PATH if None)
    _found: str | None = field(default=None, init=False, repr=False, compare=False)

    def pip(self) -> str:
        """pip evaluates environment markers (`python_version > "3.11"`) with the interpreter it runs
        on, whatever --python-version says, so it must run on the target's Python."""
        if self._found is None:  # probed once: every pip call of a build goes through here
            self._found = self._find_python()
        return self._found

    def _find_python(self) -> str:
        pyenv = sorted(Path.home().glob(f".pyenv/versions/{self.python}*/bin/python{self.python}"))
        candidates = [self.interpreter] if self.interpreter else [
            sys.executable, shutil.which(f"python{self.python}"), *map(str, pyenv)]
        for exe in filter(None, candidates):
            try:
                out = subprocess.run([exe, "-c", "import sys, pip; print('%d.%d' % sys.version_info[:2])"],
                                     capture_output=True, text=True, timeout=60)
            except OSError:
                continue
            if out.returncode == 0 and out.stdout.strip() == self.python:
                return exe
        raise WheelsError(f"no Python {self.python} with pip found (tried {', '.join(filter(None, candidates))}); "
                          f"pip reads markers like python_version > '3.11' from the Python it runs on, so install "
                          f"Python {self.python} or pass --pip-python PATH")

    def pip_args(self) -> list[str]:
        abi = "cp" + self.python.replace(".", "")
        args = ["--only-binary=:all:", "--python-version", self.python, "--implementation", "cp",
                "--abi", abi, "--abi", "abi3", "--abi", "none"]
        for p in self.platforms:
            args += ["--platform", p]
        return args

    def marker_env(self) -> dict[str, str]:
        env = default_environment()
        env.update(python_version=self.python, python_full_version=self.python + ".0", sys_platform="linux",
                   platform_system="Linux", platform_machine="x86_64", os_name="posix",
                   implementation_name="cpython", platform_python_implementation="CPython")
        return env


@dataclass
class WheelsReport:
    folder: str
    wheels: list[str] = field(default_factory=list)
    total_bytes: int = 0
    provided_by_image: dict[str, str] = field(default_factory=dict)
    replaced: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (image version, shipped version)
    resolves_offline: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    def render(self) -> str:
        lines = [f"{len(self.wheels)} wheels, {self.total_bytes / 2**20:.0f} MiB in {self.folder}",
                 f"left out (the image has them): {len(self.provided_by_image)} packages, e.g. "
                 + ", ".join(f"{k}=={v}" for k, v in list(self.provided_by_image.items())[:6])]
        if self.replaced:
            lines.append("replaced in the image (the pins need other versions): "
                         + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in sorted(self.replaced.items())))
        lines.append("offline resolve check: " + ("ok" if self.resolves_offline else "FAILED"))
        return "\n".join(lines)


def read_image(path: str | Path = IMAGE_FILE) -> dict[str, str]:
    """name -> version of the image's packages (local labels like +cu128 dropped)."""
    out = {}
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            out[canonicalize_name(name)] = version.split("+")[0]
    return out


def _pip(target: "Target", args: list[str], what: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([target.pip(), "-m", "pip", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        errors = [l for l in (proc.stderr + proc.stdout).splitlines() if "ERROR" in l or "error" in l.lower()]
        raise WheelsError(f"{what} failed: " + ("\n".join(errors[-8:]) or proc.stderr[-1500:]))
    return proc


def resolve(requirements: list[str], target: Target, source_args: list[str], constraints: dict[str, str],
            work: Path) -> list[dict]:
    """pip's resolution for `target` as report items (name, version, metadata, download URL)."""
    cfile = work / "constraints.txt"
    cfile.write_text("".join(f"{n}=={v}\n" for n, v in sorted(constraints.items())))
    report = work / "report.json"
    _pip(target, ["install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
          "--target", str(work / "target"), "-c", str(cfile), *target.pip_args(), *source_args, *requirements],
         "resolving " + " ".join(requirements))
    return json.loads(report.read_text())["install"]


def _requirements_on(items: list[dict], target: Target, extras: dict[str, set[str]]) -> dict[str, list[Requirement]]:
    """name -> every requirement the resolved packages place on it (markers evaluated for the target)."""
    env = target.marker_env()
    out: dict[str, list[Requirement]] = {}
    for it in items:
        name = canonicalize_name(it["metadata"]["name"])
        for raw in it["metadata"].get("requires_dist") or []:
            req = Requirement(raw)
            wanted = extras.get(name, set()) | {""}
            if req.marker and not any(req.marker.evaluate({**env, "extra": e}) for e in wanted):
                continue
            out.setdefault(canonicalize_name(req.name), []).append(req)
    return out


def plan_downloads(requirements: list[str], image: dict[str, str], target: Target, source_args: list[str],
                   work: Path) -> tuple[list[dict], dict[str, str], dict[str, tuple[str, str]]]:
    """(items to download, packages the image provides, packages the image has that must be replaced)."""
    extras = {canonicalize_name(Requirement(r).name): set(Requirement(r).extras) for r in requirements
              if not r.startswith(("/", "."))}
    keep: dict[str, str] = {}
    for _ in range(4):  # pinning kept versions can change the rest of the resolution: repeat to a fixpoint
        items = resolve(requirements, target, source_args, keep, work)
        on = _requirements_on(items, target, extras)
        new_keep = {}
        for it in items:
            name = canonicalize_name(it["metadata"]["name"])
            have = image.get(name)
            if have and all(Version(have) in req.specifier for req in on.get(name, [])):
                new_keep[name] = have
        if new_keep == keep:
            break
        keep = new_keep
    replaced = {}
    for it in items:
        name = canonicalize_name(it["metadata"]["name"])
        if name in image and name not in keep:
            replaced[name] = (image[name], it["metadata"]["version"])
    return [it for it in items if canonicalize_name(it["metadata"]["name"]) not in keep], keep, replaced


def write_stub_wheel(folder: Path, name: str, version: str, requires: list[str] = ()) -> Path:
    """A metadata-only wheel: a stand-in for a package the image already has (or a test package)."""
    dist = f"{re.sub(r'[-.]+', '_', name)}-{version}"
    path = folder / f"{dist}-py3-none-any.whl"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{dist}.dist-info/METADATA", meta)
        z.writestr(f"{dist}.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: kaggle_kit\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{dist}.dist-info/RECORD", "")
    return path


def build_own_wheel(folder: Path, target: "Target | None" = None) -> Path:
    """kaggle_kit's own wheel (from the repository) into `folder`."""
    if not (ROOT / "pyproject.toml").is_file():
        raise WheelsError(f"kaggle_kit's source tree is not at {ROOT}; run from a clone of the repository")
    before = set(folder.glob("kaggle_kit-*.whl"))
    _pip(target or Target(python="%d.%d" % sys.version_info[:2]),
         ["wheel", "--no-deps", "--quiet", "--no-build-isolation", "-w", str(folder), str(ROOT)], "building kaggle_kit's wheel")
    built = sorted(set(folder.glob("kaggle_kit-*.whl")) - before) or sorted(folder.glob("kaggle_kit-*.whl"))
    return built[-1]


def check_offline(folder: Path, requirements: list[str], provided: dict[str, str], target: Target) -> None:
    """Resolve `requirements` from `folder` alone, the image's packages standing in as metadata-only wheels."""
    with tempfile.TemporaryDirectory() as tmp:
        stubs = Path(tmp) / "image"
        stubs.mkdir()
        for name, version in provided.items():
            write_stub_wheel(stubs, name, version)
        (Path(tmp) / "empty.txt").write_text("")
        _pip(target, ["install", "--dry-run", "--ignore-installed", "--quiet", "--no-index", "--find-links", str(folder),
              "--find-links", str(stubs), "--target", str(Path(tmp) / "target"), *target.pip_args(), *requirements],
             f"the offline install from {folder}")


def build_wheels(folder: str | Path, requirements: list[str] | None = None, *, image: dict[str, str] | None = None,
                 target: Target | None = None, include_self: bool = True, extra: str = "kaggle",
                 find_links: list[str] = (), index_url: str | None = None, no_index: bool = False,
                 check: bool = True) -> WheelsReport:
    """Fill `folder` with the wheels an offline install of kaggle_kit[extra] needs on the image."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = target or Target()
    image = read_image() if image is None else image
    source = [a for f in find_links for a in ("--find-links", str(f))]
    if index_url:
        source += ["--index-url", index_url]
    if no_index:
        source.append("--no-index")
    reqs = list(requirements or [])
    own = own_req = None
    if include_self:
        own = build_own_wheel(folder)  # pure Python: built with this interpreter
        own_req = f"{own}[{extra}]" if extra else str(own)
        reqs.append(own_req)
    with tempfile.TemporaryDirectory() as tmp:
        items, provided, replaced = plan_downloads(reqs, image, target, source, Path(tmp))
    pins = [f"{it['metadata']['name']}=={it['metadata']['version']}" for it in items
            if own is None or canonicalize_name(it["metadata"]["name"]) != "kaggle-kit"]
    if pins:
        _pip(target, ["download", "--no-deps", "--quiet", "-d", str(folder), *target.pip_args(), *source, *pins],
             "downloading the wheels")
    report = WheelsReport(folder=str(folder), provided_by_image=dict(sorted(provided.items())), replaced=replaced)
    wheels = sorted(folder.glob("*.whl"))
    report.wheels = [w.name for w in wheels]
    report.total_bytes = sum(w.stat().st_size for w in wheels)
    if check:
        # offline, our own wheel is found by name in the folder like every other
        offline_reqs = [(f"kaggle_kit[{extra}]" if extra else "kaggle_kit") if r == own_req else r for r in reqs]
        check_offline(folder, offline_reqs, provided, target)
        report.resolves_offline = True
    (folder / "wheels-manifest.json").write_text(json.dumps(
        {**report.to_dict(), "target": {"python": target.python, "platforms": list(target.platforms)},
         "requirements": reqs}, indent=2) + "\n")
    return report

