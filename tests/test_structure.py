"""The house rules, read from the source: no module uses another's private names; the core never imports tools;
the package type-checks."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import gpu_backprop

PACKAGE = Path(gpu_backprop.__file__).parent

#: private attributes of objects that are not ``self`` that a module may reach, each with its reason
ALLOWED_ATTRIBUTES = {
    ("data.py", "hashlib._Hash"),  # the standard library's name for a hash object's type, in an annotation
}
#: the doctor checks CuPy's compiler set-up through CuPy's own private functions (CuPy's names, not ours)
CUPY_INTERNALS = {"tools/doctor.py"}


def _modules() -> list[tuple[str, tuple[str, ...], ast.Module]]:
    """``(path under the package, the module's package as dotted parts, its syntax tree)`` for every module."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        package = ("gpu_backprop", *rel.parent.parts)
        out.append((rel.as_posix(), package, ast.parse(path.read_text(encoding="utf-8"))))
    return out


def _imported(node: ast.ImportFrom, package: tuple[str, ...]) -> list[tuple[str, ...]]:
    """The full dotted name of everything ``node`` imports, relative imports resolved."""
    base = package[:len(package) - node.level + 1] if node.level else ()
    module = tuple(node.module.split(".")) if node.module else ()
    return [(*base, *module, alias.name) for alias in node.names]


def _private(part: str) -> bool:
    return part.startswith("_") and not part.startswith("__")


def test_no_module_imports_another_packages_private_names() -> None:
    problems = []
    for rel, package, tree in _modules():
        for node in ast.walk(tree):
            names: list[tuple[str, ...]] = []
            if isinstance(node, ast.ImportFrom):
                names = _imported(node, package)
            elif isinstance(node, ast.Import):
                names = [tuple(alias.name.split(".")) for alias in node.names]
            for full in names:
                if full[0] != "gpu_backprop":
                    continue  # CuPy's private modules are CuPy's business (the backend and the doctor say so)
                for i, part in enumerate(full):
                    owner = full[:i]  # a private name belongs to the package it is in, and is free inside it
                    if _private(part) and package[:len(owner)] != owner:
                        problems.append(f"{rel}:{node.lineno} imports {'.'.join(full)}")
    assert not problems, "\n".join(problems)


def test_no_module_reaches_into_another_objects_private_attributes() -> None:
    problems = []
    for rel, _, tree in _modules():
        if rel in CUPY_INTERNALS:
            continue
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and _private(node.attr)):
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            if (Path(rel).name, ast.unparse(node)) not in ALLOWED_ATTRIBUTES:
                problems.append(f"{rel}:{node.lineno} uses {ast.unparse(node)}")
    assert not problems, "\n".join(problems)


def test_the_core_never_imports_the_tools() -> None:
    problems = []
    for rel, package, tree in _modules():
        if rel.startswith("tools/") or rel == "__main__.py":  # python -m gpu_backprop runs the command line
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                names = _imported(node, package)
            elif isinstance(node, ast.Import):
                names = [tuple(alias.name.split(".")) for alias in node.names]
            else:
                continue
            problems += [f"{rel}:{node.lineno} imports {'.'.join(n)}" for n in names
                         if n[:2] == ("gpu_backprop", "tools")]
    assert not problems, "\n".join(problems)


def test_the_package_and_its_tools_type_check(tmp_path: Path) -> None:
    """It ships ``py.typed``, so its annotations are part of the API: mypy (configured in pyproject.toml) agrees,
    for the package and for the benchmarks and scripts that drive it."""
    pytest.importorskip("mypy", reason="mypy checks the annotations: pip install -e '.[test]'")
    proc = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path), "gpu_backprop", "benchmarks",
                           "scripts"],
                          cwd=PACKAGE.parent, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
