"""The package's import rule: a module imports only from its own stage, earlier stages and the
foundation, so the folders read in the order data moves (README, "Layout").

Every import is checked, including those inside functions (a lazy import against the flow is
still a dependency against the flow).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "loveda_utils"

#: Stages in the order data moves; the foundation modules come first, the CLI last.
ORDER = [
    ("errors", "paths", "runtime", "files"),
    ("data",),
    ("models",),
    ("evaluation",),
    ("training",),
    ("results",),
    ("visuals",),
    ("benchmark",),
    ("cli", "__main__"),
]
RANK = {name: rank for rank, names in enumerate(ORDER) for name in names}


def _stage(module: str) -> str:
    """``loveda_utils.data.dataset`` -> ``data``; ``loveda_utils.errors`` -> ``errors``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _module_name(path: Path, package: Path = PACKAGE) -> str:
    rel = path.relative_to(package.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, package_dir: Path = PACKAGE) -> list[tuple[int, str]]:
    """(line, absolute module) for every import of this package in ``path``."""
    name = _module_name(path, package_dir)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            targets = [target] if node.module else [f"{target}.{a.name}" for a in node.names]
            found += [(node.lineno, t) for t in targets]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return [(line, t) for line, t in found if t == "loveda_utils" or t.startswith("loveda_utils.")]


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_belongs_to_a_stage() -> None:
    stages = {_stage(_module_name(p)) for p in MODULES if p.parent != PACKAGE or p.name != "__init__.py"}
    assert stages - {""} <= set(RANK), f"modules outside the known stages: {stages - set(RANK)}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_follow_the_data_flow(path: Path) -> None:
    own = _stage(_module_name(path))
    if not own:
        return  # loveda_utils/__init__.py
    wrong = [
        f"{path.relative_to(PACKAGE.parent)}:{line} imports {target} ({_stage(target)} comes after {own})"
        for line, target in _imports(path)
        if _stage(target) and RANK[_stage(target)] > RANK[own]
    ]
    assert not wrong, "\n".join(wrong)


def test_the_rule_catches_a_backward_import(tmp_path: Path) -> None:
    """The checker itself: a lazy import of the visuals stage inside a data module is found."""
    module = tmp_path / "loveda_utils" / "data" / "bad.py"
    module.parent.mkdir(parents=True)
    module.write_text("def f():\n    from ..visuals.plots import plot_sample\n")
    imports = _imports(module, tmp_path / "loveda_utils")
    assert imports == [(2, "loveda_utils.visuals.plots")]
    assert RANK[_stage(imports[0][1])] > RANK["data"]


def test_every_module_has_its_row_in_contracts() -> None:
    """docs/CONTRACTS.md's module table names every module (or its folder, for ``cli/``), so a
    contributor finds each concern's one home there."""
    contracts = (PACKAGE.parent / "docs" / "CONTRACTS.md").read_text(encoding="utf-8")
    rows = {line.split("|")[1].strip().strip("`") for line in contracts.splitlines()
            if line.startswith("| `")}
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name in ("__init__.py", "__main__.py"):
            continue
        rel = path.relative_to(PACKAGE).as_posix()
        if rel not in rows and f"{rel.split('/')[0]}/" not in rows:
            missing.append(rel)
    assert not missing, f"docs/CONTRACTS.md's module table lacks {missing}"
