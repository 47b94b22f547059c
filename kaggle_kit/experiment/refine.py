"""Kernel refinement with execution feedback, searched with TTS, kept as a browsable tree.

Round 1 is the ordinary experiment. After every round each lineage (problem, sample)
keeps its best `refine_width` candidates, execution first (passes cleanly, passes but
flagged, compiles), then the uncertainty score; each one's next prompt is the problem,
that candidate's code and the evaluator's feedback (`kernels_eval.feedback`), and it is
generated with the same TTS strategy again. A lineage stops at a correct, unflagged
kernel with at least `target_speedup`, after `refine_rounds` rounds, or at the deadline.
With `resample` a later round is instead a fresh answer to the problem's own prompt, one per
unsolved lineage: an adaptive budget whose stop is the execution verdict, not a score.
Every round goes through the same records (keys carry the round and the branch), so a
kill or a deadline resumes mid-round.

The attempts are also written to a subchat store (`attempts.sqlite` in the run folder):
one conversation per (run, problem) whose first message is the prompt; every evaluated
candidate of every sample is a subchat holding its answer and the feedback, with its
status and speedup in the messages' meta; a refinement branches from the feedback it
answers.
A person opens any attempt in the widget, reads why it failed, and branches from it by
hand with the same context rules as every subchat.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
import pandas as pd

from kernels_eval.feedback import feedback
from kernels_eval.metrics import FAST_P, fast_p, geomean_speedup
from kernels_eval.prompts import SYSTEM, build_refinement_messages
from kernels_eval.records import EvaluatedRecord, Evaluation, GeneratedRecord

from kaggle_kit.experiment.config import ExperimentConfig
from kaggle_kit.experiment.generate import Job
from kaggle_kit.experiment.runner import Runner, prompt_job
from kaggle_kit.experiment.verifiers import score_key

ATTEMPTS = "attempts.sqlite"


def _rank(e: Evaluation, score) -> tuple:
    r = e.result
    return (r.counts_as_correct, r.counts_as_correct and (r.speedup or 0.0), r.correct, r.compiled, score_key(score))


def solved(e: Evaluation, target: float) -> bool:
    return e.result.counts_as_correct and (e.result.speedup or 0.0) >= target


def lineage(key: str) -> str:
    problem, sample = key.split("|")[:2]
    return f"{problem}|{sample}"


def next_jobs(cfg: ExperimentConfig, runner: Runner, items: list[tuple[GeneratedRecord, EvaluatedRecord]],
              round_: int) -> list[Job]:
    """Round `round_`'s jobs: the best candidates of each unsolved lineage's previous round, with feedback
    (resample: one fresh answer to the problem's prompt per unsolved lineage)."""
    by_lineage: dict[str, list] = defaultdict(list)
    for g, e in items:
        for ev in e.evaluations:
            if ev.result.evaluated:
                by_lineage[lineage(g.key)].append((g, ev))
    jobs = []
    for pairs in by_lineage.values():
        if any(solved(ev, cfg.target_speedup) for _, ev in pairs):
            continue  # this lineage is done
        if cfg.resample:  # the lineage's one answer of the last round is the parent; nothing to rank
            g = pairs[0][0]
            jobs.append(prompt_job(cfg, runner.problems[g.problem], g.sample, round=round_, parent=g.key))
            continue
        pairs.sort(key=lambda p: _rank(p[1], p[0].candidates[p[1].index].score), reverse=True)
        for g, ev in pairs[: cfg.refine_width]:
            problem = runner.problems[g.problem]
            text = feedback(ev.result, ev.parse_status, cfg.target_speedup)
            messages = build_refinement_messages(problem, cfg.device, g.candidates[ev.index].text, text, cfg.tts.enable_thinking)
            branch = f"{g.branch}.{ev.index}" if g.branch else str(ev.index)
            jobs.append(Job(problem, g.sample, messages, round=round_, parent=g.key, parent_candidate=ev.index,
                            branch=branch))
    return jobs


def previous_round(runner: Runner, round_: int) -> list[tuple[GeneratedRecord, EvaluatedRecord]]:
    """The evaluated items of round `round_ - 1`: what round `round_` refines."""
    gen, ev = runner.store.latest()
    return [(g, ev[k]) for k, g in gen.items() if g.round == round_ - 1 and k in ev and ev[k].complete]


# -- the attempt tree ----------------------------------------------------------------------------

def open_attempts(folder: str | Path):
    from kaggle_kit.subchat.store import open_store

    return open_store(Path(folder) / ATTEMPTS)


def _label(g: GeneratedRecord, index: int, e: Evaluation) -> str:
    """Short: the breadcrumb shows the path, so a refinement does not repeat its sample (its parent has it)."""
    r = e.result
    speed = f" {r.speedup:.2f}x" if r.correct and r.speedup else ""
    where = f"sample {g.sample}" if g.round == 1 else f"round {g.round}"
    if g.round > 1 and g.parent_candidate is None:  # resampled: a sibling of round 1's answers, not a child
        where = f"sample {g.sample} · {where}"
    return f"{where} · candidate {index} · {r.status.value}{speed}"


def write_attempts(store, cfg: ExperimentConfig, gen: dict[str, GeneratedRecord], ev: dict[str, EvaluatedRecord]) -> int:
    """Add every evaluated candidate not yet in the tree; returns how many were added."""
    run = str(cfg.folder)
    nodes = store.find()  # the tree as it is, read once: every round calls this with every record
    attempts = {n.meta["attempt"]: n for n in nodes if "attempt" in n.meta}
    roots = {n.meta["problem"]: n for n in nodes if n.parent_id is None and n.meta.get("run") == run}
    added = 0
    for key, g in sorted(gen.items(), key=lambda kv: (kv[1].round, kv[0])):
        e = ev.get(key)
        if e is None:
            continue
        if g.parent_candidate is None:  # an answer to the prompt itself: round 1's, or a resampled round's
            root = roots.get(g.problem)
            if root is None:  # the samples share the prompt: each one's candidates branch from it
                root = roots[g.problem] = store.new_conversation(
                    f"{cfg.experiment_name or cfg.folder.name} · {g.problem}", system_prompt=SYSTEM,
                    meta={"run": run, "problem": g.problem})
                user = next(m["content"] for m in g.prompt if m["role"] == "user")
                store.add_message(root.id, "user", user, meta={"kind": "prompt"})
            anchor_node, anchor_msg = root, store.messages(root.id)[0]
        else:
            anchor_node = attempts.get(f"{g.parent}#{g.parent_candidate}")
            if anchor_node is None:
                continue  # its parent was not evaluated into the tree (cannot happen unless the store was edited)
            anchor_msg = next(m for m in reversed(store.messages(anchor_node.id)) if m.meta.get("kind") == "feedback")
        for x in e.evaluations:
            attempt = f"{key}#{x.index}"
            if attempt in attempts:
                continue
            r = x.result
            c = g.candidates[x.index]
            meta = {"attempt": attempt, "key": key, "sample": g.sample, "candidate": x.index, "round": g.round,
                    "status": r.status.value,
                    "speedup": r.speedup, "correct": r.counts_as_correct, "chosen": x.index == e.chosen,
                    "score": c.score}
            node = attempts[attempt] = store.branch(anchor_node.id, anchor_msg, _label(g, x.index, x), meta=meta)
            store.add_message(node.id, "assistant", c.text, meta={"kind": "answer", **meta})
            text = feedback(r, x.parse_status, cfg.target_speedup) or \
                f"The evaluator itself failed ({r.status.value}); nothing is known about this kernel yet."
            store.add_message(node.id, "user", text, meta={"kind": "feedback", "status": r.status.value,
                                                           "speedup": r.speedup})
            added += 1
    return added


# -- results per round ---------------------------------------------------------------------------

def round_table(gen: dict[str, GeneratedRecord], ev: dict[str, EvaluatedRecord]) -> pd.DataFrame:
    """fast_p and geomean speedup per round, per strategy, for two ways of reporting a lineage's kernel:
    'execution' (the best evaluated candidate so far: what the refinement keeps) and 'uncertainty' (the
    candidate the strategy's score picked in the lineage's latest round, never running anything).
    tokens: generated tokens spent on the lineage up to that round (mean over lineages)."""
    rows = []
    lineages: dict[tuple, list[GeneratedRecord]] = defaultdict(list)
    scorer = {}
    for g in gen.values():
        lineages[(g.strategy, lineage(g.key))].append(g)
        scorer[g.strategy] = g.scorer
    strategies = sorted({s for s, _ in lineages})
    last = max((g.round for g in gen.values()), default=0)
    for strategy in strategies:
        for r in range(1, last + 1):
            for selection in ("execution", "uncertainty"):
                picked, tokens = [], []
                for (s, _), items in lineages.items():
                    if s != strategy:
                        continue
                    upto = [g for g in items if g.round <= r and g.key in ev]
                    if not upto:
                        continue
                    tokens.append(sum((g.tts.get("usage") or {}).get("generated_tokens", 0) for g in upto))
                    if selection == "execution":
                        best = max(((g, x) for g in upto for x in ev[g.key].evaluations if x.result.evaluated),
                                   key=lambda p: _rank(p[1], p[0].candidates[p[1].index].score), default=None)
                    else:
                        latest = max(g.round for g in upto)
                        cands = [(g, x) for g in upto if g.round == latest for x in ev[g.key].evaluations
                                 if x.index == g.chosen and x.result.evaluated]
                        best = max(cands, key=lambda p: score_key(p[0].candidates[p[0].chosen].score), default=None)
                    if best is not None:
                        picked.append(best[1].result)
                row = {"strategy": strategy, "scorer": scorer[strategy], "round": r, "selection": selection,
                       "lineages": len(picked),
                       "tokens": sum(tokens) / len(tokens) if tokens else 0.0}
                for p in FAST_P:
                    num, den = fast_p(picked, p)
                    row[f"fast_{p:g}"] = num / den if den else None
                row["geomean_speedup"] = geomean_speedup(picked)
                rows.append(row)
    return pd.DataFrame(rows)

