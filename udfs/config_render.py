"""The config as text for others: the sample file, each key's doc, and the environment that sets
keys in a child process."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from udfs.config import SECTIONS, ConfigError, env_var


def config_env(values: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Environment variables that set ``{section: {field: value}}`` in a child process.

    The way the tools and tests configure a job they start as a subprocess; an unknown
    key fails here, naming it, rather than being ignored by the child.
    """
    env: dict[str, str] = {}
    for section, fields in values.items():
        if section not in SECTIONS:
            raise ConfigError(f"unknown config section {section!r}")
        for field, value in fields.items():
            if field not in SECTIONS[section].model_fields:
                raise ConfigError(f"unknown config key {section}.{field}")
            env[env_var(section, field)] = str(value)
    return env


def sample_toml() -> str:
    """``config/streamrec.toml``: every key at its default, with its doc and env var (a test keeps
    the file equal to this, so the sample never drifts from the fields)."""
    lines = ["# streamrec sample configuration: every key, at its default.",
             "# Precedence: defaults < this file (--config / STREAMREC_CONFIG) < environment < flags.", ""]
    for section, model in SECTIONS.items():
        lines.append(f"[{section}]")
        for name, info in model.model_fields.items():
            lines.append(f"# {' '.join((info.description or '').split())} [env: {env_var(section, name)}]")
            lines.append(f"{name} = {_toml_value(info.default)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (tuple, list)):
        return json.dumps(list(value))
    return str(value)


def field_doc(section: str, field: str) -> str:
    return SECTIONS[section].model_fields[field].description or ""
