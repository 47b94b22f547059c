"""kernels_eval on CPU: the isolated evaluator with C++ candidates and hostile ones."""
import math
import os
import time
from pathlib import Path

import pytest

from kernels_eval.evaluate import clean_env, evaluate
from kernels_eval.metrics import fast_p, geomean_speedup, pass_at_k, pass_at_k_by_problem, summary
from kernels_eval.parsing import parse_response
from kernels_eval.problems import BUNDLED, load_problem, load_problems, reference_solution
from kernels_eval.prompts import build_messages
from kernels_eval.result import KernelEvalResult, Status

RELU = load_problems(names=["relu"])[0]
FAST = dict(device="cpu", trials=2, iters=3, rounds=2, warmup=1)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    # KK_KERNEL_CACHE lets a GPU run share builds with benchmarks/gpu_eval.py
    return os.environ.get("KK_KERNEL_CACHE") or tmp_path_factory.mktemp("kernel-cache")


def ev(source, problem=RELU, cache_dir=None, **kw):
    return evaluate(problem, source, cache_dir=cache_dir, **{**FAST, **kw})


def py_candidate(forward: str, header: str = "") -> str:
    return (f"import torch\nimport torch.nn as nn\n{header}\n\nclass ModelNew(nn.Module):\n"
            f"    def __init__(self):\n        super().__init__()\n\n    def forward(self, x):\n{forward}\n")


# -- problems, prompts, parsing ----------------------------------------------------

