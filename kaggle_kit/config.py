"""One settings object: environment variables plus explicit arguments.

Explicit arguments win over the environment; the environment wins over defaults.
Nothing here imports vLLM or torch, so reading settings is free.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

BACKEND_NAMES = ("vllm", "openai", "ollama", "groq", "echo")
DEFAULT_CHAIN = ("vllm", "ollama", "groq", "echo")


class KaggleKitError(Exception):
    """The root of kaggle_kit's own errors: `except kk.KaggleKitError` catches every one of them."""


class ConfigError(KaggleKitError, ValueError):
    """A setting that cannot work; the message says what to change."""


def parse_backend_list(value: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """'vllm,groq' or ['vllm', 'groq'] -> ('vllm', 'groq'), checked against BACKEND_NAMES."""
    names = value.split(",") if isinstance(value, str) else list(value)
    out = tuple(n.strip().lower() for n in names if str(n).strip())
    if not out:
        raise ConfigError(f"backend list is empty; choose from {', '.join(BACKEND_NAMES)}")
    unknown = [n for n in out if n not in BACKEND_NAMES]
    if unknown:
        raise ConfigError(
            f"unknown backend {', '.join(map(repr, unknown))}; choose from {', '.join(BACKEND_NAMES)}"
        )
    return out


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


@dataclass(frozen=True)
class Settings:
    backends: tuple[str, ...] = DEFAULT_CHAIN
    vllm_model_path: str | None = None
    kaggle_input_dir: str = "/kaggle/input"
    # OpenAI-compatible endpoint (a vLLM server, our own service, ...)
    openai_base_url: str | None = None
    openai_api_key: str | None = None
    openai_model: str | None = None
    # Groq speaks the OpenAI protocol at its own base URL.
    groq_api_key: str | None = field(default=None, repr=False)
    groq_base_url: str = "https://api.groq.com/openai/v1"
    groq_model: str = "qwen/qwen3-32b"
    ollama_host: str = "http://localhost:11434"
    ollama_model: str = "qwen3:14b"
    # How long an availability probe may take before a backend is skipped.
    health_timeout_s: float = 1.5
    request_timeout_s: float = 120.0

    @classmethod
    def from_env(cls, **overrides) -> "Settings":
        env = dict(
            backends=parse_backend_list(_env("LLM_BACKEND", ",".join(DEFAULT_CHAIN))),
            vllm_model_path=_env("VLLM_MODEL_PATH"),
            kaggle_input_dir=_env("KAGGLE_INPUT_DIR", "/kaggle/input"),
            openai_base_url=_env("OPENAI_BASE_URL"),
            openai_api_key=_env("OPENAI_API_KEY"),
            openai_model=_env("OPENAI_MODEL"),
            groq_api_key=_env("GROQ_API_KEY"),
            groq_base_url=_env("GROQ_BASE_URL", cls.groq_base_url),
            groq_model=_env("GROQ_MODEL", cls.groq_model),
            ollama_host=_env("OLLAMA_HOST", cls.ollama_host),
            ollama_model=_env("OLLAMA_MODEL", cls.ollama_model),
        )
        known = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(overrides) - known)
        if bad:
            raise ConfigError(f"unknown setting(s) {bad}; known: {sorted(known)}")
        if "backends" in overrides and overrides["backends"] is not None:
            overrides["backends"] = parse_backend_list(overrides["backends"])
        env.update({k: v for k, v in overrides.items() if v is not None})
        host = env["ollama_host"]
        if host and "://" not in host:  # OLLAMA_HOST is often given as host:port
            env["ollama_host"] = "http://" + host
        return cls(**env)


def attached_inputs(name: str, inputs_dir: str | os.PathLike | None = None) -> list[Path]:
    """Folders called `name` among a Kaggle session's inputs: /kaggle/input/<name>, or one or two levels
    deeper (a notebook's output attached as an input is mounted under its slug, sometimes below its
    owner's name; which one Kaggle uses is not documented, so every depth is looked at)."""
    root = Path(inputs_dir or Settings.from_env().kaggle_input_dir)
    if not root.is_dir():
        return []
    return sorted(p for pattern in (name, f"*/{name}", f"*/*/{name}") for p in root.glob(pattern) if p.is_dir())


