"""The README's main job on a CPU machine: tiny model -> real vLLM engine -> chat -> the notebooks.

Prints what a user would check first (engine start, throughput, import cost), then runs the
ordered notebooks on the C++ (CPU) problems with the three strategies, two scorers and the
execution verifier, and one refinement round, and prints the selection table: how often each
method's chosen kernel is correct against a random pick and the oracle. Everything lands in
OUT/summary.json and OUT/notebooks/. The tiny model was fitted on the bundled solutions and
planted faults (`kaggle_kit.tiny.planted`): its numbers test the toolkit, not a model.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from kaggle_kit.engine.types import Engine

MESSAGES = [
    {"role": "system", "content": "You are a CUDA expert."},
    {"role": "user", "content": "Optimise the softmax kernel."},
]


def measure_import_seconds() -> float:
    """`import kaggle_kit` in a fresh interpreter (best of 3: the machine is shared)."""
    code = "import time; t = time.perf_counter(); import kaggle_kit; print(time.perf_counter() - t)"
    runs = [float(subprocess.check_output([sys.executable, "-c", code], text=True)) for _ in range(3)]
    return min(runs)


def measure_throughput(engine: Engine, n: int = 16, max_tokens: int = 128) -> dict:
    from kaggle_kit.engine.chat_template import prompt_ids
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


# The notebooks' parameters for the demo: the problems with a C++ reference (the CPU path), every
# strategy, two scorers and the execution verifier (a grid, one run folder each), one refinement round.
DEMO_PARAMS = {"problems": "relu,vector_add,row_sum", "device": "cpu",
               "strategy": "offline_bon,online_bon,beam_search", "scorer": "entropy,perplexity",
               "verifier": "uncertainty,execution", "num_trajectories": 4, "candidates_per_step": 4, "beam_size": 2,
               "tts_max_tokens": 1024, "refine_rounds": 2, "target_speedup": 0.0}


def run_demo(out_dir: str | Path = "runs/demo", model_dir: str | Path | None = None) -> dict:
    import kaggle_kit as kk
    from kaggle_kit.tiny import ensure_tiny_model

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()

    def phase(n: int, what: str) -> None:  # a line per phase: the terminal says what is happening
        print(f"[{n}/5 {time.perf_counter() - began:5.0f} s] {what}", flush=True)

    phase(1, "the tiny model (built once per machine and recipe, then cached)")
    summary: dict = {"import_kaggle_kit_s": round(measure_import_seconds(), 3)}
    model_dir = ensure_tiny_model(model_dir)

    phase(2, "starting the vLLM engine on the CPU (~20-40 s)")
    t = time.perf_counter()
    kk.ensure_model(str(model_dir))
    summary["engine_start_s"] = round(time.perf_counter() - t, 1)
    engine = kk.VLLMClient.get_engine()
    phase(3, f"engine up in {summary['engine_start_s']} s; measuring throughput (16 samples of 128 tokens)")
    summary["throughput_n16"] = measure_throughput(engine)

    phase(4, "streaming and the backend chain")
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

    phase(5, "notebooks 01..04 with papermill (tiny model, CPU, real vLLM; the first run on a machine also "
             "builds each C++ kernel once, ~30 s each); a line every 20 s says what runs")
    t = time.perf_counter()
    executed = run_notebooks({"tiny": True, "tiny_dir": str(model_dir), **DEMO_PARAMS}, out / "notebooks",
                             progress_bar=False, heartbeat_s=20)
    summary["notebooks_s"] = round(time.perf_counter() - t, 1)
    run_dir = executed.parent
    results, candidates, _ = kk.pipeline.load_run(run_dir)
    selection = kk.plots.selection_table(results, candidates)
    summary["selection"] = selection.round(4).to_dict(orient="records")
    summary["notebooks"] = {"executed": str(executed), "tables": sorted(p.name for p in run_dir.glob("*.csv")),
                            "figures": sorted(str(p) for p in (run_dir / "figures").glob("*.png"))}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"notebooks ran in {summary['notebooks_s']} s")
    print("\n--- which kernel each method picks (round 1; C++ problems relu, vector_add, row_sum) ---")
    print(format_selection(selection))
    print("(the tiny model was fitted on the bundled solutions and planted faults: these numbers test the toolkit)\n")
    print(f"executed notebook: {executed}")
    print(f"results tables:    {run_dir}/results.csv, candidates.csv, steps.csv, rounds.csv, summary.json")
    print("figures:           " + "\n                   ".join(summary["notebooks"]["figures"]))
    print(f"summary:           {out / 'summary.json'}")
    return summary


def format_selection(selection) -> str:
    """The selection table as the demo prints it (and the README shows)."""
    cols = {"method": "method", "items": "items", "chosen_correct": "chosen correct", "random_pick": "random pick",
            "oracle": "oracle", "auroc": "AUROC", "tokens_per_item": "tokens/item", "geomean_speedup": "speedup"}
    t = selection[list(cols)].rename(columns=cols)
    return t.to_string(index=False, float_format=lambda x: f"{x:.2f}", na_rep="n/a")
