"""`kernels-eval run`: generate kernels with a TTS strategy, evaluate them, append JSONL.

Generation goes through the registered local engine (kaggle_kit.run_strategy_batch)
or, with tts_service_url, through the OpenAI-compatible service with the tts_*
fields in the request body. Each record is written, flushed and fsync'd as soon
as it is evaluated; a rerun skips finished (problem, sample, strategy) items, so
a kill -9 loses at most the record in flight and never duplicates one.

verifier="execution" picks among a strategy's finished candidates by execution
(compiles and passes the correctness check), breaking ties by the uncertainty
score, and records what the uncertainty score alone would have picked.
"""
from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kernels_eval.evaluate import evaluate_response
from kernels_eval.problems import Problem, load_problems
from kernels_eval.prompts import build_messages


@dataclass
class RunConfig:
    experiment_name: str
    model_name: str | None = None  # model dir for the local engine, or the served model's id
    level: int | None = None
    problems_dir: str | None = None
    problems: list[str] | None = None
    num_samples: int = 1
    tts_strategy: str = "offline_bon"
    tts_scorer: str = "entropy"
    tts_num_trajectories: int = 4
    tts_candidates_per_step: int = 4
    tts_beam_size: int = 4
    tts_max_steps: int = 50
    tts_score_aggregation: str = "min"
    temperature: float = 0.6
    max_tokens: int = 4096
    seed: int = 0
    thinking: bool = False
    device: str = "cuda"
    tts_service_url: str | None = None
    api_key: str = "dummy"
    verifier: str = "uncertainty"  # or "execution"
    out_dir: str = "runs"
    batch_size: int = 8
    eval_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.verifier not in ("uncertainty", "execution"):
            raise ValueError(f"verifier must be 'uncertainty' or 'execution', got {self.verifier!r}")
        if self.num_samples < 1:
            raise ValueError("num_samples must be >= 1")

    def tts_params(self) -> dict:
        return dict(strategy=self.tts_strategy, scorer=self.tts_scorer, num_trajectories=self.tts_num_trajectories,
                    candidates_per_step=self.tts_candidates_per_step, beam_size=self.tts_beam_size,
                    max_steps=self.tts_max_steps, score_aggregation=self.tts_score_aggregation,
                    temperature=self.temperature, max_tokens=self.max_tokens, enable_thinking=self.thinking)


# -- the results file ---------------------------------------------------------------

def results_path(cfg: RunConfig) -> Path:
    return Path(cfg.out_dir) / cfg.experiment_name / "results.jsonl"


def read_records(path: Path, repair: bool = False) -> list[dict]:
    """Records of a results file; a torn last line (a kill mid-write) is dropped, and cut off if `repair`."""
    if not path.exists():
        return []
    data = path.read_bytes()
    records, good_end, pos = [], 0, 0
    for line in data.split(b"\n"):
        end = pos + len(line) + 1
        if line.strip():
            try:
                records.append(json.loads(line))
                good_end = min(end, len(data))
            except ValueError:
                break
        else:
            good_end = min(end, len(data))
        pos = end
    if repair and good_end < len(data):
        with open(path, "r+b") as f:
            f.truncate(good_end)
    return records


