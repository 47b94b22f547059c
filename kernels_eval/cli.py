"""`kernels-eval` command line (subcommands arrive with the kernels_eval issue)."""
from __future__ import annotations

import argparse
import sys

from kernels_eval import __version__


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kernels-eval", description="Evaluate model-written CUDA kernels.")
    p.add_argument("--version", action="version", version=f"kernels-eval {__version__}")
    return p


def main(argv: list[str] | None = None) -> int:
    build_parser().parse_args(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
