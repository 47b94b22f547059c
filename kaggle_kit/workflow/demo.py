"""The README's main job on a CPU machine: tiny model -> real vLLM engine -> chat.

Prints what a user would check first (engine start, throughput, import cost) and
writes them to OUT/summary.json.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

MESSAGES = [
    {"role": "system", "content": "You are a CUDA expert."},
    {"role": "user", "content": "Optimise the softmax kernel."},
]


def measure_import_seconds() -> float:
    """`import kaggle_kit` in a fresh interpreter (best of 3: the machine is shared)."""
    code = "import time; t = time.perf_counter(); import kaggle_kit; print(time.perf_counter() - t)"
    runs = [float(subprocess.check_output([sys.executable, "-c", code], text=True)) for _ in range(3)]
    return min(runs)


def ensure_tiny_model(model_dir: str | Path) -> Path:
    from kaggle_kit.tiny import build_tiny_model

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists():
        print(f"building the tiny model in {model_dir} ...", flush=True)
        build_tiny_model(model_dir)
    return model_dir


def measure_throughput(engine, n: int = 16, max_tokens: int = 128) -> dict:
    from kaggle_kit.chat.messages import prompt_ids
    from kaggle_kit.engine.types import GenerationRequest, SamplingSpec

    ids = prompt_ids(engine.tokenizer, MESSAGES, enable_thinking=False)
    req = GenerationRequest(ids, SamplingSpec(n=n, temperature=1.0, max_tokens=max_tokens, seed=0, logprobs=5))
    t = time.perf_counter()
    engine.generate([req])  # first call pays vLLM's warm-up
    warmup = time.perf_counter() - t
    t = time.perf_counter()
    out = engine.generate([req])[0]
    dt = time.perf_counter() - t
    tokens = sum(c.num_tokens for c in out)
    return {"warmup_s": round(warmup, 2), "tokens": tokens, "seconds": round(dt, 3), "tokens_per_s": round(tokens / dt, 1)}


def run_demo(out_dir: str | Path = "runs/demo", model_dir: str | Path = ".cache/tiny-model") -> dict:
    import kaggle_kit as kk

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"import_kaggle_kit_s": round(measure_import_seconds(), 3)}
    model_dir = ensure_tiny_model(model_dir)

    t = time.perf_counter()
    kk.ensure_model(str(model_dir))
    summary["engine_start_s"] = round(time.perf_counter() - t, 1)
    engine = kk.VLLMClient.get_engine()
    summary["throughput_n16"] = measure_throughput(engine)

    print("\n--- kk.VLLMClient.generate_stream (temperature 0) ---", flush=True)
    t = time.perf_counter()
    first = None
    pieces = []
    for piece in kk.VLLMClient.generate_stream(MESSAGES, temperature=0.0, max_tokens=120):
        first = first or time.perf_counter() - t
        pieces.append(piece)
        print(piece, end="", flush=True)
    print()
    summary["stream"] = {"chunks": len(pieces), "first_chunk_s": round(first or 0, 3), "total_s": round(time.perf_counter() - t, 3)}

    client = kk.SimpleLLMClient()
    answer = client.generate(MESSAGES, temperature=0.0, max_tokens=60)
    summary["chain"] = {"backend": client.backend, "answer": answer}
    print(f"\n--- SimpleLLMClient answered via {client.backend!r} ---\n{answer}\n")

    summary["model_dir"] = str(model_dir)
    print(json.dumps({k: v for k, v in summary.items() if k != "chain"}, indent=2))

    # The product as users run it: the ordered notebooks, one papermill kernel, on the tiny model.
    from kaggle_kit.workflow.notebooks import run_notebooks

    print("\n--- running notebooks/01..04 with papermill (tiny model, CPU, real vLLM) ---", flush=True)
    t = time.perf_counter()
    executed = run_notebooks({"tiny": True, "tiny_dir": str(model_dir)}, out / "notebooks", progress_bar=False)
    summary["notebooks_s"] = round(time.perf_counter() - t, 1)
    run_dir = executed.parent
    summary["notebooks"] = {"executed": str(executed), "tables": sorted(p.name for p in run_dir.glob("*.csv")),
                            "figures": sorted(str(p) for p in (run_dir / "figures").glob("*.png"))}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"notebooks ran in {summary['notebooks_s']} s")
    print(f"executed notebook: {executed}")
    print(f"results tables:    {run_dir}/results.csv, candidates.csv, steps.csv, summary.json")
    print("figures:           " + "\n                   ".join(summary["notebooks"]["figures"]))
    print(f"summary:           {out / 'summary.json'}")
    return summary