def test_bundled_problems_load_and_run_at_cpu_size():
    import importlib.util

    import torch

    problems = load_problems()
    assert len(problems) >= 12 and all(p.level == 1 for p in problems)
    for p in problems:
        spec = importlib.util.spec_from_file_location(f"prob_{p.name}", p.path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        for k, v in mod.cpu_sizes.items():
            setattr(mod, k, v)
        torch.manual_seed(0)
        out = mod.Model(*mod.get_init_inputs())(*mod.get_inputs())
        assert torch.isfinite(out).all(), p.name


def test_problem_loader_errors(tmp_path):
    (tmp_path / "bad.py").write_text("import torch\nclass Model: pass\n")
    with pytest.raises(ValueError, match="missing get_inputs, get_init_inputs"):
        load_problem(tmp_path / "bad.py")
    with pytest.raises(ValueError, match="unknown problem"):
        load_problems(names=["no_such_problem"])
    with pytest.raises(ValueError, match="does not exist"):
        load_problems(tmp_path / "nope")


def test_prompt_has_example_problem_and_instruction():
    msgs = build_messages(RELU, "cuda", thinking=False)
    assert msgs[0]["role"] == "system" and msgs[1]["role"] == "user"
    text = msgs[1]["content"]
    assert "cuda_sources" in text and RELU.source.strip() in text and "ModelNew" in text and "code only" in text
    assert "cpp_sources" in build_messages(RELU, "cpu", thinking=True)[1]["content"]
    assert "Reason about" in build_messages(RELU, "cpu", thinking=True)[1]["content"]


@pytest.mark.parametrize("text, status", [
    ("", "no_code"),
    ("I would use shared memory.", "no_code"),
    ("```python\nclass ModelNew(nn.Module:\n    pass\n```", "syntax_error"),
    ("```python\nclass Model(nn.Module):\n    pass\n```", "no_modelnew"),
    ("```python\nclass ModelNew: pass\n```\ntext\n```python\nclass ModelNew:\n    x = 2\n```", "ok"),
    ("<think>```python\nclass ModelNew: pass\n```</think>No code after thinking.", "no_code"),
])
def test_parse_response(text, status):
    parsed = parse_response(text)
    assert parsed.status == status
    if status == "ok":
        assert "x = 2" in parsed.code  # the last block defining ModelNew


# -- the evaluator on real C++ candidates ------------------------------------------

def test_reference_cpp_solution_passes_and_the_cache_skips_the_build(cache):
    src = reference_solution(RELU, "cpu")
    first = ev(src, cache_dir=cache)
    assert first.status is Status.CORRECT and first.compiled and first.correct, first.message
    assert "no_custom_kernel" not in first.flags  # the extension was found and called (timing flags depend on the machine)
    assert first.provenance["threads"] == 1
    assert first.speedup > 0 and first.runtime_ms > 0 and first.ref_runtime_ms > 0 and first.runtime_spread >= 1
    assert first.provenance["timing"] == "perf_counter_ns" and first.provenance["weights"] in ("copied", "same_seed")
    assert not first.cached_build
    # its build read the precompiled torch/extension.h of its -O level, made by the evaluator
    assert first.provenance["pch"] in ("O3 made", "O3 cached"), first.provenance.get("pch")
    again = ev(src, cache_dir=cache)
    assert again.correct and again.cached_build and again.source_hash == first.source_hash
    # The build is what the cache skips: the candidate's import (which builds) is much shorter. (A ratio
    # of whole evaluations is not asserted: the precompiled header shrank the first build to ~15 s, and a
    # fresh interpreter + torch import is a few seconds of both, more on a busy machine.)
    assert again.compile_s < first.compile_s / 3, (first.compile_s, again.compile_s)


def test_a_build_is_kept_per_torch_install_not_shared_between_venvs(tmp_path):
    # torch writes its include folders into a build's ninja file, so another venv's build of the same source
    # is rebuilt from scratch: it must have its own folder (and not be reported as cached). The same venv
    # reached by another path stands in for a second clone's venv.
    import subprocess
    import sys

    venv = Path(sys.prefix)
    (tmp_path / "other").symlink_to(venv, target_is_directory=True)
    code = "from kernels_eval.evaluate import source_hash; print(source_hash('src', 'cpu'))"
    keys = [subprocess.run([str(v / "bin" / "python"), "-c", code], capture_output=True, text=True, check=True,
                           cwd=Path(__file__).parents[1]).stdout.strip() for v in (venv, tmp_path / "other", venv)]
    assert keys[0] == keys[2] and keys[0] != keys[1] and len(keys[1]) == 20


def test_the_precompiled_header_variant_follows_the_optimisation_level_asked_for():
    from kernels_eval.pch import variant_for

    assert variant_for('load_inline(name="a", cpp_sources=s, extra_cflags=["-O3"])') == "O3"
    assert variant_for("load_inline(name='a', cpp_sources=s, extra_cflags=['-O2', '-Wall'])") == "O3"
    assert variant_for('load_inline(name="a", cpp_sources=s)') == "O0"
    assert variant_for('load_inline(name="a", cpp_sources=s, extra_cflags=["-Ofast"])') is None  # no variant matches


# These two use the machine's kernel cache (default_cache_dir), which the demo, the notebooks and
# later runs of the suite share: a build the project has made once is not made again.
@pytest.mark.parametrize("name", ["vector_add", "row_sum"])
def test_other_reference_cpp_solutions(name):
    problem = load_problems(names=[name])[0]
    r = ev(reference_solution(problem, "cpu"), problem=problem)
    assert r.status is Status.CORRECT and "no_custom_kernel" not in r.flags, r.message


def test_wrong_cpp_kernel_is_incorrect():
    wrong = reference_solution(RELU, "cpu").replace("in[i] > 0.f ? in[i] : 0.f", "in[i] > 0.f ? in[i] : 0.01f")
    r = ev(wrong.replace("kk_relu_cpp", "kk_relu_wrong"))
    assert r.status is Status.INCORRECT and r.compiled and not r.correct and "max abs diff" in r.message


def test_compile_error_is_reported(cache):
    # The tiny model's own mistake: an undeclared name, which GCC answers with pages of notes on every
    # torch symbol of that name, so the message is clipped (its head says it was the compiler's verdict).
    broken = reference_solution(RELU, "cpu").replace("torch::empty_like(x)", "torch::empty_like(input)")
    r = ev(broken.replace("kk_relu_cpp", "kk_relu_broken"), cache_dir=cache)
    assert r.status is Status.COMPILE_ERROR and not r.compiled and "error" in r.message.lower()
    assert not r.cached_build and "Error building extension" in r.message and len(r.message) > 2900
    # The compiler's verdict is kept: the same source again is judged without a rebuild (the tiny
    # model writes its planted compile errors over and over); a killed build would not be kept.
    again = ev(broken.replace("kk_relu_cpp", "kk_relu_broken"), cache_dir=cache)
    assert again.status is Status.COMPILE_ERROR and again.cached_build and "cached" in again.message


# -- hostile candidates --------------------------------------------------------------

HOSTILE = [
    ("        import ctypes\n        ctypes.string_at(0)\n        return x", "", Status.CRASHED, "SIGSEGV"),
    ("        import os\n        os._exit(0)", "", Status.CRASHED, "without reporting"),
    ("        import os\n        os.abort()", "", Status.CRASHED, "SIGABRT"),
    ("        raise RuntimeError('boom')", "", Status.RUNTIME_ERROR, "boom"),
    ("        hog = bytearray(8 << 30)\n        return x", "", Status.RUNTIME_ERROR, "MemoryError"),
    ("        return x * 1.0", "", Status.INCORRECT, "max abs diff"),
    ("        return torch.zeros_like(x)", "", Status.INCORRECT, ""),
    ("        return x.relu_()", "", Status.INCORRECT, "aliases an input"),
    ("        return torch.relu(x).double()", "", Status.INCORRECT, "dtype"),
    ("        return torch.relu(x)[:1]", "", Status.INCORRECT, "shape"),
]


@pytest.mark.parametrize("forward, header, status, text", HOSTILE)
def test_hostile_candidates_become_statuses(forward, header, status, text, cache):
    r = ev(py_candidate(forward, header), cache_dir=cache, memory_limit_gb=4)
    assert r.status is status, r.message
    assert text in r.message and not r.correct


def test_replayed_answer_fails_on_fresh_inputs(cache):
    src = py_candidate("        if not hasattr(self, 'memo'):\n            self.memo = torch.relu(x)\n        return self.memo.clone()")
    r = ev(src, cache_dir=cache)
    assert r.status is Status.INCORRECT and "trial 1" in r.message


def test_hangs_time_out(cache):
    t = time.perf_counter()
    r = ev(py_candidate("        while True:\n            pass"), cache_dir=cache, run_timeout=3)
    assert r.status is Status.TIMEOUT and "run timed out" in r.message and time.perf_counter() - t < 60
    r = ev(py_candidate("        return x", header="while True:\n    pass"), cache_dir=cache, compile_timeout=3)
    assert r.status is Status.TIMEOUT and "compile timed out" in r.message


def test_cheats_are_flagged_and_not_counted(cache):
    pure = ev(py_candidate("        return torch.relu(x)"), cache_dir=cache)
    assert pure.correct and "no_custom_kernel" in pure.flags and not pure.counts_as_correct
    sub = ("import torch\nimport torch.nn as nn\nimport sys\nRef = sys.modules['kk_reference'].Model\n"
           "class ModelNew(Ref):\n    pass\n")
    assert "no_custom_kernel" in ev(sub, cache_dir=cache).flags
    tamper = py_candidate("        return torch.relu(x)", header="import time\ntime.perf_counter_ns = lambda: 0")
    r = ev(tamper, cache_dir=cache)
    assert "timer_tampering" in r.flags and r.runtime_ms > 0  # timed with the clock captured before import
    threads = py_candidate("        return torch.relu(x)", header="import threading, time\nthreading.Thread(target=time.sleep, args=(30,), daemon=True).start()")
    assert "extra_threads" in ev(threads, cache_dir=cache).flags
    implausible = ev(py_candidate("        return torch.relu(x)"), cache_dir=cache, implausible_speedup=0.001)
    assert "implausible_speedup" in implausible.flags


def test_candidate_sees_no_secrets(monkeypatch, cache):
    monkeypatch.setenv("GROQ_API_KEY", "gsk_secret")
    monkeypatch.setenv("KAGGLE_KEY", "kag_secret")
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok_secret")
    src = py_candidate("        import os\n        leaked = sorted(k for k, v in os.environ.items() if v in ('gsk_secret', 'kag_secret', 'tok_secret') or k in "
                       "('GROQ_API_KEY', 'KAGGLE_KEY', 'MY_SERVICE_TOKEN'))\n"
                       "        raise RuntimeError(f'LEAKED={leaked} HOME={os.environ.get(\"HOME\")}')")
    r = ev(src, cache_dir=cache)
    assert r.status is Status.RUNTIME_ERROR and "LEAKED=[] HOME=" in r.message, r.message
    assert "scratch" in r.message  # HOME is the candidate's scratch directory
    assert clean_env({"PATH": "/bin", "HF_TOKEN": "x", "OPENAI_API_KEY": "y"}) == {"PATH": "/bin"}


def test_speedup_over_torch_compile(cache):
    r = ev(py_candidate("        return torch.relu(x)"), cache_dir=cache, compare_compile=True, run_timeout=600)
    assert r.correct and r.compiled_ref_runtime_ms > 0 and r.speedup_vs_compile > 0


def test_missing_modelnew_is_rejected(cache):
    assert ev("import torch\nx = 1\n", cache_dir=cache).status is Status.REJECTED
    assert ev("   ", cache_dir=cache).status is Status.NO_CODE


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_reference_solutions(cache):
    for name in ("relu", "vector_add", "softmax"):
        problem = load_problems(names=[name])[0]
        r = evaluate(problem, reference_solution(problem, "cuda"), "cuda", cache_dir=cache)
        assert r.status is Status.CORRECT and not r.flags, r.message
        assert r.provenance["timing"] == "cuda_events+l2_flush"


# -- metrics --------------------------------------------------------------------------

def R(problem, status=Status.CORRECT, speedup=None, flags=()):
    return KernelEvalResult(problem, status, compiled=status is not Status.COMPILE_ERROR,
                            correct=status is Status.CORRECT, speedup=speedup, flags=list(flags))


def test_metrics():
    rs = [R("a", speedup=2.5), R("a", speedup=0.9), R("b", Status.INCORRECT), R("b", speedup=1.2, flags=["no_custom_kernel"]),
          R("c", Status.COMPILE_ERROR)]
    assert fast_p(rs, 0) == (2, 5) and fast_p(rs, 1.0) == (1, 5) and fast_p(rs, 0, count_flagged=True) == (3, 5)
    assert geomean_speedup(rs) == pytest.approx(math.sqrt(2.5 * 0.9))
    assert pass_at_k(5, 0, 1) == 0 and pass_at_k(5, 5, 2) == 1 and pass_at_k(4, 1, 2) == pytest.approx(0.5)
    assert pass_at_k_by_problem(rs, 1) == pytest.approx((1.0 + 0.0 + 0.0) / 3)
    s = summary(rs)
    assert s["fast_1"] == {"rate": 0.2, "num": 1, "den": 5}
    assert s["taxonomy"] == {"compile_error": 1, "correct": 3, "flag:no_custom_kernel": 1, "incorrect": 1}


# -- the evaluator's own failures (harness_error) ---------------------------------------

OOM_MSG = ("CUDA out of memory. Tried to allocate {tried}. GPU 0 has a total capacity of {total} of which "
           "1.20 GiB is free. Including non-PyTorch memory, this process has {in_use} memory in use.")


def test_candidate_oom_is_charged_by_whether_it_would_fit_a_free_gpu():
    from kernels_eval.errors import classify_candidate_oom

    # A T4 beside vLLM: 64 MiB more would fit on the free card -> the environment's fault.
    fits = OOM_MSG.format(tried="64.00 MiB", total="14.75 GiB", in_use="1.10 GiB")
    assert classify_candidate_oom(fits) == "harness"
    # A memory bomb: 16 GiB more after 64 GiB already held, on an 80 GB card -> the candidate's.
    bomb = OOM_MSG.format(tried="16.00 GiB", total="79.19 GiB", in_use="65.06 GiB")
    assert classify_candidate_oom(bomb) == "candidate"
    assert classify_candidate_oom("CUDA error: out of memory") == "candidate"  # a raw cudaMalloc: no sizes
    # A T4 rehearsed on an H200: 16 GiB would fit the real card, not the T4 the evaluator stands for.
    h200 = OOM_MSG.format(tried="16.00 GiB", total="139.80 GiB", in_use="0.50 GiB")
    assert classify_candidate_oom(h200) == "harness"
    assert classify_candidate_oom(h200, gpu_total_bytes=int(14.75 * 2**30)) == "candidate"
    assert classify_candidate_oom("RuntimeError: shape mismatch") is None


def test_harness_oom_is_a_harness_error_not_counted_and_retried(tmp_path, cache):
    """The reference itself runs out of GPU memory (simulated on CPU): no verdict on the kernel."""
    marker = tmp_path / "attempts"
    source = RELU.source.replace(
        "        return torch.relu(x)",
        f"        import pathlib\n        p = pathlib.Path({str(marker)!r})\n        p.write_text(p.read_text() + 'x' if p.exists() else 'x')\n"
        "        raise torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 64.00 MiB. GPU 0 has a total "
        "capacity of 14.75 GiB of which 20.00 MiB is free.')")
    problem = type(RELU)(RELU.name, RELU.level, RELU.path, source)
    r = ev(reference_solution(RELU, "cpu"), problem=problem, cache_dir=cache, harness_retries=1, retry_wait_s=0.1)
    assert r.status is Status.HARNESS_ERROR and not r.evaluated, r.message
    assert "the reference" in r.message and "out of memory" in r.message
    assert marker.read_text() == "xx" and r.provenance["harness_attempts"] == 2  # retried once
    s = summary([r, R("relu", speedup=1.5)])
    assert s["samples"] == 1 and s["not_evaluated"] == 1 and s["fast_1"]["den"] == 1
    assert s["taxonomy"]["harness_error"] == 1


def test_builds_run_before_the_device_lock_and_runs_wait_for_it(tmp_path, cache):
    """A candidate builds, then blocks on the device lock; its run timeout starts only once it holds it."""
    import fcntl
    import threading

    lock = tmp_path / "cpu.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    out = {}
    t = threading.Thread(target=lambda: out.update(r=ev(py_candidate("        return torch.relu(x)"), cache_dir=cache,
                                                        device_lock=lock, run_timeout=5)))
    t.start()
    time.sleep(8)  # longer than the run timeout: waiting for the lock must not count
    assert t.is_alive()
    os.close(fd)  # release
    t.join(60)
    r = out["r"]
    assert r.status is Status.CORRECT and "no_custom_kernel" in r.flags


# -- the harness's own memory vs the candidate's -----------------------------------------

COMPARE_UNDER_LIMIT = r'''
import re, resource, torch
from kernels_eval import compare
torch.set_num_threads(1)
r = torch.rand(1 << 26)  # two outputs of 256 MiB each
c = r.clone()
vm = int(re.search(r"VmSize:\s+(\d+)", open("/proc/self/status").read()).group(1)) << 10
limit = vm + (400 << 20)  # 400 MiB more than the two outputs: a whole-output float64 copy is 512 MiB
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
try:
    (c.double() - r.double()).abs()  # how the comparison used to start
    old = "fits"
except (RuntimeError, MemoryError):
    old = "out of memory"
tol = {"default": (1e-4, 1e-4)}
ok, _, diff = compare.compare([r], [c], tol)
c[12345] += 1.0
bad, why, bad_diff = compare.compare([r], [c], tol)
print(old, ok, diff, bad, round(bad_diff, 3))
'''


def test_outputs_are_compared_in_little_more_memory_than_they_take():
    # KernelBench level1/54 failed as the candidate's runtime_error because comparing two multi-GB
    # outputs in float64 at once asked for 9.76 GB. The same shape, small: under an address-space
    # limit 400 MiB above two 256 MiB outputs, the whole-output float64 diff cannot be made, and the
    # chunked comparison still judges a match and a one-element mismatch.
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", COMPARE_UNDER_LIMIT], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["out", "of", "memory", "True", "0.0", "False", "1.0"]


BIG_INPUTS = '''import torch
import torch.nn as nn


class Model(nn.Module):
    def forward(self, x):
        return x * 2


def get_inputs():
    return [torch.ones(NUMEL)]


def get_init_inputs():
    return []
'''
DOUBLE = '''import torch
import torch.nn as nn


class ModelNew(nn.Module):
    def forward(self, x):
        return x * 2
'''
HOG = DOUBLE.replace("        return x * 2", "        hog = torch.empty(1 << 33, dtype=torch.uint8)  # 8 GiB of its own\n"
                                              "        return x * 2 + hog[:1].float() * 0")


@pytest.mark.parametrize("numel, candidate, status, where", [
    (1 << 28, DOUBLE, Status.HARNESS_ERROR, "the reference"),  # 1 GiB of inputs: the harness's own need
    (1 << 28, HOG, Status.HARNESS_ERROR, "the reference"),  # the harness fails first: no verdict on it
    (1 << 20, HOG, Status.RUNTIME_ERROR, "can't allocate"),  # small inputs, the candidate's 8 GiB: its fault
    (1 << 20, DOUBLE, Status.CORRECT, ""),
])
def test_out_of_memory_is_charged_to_whoever_allocated(tmp_path, numel, candidate, status, where):
    path = tmp_path / "big_double.py"
    path.write_text(BIG_INPUTS.replace("NUMEL", str(numel)))
    r = evaluate(load_problem(path), candidate, "cpu", trials=1, timing=False, memory_limit_gb=2.5,
                 cache_dir=tmp_path / "cache")
    assert r.status is status, r.message[-800:]
    assert where in r.message
    assert r.evaluated == (status is not Status.HARNESS_ERROR)  # a harness error is retried, never a verdict


BIG_OUTPUT = '''import torch
import torch.nn as nn


class Model(nn.Module):
    def forward(self, x):
        return x.expand(NUMEL).contiguous()


def get_inputs():
    return [torch.ones(1)]


def get_init_inputs():
    return []
'''


def test_the_candidate_s_process_holds_only_its_own_outputs(tmp_path):
    # The reference's 1.2 GiB output fits the 2.5 GiB address-space limit, and so does the candidate's
    # identical one: the reference runs in a process of its own (it used to share the candidate's, where
    # the two outputs together did not fit), and the judge compares them from disk.
    path = tmp_path / "big_output.py"
    path.write_text(BIG_OUTPUT.replace("NUMEL", str(300 << 20)))
    same = path.read_text().replace("class Model(", "class ModelNew(").split("def get_inputs")[0]
    r = evaluate(load_problem(path), same, "cpu", trials=1, timing=False, memory_limit_gb=2.5,
                 cache_dir=tmp_path / "cache")
    assert r.status is Status.CORRECT, r.message[-800:]
