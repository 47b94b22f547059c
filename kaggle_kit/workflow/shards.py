"""A run too big for one Kaggle session, split over several: plan, push, status, pull, merge.

    kaggle-kit shards plan   RUN --shards 4 -p problems=all -p strategy=beam_search
    kaggle-kit shards push   RUN            # one kernel per shard; again: only what is broken
    kaggle-kit shards status RUN [--wait]
    kaggle-kit shards pull   RUN            # each finished shard's run folder, resumably
    kaggle-kit shards merge  RUN            # one run folder: records by key, what is missing listed

A shard is a Kaggle kernel that runs the bundle notebook with its share of the problems injected by
papermill, pushed and followed with the kaggle CLI. Everything about a sharded run is in one file,
shards/RUN/manifest.json, written atomically after every change, so each command can be stopped and
run again. A shard that failed, never started, or stopped at its deadline with work left is pushed
again as a new kernel (`<slug>-r2`, ...) with the earlier attempts' outputs attached as kernel
sources and named in the notebook's `resume_from`: it merges their records and continues where
they stopped (their compile caches come along: engine/compile_cache.py).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from kaggle_kit.config import ConfigError

ROOT = Path("shards")
KAGGLE_CORES = 4  # a "GPU T4 x2" session's CPU count: its evaluation workers
SESSION_HOURS = 12.0  # Kaggle's limit for one notebook session
# Installing the wheels and loading a 14B AWQ model on two T4s, before the first item: not measured
# on Kaggle (no T4 here); an upper guess so that a shard's estimate does not overrun the session.
SESSION_SETUP_S = 15 * 60
# Kaggle's weekly GPU quota "floats" (about 30 h; The Kaggle Book, ch. 3, citing
# kaggle.com/product-feedback/173129); `kaggle quota` (CLI >= 2.2) reads this week's.
DEFAULT_QUOTA_HOURS = 30.0
TERMINAL = ("complete", "error", "cancel_requested", "cancel_acknowledged")
FAILED = ("error", "cancel_requested", "cancel_acknowledged")
WAITING = ("pushed", "queued", "new_script")


@dataclass
class Attempt:
    kernel_id: str  # owner/slug
    pushed_at: float
    version: int | None = None
    resumes: list[str] = field(default_factory=list)  # kernel ids whose output it continues
    status: str = "pushed"  # then what `kaggle kernels status` says: queued, running, complete, error, ...
    message: str = ""
    pulled: bool = False

    @property
    def slug(self) -> str:
        return self.kernel_id.split("/", 1)[1]


@dataclass
class Shard:
    index: int
    problems: list[str]
    items: int
    estimate_s: float  # the session's work, setup included
    attempts: list[Attempt] = field(default_factory=list)
    missing: list[str] | None = None  # item keys the last merge did not find complete (None: not merged)

    @property
    def last(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None


@dataclass
class Manifest:
    run: str
    owner: str
    slug: str
    params: dict[str, Any]  # the notebook parameters every shard shares
    shards: list[Shard]
    quota_hours: float
    quota_source: str
    created: float = field(default_factory=time.time)

    @property
    def gpu_hours(self) -> float:
        return sum(s.estimate_s for s in self.shards) / 3600

    def out_dir(self) -> str:
        return f"runs/{self.run}"  # below /kaggle/working: the kernel's output

    def save(self, root: Path = ROOT) -> Path:
        path = manifest_path(self.run, root)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(self), indent=1) + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, run: str, root: Path = ROOT) -> "Manifest":
        path = manifest_path(run, root)
        if not path.exists():
            raise ConfigError(f"no sharded run {run!r} in {root}: plan it first (kaggle-kit shards plan {run} ...)")
        d = json.loads(path.read_text())
        d["shards"] = [Shard(**{**s, "attempts": [Attempt(**a) for a in s["attempts"]]}) for s in d["shards"]]
        return cls(**d)


def manifest_path(run: str, root: Path = ROOT) -> Path:
    return Path(root) / run / "manifest.json"


# -- plan ------------------------------------------------------------------------------------------

def _points(params: dict[str, Any]) -> list[tuple[str, str, str]]:
    from kaggle_kit.experiment import grid_points

    return grid_points(params["strategy"], params["scorer"], params["verifier"])


def item_seconds(params: dict[str, Any]) -> tuple[float, int]:
    """Seconds one problem takes in a session (every grid point, every refinement round) and its items."""
    from kaggle_kit.experiment.config import ExperimentConfig
    from kaggle_kit.experiment.runner import item_seconds as per_item
    from kaggle_kit.tts.params import NAMES as TTS_NAMES

    total, items = 0.0, 0
    for s, sc, v in _points(params):
        # the notebook's parameters of the search (the grid point's strategy and scorer, its max_tokens)
        search = {k: params[k] for k in TTS_NAMES if k in params} | {"strategy": s, "scorer": sc,
                                                                     "max_tokens": params["tts_max_tokens"]}
        cfg = ExperimentConfig.of(**search, verifier=v, device="cuda",
                                  evaluate=bool(params["evaluate"]), batch_size=params["batch_size"],
                                  refine_rounds=params["refine_rounds"], refine_width=params["refine_width"],
                                  resample=bool(params.get("resample")))
        gen, ev = per_item(cfg, int(params.get("workers") or KAGGLE_CORES))
        total += cfg.items_per_lineage * (gen + ev)
        items += cfg.items_per_lineage
    return total, items


def plan(run: str, shards: int, params: dict[str, Any] | None = None, owner: str = "", slug: str | None = None,
         local_problems: str | None = None, quota: tuple[float, str] | None = None,
         session_hours: float = SESSION_HOURS) -> Manifest:
    """Split a run into `shards` Kaggle sessions; refuse a plan whose shard cannot finish in one."""
    from kernels_eval.problems import load_problems

    from kaggle_kit.experiment.config import shard_of
    from kaggle_kit.experiment.deadline import SAFETY_MARGIN_S, describe
    from kaggle_kit.workflow.cells import problem_list
    from kaggle_kit.workflow.notebooks import BUNDLE, check_choices, check_parameters, parameter_defaults

    defaults = parameter_defaults(BUNDLE)
    params = dict(params or {})
    check_parameters(params, defaults)
    check_choices(params)
    for reserved in ("out_dir", "resume_from"):
        if reserved in params:
            raise ConfigError(f"{reserved!r} is set per shard by the planner; leave it out")
    if not owner or "/" in owner:
        raise ConfigError("give the Kaggle user that owns the kernels (--owner NAME; the kernels are owner/slug)")
    slug = slug or f"kk-{run}"
    if not _slug_ok(f"{slug}-s{shards}of{shards}-r9"):
        raise ConfigError(f"run name {run!r} makes kernel slugs Kaggle refuses: use lowercase letters, digits and "
                          "hyphens, at most 40 characters")
    merged = {**defaults, **params}
    where = merged.get("problems_dir")
    if where and not local_problems:
        raise ConfigError(f"problems_dir={where!r} is where the shards read problems on Kaggle; give a local copy "
                          "of the same tree (--local-problems DIR) to list them here")
    wanted = problem_list(merged["problems"])
    names = [p.name for p in load_problems(local_problems or None, merged.get("level"), wanted)]
    if shards < 1 or shards > len(names):
        raise ConfigError(f"--shards {shards}: between 1 and the {len(names)} problems")
    per_problem, items = item_seconds(merged)
    budget = session_hours * 3600 - SAFETY_MARGIN_S - SESSION_SETUP_S
    parts = [shard_of(names, i, shards) for i in range(shards)]
    out = [Shard(i, part, items * len(part), SESSION_SETUP_S + per_problem * len(part)) for i, part in enumerate(parts)]
    worst = max(out, key=lambda s: s.estimate_s)
    if worst.estimate_s - SESSION_SETUP_S > budget:
        need = math.ceil(per_problem * len(names) / budget)
        raise ConfigError(f"shard {worst.index + 1} needs ~{describe(worst.estimate_s)} (upper bound: {worst.items} "
                          f"items), more than one {session_hours:g} h session leaves ({describe(budget)} after setup "
                          f"and the safety margin): use --shards {max(need, shards + 1)} or more")
    hours, source = quota or (DEFAULT_QUOTA_HOURS, "default: Kaggle's weekly GPU quota floats around 30 h "
                                                   "(`kaggle quota` shows this week's)")
    return Manifest(run, owner, slug, params, out, hours, source)


def _slug_ok(slug: str) -> bool:
    from kaggle_kit.workflow.kaggle import _SLUG

    return 5 <= len(slug) <= 50 and bool(_SLUG.match(slug))


def describe_plan(m: Manifest) -> str:
    from kaggle_kit.experiment.deadline import describe

    lines = [f"{m.run}: {len(m.shards)} shards of the bundle notebook on GPU T4 x2, run folder {m.out_dir()}"]
    for s in m.shards:
        few = ", ".join(s.problems[:3]) + (f", ... ({len(s.problems)})" if len(s.problems) > 3 else "")
        lines.append(f"  shard {s.index + 1}: {kernel_slug(m, s, 1)}  {s.items} item(s)  ~{describe(s.estimate_s)}  [{few}]")
    verdict = "fits" if m.gpu_hours <= m.quota_hours else f"needs ~{math.ceil(m.gpu_hours / m.quota_hours)} weeks"
    lines.append(f"GPU time: ~{m.gpu_hours:.1f} h (upper bound, setup included) of a {m.quota_hours:g} h weekly "
                 f"quota ({m.quota_source}): {verdict}")
    return "\n".join(lines)


# -- push ------------------------------------------------------------------------------------------

def kernel_slug(m: Manifest, shard: Shard, attempt: int) -> str:
    base = f"{m.slug}-s{shard.index + 1}of{len(m.shards)}"
    return base if attempt == 1 else f"{base}-r{attempt}"


def why_push(shard: Shard, now: float, stale_s: float) -> str | None:
    """Why this shard needs a (new) kernel now, or None when it has one that is fine."""
    last = shard.last
    if last is None:
        return "new"
    if last.status in FAILED:
        return f"attempt {len(shard.attempts)} ended with {last.status}" + (f": {last.message}" if last.message else "")
    if last.status in WAITING and now - last.pushed_at > stale_s:
        return f"attempt {len(shard.attempts)} has not started in {(now - last.pushed_at) / 3600:.1f} h"
    if last.status == "complete" and shard.missing:
        return f"attempt {len(shard.attempts)} finished with {len(shard.missing)} item(s) left (its deadline)"
    return None


def push(m: Manifest, root: Path = ROOT, stale_hours: float = 6.0, now: float | None = None,
         log: Callable[[str], None] = print) -> list[str]:
    """Push every shard that needs a kernel; returns the kernel ids pushed. Pushing again is a no-op
    for shards whose kernel is queued, running or finished whole."""
    from kaggle_kit.workflow import kaggle

    now = time.time() if now is None else now
    pushed = []
    for shard in m.shards:
        reason = why_push(shard, now, stale_hours * 3600)
        if reason is None:
            continue
        # Continue from every earlier attempt that finished (an errored session's output is not relied on).
        resumes = [a.kernel_id for a in shard.attempts if a.status == "complete"]
        slug = kernel_slug(m, shard, len(shard.attempts) + 1)
        params = {**m.params, "problems": ",".join(shard.problems), "out_dir": m.out_dir(),
                  "resume_from": ",".join(k.split("/", 1)[1] for k in resumes) or None}
        params.setdefault("deadline", "kaggle")
        meta = {"id": f"{m.owner}/{slug}", "title": slug, "kernel_sources": resumes}
        folder = kaggle.prepare_push(Path(root) / m.run / "push" / slug, params, meta=meta)
        version, _ = kaggle.push_folder(folder)
        shard.attempts.append(Attempt(f"{m.owner}/{slug}", now, version, resumes))
        shard.missing = None
        m.save(root)  # after each push: a crash before this line re-pushes the same slug, a new version of one kernel
        log(f"shard {shard.index + 1}: pushed {m.owner}/{slug} (version {version}; {reason})")
        pushed.append(f"{m.owner}/{slug}")
    return pushed


# -- status and pull -------------------------------------------------------------------------------

def status(m: Manifest, root: Path = ROOT) -> list[Shard]:
    """Ask Kaggle for the status of every shard's latest attempt that has not finished."""
    from kaggle_kit.workflow import kaggle

    for shard in m.shards:
        last = shard.last
        if last is not None and last.status not in TERMINAL:
            last.status, last.message = kaggle.kernel_status(last.kernel_id)
    m.save(root)
    return m.shards