def append_record(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def record_key(problem: str, sample: int, strategy: str) -> tuple:
    return (problem, sample, strategy)


# -- generation ------------------------------------------------------------------------

@dataclass
class Generated:
    text: str
    candidates: list[tuple[str, float | None]]  # every finished candidate's text and aggregated score
    tts: dict[str, Any]


def _generate_local(cfg: RunConfig, items: list[tuple[Problem, int]]) -> list[Generated]:
    import kaggle_kit as kk
    from kaggle_kit.engine.registry import _same_path

    if not (kk.VLLMClient.is_ready() and (cfg.model_name is None or _same_path(kk.VLLMClient.model_path(), cfg.model_name))):
        kk.ensure_model(cfg.model_name)  # reuse what the notebook already loaded
    out = []
    # One batch per sample index, so each item keeps its own seed.
    by_sample: dict[int, list[int]] = {}
    for i, (_, s) in enumerate(items):
        by_sample.setdefault(s, []).append(i)
    results: dict[int, Any] = {}
    for s, idx in by_sample.items():
        msgs = [build_messages(items[i][0], cfg.device, cfg.thinking) for i in idx]
        for i, r in zip(idx, kk.run_strategy_batch(msgs, seed=cfg.seed + s, progress=False, **cfg.tts_params())):
            results[i] = r
    for i in range(len(items)):
        r = results[i]
        meta = r.to_dict()
        out.append(Generated(r.text, [(c.text, c.aggregated_score) for c in r.candidates],
                             {k: meta[k] for k in ("aggregated_score", "completion_reason", "usage", "elapsed_s")}))
    return out


def _generate_remote(cfg: RunConfig, items: list[tuple[Problem, int]]) -> list[Generated]:
    from openai import OpenAI

    client = OpenAI(base_url=cfg.tts_service_url, api_key=cfg.api_key, timeout=3600, max_retries=2)
    model = cfg.model_name or client.models.list().data[0].id

    def one(item):
        problem, s = item
        extra = {"tts_strategy": cfg.tts_strategy, "tts_scorer": cfg.tts_scorer,
                 "tts_num_trajectories": cfg.tts_num_trajectories, "tts_candidates_per_step": cfg.tts_candidates_per_step,
                 "tts_beam_size": cfg.tts_beam_size, "tts_max_steps": cfg.tts_max_steps,
                 "tts_score_aggregation": cfg.tts_score_aggregation}
        if cfg.thinking:
            extra["chat_template_kwargs"] = {"enable_thinking": True}
        r = client.chat.completions.create(model=model, messages=build_messages(problem, cfg.device, cfg.thinking),
                                           temperature=cfg.temperature, max_tokens=cfg.max_tokens,
                                           seed=cfg.seed + s, extra_body=extra)
        meta = r.model_dump().get("tts_metadata") or {}
        text = r.choices[0].message.content or ""
        cands = [(c["text"], c.get("aggregated_score")) for c in meta.get("candidates", [])] or [(text, None)]
        return Generated(text, cands, {k: meta.get(k) for k in ("aggregated_score", "completion_reason", "usage", "elapsed_s")})

    with ThreadPoolExecutor(max(1, cfg.batch_size)) as pool:  # the service batches concurrent requests
        return list(pool.map(one, items))


# -- evaluation and selection ---------------------------------------------------------

def _select_by_execution(cfg: RunConfig, problem: Problem, gen: Generated) -> tuple[int, int, list[str]]:
    """(chosen index, uncertainty's choice, per-candidate correctness status)."""
    statuses, ranks = [], []
    for i, (text, score) in enumerate(gen.candidates):
        _, r = evaluate_response(problem, text, cfg.device, timing=False, **cfg.eval_options)
        statuses.append(r.status.value)
        ranks.append((r.counts_as_correct, r.compiled, score if score == score and score is not None else float("-inf"), -i))
    by_score = max(range(len(gen.candidates)), key=lambda i: (ranks[i][2], ranks[i][3]))
    chosen = max(range(len(gen.candidates)), key=lambda i: ranks[i])
    return chosen, by_score, statuses


def run(cfg: RunConfig, progress: bool | None = None) -> Path:
    from tqdm.auto import tqdm

    problems = load_problems(cfg.problems_dir, cfg.level, cfg.problems)
    path = results_path(cfg)
    done = {record_key(r["problem"], r["sample"], r["strategy"]) for r in read_records(path, repair=True)}
    todo = [(p, s) for p in problems for s in range(cfg.num_samples)
            if record_key(p.name, s, cfg.tts_strategy) not in done]
    generate = _generate_remote if cfg.tts_service_url else _generate_local
    bar = tqdm(total=len(todo), desc=f"{cfg.experiment_name}", unit="kernel", disable=True if progress is False else None)
    for start in range(0, len(todo), max(1, cfg.batch_size)):
        chunk = todo[start: start + cfg.batch_size]
        t0 = time.perf_counter()
        generated = generate(cfg, chunk)
        gen_s = (time.perf_counter() - t0) / len(chunk)
        for (problem, s), gen in zip(chunk, generated):
            selection: dict[str, Any] = {"verifier": cfg.verifier}
            text = gen.text
            if cfg.verifier == "execution" and len(gen.candidates) > 1:
                chosen, by_score, statuses = _select_by_execution(cfg, problem, gen)
                text = gen.candidates[chosen][0]
                selection.update(chosen=chosen, uncertainty_choice=by_score, candidate_statuses=statuses)
            parse_status, result = evaluate_response(problem, text, cfg.device, **cfg.eval_options)
            append_record(path, {
                "experiment": cfg.experiment_name, "model": cfg.model_name, "problem": problem.name,
                "level": problem.level, "sample": s, "strategy": cfg.tts_strategy, "scorer": cfg.tts_scorer,
                "parse_status": parse_status, "eval": result.to_dict(), "tts": gen.tts, "selection": selection,
                "generation_s": gen_s, "response": text, "config": {k: v for k, v in asdict(cfg).items() if k != "api_key"},
            })
            bar.update(1)
    bar.close()
    return path
