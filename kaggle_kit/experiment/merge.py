"""Several copies of a run (sessions, shards, attempts) merged into one run folder.

A run folder is a directory with run.json (its result settings) and records.jsonl. Copies of the
same run (the same path below each source root) merge when their settings agree: records are
deduplicated by key, an item's complete evaluation wins over an incomplete one, and the merged
records are written in key order, so the merge of any split equals the merge of any other.
Copies whose settings differ are refused, as a resumed run refuses them.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from kernels_eval.records import EvaluatedRecord, GeneratedRecord, RecordStore

from kaggle_kit.config import ConfigError
from kaggle_kit.experiment.config import differences

RUN_FILE, RECORDS = "run.json", "records.jsonl"


@dataclass
class MergedRun:
    folder: Path
    sources: list[Path]
    generated: int
    evaluated: int  # items whose evaluation is complete
    incomplete: list[str] = field(default_factory=list)  # keys generated but not (fully) evaluated


def run_folders(root: Path) -> dict[str, Path]:
    """Relative path -> run folder, for every run folder at or below `root` (a grid has one per method)."""
    root = Path(root)
    if not root.is_dir():
        return {}
    found = [p.parent for p in root.rglob(RUN_FILE)]
    return {str(p.relative_to(root)): p for p in sorted(found)}


def _fingerprint(folder: Path) -> dict:
    try:
        return json.loads((folder / RUN_FILE).read_text())["fingerprint"]
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"{folder / RUN_FILE} is missing or unreadable ({e}): not a run folder") from None


def _better(old: EvaluatedRecord | None, new: EvaluatedRecord) -> bool:
    """A later evaluation of a key replaces an earlier one unless it is less complete."""
    return old is None or new.complete or not old.complete


def merge_run(copies: list[Path], dest: Path) -> MergedRun:
    """Merge copies of one run folder into `dest` (which may be one of them)."""
    copies = [Path(c) for c in copies]
    dest = Path(dest)
    prints = {str(c): _fingerprint(c) for c in copies}
    if dest.joinpath(RUN_FILE).exists() and str(dest) not in prints:
        prints[str(dest)] = _fingerprint(dest)
    first_path, first = next(iter(prints.items()))
    for path, fp in prints.items():
        differ = differences(first, fp)
        if differ:
            what = "; ".join(f"{k}: {a!r} in {first_path} vs {b!r} in {path}" for k, (a, b) in differ.items())
            raise ConfigError(f"cannot merge runs made with other settings: {what}")
    gen: dict[str, GeneratedRecord] = {}
    ev: dict[str, EvaluatedRecord] = {}
    sources = copies + ([dest] if dest.joinpath(RECORDS).exists() and dest not in copies else [])
    for src in sources:
        g, e = RecordStore(src / RECORDS).latest()
        for k, r in g.items():
            gen.setdefault(k, r)  # the first copy's answer; a later copy of the same key is the same item
        for k, r in e.items():
            if _better(ev.get(k), r):
                ev[k] = r
    dest.mkdir(parents=True, exist_ok=True)
    run_json = (copies[0] if copies else dest) / RUN_FILE
    if run_json.resolve() != (dest / RUN_FILE).resolve():
        (dest / RUN_FILE).write_text(run_json.read_text())
    tmp = dest / (RECORDS + ".merge-tmp")
    tmp.unlink(missing_ok=True)
    store = RecordStore(tmp)
    for k in sorted(gen):
        store.append(gen[k])
    for k in sorted(ev):
        if k in gen:
            store.append(ev[k])
    os.replace(tmp, dest / RECORDS)  # the old records stay whole until the merged ones are
    done = [k for k in gen if k in ev and ev[k].complete]
    return MergedRun(dest, sources, len(gen), len(done), sorted(set(gen) - set(done)))


def merge_roots(roots: list[Path], dest: Path) -> dict[str, MergedRun]:
    """Merge every run folder found below any of `roots` with its copies in the others, into `dest`."""
    by_rel: dict[str, list[Path]] = {}
    for root in roots:
        for rel, folder in run_folders(root).items():
            by_rel.setdefault(rel, []).append(folder)
    return {rel: merge_run(copies, Path(dest) / rel) for rel, copies in sorted(by_rel.items())}


def resume_from(previous: str | list[str] | None, out_dir: str | Path, inputs_dir: str | Path | None = None) -> list[Path]:
    """Seed `out_dir` with the records of earlier sessions, so a run resumes where they stopped.

    `previous`: names of earlier notebooks' outputs attached to this session (found under the
    inputs folder), or folders; a comma list is accepted (papermill). Each holds the run below the
    same relative `out_dir` it was written to. Returns the run roots merged in; a name that is not
    attached is an error, since the run would silently start over.
    """
    from kaggle_kit.config import attached_inputs

    names = [n.strip() for n in previous.split(",")] if isinstance(previous, str) else list(previous or [])
    out = Path(out_dir)
    rel = out if not out.is_absolute() else Path(out.name)
    roots = []
    for name in filter(None, names):
        found = [Path(name)] if Path(name).is_dir() else attached_inputs(name, inputs_dir)
        if not found:
            raise ConfigError(f"resume_from: {name!r} is not attached to this session (add that notebook's output "
                              f"as an input) and is not a folder")
        roots += [f / rel for f in found if (f / rel).is_dir()]
    if roots:
        merge_roots(roots + [out], out)
    return roots
