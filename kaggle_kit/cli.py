"""`kaggle-kit` command line."""
from __future__ import annotations

import argparse
import json
import os
import sys


def _cmd_tiny_model(args) -> int:
    from kaggle_kit.tiny import TRAIN_STEPS, build_tiny_model

    steps = TRAIN_STEPS if args.train_steps is None else args.train_steps
    path = build_tiny_model(args.dir, seed=args.seed, train_steps=steps)
    print(path)
    return 0


def _cmd_plan(args) -> int:
    from kaggle_kit.engine.loader import detect_hardware, find_model_path, plan_load

    plan = plan_load(find_model_path(args.model), detect_hardware())
    print(json.dumps({"device": plan.device, "llm_kwargs": plan.llm_kwargs, "env": plan.env, "notes": plan.notes}, indent=2))
    return 0


def _cmd_doctor(args) -> int:
    from kaggle_kit.workflow import doctor

    overrides = {k: v for k, v in (("max_model_len", args.max_model_len),
                                   ("gpu_memory_utilization", args.gpu_memory_utilization)) if v is not None}
    problems = None
    if args.problems:  # e.g. KernelBench: where each of its problems would be evaluated
        from kernels_eval.problems import load_problems

        problems = load_problems(args.problems, args.level)
    report = doctor.run(args.model, overrides, import_vllm=not args.no_import, problems=problems)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.render())
    return 0 if report.ok else 1


def _cmd_wheels(args) -> int:
    from kaggle_kit.workflow.wheels import Target, build_wheels

    report = build_wheels(args.dir, args.requirement or [], target=Target(python=args.python, interpreter=args.pip_python),
                          include_self=not args.no_self, find_links=args.find_links or [], index_url=args.index_url,
                          check=not args.no_check)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.render())
    return 0


def _cmd_tts(args) -> int:
    import kaggle_kit as kk
    from kaggle_kit.tts.params import NAMES, TTSParams

    params = TTSParams.of(**{n: getattr(args, n) for n in NAMES})  # bad values fail before the model loads
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [{"role": "user", "content": args.prompt}]
    kk.ensure_model(args.model)
    result = kk.run_strategy(messages, progress=not args.json, params=params)
    if args.json:
        print(json.dumps(result.to_dict(include_tree=args.tree), indent=2))
    else:
        print(result.text)
        print(f"\n[{result.strategy}/{result.scorer}] score {result.aggregated_score:.4f}, {len(result.steps)} steps, "
              f"{result.completion_reason.value}, {result.usage.engine_calls} engine calls, {result.elapsed_s:.2f}s",
              file=sys.stderr)
    return 0


def _dashed(f) -> list[str]:
    """--num-trajectories, and --num_trajectories as KernelAct spells them."""
    return ["--" + f.name.replace("_", "-")] + (["--" + f.name] if "_" in f.name else [])


def _cmd_serve(args) -> int:
    import dataclasses
    import os

    import kaggle_kit as kk
    from kaggle_kit.service.limits import Limits

    kk.ensure_model(args.model, **({"max_model_len": args.max_model_len} if args.max_model_len else {}))
    print(f"serving on http://{args.host}:{args.port}/v1", file=sys.stderr, flush=True)
    kk.serve(port=args.port, host=args.host, api_key=args.api_key or os.environ.get("KK_API_KEY"),
             served_model_name=args.served_model_name, strict=args.strict,
             limits={f.name: getattr(args, f.name) for f in dataclasses.fields(Limits)},
             slots=args.slots, interactive_share=args.interactive_share, max_active=args.max_concurrent, block=True, log_level="info" if args.verbose else "warning")
    return 0


