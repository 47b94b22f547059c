"""Comparing a candidate's outputs with the reference's, and summarising an output (its signature).

Used by the judge (kernels_eval.judge, in the parent, where no candidate code runs) and by the
reference's process. Chunked: the comparison's own memory is a few chunk-sized temporaries, whatever
the outputs' size (KernelBench level 1 has multi-GB outputs; comparing them whole in float64 once needed
9.76 GB for one problem)."""
from __future__ import annotations

import math

from kernels_eval.errors import HarnessPhase

COMPARE_CHUNK = 1 << 22  # elements compared at a time
# Values an output signature keeps per tensor: the first and last EDGE (an off-by-one at either end)
# and the rest at fixed pseudo-random positions; plus two whole-tensor sums (kernels_eval.consensus).
SIGNATURE_POINTS, SIGNATURE_EDGE = 256, 16


def tensors(x) -> list:
    import torch

    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for item in x for t in tensors(item)]
    return []


def move(x, device):
    import torch

    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, (list, tuple)):
        return type(x)(move(i, device) for i in x)
    return x


def compare(refs: list, news: list, tol: dict) -> tuple[bool, str, float]:
    """(ok, why not, worst abs diff) for two lists of tensors (the outputs, flattened)."""
    if len(refs) != len(news):
        return False, f"output structure differs: expected {len(refs)} tensor(s), got {len(news)}", float("nan")
    worst = 0.0
    for i, (r, n) in enumerate(zip(refs, news)):
        if n.shape != r.shape:
            return False, f"output {i}: shape {tuple(n.shape)}, expected {tuple(r.shape)}", float("nan")
        if n.dtype != r.dtype:
            return False, f"output {i}: dtype {n.dtype}, expected {r.dtype}", float("nan")
        atol, rtol = tol.get(str(r.dtype).replace("torch.", ""), tol["default"])
        with HarnessPhase(f"comparing output {i}"):  # our own memory: never the candidate's fault
            finite_ok, close, diff = close_enough(r, n.detach().to(r.device), atol, rtol)
        if not finite_ok:
            return False, f"output {i}: NaN/Inf where the reference has none (or the reverse)", float("nan")
        worst = max(worst, diff)
        if not close:
            return False, f"output {i}: max abs diff {worst:.3g} exceeds atol={atol}, rtol={rtol}", worst
    return True, "", worst


def close_enough(r, n, atol: float, rtol: float) -> tuple[bool, bool, float]:
    """(same NaN/Inf pattern, allclose with equal_nan, max abs diff where the reference is finite),
    chunk by chunk: no copy of a whole output beyond a non-contiguous one's flat view."""
    import torch

    a_all, b_all = r.reshape(-1), n.reshape(-1)
    close, worst = True, 0.0
    for start in range(0, a_all.numel(), COMPARE_CHUNK):
        a, b = a_all[start:start + COMPARE_CHUNK], b_all[start:start + COMPARE_CHUNK]
        fa = torch.isfinite(a)
        if not torch.equal(fa, torch.isfinite(b)):
            return False, False, float("nan")
        if bool(fa.any()):
            diff = (b.double() - a.double()).abs_()
            worst = max(worst, float(diff.masked_fill_(~fa, 0).max()))
        close = close and bool(torch.isclose(b, a, rtol=rtol, atol=atol, equal_nan=True).all())
    return True, close, worst


def signature(outs: list) -> list[dict] | None:
    """What an output looks like, compact enough for a record: per output tensor its shape, dtype, values
    at fixed positions and its sums of |x| and x^2 (float64, chunked). For self-consistency: candidates
    whose signatures agree computed the same output (kernels_eval.consensus)."""
    import torch

    sig = []
    for t in outs:
        if t.is_complex():
            return None
        flat = t.detach().reshape(-1)
        n = flat.numel()
        if n <= SIGNATURE_POINTS:
            idx = torch.arange(n)
        else:
            spread = torch.randint(SIGNATURE_EDGE, n - SIGNATURE_EDGE, (SIGNATURE_POINTS - 2 * SIGNATURE_EDGE,),
                                   generator=torch.Generator().manual_seed(n))
            idx = torch.cat([torch.arange(SIGNATURE_EDGE), torch.arange(n - SIGNATURE_EDGE, n), spread])
        values = flat[idx.to(flat.device)].double().cpu().tolist()
        abs_sum = sq_sum = 0.0
        for start in range(0, n, COMPARE_CHUNK):
            chunk = flat[start:start + COMPARE_CHUNK].double()
            abs_sum += float(chunk.abs().sum())
            sq_sum += float(chunk.square().sum())
        finite = math.isfinite(abs_sum) and math.isfinite(sq_sum)
        sig.append({"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""),
                    "values": [float(f"{v:.7g}") if math.isfinite(v) else None for v in values],
                    "abs_sum": abs_sum if finite else None, "sq_sum": sq_sum if finite else None})
    return sig or None


