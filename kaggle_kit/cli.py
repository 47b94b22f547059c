"""`kaggle-kit` command line."""
from __future__ import annotations

import argparse
import json
import logging
import sys


def _cmd_tiny_model(args) -> int:
    from kaggle_kit.tiny import build_tiny_model

    path = build_tiny_model(args.dir, seed=args.seed, train_steps=args.train_steps)
    print(path)
    return 0


def _cmd_plan(args) -> int:
    from kaggle_kit.engine.loader import detect_hardware, find_model_path, plan_load

    plan = plan_load(find_model_path(args.model), detect_hardware())
    print(json.dumps({"device": plan.device, "llm_kwargs": plan.llm_kwargs, "env": plan.env, "notes": plan.notes}, indent=2))
    return 0


def _cmd_demo(args) -> int:
    from kaggle_kit.demo import run_demo

    run_demo(out_dir=args.out, model_dir=args.model_dir)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kaggle-kit", description="Test-time scaling with vLLM on Kaggle.")
    p.add_argument("-v", "--verbose", action="store_true", help="log INFO messages")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("tiny-model", help="build the tiny local Qwen3 model + tokenizer into DIR")
    t.add_argument("dir")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--train-steps", type=int, default=120, help="0 leaves the weights purely random")
    t.set_defaults(func=_cmd_tiny_model)

    pl = sub.add_parser("plan", help="show the vLLM settings load_model would use on this machine")
    pl.add_argument("--model", default=None, help="model directory (default: $VLLM_MODEL_PATH or the Kaggle input mount)")
    pl.set_defaults(func=_cmd_plan)

    d = sub.add_parser("demo", help="build the tiny model and run it through the real vLLM engine")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--model-dir", default=".cache/tiny-model")
    d.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from kaggle_kit.config import ConfigError

    try:
        return args.func(args)
    except ConfigError as e:
        print(f"kaggle-kit: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