def _params(pairs) -> dict:
    """-p name value pairs; values are read as Python literals when they parse, else kept as strings."""
    import ast

    out = {}
    for name, value in pairs or []:
        try:
            out[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[name] = value
    return out


def _cmd_run_notebooks(args) -> int:
    from kaggle_kit.workflow.notebooks import run_notebooks

    executed = run_notebooks(_params(args.p), args.out)
    print(f"executed notebook: {executed}\nresults and figures: {executed.parent}")
    return 0


def _cmd_sweep(args) -> int:
    from kaggle_kit.workflow.notebooks import sweep

    report = sweep(args.spec, args.out)
    print(f"{report['points'] - len(report['failed'])}/{report['points']} points ran; results: {report['results_csv']}")
    for f in report["failed"]:
        print(f"  failed point {f['point']}: {f['error']}", file=sys.stderr)
    return 0 if not report["failed"] else 1


def _cmd_bundle(args) -> int:
    from kaggle_kit.workflow.notebooks import build_bundle, inject

    bundle = build_bundle()
    if args.p:
        out = inject(bundle, _params(args.p), args.out or bundle.with_name("kaggle_kit_bundle_prepared.ipynb"))
        print(out)
    else:
        print(bundle)
    return 0


def _cmd_push(args) -> int:
    from kaggle_kit.workflow import kaggle

    if args.dry_run:
        print(kaggle.prepare_push(args.out, _params(args.p)))
        return 0
    print(kaggle.push(_params(args.p), args.out))
    return 0


def _cmd_fetch(args) -> int:
    from kaggle_kit.workflow import kaggle

    print(kaggle.fetch(args.kernel, args.out))
    return 0


def _cmd_shards(args) -> int:
    from pathlib import Path

    from kaggle_kit.workflow import kaggle, shards

    root = Path(args.root)
    if args.action == "plan":
        quota = None
        if args.quota == "live":
            used_total = kaggle.gpu_quota()
            if used_total is None:
                raise RuntimeError("`kaggle quota` did not report a GPU quota; pass --quota HOURS")
            quota = (used_total[1] - used_total[0], "left this week, from `kaggle quota`")
        elif args.quota is not None:
            quota = (float(args.quota), "given with --quota")
        m = shards.plan(args.run, args.shards, _params(args.p), owner=args.owner, local_problems=args.local_problems,
                        quota=quota)
        print(shards.describe_plan(m))
        print(f"plan written to {m.save(root)}; next: kaggle-kit shards push {args.run}")
        return 0
    m = shards.Manifest.load(args.run, root)
    if args.action == "push":
        pushed = shards.push(m, root, stale_hours=args.stale_hours)
        print(f"{len(pushed)} kernel(s) pushed" if pushed else "nothing to push: every shard has a kernel that is "
              "queued, running or finished (status, pull and merge tell what is left)")
    elif args.action == "status":
        rows = shards.wait(m, root, poll_s=args.poll) if args.wait else shards.status(m, root)
        for s in rows:
            a = s.last
            state = f"{a.kernel_id}: {a.status}" + (f" ({a.message})" if a.message else "") if a else "not pushed"
            left = "" if s.missing is None else f", {len(s.missing)} missing after the last merge"
            print(f"shard {s.index + 1}: {state}{left}")
    elif args.action == "pull":
        got = shards.pull(m, root)
        print(f"pulled {len(got)} kernel output(s) into {root / m.run / 'pulled'}" if got else "nothing new to pull")
    elif args.action == "merge":
        report = shards.merge(m, root)
        print(report.describe())
        return 0 if not any(report.missing.values()) else 3  # 3: work left (push again to resume it)
    return 0


def _cmd_golden(args) -> int:
    from kaggle_kit.workflow.golden import regenerate

    for path in regenerate():
        print(path)
    return 0


def _cmd_demo(args) -> int:
    from kaggle_kit.workflow.demo import run_demo

    run_demo(out_dir=args.out, model_dir=args.model_dir)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kaggle-kit", description="Test-time scaling with vLLM on Kaggle.")
    p.add_argument("-v", "--verbose", action="store_true", help="log INFO messages")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("tiny-model", help="build the tiny local Qwen3 model + tokenizer into DIR (fitted on the "
                       "bundled solutions and planted faults: ~4 minutes on 2 cores)")
    t.add_argument("dir")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--train-steps", type=int, default=None, help="default: kaggle_kit.tiny.TRAIN_STEPS; 0 leaves the weights random")
    t.set_defaults(func=_cmd_tiny_model)

    pl = sub.add_parser("plan", help="show the vLLM settings load_model would use on this machine")
    pl.add_argument("--model", default=None, help="model directory (default: $VLLM_MODEL_PATH or the Kaggle input mount)")
    pl.set_defaults(func=_cmd_plan)

    dr = sub.add_parser("doctor", help="check this machine before a run: GPUs, driver vs torch, vLLM, model, memory")
    dr.add_argument("--model", default=None, help="model directory (default: $VLLM_MODEL_PATH or the Kaggle input mount)")
    dr.add_argument("--max-model-len", type=int, default=None)
    dr.add_argument("--gpu-memory-utilization", type=float, default=None)
    dr.add_argument("--no-import", action="store_true", help="do not import vLLM (faster; skips the import check)")
    dr.add_argument("--problems", default=None, help="a KernelBench-format folder: say which problems fit beside "
                                                     "the engine, need it asleep, or are too big (default: bundled)")
    dr.add_argument("--level", type=int, default=None, help="with --problems: one level")
    dr.add_argument("--json", action="store_true")
    dr.set_defaults(func=_cmd_doctor)

    wh = sub.add_parser("wheels", help="build the offline wheels folder for Kaggle's image and check it resolves")
    wh.add_argument("dir")
    wh.add_argument("--python", default="3.12", help="the image's Python (default 3.12)")
    wh.add_argument("--pip-python", default=None, help="a Python of that version to run pip with (default: pythonX.Y on PATH)")
    wh.add_argument("--requirement", action="append", help="more requirements to include (repeatable)")
    wh.add_argument("--no-self", action="store_true", help="do not build and include kaggle_kit's own wheel")
    wh.add_argument("--find-links", action="append", help="another wheel source (repeatable)")
    wh.add_argument("--index-url", default=None)
    wh.add_argument("--no-check", action="store_true", help="skip the offline resolve check")
    wh.add_argument("--json", action="store_true")
    wh.set_defaults(func=_cmd_wheels)

    ts = sub.add_parser("tts", help="run a test-time-scaling strategy on one prompt")
    ts.add_argument("--model", default=None, help="model directory (default: $VLLM_MODEL_PATH or the Kaggle input mount)")
    ts.add_argument("--prompt", required=True)
    ts.add_argument("--system", default=None)
    ts.add_argument("--json", action="store_true", help="print the whole result as JSON")
    ts.add_argument("--tree", action="store_true", help="with --json: include every scored step")
    from kaggle_kit.config import add_field_arguments
    from kaggle_kit.service.limits import Limits
    from kaggle_kit.tts.params import TTSParams

    add_field_arguments(ts, TTSParams, names=_dashed, given_only=True)  # unset: TTSParams' default
    ts.set_defaults(func=_cmd_tts)

    sv = sub.add_parser("serve", help="serve the model and the TTS strategies over OpenAI's API")
    sv.add_argument("--model", default=None, help="model directory (default: $VLLM_MODEL_PATH or the Kaggle input mount)")
    sv.add_argument("--host", default="127.0.0.1", help="default: loopback only")
    sv.add_argument("--port", type=int, default=8001)
    sv.add_argument("--api-key", default=None, help="require this bearer key (or set KK_API_KEY)")
    sv.add_argument("--served-model-name", default=None,
                    help="the model id /v1/models lists (default: from the model's config or the Kaggle model path)")
    sv.add_argument("--max-model-len", type=int, default=None)
    sv.add_argument("--strict", action="store_true",
                    help="404 for another model id, 400 for max_tokens over the window (default: serve, and report "
                         "the change in kk_adjustments and the X-KK-Adjusted header)")
    add_field_arguments(sv, Limits, names=lambda f: ["--" + f.name.replace("_", "-")], given_only=True)
    sv.add_argument("--slots", type=int, default=None, help="sequences in the engine at once (default: from its KV cache)")
    sv.add_argument("--interactive-share", type=int, default=1,
                    help="sequences each TTS request keeps while plain requests wait (default 1)")
    sv.add_argument("--max-concurrent", type=int, default=32)
    sv.set_defaults(func=_cmd_serve)

    rn = sub.add_parser("run-notebooks", help="execute the ordered notebooks with papermill (one kernel, one model load)")
    rn.add_argument("-p", nargs=2, action="append", metavar=("NAME", "VALUE"), help="a notebook parameter (repeatable)")
    rn.add_argument("--out", default="runs/latest", help="the run folder: executed notebook, tables, figures")
    rn.set_defaults(func=_cmd_run_notebooks)

    sw = sub.add_parser("sweep", help="run a parameter grid (YAML: base, grid, out_dir), one point at a time")
    sw.add_argument("spec")
    sw.add_argument("--out", default=None)
    sw.set_defaults(func=_cmd_sweep)

    bu = sub.add_parser("bundle", help="build the single notebook Kaggle runs from the ordered stages")
    bu.add_argument("-p", nargs=2, action="append", metavar=("NAME", "VALUE"), help="inject a parameter (papermill prepare-only)")
    bu.add_argument("--out", default=None)
    bu.set_defaults(func=_cmd_bundle)

    pu = sub.add_parser("push", help="validate kernel-metadata.json, bundle, and `kaggle kernels push`")
    pu.add_argument("-p", nargs=2, action="append", metavar=("NAME", "VALUE"))
    pu.add_argument("--out", default="build/kaggle", help="the folder that is pushed")
    pu.add_argument("--dry-run", action="store_true", help="prepare and validate the folder, do not push")
    pu.set_defaults(func=_cmd_push)

    fe = sub.add_parser("fetch", help="download a finished kernel's output (`kaggle kernels output`)")
    fe.add_argument("kernel", nargs="?", default=None, help="owner/slug (default: kernel-metadata.json's id)")
    fe.add_argument("--out", default="runs/kaggle")
    fe.set_defaults(func=_cmd_fetch)

    sh = sub.add_parser("shards", help="split a run over several Kaggle sessions: plan, push, status, pull, merge")
    sh.add_argument("action", choices=["plan", "push", "status", "pull", "merge"])
    sh.add_argument("run", help="the run's name (kernels are <owner>/kk-<run>-s<i>of<n>)")
    sh.add_argument("--root", default="shards", help="where manifests, pushed folders, outputs and merges live")
    sh.add_argument("--shards", type=int, default=2, help="plan: how many sessions")
    sh.add_argument("--owner", default=os.environ.get("KAGGLE_USERNAME", ""), help="plan: the Kaggle user (default: $KAGGLE_USERNAME)")
    sh.add_argument("-p", nargs=2, action="append", metavar=("NAME", "VALUE"), help="plan: a notebook parameter (repeatable)")
    sh.add_argument("--local-problems", default=None, help="plan: a local copy of problems_dir, to list its problems")
    sh.add_argument("--quota", default=None, help="plan: GPU hours available, or 'live' (`kaggle quota`); default 30")
    sh.add_argument("--stale-hours", type=float, default=6.0, help="push: re-push a shard queued this long")
    sh.add_argument("--wait", action="store_true", help="status: poll until every shard has finished")
    sh.add_argument("--poll", type=float, default=60.0, help="status --wait: seconds between polls")
    sh.set_defaults(func=_cmd_shards)

    go = sub.add_parser("golden", help="regenerate the nbval golden notebooks (tests/golden) on the tiny model")
    go.set_defaults(func=_cmd_golden)

    d = sub.add_parser("demo", help="build the tiny model and run it through the real vLLM engine")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--model-dir", default=None, help="default: the tiny model cache (~/.cache/kaggle_kit/tiny-model)")
    d.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    import os

    # stdout is for results (e.g. --json); vLLM logs to stdout unless told otherwise.
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    args = build_parser().parse_args(argv)
    from kaggle_kit.config import KaggleKitError, quiet_logs

    quiet_logs(args.verbose)  # third-party noise off; -v / KK_LOG_LEVEL=INFO brings it back

    try:
        return args.func(args)
    except (KaggleKitError, ValueError, TypeError, FileNotFoundError, RuntimeError) as e:
        print(f"kaggle-kit: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
