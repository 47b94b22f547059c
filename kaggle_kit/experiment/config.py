"""One config for a kernel experiment, shared by the notebook and `kernels-eval run`."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from kaggle_kit.config import ConfigError
from kaggle_kit.tts.params import STRATEGIES

# Settings that change what a record means: a rerun must agree on them to resume.
# (Problems and samples may grow: items are keyed by them. Whether to evaluate, and
# workers, batch size, deadline and the like change how much or how fast, not what.)
RESULT_FIELDS = ("strategy", "scorer", "num_trajectories", "candidates_per_step", "beam_size", "max_steps",
                 "score_aggregation", "window_size", "temperature", "top_p", "top_k", "max_tokens", "seed", "thinking",
                 "device", "verifier", "trials", "problems_dir", "level", "model",
                 "refine_rounds", "refine_width", "target_speedup")


@dataclass
class ExperimentConfig:
    experiment_name: str = "latest"
    out_dir: str = "runs"  # records and tables go to out_dir/experiment_name
    model: str | None = None  # model folder (local engine) or the served model id (service)
    problems: list[str] | None = None  # names; None = every problem found
    problems_dir: str | None = None  # a KernelBench tree (default: the bundled set)
    level: int | None = None
    num_samples: int = 1
    # test-time scaling (the seed's names)
    strategy: str = "online_bon"
    scorer: str = "entropy"
    num_trajectories: int = 4
    candidates_per_step: int = 4
    beam_size: int = 4
    max_steps: int = 50
    score_aggregation: str = "min"
    window_size: int | None = None
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 20
    max_tokens: int = 4096
    seed: int = 0
    thinking: bool = False
    # evaluation
    device: str = "cuda"
    evaluate: bool = True
    evaluate_candidates: bool = True  # correctness of every finished candidate (the plots' AUROC)
    verifier: str = "uncertainty"  # or "execution": pick among candidates by running them
    trials: int = 5
    run_timeout: float = 180.0
    compile_timeout: float = 600.0
    harness_retries: int = 1
    # refinement (kaggle_kit.experiment.refine): rounds of feedback after the first
    refine_rounds: int = 1
    refine_width: int = 1
    target_speedup: float = 1.0
    # how it runs (not part of the results)
    service_url: str | None = None  # generate through the OpenAI-compatible service instead of the local engine
    api_key: str = "dummy"
    batch_size: int = 8  # items generated per engine call (the local engine batches them into one)
    workers: int | None = None  # concurrent evaluations (builds); default: the CPU cores
    deadline: str | float | None = None  # "kaggle", "2h30m" from now, an ISO time, or a Unix time
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"unknown strategy {self.strategy!r}; choose from {', '.join(STRATEGIES)}")
        if self.verifier not in ("uncertainty", "execution"):
            raise ConfigError(f"verifier must be 'uncertainty' or 'execution', got {self.verifier!r}")
        if self.device not in ("cpu", "cuda"):
            raise ConfigError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        for name in ("num_samples", "batch_size", "refine_rounds", "refine_width", "trials"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.refine_rounds > 1 and not self.evaluate:
            raise ConfigError("refine_rounds > 1 needs evaluate=True: each round's prompts carry the evaluator's feedback")

    @property
    def folder(self) -> Path:
        return Path(self.out_dir) / self.experiment_name if self.experiment_name else Path(self.out_dir)

    def tts_params(self) -> dict[str, Any]:
        return dict(strategy=self.strategy, scorer=self.scorer, num_trajectories=self.num_trajectories,
                    candidates_per_step=self.candidates_per_step, beam_size=self.beam_size, max_steps=self.max_steps,
                    score_aggregation=self.score_aggregation, window_size=self.window_size,
                    temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, max_tokens=self.max_tokens,
                    enable_thinking=self.thinking)

    def fingerprint(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in RESULT_FIELDS}

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "api_key"}

    @classmethod
    def of(cls, **kwargs) -> "ExperimentConfig":
        known = {f.name for f in fields(cls)}
        bad = sorted(set(kwargs) - known)
        if bad:
            raise ConfigError(f"unknown experiment setting(s) {bad}; known: {', '.join(sorted(known))}")
        return cls(**kwargs)


def shard_of(names: list[str], index: int, count: int) -> list[str]:
    """Shard `index` (0-based) of `count`: contiguous, near-equal parts of `names` in their own order,
    the same split for `kernels-eval run --shard` and `kaggle-kit shards plan`."""
    if not 0 <= index < count:
        raise ConfigError(f"shard {index + 1} of {count} does not exist")
    size, extra = divmod(len(names), count)
    start = index * size + min(index, extra)
    return names[start:start + size + (index < extra)]


def parse_shard(text: str) -> tuple[int, int]:
    """'2/4' -> (1, 4): the second of four shards."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r}: write I/N, e.g. 2/4") from None
    if not 1 <= i <= n:
        raise ConfigError(f"--shard {text!r}: I must be between 1 and N")
    return i - 1, n


def check_resumable(cfg: ExperimentConfig) -> None:
    """Write run.json on a fresh folder; refuse to mix records made with other result settings."""
    path = cfg.folder / "run.json"
    mine = json.loads(json.dumps(cfg.fingerprint()))  # JSON round trip: tuples and lists compare alike
    if path.exists():
        theirs = json.loads(path.read_text()).get("fingerprint", {})
        differ = {k: (theirs.get(k), v) for k, v in mine.items() if theirs.get(k) != v}
        if differ:
            what = "; ".join(f"{k}={b!r} (the records have {a!r})" for k, (a, b) in sorted(differ.items()))
            raise ConfigError(f"{cfg.folder} holds records made with other settings: {what}. Resuming would mix "
                              f"incompatible results: use another experiment name (or out_dir), or delete {cfg.folder}")
        return
    cfg.folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"fingerprint": mine, "config": cfg.to_dict()}, indent=2) + "\n")
    tmp.replace(path)