# -- outputs on disk: raw bytes and a JSON header, so the judge never unpickles what a candidate wrote --------

DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool",
          "complex64", "complex128")


def write_outputs(path: str, out) -> dict:
    """Write `out` (a tensor, or a list/tuple of them) as raw bytes at path + '.bin'; return its header."""
    import json

    import torch

    header = {"is_tensor": isinstance(out, torch.Tensor), "tensors": [], "other": None}
    if not isinstance(out, (torch.Tensor, list, tuple)):
        header["other"] = type(out).__name__
    offset = 0
    with open(path + ".bin", "wb") as f:
        for t in tensors(out):
            plain = type(t) is torch.Tensor
            host = t.detach().cpu().contiguous() if plain else None
            nbytes = host.numel() * host.element_size() if plain else 0
            if plain and nbytes:
                f.write(memoryview(host.reshape(-1).view(torch.uint8).numpy()))
            header["tensors"].append({"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""),
                                      "type": f"{type(t).__module__}.{type(t).__qualname__}", "offset": offset,
                                      "nbytes": nbytes})
            offset += nbytes
    with open(path + ".json", "w") as f:
        json.dump(header, f)
    return header


def read_outputs(path: str, owner: int | None, max_bytes: int) -> tuple[list | None, str]:
    """(tensors, "") from what write_outputs wrote, or (None, why not). Refuses links, files of another
    owner than the candidate's uid, sizes beyond `max_bytes`, dtypes it does not know."""
    import json

    import torch

    try:
        header = json.loads(bytes(_read_plain_file(path + ".json", 1 << 20, owner)))
        data = _read_plain_file(path + ".bin", max_bytes, owner)
    except (OSError, ValueError) as e:
        return None, f"its output could not be read back: {e}"
    if header.get("other"):
        return None, f"the output is a {header['other']}, not a tensor or a tuple of tensors"
    out = []
    for i, t in enumerate(header.get("tensors", [])):
        if t.get("type") != "torch.Tensor":
            return None, (f"output {i} is a {t.get('type')}, not a plain torch.Tensor: an output must hold its own "
                          "values (a subclass can compute them when read, outside every timed call)")
        if t.get("dtype") not in DTYPES:
            return None, f"output {i} has dtype {t.get('dtype')!r}"
        dtype = getattr(torch, t["dtype"])
        shape = [int(s) for s in t["shape"]]
        numel = math.prod(shape)
        nbytes = numel * torch.empty((), dtype=dtype).element_size()
        if nbytes != t["nbytes"] or t["offset"] + nbytes > len(data):
            return None, f"output {i}: {t['nbytes']} bytes written for shape {shape}"
        out.append(torch.frombuffer(data, dtype=dtype, count=numel, offset=t["offset"]).reshape(shape) if nbytes
                   else torch.empty(shape, dtype=dtype))
    return out, ""


def _read_plain_file(path: str, limit: int, owner: int | None) -> bytearray:
    """The bytes of a regular file with one link, owned by `owner` (when given), at most `limit` long."""
    import os
    import stat

    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or (owner is not None and st.st_uid != owner):
            raise ValueError(f"{os.path.basename(path)} is not a plain file the candidate wrote")
        if st.st_size > limit:
            raise ValueError(f"{os.path.basename(path)} is {st.st_size} bytes, more than the {limit} expected")
        data = bytearray(st.st_size)  # one copy, which the tensors share (no slicing copies)
        with os.fdopen(os.dup(fd), "rb") as f:
            f.readinto(data)
        return data
    finally:
        os.close(fd)
