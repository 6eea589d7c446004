"""The package's shape is checked, not only written: import direction, module size, public API."""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import pytest

import mindscope

SRC = Path(mindscope.__file__).parent

LOOKS = {
    "activations",
    "attribution",
    "baselines",
    "evaluation",
    "histogram",
    "inputs",
    "layers",
    "quadrature",
    "visualisation",
    "weights",
}
EVERYTHING = {"*"}
# component -> the mindscope components it may import (itself always allowed).
ALLOWED: dict[str, set[str]] = {
    "_util": set(),
    "_version": set(),
    "layers": {"_util"},
    "quadrature": {"_util"},
    "inputs": {"_util"},  # what kind of batch x is: images (channels first or last), rows, sequences
    "baselines": {"_util", "inputs"},
    "activations": {"_util", "inputs", "layers"},
    "histogram": {"_util"},
    "weights": {"_util", "histogram", "layers"},
    "attribution": {"_util", "baselines", "inputs", "layers", "quadrature"},
    "evaluation": {"_util", "attribution", "baselines", "inputs", "layers", "quadrature"},
    "visualisation": {"_util", "inputs", "layers"},
    "model": {"_util"},
    "data": {"_util"},
    "training": {"_util", "data", "model"},
    "tensorboard": {"_util", "weights"},
    "render": {"_util", *LOOKS},
    "run": {"_util", "data", "model", "training", "layers", "weights", "tensorboard", "render"},
    "models": {"_util", "layers", "data", "model"},  # outside models -> nn.Module, and what they expect
    # a run or an outside model, with its data
    "subject": {"_util", "inputs", "layers", "data", "model", "models", "run"},
    "report": {
        "_util",
        *LOOKS,
        "data",
        "model",
        "models",
        "subject",
        "training",
        "run",
        "render",
        "tensorboard",
        "scan",
    },
    "scan": {"_util", *LOOKS, "data", "model", "models", "subject", "run", "render"},
    "serve": {"_util", *LOOKS, "data", "model", "models", "subject", "training", "run", "render", "report", "scan"},
    "cli": EVERYTHING,
    "__init__": EVERYTHING,
    "__main__": EVERYTHING,
}


def _component(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the import nodes under `if TYPE_CHECKING:`; they never run."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for child in node.body for n in ast.walk(child)}
    return skipped


def _imports(path: Path, package: str) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    skipped = _type_checking_nodes(tree)
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == package:  # `from mindscope import run` names a module
                found += [(node.lineno, f"{package}.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, node.module))
    return [(line, name) for line, name in found if name == package or name.startswith(package + ".")]


def import_violations(root: Path, package: str = "mindscope") -> list[str]:
    """Every import under `root` (the package folder) that crosses a forbidden direction."""
    problems = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root).with_suffix("")
        parts = [p for p in relative.parts if p != "__init__"] or ["__init__"]
        own = parts[0]
        allowed = ALLOWED.get(own)
        if allowed is None:
            problems.append(f"{path}: component {own!r} has no import rule; add it to ALLOWED")
            continue
        for line, name in _imports(path, package):
            target = _component(name)
            if target == "__init__" and own != "__init__":
                problems.append(f"{path}:{line}: imports the top-level package; import the module itself")
            elif target not in (own, "_version") and allowed is not EVERYTHING and target not in allowed:
                problems.append(f"{path}:{line}: {own} must not import {name}")
    return problems


def test_the_package_keeps_its_import_direction():
    assert import_violations(SRC) == []


def test_the_checker_catches_a_forbidden_import(tmp_path):
    root = tmp_path / "mindscope"
    (root / "render").mkdir(parents=True)
    (root / "activations.py").write_text("def f():\n    from mindscope.report import write_report\n")
    (root / "baselines.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from mindscope.data import Normalization\n"
    )
    (root / "render" / "weights.py").write_text("import mindscope.cli\nfrom mindscope.weights import x\n")
    (root / "data.py").write_text("from mindscope import attribution\n")
    problems = import_violations(root)
    assert len(problems) == 3, problems
    assert "activations must not import mindscope.report" in problems[0]
    assert "data must not import mindscope.attribution" in problems[1]
    assert "render must not import mindscope.cli" in problems[2]


def test_modules_stay_under_400_lines():
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}


def test_the_top_level_api_is_small_sorted_and_importable():
    names = mindscope.__all__
    assert len(names) <= 35
    assert names == sorted(names, key=lambda n: (not n[0].isupper(), n))
    for name in names:
        assert getattr(mindscope, name) is not None


@pytest.mark.parametrize(
    "old, module, new",
    [
        ("black", "mindscope.baselines", "black"),
        ("gauss_legendre", "mindscope.quadrature", "gauss_legendre"),
        ("evaluate_methods", "mindscope.evaluation", "evaluate_methods"),
        ("evaluate", "mindscope.training", "classification_metrics"),
    ],
)
def test_old_names_still_work_with_a_warning(old, module, new):
    import importlib

    with pytest.warns(DeprecationWarning, match=f"use {module}.{new}"):
        value = getattr(mindscope, old)
    assert value is getattr(importlib.import_module(module), new)


def test_unknown_names_are_an_attribute_error():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
            _ = mindscope.nonsense


def test_the_scan_extra_brings_what_reading_a_scan_needs():
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement
    from packaging.version import Version

    project = tomllib.loads((SRC.parents[1] / "pyproject.toml").read_text())["project"]
    extras = {name: {Requirement(r).name: Requirement(r) for r in reqs}
              for name, reqs in project["optional-dependencies"].items()}  # fmt: skip
    # Scan.arrow() and the shards' tables need pyarrow; Scan.table() and the scan's report need pandas
    for extra in ("scan", "test"):
        assert {"pyarrow", "pandas"} <= set(extras[extra]), extra
    pandas = pytest.importorskip("pandas")
    assert Version(pandas.__version__) in extras["scan"]["pandas"].specifier  # the floor admits what we test with


def test_a_scan_table_without_pandas_names_the_extra(monkeypatch):
    pytest.importorskip("pyarrow")
    from mindscope.scan import Scan

    class NoPandas:
        def to_pandas(self):
            raise ImportError("No module named 'pandas'")

    scan = Scan.__new__(Scan)
    monkeypatch.setattr(Scan, "arrow", lambda self: NoPandas())
    with pytest.raises(ValueError, match=r"^table\(\) needs pandas; .* pip install 'mindscope\[scan\]'$"):
        scan.table()
