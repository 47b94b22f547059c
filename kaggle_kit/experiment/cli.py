"""The installed `kernels-eval`: kernels_eval's commands plus `run`, served by the experiment pipeline."""
from __future__ import annotations

import sys
from pathlib import Path

from kernels_eval import cli as kernels_cli


def _cmd_run(args) -> int:
    from kernels_eval.problems import load_problems

    from kaggle_kit.config import ConfigError
    from kaggle_kit.experiment import load_tables, merge, run, write_tables
    from kaggle_kit.experiment.config import from_arguments, parse_shard, shard_of

    if args.shard:  # this shard's part of the problems, split as `kaggle-kit shards plan` splits them
        names = [p.name for p in load_problems(args.problems_dir, args.level, args.problems)]
        args.problems = shard_of(names, *parse_shard(args.shard))
    cfg = from_arguments(args)
    if args.resume_from:  # earlier sessions' copies of this run (their out_dirs): merged in first, then resumed
        copies = [Path(p) / cfg.experiment_name for p in args.resume_from.split(",") if p.strip()]
        missing = [str(c) for c in copies if not (c / "run.json").exists()]
        if missing:
            raise ConfigError(f"--resume_from: no run {cfg.experiment_name!r} in {', '.join(missing)}")
        merge.merge_run(copies, cfg.folder)
    outcome = run(cfg)  # refines when refine_rounds > 1
    write_tables(load_tables(cfg.folder))
    print(cfg.folder / "records.jsonl")
    return 3 if outcome.stopped_early else 0  # 3: stopped at the deadline, rerun to resume


def add_run(sub) -> None:
    from kaggle_kit.experiment.config import add_arguments

    run = sub.add_parser("run", help="generate with a TTS strategy and evaluate, resumably (KernelAct-style flags; "
                                     "the TTS ones are the service's tts_* request fields)")
    add_arguments(run)  # one flag per ExperimentConfig field, with its default
    run.add_argument("--shard", default=None, help="I/N: only the I-th of N contiguous parts of the problems")
    run.add_argument("--resume_from", default=None, help="out_dirs of earlier sessions of this run (comma-separated): "
                     "their records are merged in first")
    run.set_defaults(func=_cmd_run)


def main(argv: list[str] | None = None) -> int:
    import os

    from kaggle_kit.config import ConfigError, quiet_logs

    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # stdout is for results
    quiet_logs()  # third-party noise off; KK_LOG_LEVEL=INFO brings it back
    return kernels_cli.main(argv, extend=add_run, errors=(ConfigError, RuntimeError))


if __name__ == "__main__":
    sys.exit(main())
