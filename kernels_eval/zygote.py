"""A warm start for an evaluation's processes. Trusted: it imports torch and forks; it never runs candidate code.

Every candidate and reference process used to be a new interpreter that imported torch first: ~2 s of CPU
each here, most of an evaluation whose build is cached (benchmarks/eval_overhead.py measures it). The
zygote is one process per evaluating process that has imported torch (and nothing of a candidate) and
forks a child for each process asked for. The child becomes what `python -m <module>` would have been: a
session of its own, the parent's pipes on the fd numbers the parent chose and no other fd (not the
zygote's socket), the environment, folder and limits the parent gave, then the module run as __main__. A
candidate's process walls itself in first thing, as before (kernels_eval.sandbox): a fork has the same
walls as a fresh interpreter. The zygote starts with the credential-free environment every candidate
gets, so its memory, which children inherit, holds no secret either.

The parent learns each child's exit status from the zygote (it is the zygote's child, not the parent's)
through a pipe per child. If the zygote cannot start or dies, `spawn` returns None and the caller starts
a fresh interpreter; `KK_ZYGOTE=0` always does.
"""
from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading

_MAX_FDS = 8


class Forked:
    """A process forked by the zygote, with what the evaluator uses of a subprocess.Popen."""

    def __init__(self, pid: int, stdin_w: int, status_r: int):
        self.pid, self.returncode = pid, None
        self.stdin = os.fdopen(stdin_w, "wb")
        self._status = os.fdopen(status_r, "rb", buffering=0)

    def wait(self, timeout: float | None = None) -> int | None:
        if self.returncode is not None or self._status.closed:
            return self.returncode
        ready, _, _ = select.select([self._status], [], [], timeout)
        if not ready:
            raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout)
        data = self._status.read(64)
        self._status.close()
        # No status: the zygote died before it reaped the child (which then went to init): as if killed.
        self.returncode = int(data) if data.strip() else -signal.SIGKILL
        return self.returncode

    def __del__(self):
        for f in (self.stdin, self._status):
            try:
                f.close()
            except (OSError, ValueError):
                pass


class _Client:
    def __init__(self, env: dict[str, str]):
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "kernels_eval.zygote", str(child.fileno())],
                                         pass_fds=(child.fileno(),), env=env, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        finally:
            child.close()
        self.sock, self.lock = parent, threading.Lock()
        parent.settimeout(120)
        if parent.recv(64) != b"ready":  # torch imported
            raise OSError("the zygote did not start")

    def spawn(self, module: str, env: dict, cwd: str, log_fd: int, pass_fds: tuple[int, ...],
              memory_limit_bytes: int | None) -> Forked:
        in_r, in_w = os.pipe()
        st_r, st_w = os.pipe()
        try:
            fds = [in_r, log_fd, log_fd, *pass_fds, st_w]
            req = {"module": module, "env": env, "cwd": str(cwd), "targets": [0, 1, 2, *pass_fds],
                   "memory_limit": memory_limit_bytes}
            with self.lock:
                socket.send_fds(self.sock, [json.dumps(req).encode()], fds)
                reply = self.sock.recv(256)
            if not reply:
                raise OSError("the zygote closed its socket")
            pid = json.loads(reply)["pid"]
        except BaseException:
            os.close(in_w)
            os.close(st_r)
            raise
        finally:
            os.close(in_r)
            os.close(st_w)
        return Forked(pid, in_w, st_r)

    def close(self) -> None:
        self.sock.close()  # the zygote exits at EOF


_client: _Client | None = None
_client_lock = threading.Lock()


def enabled() -> bool:
    return os.environ.get("KK_ZYGOTE", "1") != "0" and sys.platform == "linux"


def spawn(module: str, env: dict, cwd, log_fd: int, pass_fds: tuple[int, ...] = (),
          memory_limit_bytes: int | None = None, zygote_env: dict | None = None) -> Forked | None:
    """`python -m module` forked from the warm zygote, or None (off, or the zygote failed: start it fresh)."""
    global _client
    if not enabled():
        return None
    with _client_lock:
        try:
            if _client is None or _client.proc.poll() is not None:
                _client = _Client(zygote_env if zygote_env is not None else env)
            client = _client
        except (OSError, ValueError):
            _client = None
            return None
    try:
        return client.spawn(module, env, cwd, log_fd, pass_fds, memory_limit_bytes)
    except (OSError, ValueError, KeyError):
        with _client_lock:
            if _client is client:
                _client = None
        return None


# -- the zygote's side --------------------------------------------------------------------------------

def _become(req: dict, fds: list[int]) -> None:
    """In the forked child: become `python -m module` with the parent's fds, environment, folder and limits."""
    try:
        os.setsid()
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        targets = req["targets"]
        top = max([*targets, *fds]) + 1
        moved = [_dup_above(f, top) for f in fds[:-1]]  # the status pipe is the zygote's
        os.closerange(0, top)
        keep = set(moved)
        for name in os.listdir("/proc/self/fd"):  # nothing else of the zygote's (its socket above all)
            if int(name) not in keep:
                try:
                    os.close(int(name))
                except OSError:
                    pass
        for src, dst in zip(moved, targets):
            os.dup2(src, dst)  # inheritable, as pass_fds makes them
        for src in moved:
            if src not in targets:
                os.close(src)
        os.environ.clear()
        os.environ.update(req["env"])
        os.chdir(req["cwd"])
        import resource
        import tempfile

        if req.get("memory_limit"):
            resource.setrlimit(resource.RLIMIT_AS, (req["memory_limit"], req["memory_limit"]))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        tempfile.tempdir = None  # read again from TMPDIR (the zygote's import cached the zygote's)
        sys.dont_write_bytecode = os.environ.get("PYTHONDONTWRITEBYTECODE", "") != ""
        sys.stdin = open(0, "r", closefd=False)
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        sys.argv = [req["module"]]
        import runpy

        runpy.run_module(req["module"], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - as an interpreter would: the traceback on stderr, exit 1
        import traceback

        traceback.print_exc()
        code = 1
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def _dup_above(fd: int, low: int) -> int:
    import fcntl

    return fcntl.fcntl(fd, fcntl.F_DUPFD, low)


def _status(wait_status: int) -> int:
    return -os.WTERMSIG(wait_status) if os.WIFSIGNALED(wait_status) else os.WEXITSTATUS(wait_status)


def main() -> None:
    sock = socket.socket(fileno=int(sys.argv[1]))
    import torch  # noqa: F401 - the point of this process: every child starts with it imported

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)  # a child's exit wakes the select below
    children: dict[int, int] = {}
    sock.send(b"ready")
    while True:
        ready, _, _ = select.select([sock, wake_r], [], [])
        if wake_r in ready:
            os.read(wake_r, 4096)
        while children:
            try:
                pid, st = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            fd = children.pop(pid, None)
            if fd is not None:
                os.write(fd, str(_status(st)).encode())
                os.close(fd)
        if sock not in ready:
            continue
        try:
            data, fds, _, _ = socket.recv_fds(sock, 1 << 22, _MAX_FDS)
        except OSError:
            break
        if not data:
            break  # the parent went away
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _become(json.loads(data), fds)
        for f in fds[:-1]:
            os.close(f)
        children[pid] = fds[-1]
        sock.send(json.dumps({"pid": pid}).encode())
    for fd in children.values():
        os.close(fd)  # the parent reads "killed"; its children are reparented to init


if __name__ == "__main__":
    main()