def add_field_arguments(parser, cls, *, names=None, dest=None, given_only: bool = False,
                        skip=lambda f: False) -> None:
    """One command-line option per field of dataclass `cls` (help, choices and argparse settings from
    the field's metadata), so a dataclass is also its command's flags and a default is written once.

    names(field) -> option strings (default `--<name>`); dest(field) -> where argparse puts it (default
    the name). The help says the field's default; the option defaults to it, or with `given_only` to None,
    meaning "not given" (the dataclass's own default applies). A bool is a switch away from its default
    (with `given_only`: `--x/--no-x`); a tuple is a repeatable option (None when not given).
    """
    import argparse
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata or skip(f):
            continue
        meta = {k: v for k, v in f.metadata.items() if k in ("choices", "action", "type", "required")}
        opts = names(f) if names else [f"--{f.name}"]
        where = dest(f) if dest else f.name
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        hint = hints[f.name]
        text = f.metadata["help"]
        if hint is bool:
            if given_only:
                parser.add_argument(*opts, dest=where, action=argparse.BooleanOptionalAction, default=None, help=text)
            else:  # `names` says what the switch is called (`--no_x` turns off a default True)
                parser.add_argument(*opts, dest=where, action="store_false" if default else "store_true", help=text)
            continue
        if isinstance(default, tuple) or "tuple" in str(hint):
            meta.setdefault("action", "append")
            text += " (repeatable)" if "repeatable" not in text else ""
        elif "type" not in meta and "action" not in meta:
            meta["type"] = next((t for t in (str, int, float) if t in (typing.get_args(hint) or (hint,))), str)
        shown = f"{text} (default: {default!r})" if default not in (None, ()) else text
        if "choices" not in meta:
            meta.setdefault("metavar", f.name.upper())
        parser.add_argument(*opts, dest=where, default=default if not given_only and "append" != meta.get("action")
                            else None, help=shown, **meta)


# Third-party loggers that speak to developers, not to a person running the demo or a CLI: vLLM's INFO
# lines (NUMA binding, config dumps), Jupyter's ("Kernel is running over TCP without encryption"),
# papermill's and torch's notices. Errors always pass.
QUIET_LOGGERS = ("vllm", "jupyter_client", "traitlets", "papermill", "nbclient", "asyncio", "httpx", "urllib3",
                 "torch", "transformers", "filelock")


def quiet_logs(verbose: bool = False) -> bool:
    """Third-party log noise off unless `verbose` or KK_LOG_LEVEL=INFO|DEBUG; returns whether it is verbose.
    Set before vLLM is imported (its level is read from VLLM_LOGGING_LEVEL), and inherited by child
    processes (papermill's kernel, the evaluator's)."""
    import logging
    import warnings

    level = (os.environ.get("KK_LOG_LEVEL") or ("INFO" if verbose else "WARNING")).upper()
    verbose = level in ("INFO", "DEBUG")
    os.environ["KK_LOG_LEVEL"] = level  # children (papermill's kernel) follow the same choice
    logging.basicConfig(level=getattr(logging, level, logging.WARNING), format="%(levelname)s %(name)s: %(message)s")
    if verbose:
        return True
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")  # C++ warnings ("[W...] NUMA binding: ...")
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning,ignore::FutureWarning")
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    for category in (DeprecationWarning, FutureWarning, PendingDeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    warnings.filterwarnings("ignore", module=r"(torch|vllm|transformers|jupyter_client|papermill)(\..*)?")
    return False


def kernel_log_arguments() -> list[str]:
    """Arguments for a Jupyter kernel we start: its own warnings ("Kernel is running over TCP without
    encryption", on loopback) off unless KK_LOG_LEVEL asks for INFO or DEBUG; its errors always pass."""
    if os.environ.get("KK_LOG_LEVEL", "WARNING").upper() in ("INFO", "DEBUG"):
        return []
    return ["--IPKernelApp.log_level=ERROR"]
