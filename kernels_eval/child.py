"""What every process of an evaluation shares: how it reads its spec and answers the parent.

The parent sends one JSON line on stdin ({"spec", "fd", "nonce", ...}); the child answers with JSON lines
on the inherited pipe `fd`, each stamped with the nonce, so that a candidate that prints, or exits
early, cannot pass for an answer. Stdlib only until the child imports torch itself."""
from __future__ import annotations

import json
import os
import sys


class Channel:
    def __init__(self):
        self.message = json.loads(sys.stdin.readline())
        sys.stdin.close()
        self.nonce = self.message["nonce"]
        self._out = os.fdopen(self.message["fd"], "w", buffering=1)

    def send(self, obj: dict) -> None:
        self._out.write(json.dumps({**obj, "nonce": self.nonce}) + "\n")
        self._out.flush()

    def finish(self, result: dict) -> None:
        self.send({"result": result})
        self._out.close()
        os._exit(0)  # skip interpreter teardown: atexit hooks or threads (a candidate's) must not change it


def load_module(name: str, source: str, path: str):
    import importlib.util

    with open(path, "w") as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def problem_module(source: str, device: str, folder: str):
    """The problem (Model, get_inputs, get_init_inputs) at the device's sizes (cpu_sizes on the CPU)."""
    mod = load_module("kk_reference", source, os.path.join(folder, "reference.py"))
    if device == "cpu":
        for k, v in (getattr(mod, "cpu_sizes", None) or {}).items():
            setattr(mod, k, v)
    return mod


def make_inputs(mod, seed: int, device: str):
    """The same seed gives the same inputs. Made on the device itself (torch.rand of KernelBench's multi-GB
    inputs takes seconds on a host, microseconds on a GPU); a get_inputs() that cannot run there makes
    them on the host."""
    import torch

    from kernels_eval.compare import move
    from kernels_eval.errors import OOM

    torch.manual_seed(seed)
    if device == "cuda":
        try:
            with torch.device("cuda"):
                return move(mod.get_inputs(), device)
        except Exception as e:  # noqa: BLE001 - out of memory is the harness's; anything else: try the host
            if OOM.search(str(e)):
                raise
            torch.manual_seed(seed)
    return move(mod.get_inputs(), device)


def take_lock(fd: int | None) -> float:
    """Block on the device lock (an flock on a file the parent opened); seconds waited."""
    if fd is None:
        return 0.0
    import fcntl
    import time

    t0 = time.perf_counter()
    fcntl.flock(fd, fcntl.LOCK_EX)
    return time.perf_counter() - t0


def host_peak() -> int:
    """This process's peak resident memory so far, in bytes (ru_maxrss is KiB on Linux)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def trial_seed(seed: int, trial: int) -> int:
    return seed + 1000 + trial


TIMING_SEED_OFFSET = 99  # the inputs timed: seed + 99, for both sides
