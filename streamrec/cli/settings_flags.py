"""A command's flags derived from its settings dataclass, as ``udfs/flags.py`` derives the config's.

Each setting is declared once, in its dataclass: its type, its default and, as the attribute's
docstring, its help. A command names the dataclass, the flags it spells differently (``out_dir`` is
``--out``) and a prefix for a second dataclass (the scale phase's ``--scale-*``); the flag, its
environment variable (by the rule of :func:`udfs.flags.command_env`), its shown default and the
conversion of its text into the field's type all follow. argparse keeps each value as the text
given (``streamrec bench --compare`` passes that text on to another commit's bench); the dataclass
is built from it by :func:`settings_from_args`.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from udfs.config import ConfigError
from udfs.flags import add_flag

ON = ("on", "true", "yes", "1")
OFF = ("off", "false", "no", "0")


@dataclass(frozen=True)
class SettingsFlags:
    """Which of ``settings``' fields a command takes as flags, and how they are spelled."""

    settings: type
    command: str
    prefix: str = ""
    """Put before every flag name of this dataclass (``scale-``)."""
    names: Mapping[str, str] = field(default_factory=dict)
    """Field -> flag, where the flag is not ``--<prefix><field with dashes>``."""
    skip: frozenset[str] = frozenset()
    """Fields the command sets itself."""
    defaults: Mapping[str, Any] = field(default_factory=dict)
    """Field -> default, for a field the dataclass leaves without one (an output folder)."""

    def flag(self, name: str) -> str:
        return self.names.get(name) or f"--{self.prefix}{name.replace('_', '-')}"

    def fields(self) -> list[dataclasses.Field[Any]]:
        return [f for f in dataclasses.fields(self.settings) if f.name not in self.skip]


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each annotated attribute of ``cls`` (as pydantic's attribute docstrings)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _default(f: dataclasses.Field[Any], spec: SettingsFlags) -> Any:
    if f.name in spec.defaults:
        return spec.defaults[f.name]
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise TypeError(f"{spec.settings.__name__}.{f.name}: no default; give one in SettingsFlags.defaults")


def as_text(value: Any) -> str | None:
    """A default as a flag's text: tuples comma-separated, booleans on/off, None as no text."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def add_settings_flags(p: argparse.ArgumentParser, spec: SettingsFlags) -> None:
    """One flag per field of ``spec.settings`` (less ``spec.skip``), help from the field's docstring."""
    docs = field_docs(spec.settings)
    for f in spec.fields():
        if f.name not in docs:
            raise TypeError(f"{spec.settings.__name__}.{f.name} has no docstring for its flag's help")
        help_text = docs[f.name].replace("%", "%%")
        add_flag(p, spec.command, spec.flag(f.name), help_text, default=as_text(_default(f, spec)))


def settings_from_args(spec: SettingsFlags, args: argparse.Namespace, **fixed: Any) -> Any:
    """``spec.settings`` from the flags' texts in ``args``, converted by each field's type; ``fixed``
    gives the fields the command sets itself. A text that does not convert names its flag."""
    hints = typing.get_type_hints(spec.settings)
    values = dict(fixed)
    for f in spec.fields():
        if f.name in fixed:
            continue
        flag = spec.flag(f.name)
        values[f.name] = parse_text(getattr(args, flag.lstrip("-").replace("-", "_")), hints[f.name], flag)
    return spec.settings(**values)


def parse_text(text: str | None, hint: Any, flag: str) -> Any:
    """``text`` as a value of ``hint``: int, float, str, bool (on/off), Path, ``X | None`` (empty: None)
    or ``tuple[X, ...]`` (comma-separated)."""
    origin, parts = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType) and type(None) in parts:
        inner = next(a for a in parts if a is not type(None))
        return None if text in (None, "") else parse_text(text, inner, flag)
    if text is None:
        raise ConfigError(f"{flag}: a value is required")
    if origin is tuple:
        return tuple(parse_text(x.strip(), parts[0], flag) for x in text.split(",") if x.strip())
    if hint is bool:
        if text.lower() in ON:
            return True
        if text.lower() in OFF:
            return False
        raise ConfigError(f"{flag}: on or off, not {text!r}")
    if hint in (int, float):
        try:
            return hint(text)
        except ValueError:
            kind = "an integer" if hint is int else "a number"
            raise ConfigError(f"{flag}: {kind}, not {text!r}") from None
    if hint is Path:
        return Path(text)
    if hint is str:
        return text
    raise TypeError(f"{flag}: no conversion for {hint!r}")
