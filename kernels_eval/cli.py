"""`kernels-eval` command line: eval, report, problems, prompt.

`run` (generate with a TTS strategy, then evaluate) needs a model: kaggle_kit adds it
(`kaggle_kit.experiment.cli`, the installed `kernels-eval`), so this package stays usable
and testable on its own.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kernels_eval import __version__
from kernels_eval.result import RULES


def _cmd_eval(args) -> int:
    from kernels_eval.evaluate import evaluate, evaluate_response
    from kernels_eval.problems import load_problem

    problem = load_problem(args.problem)
    text = Path(args.candidate).read_text()
    options = dict(trials=args.trials, timing=not args.no_timing, run_timeout=args.timeout,
                   compile_timeout=args.compile_timeout, compare_compile=args.compare_compile)
    if "```" in text or not _is_python(text):  # a raw model response: take its code block
        _, result = evaluate_response(problem, text, args.device, **options)
    else:
        result = evaluate(problem, text, args.device, **options)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        speed = f", speedup {result.speedup:.2f}x" if result.speedup else ""
        flags = f", flags: {', '.join(result.flags)}" if result.flags else ""
        print(f"{problem.name}: {result.status.value}{speed}{flags}")
        if result.message:
            print(result.message)
    return 0 if result.correct else 1


def _is_python(text: str) -> bool:
    import ast

    try:
        ast.parse(text)
        return True
    except SyntaxError:
        return False


def _cmd_report(args) -> int:
    from kernels_eval.metrics import summary, table
    from kernels_eval.records import RecordStore

    path = Path(args.results)
    path = path / "records.jsonl" if path.is_dir() else path
    if not path.exists():
        raise FileNotFoundError(f"no records at {path}")
    _, evaluated = RecordStore(path).latest()
    if args.round is not None:
        evaluated = {k: e for k, e in evaluated.items() if k.endswith(f"|{args.round}")}
    results = [evaluated[k].result for k in sorted(evaluated)]  # key order: the same however the run was split
    if not results:
        print(f"kernels-eval: no evaluated records in {path}", file=sys.stderr)
        return 2
    s = summary(results, count_flagged=args.count_flagged, rules=args.rules)
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    print(table(results)[["problem", "status", "correct", "speedup", "runtime_ms", "ref_runtime_ms", "flags"]].to_string(index=False))
    print()
    print(f"rules: {args.rules} (" + ("KernelBench's static checker's categories, kb: flags, decide what counts"
                                     if args.rules == "kernelbench" else "our flags decide what counts; kb: flags are "
                                     "KernelBench's categories, counted with --rules kernelbench") + ")")
    if s["degenerate_problems"]:
        print(f"degenerate problems (the reference's output ignores its inputs, so a kernel that never reads them "
              f"passes): {', '.join(s['degenerate_problems'])}")
    for p in (0, 0.5, 0.8, 1, 1.5, 2):
        f = s[f"fast_{p:g}"]
        print(f"fast_{p:<4g} {f['num']:>4} / {f['den']:<4} = {f['rate']:.3f}" if f["den"] else f"fast_{p:g}: n/a")
    gm = s["geomean_speedup"]
    print(f"geomean speedup over correct: {gm:.3f}" if gm else "geomean speedup: n/a (nothing correct)")
    for k in (1, 5):
        v = s.get(f"pass@{k}")
        print(f"pass@{k}: {v:.3f}" if v is not None else f"pass@{k}: n/a (fewer than {k} samples per problem)")
    print("failures:", ", ".join(f"{k}={v}" for k, v in s["taxonomy"].items()))
    if s["not_evaluated"]:
        tax = s["taxonomy"]
        print(f"{s['not_evaluated']} sample(s) not evaluated: {tax.get('harness_error', 0)} harness_error (the evaluator "
              f"failed, not the kernel; rerun to retry them), {tax.get('skipped', 0)} skipped (too big for this GPU)")
    if not args.count_flagged:
        print("(flagged results are not counted as correct; --count-flagged counts them)")
    return 0


def _cmd_problems(args) -> int:
    from kernels_eval.problems import load_problems

    for p in load_problems(args.dir, args.level):
        print(f"{p.name}\t{p.path}")
    return 0


def _cmd_prompt(args) -> int:
    from kernels_eval.problems import load_problem
    from kernels_eval.prompts import build_messages

    for m in build_messages(load_problem(args.problem), args.device, args.thinking):
        print(f"[{m['role']}]\n{m['content']}\n")
    return 0


def build_parser(extend=None) -> argparse.ArgumentParser:
    """The parser; `extend(subparsers)` adds commands from outside this package (kaggle_kit's `run`)."""
    p = argparse.ArgumentParser(prog="kernels-eval", description="Evaluate model-written CUDA kernels.")
    p.add_argument("--version", action="version", version=f"kernels-eval {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    if extend is not None:
        extend(sub)

    e = sub.add_parser("eval", help="evaluate one candidate (a ModelNew module, or a raw model response)")
    e.add_argument("problem")
    e.add_argument("candidate")
    e.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    e.add_argument("--timeout", type=float, default=180.0, help="run timeout in seconds")
    e.add_argument("--compile-timeout", type=float, default=600.0)
    e.add_argument("--trials", type=int, default=5)
    e.add_argument("--no-timing", action="store_true")
    e.add_argument("--compare-compile", action="store_true", help="also report the speedup over torch.compile(Model)")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=_cmd_eval)

    r = sub.add_parser("report", help="metrics over a run's records (its folder or records.jsonl)")
    r.add_argument("results")
    r.add_argument("--round", type=int, default=None, help="only this refinement round")
    r.add_argument("--count-flagged", action="store_true", help="count flagged (suspected cheat) results as correct")
    r.add_argument("--rules", choices=RULES, default="ours",
                   help="whose flags decide what counts: ours, or KernelBench's static checker's categories (kb:)")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=_cmd_report)

    pr = sub.add_parser("problems", help="list problems")
    pr.add_argument("--dir", default=None)
    pr.add_argument("--level", type=int, default=None)
    pr.set_defaults(func=_cmd_problems)

    pm = sub.add_parser("prompt", help="print the prompt for a problem")
    pm.add_argument("problem")
    pm.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    pm.add_argument("--thinking", action="store_true")
    pm.set_defaults(func=_cmd_prompt)
    return p


def main(argv: list[str] | None = None, extend=None, errors: tuple = ()) -> int:
    args = build_parser(extend).parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, *errors) as e:
        print(f"kernels-eval: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
