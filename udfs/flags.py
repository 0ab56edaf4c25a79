"""Command-line flags over the config: the top of its precedence order.

Shared by the `streamrec` CLI and the job's own entry point (`flink run -py
jobs/recommend_job.py`), so a flag means the same in both. Every flag names its
environment fallback in --help.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
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


def add_flag(p: argparse.ArgumentParser, flag: str, env: str, help: str, **kw: Any) -> None:
    """A flag whose default comes from ``env``; the env var is named in --help."""
    default = kw.pop("default", None)
    kw["default"] = os.environ.get(env, default)
    shown = f" (default: {default})" if default is not None else ""
    p.add_argument(flag, help=f"{help}{shown} [env: {env}]", **kw)


def add_config_flags(p: argparse.ArgumentParser, flags: Sequence[str]) -> None:
    add_flag(p, "--config", f"{ENV_PREFIX}CONFIG", "TOML config file (see config/streamrec.toml)")
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
