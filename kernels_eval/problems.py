"""KernelBench-format problems: a Python file with `class Model(nn.Module)`,
`get_inputs()` and `get_init_inputs()`. Bundled problems may also set
`cpu_sizes = {global: value}`, applied when evaluating on CPU.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

BUNDLED = Path(__file__).parent / "problems"
SOLUTIONS = Path(__file__).parent / "solutions"


@dataclass(frozen=True)
class Problem:
    name: str  # e.g. "01_relu"
    level: int | None
    path: Path
    source: str

    @property
    def short_name(self) -> str:
        return re.sub(r"^\d+_", "", self.name)


def check_problem_source(source: str, where: str = "problem") -> None:
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise ValueError(f"{where}: not valid Python ({e})") from None
    names = {n.name for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef))}
    missing = [n for n in ("Model", "get_inputs", "get_init_inputs") if n not in names]
    if missing:
        raise ValueError(f"{where}: not a KernelBench problem, missing {', '.join(missing)}")


def load_problem(path: str | Path) -> Problem:
    path = Path(path)
    source = path.read_text()
    check_problem_source(source, str(path))
    level = next((int(m.group(1)) for m in [re.search(r"level[_ ]?(\d+)", str(path).lower())] if m), None)
    return Problem(name=path.stem, level=level, path=path, source=source)


def load_problems(directory: str | Path | None = None, level: int | None = None,
                  names: list[str] | None = None) -> list[Problem]:
    """Problems under `directory` (default: the bundled set), optionally one level and some names."""
    root = Path(directory) if directory else BUNDLED
    if not root.is_dir():
        raise ValueError(f"problem directory {root} does not exist")
    if level is not None and (root / f"level{level}").is_dir():
        root = root / f"level{level}"
    problems = [load_problem(p) for p in sorted(root.rglob("*.py")) if not p.name.startswith("_")]
    if names:
        wanted = set(names)
        problems = [p for p in problems if p.name in wanted or p.short_name in wanted]
        missing = wanted - {p.name for p in problems} - {p.short_name for p in problems}
        if missing:
            raise ValueError(f"unknown problem(s) {sorted(missing)} in {root}")
    if not problems:
        raise ValueError(f"no KernelBench problems found under {root}")
    return problems


def reference_solution(problem: Problem, device: str) -> str | None:
    """Our reference custom solution for a bundled problem, if there is one."""
    path = SOLUTIONS / f"{problem.short_name}_{'cuda' if device == 'cuda' else 'cpp'}.py"
    return path.read_text() if path.exists() else None
