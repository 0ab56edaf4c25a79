"""Helpers for the serve tests: output records in the shared layout, a serve subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from streamrec.local.kafka import free_ports
from udfs.records import SCHEMA_VERSION, encode_output_record


def output_value(user: Any, seq: int, items: list[Any], **over: Any) -> bytes:
    rec = {"schema_version": SCHEMA_VERSION, "user_id": user, "seq": seq, "items": items,
           "scores": [1.0 / (i + 1) for i in range(len(items))],
           "reasons": [{"code": "covisit", "because": 5} if i == 0 else {"code": "trending"}
                       for i in range(len(items))],
           "trigger": {"item_id": 5, "behavior": "pv", "ts": 1_700_000_000_000}, "model_version": "m-1",
           "provider": "cpu", "fallback": None, "generated_at": int(time.time() * 1000)}
    rec.update(over)
    return encode_output_record(rec)


def get_json(url: str, timeout: float = 5.0) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def start_serve(bootstrap: str, input_topic: str, output_topic: str, store: Path, log: Path,
                artifact: Path | None = None) -> tuple[subprocess.Popen, str]:
    """`streamrec serve` on a free port; returns the process and its base URL once /healthz answers 200."""
    port = free_ports(1)[0]
    env = {**os.environ, "STREAMREC_KAFKA_BOOTSTRAP_SERVERS": bootstrap, "STREAMREC_KAFKA_INPUT_TOPIC": input_topic,
           "STREAMREC_KAFKA_OUTPUT_TOPIC": output_topic, "STREAMREC_SERVE_STORE_PATH": str(store),
           "STREAMREC_RANKING_ARTIFACT_DIR": str(artifact or store.parent / "no-artifact")}
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "streamrec.cli", "serve", "--port", str(port)], env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamrec serve exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if get_json(base + "/healthz", 2)[0] == 200:
                return proc, base
        except OSError:
            pass
        time.sleep(0.3)
    proc.terminate()
    raise RuntimeError(f"streamrec serve not healthy within 60 s: {log.read_text()[-2000:]}")
