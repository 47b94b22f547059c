"""One config for a kernel experiment, shared by the notebook and `kernels-eval run`."""
from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from kaggle_kit.config import ConfigError
from kaggle_kit.tts.aggregation import AGGREGATIONS
from kaggle_kit.tts.params import STRATEGIES, WIRE_FIELDS, TTSParams, wire_name
from kaggle_kit.tts.scorers import SCORERS

# Settings that change what a record means: a rerun must agree on them to resume.
# (Problems and samples may grow: items are keyed by them. Whether to evaluate, and
# workers, batch size, deadline and the like change how much or how fast, not what.)
RESULT_FIELDS = ("strategy", "scorer", "num_trajectories", "candidates_per_step", "beam_size", "max_steps",
                 "score_aggregation", "window_size", "stop_score", "warmup_traces", "temperature", "top_p", "top_k", "max_tokens", "seed", "thinking",
                 "device", "verifier", "trials", "problems_dir", "level", "model",
                 "refine_rounds", "refine_width", "target_speedup")


_TTS = TTSParams()  # the one set of TTS defaults: the library's, the service's and a run's


def _opt(default=None, help: str = "", flag: str | None = None, **argparse_kw):
    """A config field and its `kernels-eval run` flag (named `flag`, else the field's name)."""
    meta = {"help": help, "flag": flag, **argparse_kw}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def _tts(name: str, help: str, **kw):
    """A TTS parameter: TTSParams' default, and the service's request name (tts_<name>) as its flag."""
    wire = wire_name(name) if name in WIRE_FIELDS else None
    return _opt(getattr(_TTS, name), help, flag=wire, **kw)


@dataclass
class ExperimentConfig:
    """One kernel experiment; its fields are also `kernels-eval run`'s flags (`add_arguments`)."""

    experiment_name: str = _opt("latest", "records go to OUT_DIR/EXPERIMENT_NAME/records.jsonl", required=True)
    out_dir: str = _opt("runs", "the folder of experiment folders")
    model: str | None = _opt(None, "model dir (local engine) or served model id (--tts_service_url)", flag="model_name")
    problems: list[str] | None = _opt(None, "only these problems (repeatable); default: every problem found",
                                      flag="problem", action="append")
    problems_dir: str | None = _opt(None, "a directory of KernelBench problems (default: the bundled set)", flag="problems")
    level: int | None = _opt(None, "KernelBench level (1, 2, 3) in --problems", type=int)
    num_samples: int = _opt(1, "samples per problem")
    # test-time scaling (the seed's names; the flags are the service's tts_* request fields)
    strategy: str = _tts("strategy", "search strategy", choices=STRATEGIES)
    scorer: str = _tts("scorer", "uncertainty scorer", choices=SCORERS)
    num_trajectories: int = _tts("num_trajectories", "offline_bon: N")
    candidates_per_step: int = _tts("candidates_per_step", "online_bon / beam_search / dvts: candidates per step")
    beam_size: int = _tts("beam_size", "beam_search: beams kept; dvts: independent subtrees")
    max_steps: int = _tts("max_steps", "steps per answer")
    score_aggregation: str = _tts("score_aggregation", "how step scores make an answer's score", choices=AGGREGATIONS)
    window_size: int | None = _tts("window_size", "aggregate over the last W step scores", type=int)
    stop_score: float = _tts("stop_score", "adaptive_bon: stop once the best answer's score reaches this")
    warmup_traces: int = _tts("warmup_traces", "deepconf: whole answers that set the bar the other traces must keep")
    temperature: float = _tts("temperature", "sampling temperature")
    top_p: float = _tts("top_p", "nucleus sampling")
    top_k: int = _tts("top_k", "top-k sampling")
    max_tokens: int = _tts("max_tokens", "tokens per trajectory")
    seed: int = _opt(0, "each sample, round and branch samples with seed + its offset")
    thinking: bool = _opt(False, "Qwen3's thinking mode")
    # evaluation
    device: str = _opt("cuda", "where kernels are evaluated", choices=["cpu", "cuda"])
    evaluate: bool = _opt(True, "build and run the kernels")
    evaluate_candidates: bool = _opt(True, "evaluate every finished candidate, not only the chosen answer "
                                           "(the plots' AUROC)", flag="chosen_only")
    verifier: str = _opt("uncertainty", "pick among candidates by their score, or by running them",
                         choices=["uncertainty", "execution"])
    trials: int = _opt(5, "timed trials per kernel")
    run_timeout: float = _opt(180.0, "seconds a kernel's run may take", flag="timeout")
    compile_timeout: float = _opt(600.0, "seconds a kernel's build may take")
    harness_retries: int = _opt(1, "retries of an evaluation the harness itself failed")
    # refinement (kaggle_kit.experiment.refine): rounds of feedback after the first
    refine_rounds: int = _opt(1, "rounds with execution feedback (1 = none)")
    refine_width: int = _opt(1, "candidates refined per round")
    target_speedup: float = _opt(1.0, "refinement stops at a correct kernel this fast")
    # how it runs (not part of the results)
    service_url: str | None = _opt(None, "generate through this OpenAI-compatible service", flag="tts_service_url")
    api_key: str = field(default="dummy", repr=False)
    batch_size: int = _opt(8, "items generated per engine call (the local engine batches them into one)")
    workers: int | None = _opt(None, "concurrent evaluations (default: the CPU cores)", type=int)
    deadline: str | float | None = _opt(None, "'kaggle' (session start + 12 h), a duration like 2h30m, or an ISO time")
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
        """The TTSParams this run searches with (the seed is set per item: experiment/generate.py)."""
        shared = {f.name: getattr(self, f.name) for f in fields(self)
                  if f.name in TTSParams.__dataclass_fields__ and f.name != "seed"}
        return {**shared, "enable_thinking": self.thinking}

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


