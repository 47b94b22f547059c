"""Generation for the experiment: the local engine (one call per step for a whole batch) or
the OpenAI-compatible service (the tts_* fields, requests in flight together).
Either way each item comes back as a typed `GeneratedRecord`."""
from __future__ import annotations

import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from kernels_eval.problems import Problem
from kernels_eval.records import Candidate, GeneratedRecord, item_key

from kaggle_kit.engine.types import Engine
from kaggle_kit.experiment.config import ExperimentConfig


@dataclass
class Job:
    """One item to generate: a problem, a sample index, and the chat to send."""

    problem: Problem
    sample: int
    messages: list[dict[str, str]]
    round: int = 1
    parent: str | None = None  # refinement: the item, and the candidate of it, this job refines
    parent_candidate: int | None = None
    branch: str = ""

    def key(self, cfg: ExperimentConfig) -> str:
        return item_key(self.problem.name, self.sample, cfg.tts.strategy, self.round, self.branch)


def job_seed(cfg: ExperimentConfig, job: Job) -> int:
    """Each sample, round and branch samples with its own seed (reproducible, and distinct)."""
    branch = int(hashlib.sha256(job.branch.encode()).hexdigest()[:6], 16) if job.branch else 0
    return cfg.seed + job.sample + 7919 * (job.round - 1) + 104729 * branch


def _tree_rows(result) -> list[dict]:
    return [{"id": s.id, "parent": s.parent, "depth": s.depth, "score": s.score, "path_score": s.path_score,
             "num_tokens": s.num_tokens, "selected": s.selected, "finish": s.finish} for s in result.tree]


def make_record(cfg: ExperimentConfig, job: Job, candidates: list[Candidate], chosen: int = 0, tts: dict | None = None,
                steps: list | None = None, seconds: float = 0.0) -> GeneratedRecord:
    return GeneratedRecord(key=job.key(cfg), problem=job.problem.name, sample=job.sample, strategy=cfg.tts.strategy,
                           scorer=cfg.tts.scorer, chosen=chosen, candidates=candidates, round=job.round, parent=job.parent,
                           parent_candidate=job.parent_candidate, branch=job.branch, prompt=job.messages,
                           tts=tts or {}, steps=steps or [], generation_s=seconds)


def generate_local(cfg: ExperimentConfig, jobs: list[Job], engine: Engine | None = None) -> list[GeneratedRecord]:
    """One `run_strategy_batch` per sample index (each sample keeps its own seed)."""
    from kaggle_kit.tts.api import run_strategy_batch

    out: dict[int, GeneratedRecord] = {}
    by_seed: dict[int, list[int]] = {}
    for i, job in enumerate(jobs):
        by_seed.setdefault(job_seed(cfg, job), []).append(i)
    for seed, idx in by_seed.items():
        t = time.perf_counter()
        results = run_strategy_batch([jobs[i].messages for i in idx], engine=engine, progress=False,
                                     params=cfg.search_params(seed))
        each = (time.perf_counter() - t) / len(idx)
        for i, r in zip(idx, results):
            cands = [Candidate(k, c.text, _finite(c.aggregated_score), c.completion_reason.value, c.num_tokens,
                               len(c.steps)) for k, c in enumerate(r.candidates)]
            meta = r.to_dict()
            tts = {k: meta[k] for k in ("aggregated_score", "completion_reason", "usage", "elapsed_s", "prompt_tokens")}
            out[i] = make_record(cfg, jobs[i], cands, r.chosen_index, tts, _tree_rows(r), each)
    return [out[i] for i in range(len(jobs))]


def generate_remote(cfg: ExperimentConfig, jobs: list[Job]) -> list[GeneratedRecord]:
    """Through the service: the requests go out together, so its worker batches them."""
    from openai import OpenAI

    p = cfg.tts
    client = OpenAI(base_url=cfg.service_url, api_key=cfg.api_key, timeout=3600, max_retries=2)
    model = cfg.model or client.models.list().data[0].id

    def one(job: Job) -> GeneratedRecord:
        extra = {**p.to_wire(), "top_k": p.top_k}
        if p.stop:
            extra["stop"] = list(p.stop)
        if p.enable_thinking:
            extra["chat_template_kwargs"] = {"enable_thinking": True}
        t = time.perf_counter()
        r = client.chat.completions.create(model=model, messages=job.messages, temperature=p.temperature,
                                           top_p=p.top_p, max_tokens=p.max_tokens,
                                           seed=job_seed(cfg, job), extra_body=extra)
        meta = r.model_dump().get("tts_metadata") or {}
        text = r.choices[0].message.content or ""
        listed = meta.get("candidates") or [{"text": text, "chosen": True}]
        cands = [Candidate(k, c["text"], c.get("aggregated_score"), c.get("completion_reason"), None, c.get("num_steps"))
                 for k, c in enumerate(listed)]
        chosen = next((k for k, c in enumerate(listed) if c.get("chosen")), 0)
        tts = {k: meta.get(k) for k in ("aggregated_score", "completion_reason", "usage", "elapsed_s")}
        return make_record(cfg, job, cands, chosen, tts, [], time.perf_counter() - t)

    with ThreadPoolExecutor(max(1, cfg.batch_size)) as pool:
        return list(pool.map(one, jobs))


def _finite(x):
    return x if isinstance(x, (int, float)) and x == x and abs(x) != float("inf") else None
