"""A newcomer's first run, timed: `make demo` in a fresh clone; then again, as a user reruns it (the demo resumes
its run folder); then warm (`.venv` and the caches kept, the run folder removed: the work done anew).

    python benchmarks/first_run.py [--repo .] [--caches empty|machine] [--busy] [--json OUT]

--caches empty runs with a new HOME (no uv/pip cache, no ~/.cache/kaggle_kit: the tiny model is fitted) and
new sandbox/PCH folders, as on a machine that never ran the project; `machine` keeps this machine's caches
(a second clone). --busy keeps one core busy throughout, as a user's other work would. Prints, per run: wall
time, the phases the demo announced, its lines of output and its longest silence (the issue's 30 s bound).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(cmd: list[str], cwd: Path, env: dict) -> dict:
    t0 = last = time.monotonic()
    silence, lines, phases, before, after = 0.0, 0, [], "", ""
    previous = "(start)"
    p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in p.stdout:
        now = time.monotonic()
        if now - last > silence:
            silence, before, after = now - last, previous, line.strip()[:100]
        last, lines, previous = now, lines + 1, line.strip()[:100]
        if line.startswith("[") and "/5 " in line[:8] or line.startswith("setup:") or "notebooks ran in" in line:
            phases.append(f"{now - t0:6.0f} s  {line.strip()[:110]}")
        sys.stdout.write(line)
    rc = p.wait()
    if time.monotonic() - last > silence:
        silence, before, after = time.monotonic() - last, previous, "(exit)"
    return {"rc": rc, "wall_s": round(time.monotonic() - t0, 1), "lines": lines, "longest_silence_s": round(silence, 1),
            "silence_between": [before, after], "phases": phases}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", default=".")
    ap.add_argument("--caches", choices=["empty", "machine"], default="machine")
    ap.add_argument("--busy", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kk-first-run-"))
    clone = work / "kaggle_kit"
    subprocess.run(["git", "clone", "-q", str(Path(a.repo).resolve()), str(clone)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    if a.caches == "empty":
        home = work / "home"
        home.mkdir()
        if (Path.home() / ".config" / "pip").is_dir():  # pip's settings (where the CPU torch wheel is) are not a cache
            shutil.copytree(Path.home() / ".config" / "pip", home / ".config" / "pip")
        env.update(HOME=str(home), KK_SANDBOX_DIR=str(work / "sandbox"), KK_PCH_DIR=str(work / "pch"))
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if a.busy else None
    try:
        runs = {"first": timed(["make", "demo"], clone, env)}
        runs["again"] = timed(["make", "demo"], clone, env)  # as a user reruns it: the demo resumes its run folder
        shutil.rmtree(clone / "runs")
        runs["warm"] = timed(["make", "demo"], clone, env)  # .venv and the caches kept, the run done anew
    finally:
        if busy:
            busy.kill()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True, text=True).stdout.strip()
    print(f"\n=== make demo in a fresh clone of {head} (caches: {a.caches}{', one core busy' if a.busy else ''}) ===")
    for name, r in runs.items():
        print(f"{name:>6}: rc {r['rc']}, {r['wall_s'] / 60:.1f} min ({r['wall_s']:.0f} s), {r['lines']} lines, "
              f"longest silence {r['longest_silence_s']:.0f} s")
        print(f"        (between: {r['silence_between'][0]!r} and {r['silence_between'][1]!r})")
        for p in r["phases"]:
            print("        " + p)
    if a.json:
        Path(a.json).write_text(json.dumps({"commit": head, "caches": a.caches, "busy": a.busy, **runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
