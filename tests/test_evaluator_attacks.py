"""Candidates written to attack the evaluator or game its verdict (issue #31), each with the verdict it must get.

The reference runs in a process of its own and the verdict is the judge's, so nothing a candidate does to
torch reaches them; the candidate's process is walled in (kernels_eval.sandbox). The Python-only
candidates here build nothing; the one C++ candidate builds once per kernel cache.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from kernels_eval import sandbox
from kernels_eval.evaluate import evaluate
from kernels_eval.problems import load_problem, load_problems, reference_solution
from kernels_eval.result import Status

RELU = load_problems(names=["relu"])[0]
FAST = dict(device="cpu", trials=2, iters=3, rounds=2, warmup=1)
WALLS = sandbox.describe()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("attack-cache")


def candidate(forward: str, header: str = "", init: str = "") -> str:
    return (f"import torch\nimport torch.nn as nn\n{textwrap.dedent(header)}\n\nclass ModelNew(nn.Module):\n"
            f"    def __init__(self):\n        super().__init__()\n{textwrap.indent(textwrap.dedent(init), ' ' * 8)}\n"
            f"    def forward(self, x):\n{textwrap.indent(textwrap.dedent(forward), ' ' * 8)}\n")


def ev(source, problem=RELU, cache_dir=None, **kw):
    return evaluate(problem, source, cache_dir=cache_dir, **{**FAST, **kw})


# -- the reference out of reach --------------------------------------------------------------------------

ZEROS = "return torch.zeros_like(x)"


@pytest.mark.parametrize("header", [
    "torch.relu = lambda x: torch.zeros_like(x)",  # a Python attribute
    "torch.Tensor.relu = lambda self: torch.zeros_like(self)",
    # the dispatcher: aten::relu for the CPU key, no Python attribute changed
    """
    _lib = torch.library.Library("aten", "IMPL")
    _lib.impl("relu", lambda x: torch.zeros_like(x), "CPU")
    """,
    "torch.manual_seed = lambda *a, **k: None",  # RNG: the inputs the reference sees are not its to choose
])
def test_a_candidate_that_changes_torch_cannot_change_the_reference(header, cache):
    r = ev(candidate(ZEROS, header), cache_dir=cache)
    assert r.status is Status.INCORRECT and not r.correct, (r.status, r.message)
    assert "max abs diff" in r.message


def test_a_candidate_that_slows_the_reference_does_not_inflate_its_speedup(cache):
    honest = ev(candidate("return torch.relu(x)"), cache_dir=cache)
    slowed = ev(candidate("return torch.relu(x).clone()", """
        import time as _t
        _relu = torch.relu
        def _slow(x):
            _t.sleep(0.05)
            return _relu(x)
        torch.relu = _slow
        _lib = torch.library.Library("aten", "IMPL")
        _lib.impl("relu", lambda x: (_t.sleep(0.05), x.clamp_min(0))[1], "CPU")
        """), cache_dir=cache)
    assert honest.correct and slowed.correct
    # 50 ms per call would make the reference ~1000x slower; timed where the candidate never ran, it is not
    assert slowed.ref_runtime_ms < 5 * honest.ref_runtime_ms + 1, (slowed.ref_runtime_ms, honest.ref_runtime_ms)


@pytest.mark.parametrize("forward", [
    "return torch.empty_like(x)",  # KernelBench's result-cache reuse: nothing computed
    "x.zero_()\nreturn torch.zeros_like(x)",  # KernelBench's input modification: zero the inputs, return zeros
])
def test_kernelbench_adversarial_candidates_are_incorrect(forward, cache):
    r = ev(candidate(forward), cache_dir=cache)
    assert r.status is Status.INCORRECT, r.message


# -- the sandbox -----------------------------------------------------------------------------------------

EVALUATING_PROCESS = """
import json, os, sys
from kernels_eval.evaluate import evaluate
from kernels_eval.problems import load_problems
source = sys.stdin.read().replace("EVALUATOR_PID", str(os.getpid()))
r = evaluate(load_problems(names=["relu"])[0], source, "cpu", trials=1, iters=2, rounds=1, warmup=1,
             cache_dir=sys.argv[1])
print("RESULT " + json.dumps({"status": r.status.value, "message": r.message[-1500:], "sandbox": r.provenance.get("sandbox")}))

