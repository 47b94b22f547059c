"""One config for a kernel experiment, shared by the notebook and `kernels-eval run`: its fields (and
its TTSParams') are the command's flags, each with its one default."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from kaggle_kit.config import ConfigError, add_field_arguments
from kaggle_kit.experiment.verifiers import NAMES as VERIFIERS
from kaggle_kit.tts.params import NAMES as TTS_NAMES
from kaggle_kit.tts.params import TTSParams, wire_name

# The run's own settings that change what a record means: a rerun must agree on them (and on every
# TTS parameter but the seed, which the run sets per item) to resume. Problems and samples may grow:
# items are keyed by them. Whether to evaluate, and workers, batch size, deadline and the like change
# how much or how fast, not what.
RESULT_FIELDS = ("seed", "device", "verifier", "trials", "problems_dir", "level", "model",
                 "refine_rounds", "refine_width", "target_speedup", "resample")
_RECORDED_AS = {"enable_thinking": "thinking"}  # a TTS parameter's name in run.json, where it differs


def _opt(default=None, help: str = "", flag: str | None = None, **argparse_kw):
    """A config field and its `kernels-eval run` flag (named `flag`, else the field's name)."""
    meta = {"help": help, "flag": flag, **argparse_kw}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ExperimentConfig:
    """One kernel experiment. `ExperimentConfig.of(...)` also takes the TTS parameters flat
    (strategy=..., num_trajectories=...); `kernels-eval run`'s flags are these fields and TTSParams'."""

    experiment_name: str = _opt("latest", "records go to OUT_DIR/EXPERIMENT_NAME/records.jsonl", required=True)
    out_dir: str = _opt("runs", "the folder of experiment folders")
    model: str | None = _opt(None, "model dir (local engine) or served model id (--tts_service_url)", flag="model_name")
    problems: list[str] | None = _opt(None, "only these problems (repeatable); default: every problem found",
                                      flag="problem", action="append")
    problems_dir: str | None = _opt(None, "a directory of KernelBench problems (default: the bundled set)", flag="problems")
    level: int | None = _opt(None, "KernelBench level (1, 2, 3) in --problems", type=int)
    num_samples: int = _opt(1, "samples per problem")
    tts: TTSParams = field(default_factory=TTSParams)  # the search (its own defaults; its seed is set per item)
    seed: int = _opt(0, "each sample, round and branch samples with seed + its offset")
    # evaluation
    device: str = _opt("cuda", "where kernels are evaluated", choices=["cpu", "cuda"])
    evaluate: bool = _opt(True, "build and run the kernels")
    evaluate_candidates: bool = _opt(True, "evaluate every finished candidate, not only the chosen answer "
                                           "(the plots' AUROC)", flag="chosen_only")
    verifier: str = _opt("uncertainty", "pick among candidates by their score, by running them against the reference "
                                        "(execution), or by the agreement of their outputs (consensus)", choices=VERIFIERS)
    trials: int = _opt(5, "timed trials per kernel")
    run_timeout: float = _opt(180.0, "seconds a kernel's run may take", flag="timeout")
    compile_timeout: float = _opt(600.0, "seconds a kernel's build may take")
    harness_retries: int = _opt(1, "retries of an evaluation the harness itself failed")
    # refinement (kaggle_kit.experiment.refine): rounds of feedback after the first
    refine_rounds: int = _opt(1, "rounds with execution feedback (1 = none)")
    refine_width: int = _opt(1, "candidates refined per round")
    target_speedup: float = _opt(1.0, "refinement stops at a correct kernel this fast")
    resample: bool = _opt(False, "later rounds answer the problem's own prompt afresh instead of refining with "
                                 "feedback: an adaptive budget by execution verdict, a lineage stops at its first "
                                 "correct kernel")
    # how it runs (not part of the results)
    service_url: str | None = _opt(None, "generate through this OpenAI-compatible service", flag="tts_service_url")
    api_key: str = field(default="dummy", repr=False)
    batch_size: int = _opt(8, "items generated per engine call (the local engine batches them into one)")
    workers: int | None = _opt(None, "concurrent evaluations (default: the CPU cores)", type=int)
    deadline: str | float | None = _opt(None, "'kaggle' (session start + 12 h), a duration like 2h30m, or an ISO time")
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.tts, dict):  # as run.json writes it
            self.tts = _tts_params(self.tts)
        if not isinstance(self.tts, TTSParams):
            raise ConfigError(f"tts must be a TTSParams, got {type(self.tts).__name__}")
        if self.verifier not in VERIFIERS:
            raise ConfigError(f"verifier must be one of {', '.join(VERIFIERS)}, got {self.verifier!r}")
        if self.device not in ("cpu", "cuda"):
            raise ConfigError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        for name in ("num_samples", "batch_size", "refine_rounds", "refine_width", "trials"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.refine_rounds > 1 and not self.evaluate:
            raise ConfigError("refine_rounds > 1 needs evaluate=True: each round's prompts carry the evaluator's feedback"
                              + (" (resample: each round waits for the verdicts)" if self.resample else ""))
        if self.resample and self.refine_rounds == 1:
            raise ConfigError("resample=True draws later rounds' answers: give refine_rounds > 1 (the most answers a "
                              "lineage gets, one a round)")

    @property
    def items_per_lineage(self) -> int:
        """The most items a lineage (problem, sample) generates over the rounds: refine_width a later round
        (one with resample)."""
        return 1 + (self.refine_rounds - 1) * (1 if self.resample else self.refine_width)

    @property
    def folder(self) -> Path:
        return Path(self.out_dir) / self.experiment_name if self.experiment_name else Path(self.out_dir)

    def search_params(self, seed: int | None) -> TTSParams:
        """The TTSParams one item searches with (its own seed: experiment/generate.py)."""
        return replace(self.tts, seed=seed)

    def fingerprint(self) -> dict[str, Any]:
        tts = {_RECORDED_AS.get(k, k): v for k, v in self.tts.to_dict().items() if k != "seed"}
        return {**tts, **{k: getattr(self, k) for k in RESULT_FIELDS}}

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "api_key"}

    @classmethod
    def of(cls, **kwargs) -> "ExperimentConfig":
        """The config, with the TTS parameters given flat (also `thinking` for enable_thinking)."""
        own = {f.name for f in fields(cls)}
        search = {k: kwargs.pop(k) for k in list(kwargs) if k in _FLAT_TTS}
        bad = sorted(set(kwargs) - own)
        if bad:
            raise ConfigError(f"unknown experiment setting(s) {bad}; known: {', '.join(sorted(own | set(_FLAT_TTS)))}")
        if search:
            kwargs["tts"] = _tts_params({**(asdict(kwargs["tts"]) if "tts" in kwargs else {}), **search})
        return cls(**kwargs)


