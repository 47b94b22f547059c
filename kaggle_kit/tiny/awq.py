"""Export a Hugging Face Qwen3 checkpoint in AutoAWQ's GEMM format (4-bit, zero point), by our own code.

The format is what vLLM reads for `quant_method: awq` (and converts to awq_marlin on sm75+):
per linear layer of the decoder, `qweight` int32 [in, out/8], `qzeros` int32 [in/group, out/8]
and `scales` fp16 [in/group, out]; weight = (q - zero) * scale per group of `group` input
features; eight 4-bit values per int32 in AWQ's interleaved order. Everything else
(embeddings, norms, the head) is written in fp16.

The quantization is round-to-nearest per group: AWQ's activation-aware scale search changes
which values are stored, not how they are stored, and the rehearsal needs the format, not the
last 0.1 of perplexity. Used to rehearse the Kaggle target's Qwen3-14B-AWQ with the tiny model.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

BITS = 4
GROUP = 128
PACK = 32 // BITS
# Column j of a packed group of eight goes to bit slot AWQ_ORDER.index(j): AutoAWQ's layout,
# undone by vLLM's reverse order [0, 4, 1, 5, 2, 6, 3, 7].
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def quantize(w, group: int = GROUP):
    """fp weight [out, in] -> (q uint4 as int32 [out, in], zeros int32 [out, in/group], scales [out, in/group])."""
    import torch

    out_f, in_f = w.shape
    if in_f % group:
        raise ValueError(f"input features {in_f} are not a multiple of the group size {group}")
    g = w.detach().float().reshape(out_f, in_f // group, group)
    lo, hi = g.amin(-1), g.amax(-1)
    scales = ((hi - lo).clamp(min=1e-5) / (2**BITS - 1))
    zeros = torch.round(-lo / scales).clamp(0, 2**BITS - 1)
    q = (torch.round(g / scales[..., None]) + zeros[..., None]).clamp(0, 2**BITS - 1)
    return q.reshape(out_f, in_f).int(), zeros.int(), scales


def dequantize(q, zeros, scales, group: int = GROUP):
    """The weight the quantized layer computes with, [out, in] (for checks)."""
    out_f, in_f = q.shape
    g = q.reshape(out_f, in_f // group, group).float()
    return ((g - zeros[..., None].float()) * scales[..., None].float()).reshape(out_f, in_f)


def pack(values):
    """int32 [rows, cols] of 4-bit values -> int32 [rows, cols/8] in AWQ's interleaved order."""
    import torch

    rows, cols = values.shape
    if cols % PACK:
        raise ValueError(f"{cols} columns are not a multiple of {PACK}")
    v = values.reshape(rows, cols // PACK, PACK).to(torch.int64)
    packed = torch.zeros(rows, cols // PACK, dtype=torch.int64)
    for slot, col in enumerate(AWQ_ORDER):
        packed |= v[..., col] << (BITS * slot)
    return (packed - (packed >= 2**31).to(torch.int64) * 2**32).to(torch.int32)  # as int32 bits


def unpack(packed):
    """Inverse of `pack` (for checks)."""
    import torch

    p = packed.to(torch.int64) & 0xFFFFFFFF
    cols = [None] * PACK
    for slot, col in enumerate(AWQ_ORDER):
        cols[col] = (p >> (BITS * slot)) & 0xF
    return torch.stack(cols, -1).reshape(packed.shape[0], -1).to(torch.int32)


def export_awq(src: str | Path, dst: str | Path, group: int = GROUP) -> Path:
    """Write `src` (a Qwen3 checkpoint folder) as an AutoAWQ GEMM checkpoint in `dst` (tokenizer copied)."""
    import torch
    from safetensors.torch import load_file, save_file

    src, dst = Path(src), Path(dst)
    cfg = json.loads((src / "config.json").read_text())
    weights: dict = {}
    for f in sorted(src.glob("*.safetensors")):
        weights.update(load_file(f))
    out = {}
    for name, t in weights.items():
        layer = name.rsplit(".", 1)[0]
        if name.endswith(".weight") and layer.split("layers.", 1)[-1].split(".", 1)[-1] in LINEARS:
            q, zeros, scales = quantize(t, group)
            out[layer + ".qweight"] = pack(q.T.contiguous())
            out[layer + ".qzeros"] = pack(zeros.T.contiguous())
            out[layer + ".scales"] = scales.T.contiguous().half()
        else:
            out[name] = t.half().contiguous()
    if cfg.get("tie_word_embeddings") and "lm_head.weight" in out:
        del out["lm_head.weight"]
    tmp = dst.with_name(dst.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(out, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    cfg.update(torch_dtype="float16", dtype="float16", quantization_config={
        "quant_method": "awq", "bits": BITS, "group_size": group, "zero_point": True, "version": "gemm",
        "modules_to_not_convert": None})
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
    for f in src.iterdir():
        if f.name.startswith(("tokenizer", "generation_config", "special_tokens", "vocab", "merges")):
            shutil.copy2(f, tmp / f.name)
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    return dst
