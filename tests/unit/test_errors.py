"""Every error raised on purpose shares one base, and a bug is never reported as the user's mistake.

The rule is read from the source (as tests/unit/test_layers.py reads imports): every exception
class the project defines derives from ``udfs.errors.StreamrecError``. The CLI prints the
message of such an error with its exit status and lets anything else keep its traceback.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import inspect
from pathlib import Path

import pytest

from streamrec import cli
from udfs.errors import InputError, StreamrecError, UserError, reported
from udfs.logs import CsvLayout

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("udfs", "jobs", "model_export", "streamrec")


def exception_classes(source: str) -> list[str]:
    """Names of the classes in ``source`` whose bases name an exception (…Error, …Exception, a
    builtin exception) rather than a plain class."""
    exceptions = {name for name, obj in vars(builtins).items()
                  if inspect.isclass(obj) and issubclass(obj, BaseException)}
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ClassDef):
            continue
        names = [b.id if isinstance(b, ast.Name) else b.attr if isinstance(b, ast.Attribute) else ""
                 for b in node.bases]
        if any(n in exceptions or n.endswith(("Error", "Exception", "Refused", "Unavailable", "Request"))
               for n in names):
            found.append(node.name)
    return found


def project_exceptions() -> list[type]:
    classes = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            names = exception_classes(path.read_text())
            if not names:
                continue
            module = importlib.import_module(".".join(path.relative_to(ROOT).with_suffix("").parts))
            classes += [getattr(module, name) for name in names]
    return classes


def test_the_rule_finds_a_planted_exception_outside_the_base() -> None:
    planted = "class Oops(RuntimeError):\n    pass\n\nclass Fine:\n    pass\n\nclass Bad(ValueError): ...\n"
    assert exception_classes(planted) == ["Oops", "Bad"]


def test_every_exception_the_project_defines_derives_from_the_one_base() -> None:
    classes = project_exceptions()
    assert len(classes) >= 15, [c.__name__ for c in classes]  # the scan sees them all
    outside = [f"{c.__module__}.{c.__name__}" for c in classes if not issubclass(c, StreamrecError)]
    assert not outside, f"exception classes outside udfs.errors.StreamrecError: {outside}"


def test_user_errors_exit_2_other_deliberate_errors_1_and_a_bug_is_not_reported() -> None:
    assert reported(InputError("bad --columns")) == 2
    assert reported(UserError("x")) == 2
    assert reported(StreamrecError("the broker did not start")) == 1
    assert reported(FileNotFoundError(2, "No such file", "/nope")) == 2
    assert reported(ValueError("a bug")) is None and reported(KeyError("k")) is None


def _run_with(monkeypatch, exc: BaseException, capsys) -> tuple[int, str]:
    def command(args) -> int:
        raise exc

    real = cli.build_parser

    def parser():
        p = real()
        p.set_defaults(func=command)
        for action in p._subparsers._group_actions:  # type: ignore[union-attr]
            for sub in action.choices.values():
                sub.set_defaults(func=command)
        return p

    monkeypatch.setattr(cli, "build_parser", parser)
    code = cli.main(["generate", "--out", "x.csv"])
    return code, capsys.readouterr().err


def test_the_cli_prints_a_deliberate_error_and_lets_a_bug_raise(monkeypatch, capsys) -> None:
    code, err = _run_with(monkeypatch, InputError("--columns: no column for ts"), capsys)
    assert code == 2 and err.strip() == "streamrec generate: --columns: no column for ts"
    code, err = _run_with(monkeypatch, StreamrecError("the broker did not start"), capsys)
    assert code == 1 and "the broker did not start" in err
    with pytest.raises(ValueError, match="an internal slip"):
        _run_with(monkeypatch, ValueError("an internal slip"), capsys)


def test_a_user_mistake_in_a_log_layout_is_a_user_error() -> None:
    """The log reader's complaints are the user's to fix: exit 2 with the message."""
    with pytest.raises(InputError, match="--columns: no column for ts"):
        CsvLayout.parse("user,item")