_FLAT_TTS = {_RECORDED_AS.get(n, n): n for n in TTS_NAMES if n != "seed"}  # flat name -> TTSParams field


def _tts_params(given: dict) -> TTSParams:
    try:
        return TTSParams.of(**{_FLAT_TTS.get(k, k): v for k, v in given.items()})
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None


def differences(theirs: dict, mine: dict) -> dict[str, tuple]:
    """Settings two fingerprints disagree on, {name: (theirs, mine)}. A setting one of them lacks (made
    before it existed) counts as its default: the records were made with it."""
    defaults = json.loads(json.dumps(ExperimentConfig().fingerprint()))
    theirs, mine = (json.loads(json.dumps(x)) for x in (theirs, mine))  # tuples and lists compare alike
    keys = sorted(set(theirs) | set(mine))
    return {k: (theirs.get(k, defaults.get(k)), mine.get(k, defaults.get(k))) for k in keys
            if theirs.get(k, defaults.get(k)) != mine.get(k, defaults.get(k))}


def _run_flag(f) -> list[str]:
    flag = f.metadata.get("flag")
    if f.type in ("bool", bool) and f.default is True and not flag:
        return [f"--no_{f.name}"]  # a switch away from the default
    return [f"--{flag or f.name}"]


def _tts_flag(f) -> list[str]:
    return [f"--{wire_name(f.name) if f.metadata['wire'] else f.metadata.get('flag', f.name)}"]


def add_arguments(parser) -> None:
    """`kernels-eval run`'s flags: one per ExperimentConfig field that has help, and one per TTS parameter
    (named as the service's request field, tts_<name>, for the search's own), each defaulting to its field."""
    add_field_arguments(parser, ExperimentConfig, names=_run_flag)
    add_field_arguments(parser, TTSParams, names=_tts_flag, dest=lambda f: "tts." + f.name,
                        skip=lambda f: "flag" in f.metadata and f.metadata["flag"] is None)


def from_arguments(args) -> "ExperimentConfig":
    given = vars(args)
    tts = {k[4:]: v for k, v in given.items() if k.startswith("tts.") and v is not None}
    return ExperimentConfig(tts=_tts_params(tts),
                            **{f.name: given[f.name] for f in fields(ExperimentConfig) if f.name in given})


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
    if path.exists():
        differ = differences(json.loads(path.read_text()).get("fingerprint", {}), cfg.fingerprint())
        if differ:
            what = "; ".join(f"{k}={b!r} (the records have {a!r})" for k, (a, b) in differ.items())
            raise ConfigError(f"{cfg.folder} holds records made with other settings: {what}. Resuming would mix "
                              f"incompatible results: use another experiment name (or out_dir), or delete {cfg.folder}")
        return
    cfg.folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    mine = json.loads(json.dumps(cfg.fingerprint()))
    tmp.write_text(json.dumps({"fingerprint": mine, "config": cfg.to_dict()}, indent=2) + "\n")
    tmp.replace(path)