"""


def _system_python() -> str | None:
    """The system's Python, when it is this one's version: as root, an evaluator running on it can give
    candidates their own uid (this venv's Python lives under root's closed home, so it cannot)."""
    py = "/usr/bin/python3"
    if not (sandbox.is_root() and os.path.exists(py)):
        return None
    done = subprocess.run([py, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True)
    return py if done.stdout.strip() == str(sys.version_info[:2]) else None


SYSTEM_PYTHON = _system_python()
# Where the notebook's process runs: this venv's Python (Landlock, seccomp), and as on Kaggle (root, a
# Python other users can read): the candidate also gets its own uid.
STAND_INS = ["venv", pytest.param("own_uid", marks=pytest.mark.skipif(
    SYSTEM_PYTHON is None, reason="needs root and a system Python of this version readable by other users"))]


def evaluated_in_a_stand_in(source: str, cache, env=None, stand_in: str = "venv") -> dict:
    """Evaluate `source` from a process of its own standing for the notebook kernel: it must survive."""
    import sysconfig

    python, extra = sys.executable, {}
    if stand_in == "own_uid":
        root = os.path.dirname(os.path.dirname(os.path.abspath(sandbox.__file__)))
        python, extra = SYSTEM_PYTHON, {"PYTHONPATH": os.pathsep.join([root, sysconfig.get_paths()["purelib"]])}
    done = subprocess.run([python, "-c", EVALUATING_PROCESS, str(cache)], input=source, capture_output=True,
                          text=True, timeout=300, env={**os.environ, **extra, **(env or {})})
    assert done.returncode == 0, f"the evaluating process died ({done.returncode}): {done.stderr[-1500:]}"
    line = next(l for l in done.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


REPORT = "raise RuntimeError('GOT ' + repr(got))"
# The processes a candidate might attack: the evaluating one (its pid put in the source by the stand-in) and
# the candidate's parent, the zygote that forked it (kernels_eval.zygote), which would fork the next ones.
TARGETS = "(EVALUATOR_PID, os.getppid())"


@pytest.mark.skipif(not (WALLS["root"] or WALLS["landlock_abi"] >= 6), reason="signals are walled off only by an own uid or Landlock v6")
@pytest.mark.parametrize("stand_in", STAND_INS)
def test_a_candidate_cannot_kill_the_evaluating_process_nor_signal_another(cache, stand_in):
    victim = subprocess.Popen(["sleep", "120"])
    try:
        out = evaluated_in_a_stand_in(candidate("return x", f"""
            import os, signal
            got = []
            for pid in (*{TARGETS}, {victim.pid}):
                try:
                    os.kill(pid, signal.SIGKILL)
                    got.append("killed")
                except OSError as e:
                    got.append(type(e).__name__)
            {REPORT}
            """), cache, stand_in=stand_in)
        assert out["status"] == "runtime_error" and "GOT ['PermissionError', 'PermissionError', 'PermissionError']" in out["message"], out
        assert stand_in != "own_uid" or out["sandbox"]["applied"][0].startswith("own uid"), out["sandbox"]
        assert victim.poll() is None  # still running
    finally:
        victim.kill()


@pytest.mark.parametrize("stand_in", STAND_INS)
def test_a_candidate_cannot_read_the_evaluator_s_environment_or_memory(cache, stand_in):
    secret = "kk_secret_value_31"
    out = evaluated_in_a_stand_in(candidate("return x", f"""
        import os
        got = []
        for pid in {TARGETS}:
            for what in ("environ", "mem", "cwd/records.jsonl"):
                try:
                    with open(f"/proc/{{pid}}/{{what}}", "rb") as f:
                        got.append(b"{secret}" in f.read(1 << 20))
                except OSError as e:
                    got.append(type(e).__name__)
        {REPORT}
        """), cache, env={"MY_SERVICE_TOKEN": secret}, stand_in=stand_in)
    assert out["status"] == "runtime_error" and secret not in out["message"], out
    got = out["message"].split("GOT ")[1].splitlines()[0]
    assert "True" not in got and "False" not in got, got  # every read refused, none made


def test_a_candidate_cannot_read_the_user_s_credentials(tmp_path, monkeypatch, cache):
    home = tmp_path / "home"
    (home / ".kaggle").mkdir(parents=True)
    (home / ".kaggle" / "kaggle.json").write_text('{"username": "me", "key": "kag_file_secret"}')
    monkeypatch.setenv("HOME", str(home))
    r = ev(candidate("return x", f"""
        got = []
        try:
            got.append(open({str(home / ".kaggle" / "kaggle.json")!r}).read())
        except OSError as e:
            got.append(type(e).__name__)
        {REPORT}
        """), cache_dir=cache)
    assert r.status is Status.RUNTIME_ERROR and "GOT ['PermissionError']" in r.message, (r.message, r.provenance)


@pytest.mark.parametrize("stand_in", STAND_INS)
def test_a_candidate_cannot_write_outside_its_scratch_and_build_folders(tmp_path, cache, stand_in):
    run_folder = tmp_path / "run"
    run_folder.mkdir()
    (run_folder / "records.jsonl").write_text("kept\n")
    targets = [run_folder / "records.jsonl", run_folder / "new.txt", "/tmp/kk_candidate_was_here",
               "/proc/{ppid}/cwd/kk_candidate_was_here", "/proc/EVALUATOR_PID/cwd/kk_candidate_was_here"]
    out = evaluated_in_a_stand_in(candidate("return x", f"""
        import os
        got = []
        for t in {[str(t) for t in targets]!r}:
            try:
                with open(t.format(ppid=os.getppid()), "w") as f:
                    f.write("overwritten")
                got.append("written")
            except OSError as e:
                got.append(type(e).__name__)
        {REPORT}
        """), cache, stand_in=stand_in)
    assert out["status"] == "runtime_error" and "written" not in out["message"].split("GOT ")[1].splitlines()[0], out
    assert (run_folder / "records.jsonl").read_text() == "kept\n" and not (run_folder / "new.txt").exists()
    assert not os.path.exists("/tmp/kk_candidate_was_here")


def test_a_candidate_has_no_network_not_even_loopback(cache):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    accepted = []

    def accept():
        deadline = time.time() + 60
        while time.time() < deadline and not accepted:
            try:
                accepted.append(server.accept())
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        r = ev(candidate("return x", f"""
            import socket
            got = []
            for family, addr in ((socket.AF_INET, ("127.0.0.1", {port})), (socket.AF_UNIX, "/tmp/.X11-unix/X0")):
                try:
                    socket.socket(family).connect(addr)
                    got.append("connected")
                except OSError as e:
                    got.append(type(e).__name__)
            {REPORT}
            """), cache_dir=cache)
    finally:
        accepted.append(None)
        t.join(5)
        server.close()
    assert r.status is Status.RUNTIME_ERROR and "GOT ['PermissionError', 'PermissionError']" in r.message, r.message
    assert accepted == [None]  # nothing connected


def test_a_forked_candidate_holds_nothing_of_the_zygote_and_a_killed_zygote_is_replaced(cache, monkeypatch):
    from kernels_eval import zygote

    fds = candidate("return x", f"""
        import os
        got = []
        for n in os.listdir("/proc/self/fd"):
            try:
                got.append(os.readlink(f"/proc/self/fd/{{n}}"))
            except OSError:
                pass  # the listing's own fd, closed by now
        {REPORT}
        """)
    r = ev(fds, cache_dir=cache)
    assert r.provenance["sandbox"]["started"] == "forked from the zygote", r.provenance
    got = eval(r.message.split("GOT ")[1].splitlines()[0])
    # stdin, the log twice, the answer pipe: no socket (the zygote's), no other file
    assert len(got) <= 4 and not [f for f in got if f.startswith("socket:")], got
    zygote._client.proc.kill()  # as a crash would: the next evaluation starts another
    zygote._client.proc.wait()
    again = ev(candidate("return torch.relu(x)"), cache_dir=cache)
    assert again.correct and again.provenance["sandbox"]["started"] == "forked from the zygote", again.message
    monkeypatch.setenv("KK_ZYGOTE", "0")
    fresh = ev(candidate("return torch.relu(x)"), cache_dir=cache)
    assert fresh.correct and fresh.provenance["sandbox"]["started"] == "a fresh interpreter"


def test_the_result_names_the_walls_that_stood(cache):
    r = ev(candidate("return torch.relu(x)"), cache_dir=cache)
    walls = r.provenance["sandbox"]
    assert any("no sockets" in w for w in walls["applied"])
    if WALLS["landlock_abi"]:
        assert any("landlock" in w and "writes only" in w for w in walls["applied"])
    assert ("own uid" in " ".join(walls["applied"])) or any("own uid" in m for m in walls["missing"])
    off = ev(candidate("return torch.relu(x)"), cache_dir=cache, sandbox=False)
    assert off.correct and off.provenance["sandbox"]["applied"] == [] and "turned off" in off.provenance["sandbox"]["missing"][0]


UID_LAYER = """
import json, os, signal, sys
sys.path.insert(0, sys.argv[1])
from kernels_eval import sandbox
report = sandbox.apply({"enabled": True, "uid": 61999, "write": [], "hidden": []})
got = {}
try:
    os.kill(os.getppid(), 0)
    got["signal"] = "sent"