def wait(m: Manifest, root: Path = ROOT, poll_s: float = 60.0, timeout_s: float = 13 * 3600,
         sleep: Callable[[float], None] = time.sleep) -> list[Shard]:
    """Poll until no shard's latest attempt is running (queued ones that never start end it at timeout)."""
    from tqdm.auto import tqdm

    end = time.monotonic() + timeout_s
    with tqdm(total=len(m.shards), desc="shards finished", unit="shard") as bar:
        while True:
            status(m, root)
            done = sum(1 for s in m.shards if s.last is None or s.last.status in TERMINAL)
            bar.update(done - bar.n)
            if done == len(m.shards) or time.monotonic() > end:
                return m.shards
            sleep(poll_s)


def pulled_dir(m: Manifest, attempt: Attempt, root: Path = ROOT) -> Path:
    return Path(root) / m.run / "pulled" / attempt.slug


def pull(m: Manifest, root: Path = ROOT) -> list[str]:
    """Download the run folder of every finished attempt not yet pulled; returns their kernel ids."""
    from tqdm.auto import tqdm

    from kaggle_kit.workflow import kaggle

    todo = [a for s in m.shards for a in s.attempts if a.status in TERMINAL and not a.pulled]
    for a in tqdm(todo, desc="pull", unit="kernel", disable=not todo):
        # Only the run folder: the compile cache and figures stay on Kaggle (a re-push attaches them there).
        kaggle.fetch(a.kernel_id, pulled_dir(m, a, root), file_pattern=f"^{m.out_dir()}/")
        a.pulled = True
        m.save(root)
    return [a.kernel_id for a in todo]


