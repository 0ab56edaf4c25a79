"""Job subprocesses: their environment, and stopping them with their process group."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from udfs.config_render import config_env

# The local broker (streamrec.lab.local.kafka) the demo and the bench start is plaintext: a job they run
# must not inherit secured-broker settings from the caller's environment or config file.
LOCAL_BROKER_SECURITY: dict[str, str] = {
    "security_protocol": "PLAINTEXT", "sasl_mechanism": "", "sasl_username": "", "sasl_password_file": "",
    "sasl_password_env": "", "ssl_cafile": "", "ssl_certfile": "", "ssl_keyfile": "",
}

def job_env(bootstrap: str, topics: Mapping[str, str], artifact: str | Path, *,
            settings: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, str]:
    """This process's environment plus every job setting through its env var.

    ``topics`` maps topic fields (``input_topic``, ...) to names; ``settings`` adds
    ``{section: {field: value}}``. The artifact path is made absolute: the job's
    workers may not share this process's working directory.
    """
    values: dict[str, dict[str, Any]] = {
        "kafka": {"bootstrap_servers": bootstrap, **topics},
        "ranking": {"artifact_dir": str(Path(artifact).resolve())},
    }
    for section, fields in (settings or {}).items():
        values.setdefault(section, {}).update(fields)
    return {**os.environ, **config_env(values)}


def stop_group(proc: subprocess.Popen, timeout_s: float = 20.0) -> None:
    """SIGTERM the process group (a clean shutdown: the job's JVM goes with it), SIGKILL after ``timeout_s``."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