except OSError as e:
    got["signal"] = type(e).__name__
try:
    open(f"/proc/{os.getppid()}/environ", "rb").read()
    got["environ"] = "read"
except OSError as e:
    got["environ"] = type(e).__name__
got["uid"] = os.getuid()
print(json.dumps({"report": report, "got": got}))
"""


@pytest.mark.skipif(not sandbox.is_root() or not os.path.exists("/usr/bin/python3"), reason="the uid layer needs root")
def test_the_own_uid_layer_alone_keeps_other_processes_out():
    # The layer Kaggle's notebook (root) gets first, tried on its own with the system's Python (this
    # machine's venv Python lives under root's closed home, so full evaluations here go without it).
    root = os.path.dirname(os.path.dirname(os.path.abspath(sandbox.__file__)))
    done = subprocess.run(["/usr/bin/python3", "-c", UID_LAYER, root], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-1500:]
    out = json.loads(done.stdout)
    assert out["got"] == {"signal": "PermissionError", "environ": "PermissionError", "uid": 61999}, out
    assert out["report"]["applied"][0].startswith("own uid 61999")


# -- right verdicts on what models write -----------------------------------------------------------------

LINEAR = '''import torch
import torch.nn as nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 8)

    def forward(self, x):
        return self.fc(x) * 2.0


def get_inputs():
    return [torch.rand(4, 16)]


def get_init_inputs():
    return []
'''


def linear_candidate(init_extra: str = "", forward: str = "return self.fc(x) * 2.0", layer: str = "self.fc = nn.Linear(16, 8)"):
    return ("import torch\nimport torch.nn as nn\n\n\nclass ModelNew(nn.Module):\n    def __init__(self):\n"
            f"        super().__init__()\n        {layer}\n{textwrap.indent(textwrap.dedent(init_extra), ' ' * 8)}\n"
            f"    def forward(self, x):\n        {forward}\n")


@pytest.mark.parametrize("source, status, weights", [
    # the output scale folded into the weights in __init__: right, judged with its own same-seed weights
    (linear_candidate("with torch.no_grad():\n    self.fc.weight.mul_(2.0)\n    self.fc.bias.mul_(2.0)", "return self.fc(x)"),
     Status.CORRECT, "same_seed"),
    # initialised its own way, same names: the reference's weights copied in
    (linear_candidate("nn.init.zeros_(self.fc.weight)"), Status.CORRECT, "copied"),
    # wrong either way
    (linear_candidate(forward="return self.fc(x) * 3.0"), Status.INCORRECT, "copied"),
])
def test_weights_folded_in_init_pass_and_the_result_says_whose_weights(tmp_path, cache, source, status, weights):
    path = tmp_path / "linear_x2.py"
    path.write_text(LINEAR)
    r = ev(source, problem=load_problem(path), cache_dir=cache)
    assert r.status is status, r.message
    assert r.provenance["weights"] == weights


def test_an_output_that_is_not_a_plain_tensor_is_incorrect(cache):
    lazy = candidate("return torch.relu(x).as_subclass(Lazy)", """
        class Lazy(torch.Tensor):
            pass
        """)
    r = ev(lazy, cache_dir=cache)
    assert r.status is Status.INCORRECT and "not a plain torch.Tensor" in r.message, r.message


CONSTANT = '''import torch
import torch.nn as nn


class Model(nn.Module):
    def forward(self, x):
        return (x > 10.0).float()  # inputs in [0, 1): always zeros


def get_inputs():
    return [torch.rand(64)]


def get_init_inputs():
    return []
'''


def test_a_problem_whose_output_ignores_its_inputs_is_marked_degenerate(tmp_path, cache):
    path = tmp_path / "constant.py"
    path.write_text(CONSTANT)
    lazy = ev(candidate("return torch.zeros_like(x)"), problem=load_problem(path), cache_dir=cache)
    assert lazy.correct and lazy.provenance["reference"]["degenerate"] is True
    assert ev(candidate("return torch.relu(x)"), cache_dir=cache).provenance["reference"]["degenerate"] is False


def test_an_extension_built_in_init_is_a_custom_kernel(cache):
    src = reference_solution(RELU, "cpu")
    moved = (src.replace("ext = load_inline(", "def _build():\n    return load_inline(")
             .replace("super().__init__()", "super().__init__()\n        self.ext = _build()")
             .replace("return ext.relu_forward", "return self.ext.relu_forward"))
    assert "self.ext = _build()" in moved and "return self.ext.relu_forward" in moved
    r = ev(moved, cache_dir=cache)
    assert r.status is Status.CORRECT and "no_custom_kernel" not in r.flags, (r.flags, r.message[-1500:])
    assert r.provenance["extension_built_in"] == ["__init__"]


def test_kernelbench_rules_count_apart_from_ours(cache):
    r = ev(candidate("try:\n    return torch.relu(x)\nexcept Exception:\n    return x"), cache_dir=cache)
    assert r.correct and {"kb:try_fallback", "kb:torch_ops_in_modelnew", "kb:no_kernel_source"} <= set(r.flags)
    assert not r.counts_as_correct_under("kernelbench") and not r.counts_as_correct_under("ours")