def add_arguments(parser) -> None:
    """`kernels-eval run`'s flags: one per ExperimentConfig field that has one, its default the field's."""
    for f in fields(ExperimentConfig):
        if "help" not in f.metadata:
            continue
        meta = dict(f.metadata)
        flag, help = meta.pop("flag"), meta.pop("help")
        name = flag or f.name
        default = f.default if f.default is not MISSING else None
        if f.type in ("bool", bool):  # a switch away from the default: --name, or --no_name (or its own flag)
            if default:
                name = flag or f"no_{f.name}"
            parser.add_argument(f"--{name}", dest=f.name, action="store_false" if default else "store_true", help=help)
            continue
        if "type" not in meta and "action" not in meta and default is not None:
            meta["type"] = type(default)
        if meta.pop("required", False):
            meta["required"] = True
        shown = f"{help} (default: {default})" if default is not None else help
        parser.add_argument(f"--{name}", dest=f.name, default=default, help=shown, **meta)


def from_arguments(args) -> "ExperimentConfig":
    return ExperimentConfig(**{f.name: getattr(args, f.name) for f in fields(ExperimentConfig) if hasattr(args, f.name)})


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
        # A setting added after the records were made matches them at its default (they were made with it).
        defaults = {f.name: f.default for f in fields(ExperimentConfig)}
        differ = {k: (theirs.get(k, defaults.get(k)), v) for k, v in mine.items() if theirs.get(k, defaults.get(k)) != v}
        if differ:
            what = "; ".join(f"{k}={b!r} (the records have {a!r})" for k, (a, b) in sorted(differ.items()))
            raise ConfigError(f"{cfg.folder} holds records made with other settings: {what}. Resuming would mix "
                              f"incompatible results: use another experiment name (or out_dir), or delete {cfg.folder}")
        return
    cfg.folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"fingerprint": mine, "config": cfg.to_dict()}, indent=2) + "\n")
    tmp.replace(path)
