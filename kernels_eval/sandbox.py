"""The walls around candidate code: what the candidate's process may touch, and a record of which walls stood.

Two halves. The parent (trusted, `kernels_eval.evaluate`) prepares a `Sandbox`: a uid of the candidate's
own when the evaluator runs as root, its scratch and build folders owned by that uid, and the plan the
child applies. The child (`kernels_eval.candidate`) calls `apply(plan)` first thing, before it has read
the candidate's source (torch is imported already: kernels_eval.zygote), in this order:

1. uid: when root (Kaggle's notebook container, CI, most containers), drop to an unused uid held by this
   evaluation alone (no supplementary groups). Other processes (the notebook kernel, vLLM's engine and
   workers, the service, other candidates) then belong to another user: no signals, no ptrace, no
   /proc/<pid>/environ, mem or cwd; root-owned files are read-only to it and root's 0700 folders closed.
2. no_new_privs: nothing it executes gains privileges (and it lets 3 and 4 apply without root).
3. Landlock (Linux 5.13+): writes only beneath its scratch and build folders (and a few device files);
   reads everywhere except the trusted folders (the reference's outputs); never ptrace, /proc/<pid>/mem
   or environ of a process outside its domain; with ABI 6 (Linux 6.12+) no signals to, and no abstract
   unix sockets of, processes outside it.
4. seccomp (x86-64): socket() fails (no network, not even loopback or a unix socket), as do ptrace,
   process_vm_readv/writev, pidfd_getfd, io_uring (which can open sockets without socket()), new
   namespaces and the kernel keyring.
5. rlimits: no core files; with its own uid, a cap on its processes (a fork bomb stays its own).

Each layer that cannot apply on a machine (no root, an old kernel, a container's seccomp profile that
refuses Landlock) is reported, never skipped silently: `apply` returns what stood and what did not, and
the parent puts it in the result's provenance (`sandbox`) and `kaggle-kit doctor` prints `describe()`.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import os
import platform
import shutil
import socket
import struct
import tempfile
from pathlib import Path

# An evaluation's uid comes from this range; a lock file per uid keeps concurrent evaluations apart.
UID_BASE, UID_COUNT = 61000, 2000
NPROC_LIMIT = 512  # processes per sandbox uid: a compiler's jobs fit, a fork bomb does not spread
# Credentials a notebook's user keeps in their home: hidden from candidates (a candidate's error message can
# carry what it read into records and a published notebook's output). With its own uid all of root's home is.
SECRET_PATHS = (".kaggle", ".ssh", ".aws", ".config/gcloud", ".azure", ".netrc", ".git-credentials", ".docker",
                ".cache/huggingface/token", "gcloud_credential.json", ".groq", ".openai")
DEVICE_FILES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty")


def sandbox_root() -> Path:
    """Where candidate-writable folders live when the candidate gets its own uid: a place that uid can reach
    (root's home, which holds the trusted cache, is closed to other users)."""
    return Path(os.environ.get("KK_SANDBOX_DIR") or "/var/tmp/kaggle_kit-sandbox")


def secret_paths() -> list[Path]:
    home = Path(os.path.expanduser("~"))
    return [home / p for p in SECRET_PATHS if (home / p).exists()]


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


# -- the parent's half ------------------------------------------------------------------------------------

class Sandbox:
    """One evaluation's walls, prepared by the parent: `with Sandbox(...) as box:` gives box.scratch,
    box.build (the folders the candidate may write), box.plan (what the child applies); leaving kills
    whatever the candidate's uid left running and frees the uid."""

    def __init__(self, cache: Path, key: str, hidden: list[Path], enabled: bool = True, gpu: bool = False):
        self.cache, self.key, self.hidden, self.enabled = Path(cache), key, [Path(h) for h in hidden], enabled
        self.gpu = gpu  # CUDA's driver needs a unix socket (seen on H100/H200, driver 580): allow that kind only
        self.uid: int | None = None
        self._uid_fd: int | None = None

    def __enter__(self) -> "Sandbox":
        own_uid = self.enabled and is_root()
        refused = None
        if own_uid and (closed := _closed_to_others()):
            own_uid, refused = False, f"own uid: {closed} is not readable by another user"
        if own_uid:
            self.uid = self._take_uid()
            # Per cache: a fresh cache (a test's) must not find another cache's builds.
            base = sandbox_root() / hashlib.sha256(str(self.cache.resolve()).encode()).hexdigest()[:12]
            _mkdirs(base, 0o711)
        else:
            base = self.cache
        self.build = base / "build" / self.key
        self.build.mkdir(parents=True, exist_ok=True)
        (base / "scratch").mkdir(parents=True, exist_ok=True)
        self.scratch = Path(tempfile.mkdtemp(prefix=f"{self.key[:8]}-", dir=base / "scratch"))
        if own_uid:
            for top in (self.build, self.scratch):
                _chown_tree(top, self.uid)
        self.plan = {"enabled": self.enabled, "uid": self.uid, "write": [str(self.scratch), str(self.build)],
                     "hidden": [str(h) for h in self.hidden if h.exists()], "uid_refused": refused,
                     "gpu": self.gpu}
        return self

    def __exit__(self, *exc) -> None:
        if self.uid is not None:
            kill_uid(self.uid)
        shutil.rmtree(self.scratch, ignore_errors=True)
        if self._uid_fd is not None:
            os.close(self._uid_fd)  # frees the uid for the next evaluation

    def _take_uid(self) -> int:
        locks = sandbox_root() / "uids"
        _mkdirs(sandbox_root(), 0o711)
        locks.mkdir(mode=0o700, exist_ok=True)
        start = os.getpid() % UID_COUNT
        for i in range(UID_COUNT):
            uid = UID_BASE + (start + i) % UID_COUNT
            fd = os.open(locks / str(uid), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            kill_uid(uid)  # whatever a crashed earlier holder left behind
            self._uid_fd = fd
            return uid
        raise RuntimeError(f"no free sandbox uid in {UID_BASE}..{UID_BASE + UID_COUNT}")


def _closed_to_others() -> str | None:
    """The first of the evaluator's own files (its Python, torch, this package) another user cannot read."""
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    import importlib.util

    found = importlib.util.find_spec("torch")  # located, not imported
    torch_dir = os.path.dirname(found.origin) if found and found.origin else None
    for path in filter(None, (os.path.realpath(sys.executable), here, torch_dir)):
        p = path
        while True:
            mode = os.stat(p).st_mode
            if not mode & 0o001 or (p == path and not mode & 0o004):
                return p
            parent = os.path.dirname(p)
            if parent == p:
                break
            p = parent
    return None


def _mkdirs(path: Path, mode: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)


def _chown_tree(top: Path, uid: int) -> None:
    os.chown(top, uid, uid)
    os.chmod(top, 0o700)
    for root, dirs, files in os.walk(top):
        for name in dirs + files:
            os.lchown(os.path.join(root, name), uid, uid)


def kill_uid(uid: int) -> None:
    """SIGKILL every process of `uid` (kill(-1) as that uid reaches exactly its own, not the caller): a
    candidate that escaped its process group (setsid, a double fork) is gone with the evaluation. Started
    as that uid by subprocess's own C code: no fork of this (threaded) process in Python."""
    import subprocess

    try:
        subprocess.run(["/bin/sh", "-c", "kill -9 -1 2>/dev/null; true"], user=uid, group=uid, extra_groups=[],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10)
    except (OSError, subprocess.SubprocessError):
        pass


# -- the child's half: applied before any candidate code exists -------------------------------------------

_libc = None


def _syscall(*args) -> int:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc.syscall(*args)


def _prctl(option: int, arg2: int = 0, arg3=0, arg4: int = 0, arg5: int = 0) -> int:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    arg3 = ctypes.c_ulong(arg3) if isinstance(arg3, int) else arg3  # a variadic int would leave high bits unset
    return _libc.prctl(option, ctypes.c_ulong(arg2), arg3, ctypes.c_ulong(arg4), ctypes.c_ulong(arg5))


PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
X86_64 = platform.machine() in ("x86_64", "AMD64")

# Landlock (include/uapi/linux/landlock.h)
SYS_LL_CREATE, SYS_LL_ADD, SYS_LL_RESTRICT = 444, 445, 446  # the same numbers on every architecture
LL_VERSION = 1
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1, 2, 4, 8
FS_REMOVE_DIR, FS_REMOVE_FILE, FS_MAKE_CHAR, FS_MAKE_DIR, FS_MAKE_REG = 16, 32, 64, 128, 256
FS_MAKE_SOCK, FS_MAKE_FIFO, FS_MAKE_BLOCK, FS_MAKE_SYM, FS_REFER, FS_TRUNCATE = 512, 1024, 2048, 4096, 8192, 16384
SCOPE_ABSTRACT_UNIX, SCOPE_SIGNAL = 1, 2
RULE_PATH_BENEATH = 1


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 when absent or refused (a seccomp profile without it)."""
    r = _syscall(SYS_LL_CREATE, None, ctypes.c_size_t(0), ctypes.c_uint32(LL_VERSION))
    return max(r, 0)


def _landlock(abi: int, write: list[str], hidden: list[str]) -> list[str]:
    """Writes only beneath `write` (and DEVICE_FILES, GPUs'), reads everywhere but beneath `hidden`."""
    read = FS_READ_FILE | FS_READ_DIR
    writes = (FS_WRITE_FILE | FS_REMOVE_DIR | FS_REMOVE_FILE | FS_MAKE_CHAR | FS_MAKE_DIR | FS_MAKE_REG
              | FS_MAKE_SOCK | FS_MAKE_FIFO | FS_MAKE_BLOCK | FS_MAKE_SYM)
    if abi >= 2:
        writes |= FS_REFER
    if abi >= 3:
        writes |= FS_TRUNCATE
    handled = read | writes
    scoped = (SCOPE_ABSTRACT_UNIX | SCOPE_SIGNAL) if abi >= 6 else 0
    attr = struct.pack("QQQ", handled, 0, scoped)
    size = 24 if abi >= 6 else (16 if abi >= 4 else 8)
    buf = ctypes.create_string_buffer(attr[:size], size)
    ruleset = _syscall(SYS_LL_CREATE, buf, ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset: " + os.strerror(ctypes.get_errno()))
    file_rights = FS_READ_FILE | FS_WRITE_FILE | (FS_TRUNCATE if abi >= 3 else 0)

    def allow(path: str, rights: int) -> None:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            return
        try:
            if not os.path.isdir(path):
                rights &= file_rights
            rule = ctypes.create_string_buffer(struct.pack("=Qi", rights, fd), 12)
            if _syscall(SYS_LL_ADD, ruleset, RULE_PATH_BENEATH, rule, ctypes.c_uint32(0)) < 0:
                raise OSError(ctypes.get_errno(), f"landlock_add_rule {path}: " + os.strerror(ctypes.get_errno()))
        finally:
            os.close(fd)

    try:
        # /proc hidden too, but for its system-wide files and this process's own folder: Landlock keeps
        # /proc/<pid>/mem and cwd of processes outside from it, not environ or maps (seen on Linux 6.18)
        for path in _readable_roots([os.path.realpath(h) for h in hidden] + ["/proc"]):
            allow(path, read)
        for name in _listdir("/proc"):
            if not name.isdigit() and name not in ("self", "thread-self"):
                allow(os.path.join("/proc", name), read)
        # its own /proc folder writable: CUDA's driver writes there at init (names its threads); refused, the
        # driver fails with error 304 (seen on an H100 and an H200, driver 580.159)
        allow(f"/proc/{os.getpid()}", read | file_rights)
        for path in write:
            allow(path, handled)
        devices = list(DEVICE_FILES) + [os.path.join("/dev", n) for n in _listdir("/dev") if n.startswith("nvidia")]
        for path in devices:
            allow(path, FS_READ_FILE | FS_WRITE_FILE)
        if _syscall(SYS_LL_RESTRICT, ruleset, ctypes.c_uint32(0)) < 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self: " + os.strerror(ctypes.get_errno()))
    finally:
        os.close(ruleset)
    kept = ["writes only to scratch and build", "reads all but the trusted folders and other processes' /proc", "no ptrace of processes outside"]
    if scoped:
        kept.append("no signals or abstract unix sockets outside")
    return kept


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _readable_roots(hidden: list[str]) -> list[str]:
    """Paths whose subtrees together are everything except the `hidden` subtrees (and their ancestors'
    own listings): every sibling along the way down to each hidden folder."""
    if not hidden:
        return ["/"]
    on_path = set()
    for h in hidden:
        p = h
        while True:
            on_path.add(p)
            parent = os.path.dirname(p)
            if parent == p:
                break
            p = parent
    roots = []
    for ancestor in sorted(on_path):
        if ancestor in hidden or any(ancestor.startswith(h.rstrip("/") + "/") for h in hidden):
            continue
        for name in _listdir(ancestor):
            child = os.path.join(ancestor, name)
            # a rule follows a link to its target: a sibling that links to an ancestor of a hidden folder
            # (pytest's `...current` links do) would open the whole of it
            real = os.path.realpath(child)
            if child not in on_path and real not in on_path and not any(real == h or real.startswith(h.rstrip("/") + "/")
                                                                        for h in hidden):
                roots.append(child)
    return roots


# seccomp: a classic BPF program over struct seccomp_data (nr at 0, arch at 4, args from 16).
AUDIT_ARCH_X86_64 = 0xC000003E
RET_ALLOW, RET_ERRNO = 0x7FFF0000, 0x00050000
NR = {"socket": 41, "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "pidfd_getfd": 438,
      "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "unshare": 272, "setns": 308,
      "keyctl": 250, "add_key": 248, "request_key": 249}
NR_CLONE, NR_CLONE3 = 56, 435
CLONE_NAMESPACES = 0x7E020000  # NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET


def _bpf(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def _seccomp(unix_sockets: bool = False) -> list[str]:
    """Deny the calls in NR. With `unix_sockets` (a GPU run: CUDA's driver fails with error 304 when it cannot
    make one), socket() is allowed for AF_UNIX only: still no network, not even loopback."""
    LD, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06
    deny = RET_ERRNO | errno.EPERM
    denied = sorted(v for k, v in NR.items() if not (unix_sockets and k == "socket"))
    prog = [_bpf(LD, 0, 0, 4), _bpf(JEQ, 1, 0, AUDIT_ARCH_X86_64), _bpf(RET, 0, 0, deny),  # another ABI: refused
            _bpf(LD, 0, 0, 0), _bpf(JGE, 0, 1, 0x40000000), _bpf(RET, 0, 0, deny)]  # x32 calls: refused
    for nr in denied:
        prog += [_bpf(JEQ, 0, 1, nr), _bpf(RET, 0, 0, deny)]
    if unix_sockets:  # socket(domain, ...): AF_UNIX passes, every other domain is refused
        prog += [_bpf(JEQ, 0, 4, NR["socket"]), _bpf(LD, 0, 0, 16), _bpf(JEQ, 1, 0, socket.AF_UNIX),
                 _bpf(RET, 0, 0, deny), _bpf(RET, 0, 0, RET_ALLOW), _bpf(LD, 0, 0, 0)]
    # clone3 passes its flags in memory a filter cannot read: ENOSYS makes libc fall back to clone
    prog += [_bpf(JEQ, 0, 1, NR_CLONE3), _bpf(RET, 0, 0, RET_ERRNO | errno.ENOSYS)]
    prog += [_bpf(JEQ, 0, 3, NR_CLONE), _bpf(LD, 0, 0, 16), _bpf(JSET, 0, 1, CLONE_NAMESPACES), _bpf(RET, 0, 0, deny)]
    prog += [_bpf(RET, 0, 0, RET_ALLOW)]
    code = b"".join(prog)
    filt = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("HxxxxxxQ", len(prog), ctypes.addressof(filt))
    fbuf = ctypes.create_string_buffer(fprog, len(fprog))
    if _prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, fbuf) != 0:
        raise OSError(ctypes.get_errno(), "seccomp: " + os.strerror(ctypes.get_errno()))
    sockets = ("unix sockets only (no network, not even loopback)" if unix_sockets
               else "no sockets (no network, not even loopback)")
    return [sockets, "no ptrace, process_vm_*, io_uring, namespaces, keyring"]


def apply(plan: dict) -> dict:
    """Apply `plan` to this process (and so to everything it starts); return {"applied": [...], "missing":
    [...]} naming each protection that stood and each that could not, with why."""
    import resource

    applied, missing = [], []
    if not plan.get("enabled", True):
        return {"applied": [], "missing": ["the sandbox was turned off (sandbox=False)"]}
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    uid = plan.get("uid")
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        resource.setrlimit(resource.RLIMIT_NPROC, (NPROC_LIMIT, NPROC_LIMIT))
        applied.append(f"own uid {uid} (other processes and root's files out of reach)")
    elif plan.get("uid_refused"):
        missing.append(plan["uid_refused"])
    else:
        missing.append("own uid: the evaluator is not root, so the candidate runs as the same user")
    if _prctl(PR_SET_NO_NEW_PRIVS, 1) == 0:
        applied.append("no_new_privs")
    else:
        missing.append("no_new_privs: " + os.strerror(ctypes.get_errno()))
    abi = landlock_abi()
    if abi:
        try:
            applied += [f"landlock v{abi}: {k}" for k in _landlock(abi, plan.get("write", []), plan.get("hidden", []))]
            if abi < 6:
                missing.append(f"landlock v{abi} < 6: signals are kept from other processes only by the uid")
        except OSError as e:
            missing.append(f"landlock: {e}")
    else:
        missing.append("landlock: not available (Linux < 5.13, or refused by the container's seccomp profile)")
    if X86_64:
        try:
            applied += _seccomp(unix_sockets=bool(plan.get("gpu")))
        except OSError as e:
            missing.append(f"seccomp: {e}")
    else:
        missing.append(f"seccomp: no filter for {platform.machine()}")
    return {"applied": applied, "missing": missing}


def describe() -> dict:
    """What `apply` would give on this machine, probed without applying anything (for the doctor)."""
    root = is_root()
    closed = _closed_to_others() if root else None
    abi = landlock_abi()
    probe = {"root": root, "own_uid": root and not closed, "landlock_abi": abi, "seccomp": X86_64}
    have, lack = [], []
    (have if probe["own_uid"] else lack).append(
        "own uid per candidate" if probe["own_uid"] else
        (f"own uid ({closed} is closed to other users)" if root else "own uid (not root)"))
    (have if abi else lack).append(f"landlock v{abi}" if abi else "landlock")
    (have if X86_64 else lack).append("seccomp: no sockets" if X86_64 else f"seccomp ({platform.machine()})")
    # signals and other processes' /proc: kept out by the uid, or by Landlock v6+
    probe["complete"] = bool(abi and X86_64 and (probe["own_uid"] or abi >= 6))
    probe["summary"] = ", ".join(have) + (f"; without {', '.join(lack)}" if lack else "")
    return probe
