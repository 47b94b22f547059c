"""The shape of the code, checked on its source: names spelled once, packages without circles, a home
for every module. (Issue 20's measures, kept from coming back.)"""
import ast
import collections
import io
import tokenize
from pathlib import Path

from kaggle_kit.tts.params import NAMES, wire_name

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = [p for pkg in ("kaggle_kit", "kernels_eval") for p in (ROOT / pkg).rglob("*.py")]
# Sampling settings are the engine's and every chat's vocabulary (SamplingSpec, OpenAI's fields), and
# strategy/scorer name registries whose name lists are derived: the rest are the search's own.
SAMPLING = {"temperature", "top_p", "top_k", "max_tokens", "seed", "enable_thinking", "logprobs", "stop"}
SEARCH = [n for n in NAMES if n not in SAMPLING | {"strategy", "scorer"}]


def _spellings(path: Path) -> set[str]:
    """Every identifier and every string literal that is exactly a name (comments and prose don't count)."""
    out = set()
    for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if tok.type == tokenize.NAME:
            out.add(tok.string)
        elif tok.type == tokenize.STRING:
            try:
                value = ast.literal_eval(tok.string)
            except (ValueError, SyntaxError):
                continue
            if isinstance(value, str):
                out.add(value)
    return out


def _home(path: Path) -> str:
    """Where a name lives: its file, or the strategies package (each strategy's module reads its own sizes)."""
    rel = path.relative_to(ROOT)
    return "kaggle_kit/tts/strategies/" if rel.parts[:3] == ("kaggle_kit", "tts", "strategies") else str(rel)


def test_each_search_parameter_is_spelled_in_at_most_four_library_files():
    spelled = {p: _spellings(p) for p in LIBRARY}
    where = {n: sorted({_home(p) for p, names in spelled.items() if {n, wire_name(n)} & names}) for n in SEARCH}
    assert len(SEARCH) >= 10
    too_many = {n: files for n, files in where.items() if len(files) > 4}
    assert not too_many, f"spelled in more than 4 files (derive the others from TTSParams): {too_many}"


def _package_imports() -> dict[str, set[str]]:
    edges = collections.defaultdict(set)
    for path in (ROOT / "kaggle_kit").rglob("*.py"):
        parts = path.relative_to(ROOT / "kaggle_kit").parts
        if len(parts) == 1:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            mods = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            edges[parts[0]] |= {m.split(".")[1] for m in mods if m.startswith("kaggle_kit.") and m.split(".")[1] != parts[0]}
    return edges


def test_no_package_imports_one_that_imports_it_back():
    edges = _package_imports()
    loops = sorted((a, b) for a in edges for b in edges[a] if a < b and a in edges.get(b, ()))
    assert not loops, f"packages that import each other: {loops}"
    assert "chat" not in edges["tts"] and "chat" not in edges["engine"]  # the template is the engine's
    assert not {"service", "experiment", "workflow"} & (edges["tts"] | edges["engine"])  # layers point down


def test_every_module_has_a_home():
    at_root = sorted(p.name for p in (ROOT / "kaggle_kit").glob("*.py"))
    assert at_root == ["__init__.py", "__main__.py", "cli.py", "config.py"]
