"""`streamrec serve` as a subprocess (the benchmark, the browser test, the docs' screenshot)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from streamrec.lab.local.kafka import free_ports
from streamrec.lab.local.procs import LOCAL_BROKER_SECURITY, stop_group
from udfs.config_render import config_env


def get_json(url: str, timeout: float = 5.0) -> tuple[int, Any]:
    """(status, decoded JSON body), for error statuses too."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


class ServeProcess:
    """A `streamrec serve` on a free loopback port, against a plaintext local broker."""

    def __init__(self, bootstrap: str, input_topic: str, output_topic: str, store: Path, log: Path, *,
                 artifact: Path | None = None, settings: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self.port = free_ports(1)[0]
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log
        values: dict[str, dict[str, Any]] = {
            "kafka": {"bootstrap_servers": bootstrap, "input_topic": input_topic, "output_topic": output_topic,
                      **LOCAL_BROKER_SECURITY},
            "serve": {"store_path": str(store), "port": self.port, "bind_address": "127.0.0.1"},
            "ranking": {"artifact_dir": str(artifact or store.parent / "no-artifact")},
        }
        for section, fields in (settings or {}).items():
            values.setdefault(section, {}).update(fields)
        self.env = {**os.environ, **config_env(values)}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 120.0) -> float:
        """Start it and wait until /healthz is 200 (its view rebuilt from the topic); the seconds that took."""
        t0 = time.monotonic()
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "streamrec.cli", "serve"], env=self.env,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        while time.monotonic() - t0 < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"streamrec serve exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                if get_json(self.base + "/healthz", 2)[0] == 200:
                    return time.monotonic() - t0
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"streamrec serve not healthy within {timeout_s:.0f} s: {self.log.read_text()[-2000:]}")

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("streamrec serve is not started")
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc)

    def __enter__(self) -> ServeProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