# -- merge -----------------------------------------------------------------------------------------

@dataclass
class MergeReport:
    folder: Path
    runs: dict[str, Any]  # relative run folder -> MergedRun
    missing: dict[int, list[str]]  # shard index -> item keys not complete

    def describe(self) -> str:
        lines = [f"merged into {self.folder}:"]
        for rel, r in self.runs.items():
            lines.append(f"  {rel or 'the run'}: {r.generated} items, {r.evaluated} evaluated, from {len(r.sources)} folder(s)")
        if not any(self.missing.values()):
            lines.append("nothing missing: every planned item is generated and evaluated")
        for i, keys in sorted(self.missing.items()):
            if keys:
                lines.append(f"  shard {i + 1}: {len(keys)} missing, e.g. {', '.join(keys[:3])}: "
                             "`kaggle-kit shards push` pushes it again, resuming")
        return "\n".join(lines)


def merge(m: Manifest, root: Path = ROOT) -> MergeReport:
    """Merge every pulled attempt into shards/RUN/merged and list, per shard, the work still missing."""
    from kernels_eval.records import RecordStore, item_key

    from kaggle_kit.experiment import point_folder
    from kaggle_kit.experiment.merge import merge_roots
    from kaggle_kit.experiment.views import load_tables, write_tables

    sources = [pulled_dir(m, a, root) / m.out_dir() for s in m.shards for a in s.attempts if a.pulled]
    dest = Path(root) / m.run / "merged"
    runs = merge_roots([p for p in sources if p.is_dir()], dest)
    for r in runs.values():
        write_tables(load_tables(r.folder))
    params = {**_bundle_defaults(), **m.params}
    points = _points(params)
    missing = {}
    for shard in m.shards:
        keys: list[str] = []
        for s, sc, v in points:
            run = dest / point_folder(s, sc, v, len(points) > 1)
            gen, ev = RecordStore(run / "records.jsonl").latest() if run.is_dir() else ({}, {})
            done = {k for k, e in ev.items() if e.complete}
            # Every problem's first item (the notebook samples once), and anything generated but not evaluated.
            wanted = [item_key(p, 0, s) for p in shard.problems]
            wanted += [k for k, g in gen.items() if g.problem in shard.problems]
            keys += [k for k in dict.fromkeys(wanted) if k not in done]
        shard.missing = keys if any(a.pulled for a in shard.attempts) else None
        missing[shard.index] = keys
    m.save(root)
    return MergeReport(dest, runs, missing)


def _bundle_defaults() -> dict[str, Any]:
    from kaggle_kit.workflow.notebooks import BUNDLE, parameter_defaults

    return parameter_defaults(BUNDLE)
