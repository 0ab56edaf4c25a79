"""The four layers import only downwards; the core stays free of Flink and torch.

Layers, lowest first: ``udfs`` (core), ``jobs`` and ``model_export`` (the Flink
job and training, side by side, never importing each other), ``streamrec``
(tools). The graph is read from the source with :mod:`ast`, so a cycle hidden in
a function body counts as much as one at module level.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAYER = {"udfs": 0, "jobs": 1, "model_export": 1, "streamrec": 2}
SIBLINGS = {frozenset({"jobs", "model_export"})}
CORE_FORBIDDEN = ("pyflink", "torch")
# Project imports inside a function need a reason on the same line: "# lazy: ..."
LAZY_MARK = "# lazy:"
MAX_LAZY = 6  # 6th: streamrec serve's web stack (the [serve] extra)
# Inside the tools layer, the lab (benchmarks, evaluation, generator, demo, local launchers) is not the
# product: only the lab itself and the CLI, its way in, import it.
LAB = "streamrec.lab"
LAB_DOORS = ("streamrec.cli",)


@dataclass(frozen=True)
class Import:
    module: str  # the importing file, as a dotted name
    target: str  # the imported module
    in_function: bool
    line: str


def _dotted(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imports_of(path: Path, root: Path = ROOT) -> list[Import]:
    source = path.read_text()
    lines = source.splitlines()
    module = _dotted(path, root)
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if isinstance(child, ast.Import):
                targets = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                targets = [_resolve(child, module, path.name == "__init__.py")]
            else:
                visit(child, inside)
                continue
            text = lines[child.lineno - 1]
            found.extend(Import(module, t, in_function, text) for t in targets)

    visit(ast.parse(source, str(path)), False)
    return found


def project_imports() -> list[Import]:
    out: list[Import] = []
    for package in LAYER:
        for path in sorted((ROOT / package).rglob("*.py")):
            out.extend(imports_of(path))
    return out


def upward(imp: Import) -> bool:
    src, dst = imp.module.split(".")[0], imp.target.split(".")[0]
    if dst not in LAYER or src == dst:
        return False
    return LAYER[dst] > LAYER[src] or frozenset({src, dst}) in SIBLINGS


def test_no_import_goes_up_or_sideways() -> None:
    bad = [f"{i.module} -> {i.target}" for i in project_imports() if upward(i)]
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def into_the_lab(imp: Import) -> bool:
    """An import of the lab by a module that is neither the lab nor one of its doors."""
    inside = imp.module == LAB or imp.module.startswith(LAB + ".")
    door = any(imp.module == d or imp.module.startswith(d + ".") for d in LAB_DOORS)
    return (imp.target == LAB or imp.target.startswith(LAB + ".")) and not inside and not door


def test_the_product_never_imports_the_lab() -> None:
    lab = [i for i in project_imports() if i.module.startswith(LAB + ".")]
    assert len(lab) > 50, "the lab was not found where this test looks for it"
    bad = [f"{i.module} -> {i.target}" for i in project_imports() if into_the_lab(i)]
    assert not bad, "the product imports the lab:\n" + "\n".join(bad)


def test_the_lab_rule_sees_a_planted_import_from_the_product(tmp_path: Path) -> None:
    serve = tmp_path / "streamrec" / "serve"
    serve.mkdir(parents=True)
    (serve / "__init__.py").write_text("")
    (serve / "x.py").write_text("from streamrec.lab.benchmark import bench\nfrom ..lab import generator\n")
    lab = tmp_path / "streamrec" / "lab"
    lab.mkdir()
    (lab / "__init__.py").write_text("")
    (lab / "y.py").write_text("from streamrec.lab.local import kafka\n")
    planted = imports_of(serve / "x.py", tmp_path)
    assert [i.target for i in planted] == ["streamrec.lab.benchmark", "streamrec.lab"]
    assert all(into_the_lab(i) for i in planted)
    assert not any(into_the_lab(i) for i in imports_of(lab / "y.py", tmp_path))


def test_core_imports_neither_flink_nor_torch() -> None:
    bad = [f"{i.module} -> {i.target}" for i in project_imports()
           if i.module.startswith("udfs") and i.target.split(".")[0] in CORE_FORBIDDEN]
    assert not bad, "the core must run without pyflink and torch:\n" + "\n".join(bad)


def test_project_imports_in_functions_are_few_and_explained() -> None:
    lazy = [i for i in project_imports() if i.in_function and i.target.split(".")[0] in LAYER]
    unexplained = [f"{i.module}: {i.line.strip()}" for i in lazy if LAZY_MARK not in i.line]
    assert not unexplained, f"project imports inside functions need '{LAZY_MARK} <why>':\n" + "\n".join(unexplained)
    assert len(lazy) <= MAX_LAZY, f"{len(lazy)} lazy project imports, at most {MAX_LAZY}"


def test_the_checker_sees_a_hidden_upward_import(tmp_path: Path) -> None:
    """The walk must find imports in nested function bodies and resolve relative ones."""
    pkg = tmp_path / "udfs"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    f = pkg / "x.py"
    f.write_text("def f():\n    if True:\n        from streamrec import cli\n\nfrom .events import Event\n")
    found = imports_of(f, tmp_path)
    assert [(i.target, i.in_function) for i in found] == [("streamrec", True), ("udfs.events", False)]
    assert upward(found[0]) and not upward(found[1])
