"""The package's layout: every import inside moegeo points down one declared order of its
modules (config -> data -> model -> train -> probes -> tidy frame -> claims -> report -> command
line), and no module is far over 500 lines."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "moegeo"

#: the top-level modules and packages of moegeo, lowest first: a module may import only from
#: those before it. ``data`` sits below ``config``: its functions take plain arguments (sizes,
#: a path), never a config, and a config's cache key holds the digest of its data files.
ORDER = [
    "_version",
    "validate",
    "stats",
    "nn",
    "data",
    "config",
    "routers",
    "model",
    "lm",
    "train",
    "probes",
    "frame",
    "rows",
    "cache",
    "experiment",
    "executors",
    "sweeps",
    "hf",
    "claims",
    "report",
    "cli_common",
    "cli_sweep",
    "cli_hf",
    "cli",
    "__main__",
    "__init__",
]


def _unit(path: Path) -> str:
    """The ORDER entry a file belongs to: its top-level module or package."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return parts[0]


def _imports(path: Path) -> set[str]:
    """The top-level moegeo modules a file imports (relative or absolute, eager or lazy)."""
    unit_parts = path.relative_to(ROOT).parts
    package = list(unit_parts[:-1])
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            target = base + (node.module.split(".") if node.module else [])
            names = [target] if node.module else [target + [a.name] for a in node.names]
            out |= {n[0] for n in names if n}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("moegeo."):
            out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("moegeo.")}
    return out


FILES = sorted(ROOT.rglob("*.py"))


def test_every_module_is_in_the_declared_order():
    assert {_unit(f) for f in FILES} == set(ORDER)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down_the_flow(path):
    mine = ORDER.index(_unit(path))
    upward = {m for m in _imports(path) if m != _unit(path) and ORDER.index(m) > mine}
    assert not upward, f"{path.relative_to(ROOT)} imports {sorted(upward)}, above it in ORDER"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_is_far_over_500_lines(path):
    assert len(path.read_text().splitlines()) <= 520
