"""The installed `kernels-eval`: kernels_eval's commands plus `run`, served by the experiment pipeline."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kernels_eval import cli as kernels_cli

from kaggle_kit.tts.params import STRATEGIES


def _cmd_run(args) -> int:
    from kernels_eval.problems import load_problems

    from kaggle_kit.config import ConfigError
    from kaggle_kit.experiment import ExperimentConfig, load_tables, merge, run, write_tables
    from kaggle_kit.experiment.config import parse_shard, shard_of

    problems = args.problem
    if args.shard:  # this shard's part of the problems, split as `kaggle-kit shards plan` splits them
        names = [p.name for p in load_problems(args.problems, args.level, problems)]
        problems = shard_of(names, *parse_shard(args.shard))
    cfg = ExperimentConfig(
        experiment_name=args.experiment_name, out_dir=args.out_dir, model=args.model_name, problems=problems,
        problems_dir=args.problems, level=args.level, num_samples=args.num_samples, strategy=args.tts_strategy,
        scorer=args.tts_scorer, num_trajectories=args.tts_num_trajectories,
        candidates_per_step=args.tts_candidates_per_step, beam_size=args.tts_beam_size, max_steps=args.tts_max_steps,
        score_aggregation=args.tts_score_aggregation, window_size=args.tts_window_size, temperature=args.temperature,
        max_tokens=args.max_tokens, seed=args.seed, thinking=args.thinking, device=args.device,
        verifier=args.verifier, evaluate_candidates=not args.chosen_only, trials=args.trials,
        run_timeout=args.timeout, service_url=args.tts_service_url, batch_size=args.batch_size, workers=args.workers,
        deadline=args.deadline, refine_rounds=args.refine_rounds, refine_width=args.refine_width,
        target_speedup=args.target_speedup)
    if args.resume_from:  # earlier sessions' copies of this run (their out_dirs): merged in first, then resumed
        copies = [Path(p) / args.experiment_name for p in args.resume_from.split(",") if p.strip()]
        missing = [str(c) for c in copies if not (c / "run.json").exists()]
        if missing:
            raise ConfigError(f"--resume_from: no run {args.experiment_name!r} in {', '.join(missing)}")
        merge.merge_run(copies, cfg.folder)
    outcome = run(cfg)  # refines when refine_rounds > 1
    write_tables(load_tables(cfg.folder))
    print(cfg.folder / "records.jsonl")
    return 3 if outcome.stopped_early else 0  # 3: stopped at the deadline, rerun to resume


def add_run(sub) -> None:
    run = sub.add_parser("run", help="generate with a TTS strategy and evaluate, resumably (KernelAct-style flags)")
    run.add_argument("--model_name", default=None, help="model dir (local engine) or served model id (--tts_service_url)")
    run.add_argument("--level", type=int, default=None)
    run.add_argument("--problems", default=None, help="a directory of KernelBench problems (default: the bundled set)")
    run.add_argument("--problem", action="append", help="only these problems (repeatable)")
    run.add_argument("--shard", default=None, help="I/N: only the I-th of N contiguous parts of the problems")
    run.add_argument("--resume_from", default=None, help="out_dirs of earlier sessions of this run (comma-separated): "
                     "their records are merged in first")
    run.add_argument("--experiment_name", required=True)
    run.add_argument("--out_dir", default="runs", help="records go to OUT_DIR/EXPERIMENT_NAME/records.jsonl")
    run.add_argument("--tts_strategy", default="offline_bon", choices=STRATEGIES)
    run.add_argument("--tts_scorer", default="entropy")
    run.add_argument("--tts_num_trajectories", type=int, default=4)
    run.add_argument("--tts_candidates_per_step", type=int, default=4)
    run.add_argument("--tts_beam_size", type=int, default=4)
    run.add_argument("--tts_max_steps", type=int, default=50)
    run.add_argument("--tts_score_aggregation", default="min")
    run.add_argument("--tts_window_size", type=int, default=None)
    run.add_argument("--num_samples", type=int, default=1)
    run.add_argument("--temperature", type=float, default=0.6)
    run.add_argument("--max_tokens", type=int, default=4096)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--thinking", action="store_true")
    run.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    run.add_argument("--tts_service_url", default=None, help="generate through this OpenAI-compatible service")
    run.add_argument("--verifier", choices=["uncertainty", "execution"], default="uncertainty")
    run.add_argument("--chosen_only", action="store_true", help="evaluate only the chosen answer, not every candidate")
    run.add_argument("--trials", type=int, default=5)
    run.add_argument("--timeout", type=float, default=180.0)
    run.add_argument("--batch_size", type=int, default=8)
    run.add_argument("--workers", type=int, default=None, help="concurrent evaluations (default: CPU cores)")
    run.add_argument("--deadline", default=None, help="'kaggle' (session start + 12 h), a duration like 2h30m, or an ISO time")
    run.add_argument("--refine_rounds", type=int, default=1, help="rounds with execution feedback (1 = none)")
    run.add_argument("--refine_width", type=int, default=1, help="candidates refined per round")
    run.add_argument("--target_speedup", type=float, default=1.0, help="refinement stops at a correct kernel this fast")
    run.set_defaults(func=_cmd_run)


def main(argv: list[str] | None = None) -> int:
    import os

    from kaggle_kit.config import ConfigError

    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # stdout is for results
    return kernels_cli.main(argv, extend=add_run, errors=(ConfigError, RuntimeError))


if __name__ == "__main__":
    sys.exit(main())
