"""Command-line flags over the config: the top of its precedence order.

Shared by the `streamrec` CLI and the job's own entry point (`flink run -py
jobs/recommend_job.py`), so a flag means the same in both. Every flag names its
environment fallback in --help.
"""

from __future__ import annotations

import argparse
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from udfs.config import ENV_PREFIX, SECTIONS, Config, env_var, load_config
from udfs.config_render import field_doc
from udfs.errors import StreamrecError

# Flags that map onto config fields: flag -> (section, field).
CONFIG_FLAGS: dict[str, tuple[str, str]] = {
    "--bootstrap-servers": ("kafka", "bootstrap_servers"),
    "--input-topic": ("kafka", "input_topic"),
    "--output-topic": ("kafka", "output_topic"),
    "--dlq-topic": ("kafka", "dlq_topic"),
    "--catalog-topic": ("kafka", "catalog_topic"),
    "--control-topic": ("kafka", "control_topic"),
    "--feedback-topic": ("kafka", "feedback_topic"),
    "--delivery-guarantee": ("kafka", "delivery_guarantee"),
    "--parallelism": ("job", "parallelism"),
    "--execution-mode": ("job", "execution_mode"),
    "--artifact": ("ranking", "artifact_dir"),
    "--registry": ("ranking", "registry_dir"),
    "--provider": ("ranking", "provider"),
    "--top-k": ("ranking", "top_k"),
    "--resume": ("job", "resume_from"),
    "--key-file": ("privacy", "key_file"),
    "--key-env": ("privacy", "key_env"),
    "--port": ("serve", "port"),
    "--store": ("serve", "store_path"),
    "--store-backend": ("serve", "store"),
    "--redis-url": ("serve", "redis_url"),
    "--bind-address": ("serve", "bind_address"),
}
# The flags of the job (`streamrec run`, `flink run -py jobs/recommend_job.py`): every config flag but serve's.
JOB_FLAGS: tuple[str, ...] = tuple(f for f, (section, _) in CONFIG_FLAGS.items() if section != "serve")

# What a command reports as a message, not a traceback (udfs/errors.py: reported() gives the status).
REPORTED_ERRORS: tuple[type[Exception], ...] = (StreamrecError, FileNotFoundError)


def command_env(command: str, flag: str) -> str:
    """The environment variable of a command's own flag, by the one rule every variable follows:
    ``STREAMREC_<SCOPE>_<NAME>``, the scope a config section and the name its key (``env_var``), or
    the scope the command (``bench-serve``: ``BENCH_SERVE``) and the name its flag. A test keeps the
    two kinds from sharing a name."""
    return f"{ENV_PREFIX}{_upper(command)}_{_upper(flag.lstrip('-'))}"


def _upper(name: str) -> str:
    return name.upper().replace("-", "_").replace(" ", "_")


# Scopes renamed to follow the rule: new -> old. A variable under the old scope is still read, with a warning.
RENAMED_SCOPES: dict[str, str] = {"EVALUATE": "EVAL"}


def env_value(env: str, environ: Mapping[str, str] | None = None) -> str | None:
    """``env``'s value, or that of its name before a scope rename (with a warning naming the new one)."""
    environ = os.environ if environ is None else environ
    if env in environ:
        return environ[env]
    for new, old in RENAMED_SCOPES.items():
        prefix = f"{ENV_PREFIX}{new}_"
        if env.startswith(prefix):
            before = f"{ENV_PREFIX}{old}_{env[len(prefix):]}"
            if before in environ:
                warnings.warn(f"{before} is deprecated and will be removed: set {env}", FutureWarning, stacklevel=2)
                return environ[before]
    return None


def add_flag(p: argparse._ActionsContainer, command: str, flag: str, help: str, **kw: Any) -> None:
    """``command``'s flag whose default comes from its variable (:func:`command_env`), named in --help."""
    env = command_env(command, flag)
    default = kw.pop("default", None)
    found = env_value(env)
    kw["default"] = default if found is None else found
    shown = f" (default: {default})" if default is not None else ""
    p.add_argument(flag, help=f"{help}{shown} [env: {env}]", **kw)


def add_switch(p: argparse._ActionsContainer, command: str, flag: str, help: str) -> None:
    """An on/off flag of ``command``; its variable (1, true or yes) is named in --help, as every flag's is."""
    env = command_env(command, flag)
    p.add_argument(flag, action="store_true", default=(env_value(env) or "") in ("1", "true", "yes"),
                   help=f"{help} [env: {env}=1]")


def add_config_flags(p: argparse.ArgumentParser, flags: Sequence[str]) -> None:
    p.add_argument("--config", default=os.environ.get(f"{ENV_PREFIX}CONFIG"),
                   help=f"TOML config file (see config/streamrec.toml) [env: {ENV_PREFIX}CONFIG]")
    for flag in flags:
        section, field = CONFIG_FLAGS[flag]
        default = SECTIONS[section].model_fields[field].default
        # dest is internal (config_from_args reads it); the metavar is what --help shows.
        p.add_argument(flag, dest=f"cfg__{section}__{field}", default=None, metavar=field.upper(),
                       help=f"{field_doc(section, field)} (default: {default}) [env: {env_var(section, field)}]")


def config_from_args(args: argparse.Namespace, extra: dict[str, dict[str, Any]] | None = None) -> Config:
    overrides: dict[str, dict[str, Any]] = {}
    for key, value in vars(args).items():
        if key.startswith("cfg__") and value is not None:
            _, section, field = key.split("__")
            overrides.setdefault(section, {})[field] = value
    for section, values in (extra or {}).items():
        overrides.setdefault(section, {}).update(values)
    return load_config(getattr(args, "config", None), overrides)


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
