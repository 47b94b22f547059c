"""One Kaggle session, rehearsed on the GPU machine: the bundle notebook top to bottom.

What a Kaggle "GPU T4 x2" session does, in one kernel, through papermill: install check,
`doctor`, the model load with the plan for T4s (tensor parallel over every visible GPU), TTS on
the CUDA kernel problems with three strategies, every candidate built and judged beside the live
engine, a refinement round, subchat, plots. The model is the planted-kernels tiny model exported
by our own code in AutoAWQ's GEMM format (`kaggle_kit.tiny.awq`), so the candidates are real
CUDA kernels, right and wrong, and the checkpoint goes through vLLM's AWQ path as Qwen3-14B-AWQ
does. The T4 is emulated (`KK_EMULATE_GPU`, see kaggle_kit/engine/emulate.py): the plan is a
T4's, each engine's budget is a T4's 0.91 in bytes and the evaluator gets a T4's headroom; the
speed is the real card's.

    KK_EMULATE_GPU='Tesla T4:7.5:14.75' TORCH_CUDA_ARCH_LIST='7.5+PTX' taskset -c 0-3 \\
        python benchmarks/rehearsal.py --model DIR --out OUT

Writes OUT/doctor.{txt,json}, OUT/run/ (the executed notebook, tables, figures, records) and
OUT/summary.json (machine, stage times, engine start, every candidate's verdict).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# CUDA problems with bundled references (the planted kernels are theirs); every strategy; one
# refinement round; the rest as the notebook's defaults.
PARAMS = dict(problems="relu,vector_add,softmax", device="cuda", strategy="offline_bon,online_bon,beam_search",
              scorer="perplexity", verifier="uncertainty", num_trajectories=4, candidates_per_step=4, beam_size=2,
              tts_max_tokens=1536, refine_rounds=2, target_speedup=0.0, batch_size=8, prompt="Optimise the relu kernel.")


def prepare_model(src: Path) -> Path:
    """`src` if it is an AWQ checkpoint, else its AWQ export beside it (`src`-awq), with the Qwen3 tokenizer."""
    from kaggle_kit.tiny import awq

    tok = os.environ.get("KK_QWEN3_TOKENIZER_DIR")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if not (src / name).exists() and tok:
            shutil.copy2(Path(tok) / name, src / name)
    if "quantization_config" in json.loads((src / "config.json").read_text()):
        return src
    dst = src.with_name(src.name + "-awq")
    return dst if (dst / "config.json").exists() else awq.export_awq(src, dst)


def machine() -> dict:
    from kaggle_kit.engine import nvsmi

    gpus, driver, _ = nvsmi.query()
    return {"gpus": [f"{g.name}, {g.total_bytes >> 20} MiB" for g in gpus], "driver": driver,
            "cpu_affinity": sorted(os.sched_getaffinity(0)),
            "emulate": os.environ.get("KK_EMULATE_GPU"), "arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST")}


def cell_times(executed: Path) -> list[dict]:
    nb = json.loads(executed.read_text())
    out = []
    for c in nb["cells"]:
        if c["cell_type"] == "code":
            src = "".join(c["source"]).strip().splitlines()
            out.append({"first_line": src[0][:90] if src else "", "s": round(c["metadata"].get("papermill", {}).get("duration") or 0, 1)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="an AWQ checkpoint, or a model folder to export to AWQ beside it")
    ap.add_argument("--out", required=True)
    ap.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"), help="a notebook parameter")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = prepare_model(Path(args.model))
    summary = {"machine": machine(), "model": str(model), "export_s": round(time.perf_counter() - t0, 1)}

    t = time.perf_counter()  # the doctor, as the notebook's first cells run it, saved whole
    from kaggle_kit.workflow import doctor

    report = doctor.run(str(model))
    (out / "doctor.json").write_text(json.dumps(report.to_dict(), indent=1, default=str))
    (out / "doctor.txt").write_text(report.render() + "\n")
    summary["doctor_s"] = round(time.perf_counter() - t, 1)
    print(report.render(), flush=True)

    from kaggle_kit.workflow.notebooks import run_notebooks

    params = {**PARAMS, "model_path": str(model), **{k: _value(v) for k, v in args.p}}
    t = time.perf_counter()
    error = None
    try:
        executed = run_notebooks(params, out / "run", log_output=True, progress_bar=False)
    except Exception as e:  # papermill raises on a failed cell; the partial notebook is kept
        error = f"{type(e).__name__}: {str(e)[-2000:]}"
        executed = out / "run" / "executed.ipynb"
    summary.update(notebook_s=round(time.perf_counter() - t, 1), error=error, params=params)
    if executed.exists():
        summary["cells"] = cell_times(executed)
        load = next((c for c in summary["cells"] if "setup_model(" in c["first_line"]), None)
        summary["engine_start_s"] = load["s"] if load else None
    summary["verdicts"] = verdicts(out / "run")
    summary["total_s"] = round(time.perf_counter() - t0, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: summary[k] for k in ("engine_start_s", "notebook_s", "error") if k in summary}), flush=True)
    print(json.dumps(summary["verdicts"]["counts"]), flush=True)


def _value(v: str):
    try:
        return json.loads(v)
    except ValueError:
        return v


def _gist(message: str) -> str:
    """The line that says what went wrong (a compiler's first error), not the whole log."""
    lines = message.splitlines()
    hit = next((ln for ln in lines if "error" in ln.lower() and "Error building" not in ln), None)
    return (hit or (lines[0] if lines else "")).strip()[:200]


def verdicts(run: Path) -> dict:
    """Every evaluated candidate's verdict, from the runs' durable records."""
    rows = []
    for rec in sorted(run.rglob("records.jsonl")):
        keys = {}
        for line in rec.read_text().splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if r.get("kind") == "generated":
                keys[r["key"]] = r
                continue
            gen = keys.get(r.get("key"), {})
            for ev in r.get("evaluations") or []:
                res = ev.get("result") or {}
                rows.append({"run": rec.parent.name, "problem": gen.get("problem"), "round": gen.get("round"),
                             "candidate": ev.get("index"), "chosen": ev.get("index") == r.get("chosen"),
                             "parse": ev.get("parse_status"), "status": res.get("status") or ev.get("parse_status"),
                             "speedup": res.get("speedup"), "compile_s": res.get("compile_s"),
                             "message": _gist(res.get("message") or "")})
    return {"counts": dict(Counter(r["status"] for r in rows)), "candidates": rows}


if __name__ == "__main__":
    main()
