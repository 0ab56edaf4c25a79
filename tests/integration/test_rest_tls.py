"""Nobody but the run's owner submits a job through a local run's REST API.

Flink's REST API has no login: a job graph POSTed to /jobs runs, whatever
``web.submit.enable`` says. A local run therefore takes REST clients over mutual TLS
only (jobs/rest_tls.py); these tests probe a running job's port as an outsider would.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import stat
import time
import urllib.error
from typing import Any

import pytest

from jobs.pipeline import flink_settings
from jobs.rest_tls import (
    CERT,
    FILES,
    KEY,
    RestTls,
    RestTlsError,
    client_context,
    ensure_rest_tls,
    flink_rest_settings,
    rest_get,
)
from streamrec.lab.local.kafka import free_ports
from udfs.config import TOPIC_FIELDS, Config, env_var

SSL_KEYS = ("security.ssl.rest.enabled", "security.ssl.rest.authentication-enabled")


def test_the_certificate_is_made_once_and_only_its_owner_can_read_it(tmp_path) -> None:
    tls = ensure_rest_tls(tmp_path / "tls")
    assert stat.S_IMODE(tls.directory.stat().st_mode) == 0o700
    for name in FILES:
        assert stat.S_IMODE((tls.directory / name).stat().st_mode) == 0o600, name
    before = {name: (tls.directory / name).read_bytes() for name in FILES}
    again = ensure_rest_tls(tmp_path / "tls")
    assert {name: (again.directory / name).read_bytes() for name in FILES} == before
    assert not [p for p in tmp_path.iterdir() if p.name != "tls"], "a temporary folder was left behind"
    settings = flink_rest_settings(tls)
    assert settings["security.ssl.rest.authentication-enabled"] == "true"
    assert settings["security.ssl.rest.keystore-password"] == tls.password and len(tls.password) == 32


def test_a_folder_with_half_a_certificate_is_named_not_used(tmp_path) -> None:
    broken = tmp_path / "tls"
    broken.mkdir()
    (broken / CERT).write_text("not a certificate")
    with pytest.raises(RestTlsError, match="holds no complete certificate"):
        ensure_rest_tls(broken)


def _config(tmp_path, **job: Any) -> Config:
    return Config.model_validate({"job": {"checkpoint_dir": str(tmp_path / "ck"),
                                          "rest_tls_dir": str(tmp_path / "tls"), **job}})


def test_a_local_run_turns_on_mutual_tls_and_a_flink_run_submission_leaves_it_to_its_cluster(
        tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("PYFLINK_GATEWAY_PORT", raising=False)
    local = flink_settings(_config(tmp_path))
    assert all(local[k] == "true" for k in SSL_KEYS)
    assert local["security.ssl.rest.truststore"] == str(tmp_path / "tls" / "rest-truststore.p12")
    assert not any(k.startswith("security.ssl") for k in flink_settings(_config(tmp_path, rest_auth="none")))
    # Under `flink run` the client hands its gateway to the driver: the cluster's own conf decides.
    monkeypatch.setenv("PYFLINK_GATEWAY_PORT", "1")
    assert not any(k.startswith("security.ssl") for k in flink_settings(_config(tmp_path)))


def test_a_bad_rest_auth_value_fails_naming_the_key(tmp_path) -> None:
    with pytest.raises(ValueError, match="rest_auth"):
        _config(tmp_path, rest_auth="tls")


def _status(port: int, method: str, path: str, context: ssl.SSLContext | None, body: bytes = b"") -> int:
    """The HTTP status of one request; raises OSError (ssl.SSLError, a reset) when refused
    before HTTP. Redirects are not followed."""
    conn: http.client.HTTPConnection = (http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
                                        if context is not None else
                                        http.client.HTTPConnection("127.0.0.1", port, timeout=10))
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        return conn.getresponse().status
    finally:
        conn.close()


def _trusting_only(tls: RestTls) -> ssl.SSLContext:
    """A client that trusts the server's certificate but presents none of its own."""
    return ssl.create_default_context(cafile=str(tls.directory / CERT))


def _other_identity(tmp_path, tls: RestTls) -> ssl.SSLContext:
    """A client that trusts the server and presents a certificate of its own making."""
    other = ensure_rest_tls(tmp_path / "intruder")
    ctx = _trusting_only(tls)
    ctx.load_cert_chain(str(other.directory / CERT), str(other.directory / KEY))
    return ctx


def _running_job(port: int, tls: RestTls, timeout_s: float = 180) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            jobs = [j for j in rest_get(f"127.0.0.1:{port}", "/jobs", tls)["jobs"] if j["status"] == "RUNNING"]
            if jobs:
                return str(jobs[0]["id"])
        except (OSError, KeyError):
            pass
        time.sleep(1)
    raise AssertionError(f"no running job on REST port {port} within {timeout_s}s")


@pytest.mark.kafka
@pytest.mark.flink
def test_no_client_without_the_runs_certificate_reaches_a_running_local_job(
        kafka_broker, unique_topic, kafka_jobs, tmp_path) -> None:
    topics = {f: unique_topic(f.split("_")[0]) for f in TOPIC_FIELDS}
    port = free_ports(1)[0]
    job = kafka_jobs(topics, **{env_var("job", "rest_port"): str(port),
                                env_var("job", "rest_tls_dir"): str(tmp_path / "tls")})
    tls = ensure_rest_tls(tmp_path / "tls")
    job_id = _running_job(port, tls)
    assert job.poll() is None
    graph = json.dumps({"jobGraphFileName": "job.bin", "jobJarFileNames": [], "jobArtifactFileNames": []}).encode()
    submitting = [("POST", "/jobs", graph), ("POST", "/jars/upload", b""), ("POST", "/jars/x.jar/run", b"{}"),
                  ("PATCH", f"/jobs/{job_id}?mode=cancel", b""), ("GET", "/jobs", b"")]
    for method, path, body in submitting:
        # Plain HTTP gets only a redirect to HTTPS: nothing is read or run.
        assert _status(port, method, path, None, body) == 301, (method, path)
        for who, ctx in (("no certificate", _trusting_only(tls)), ("a stranger's", _other_identity(tmp_path, tls))):
            with pytest.raises(OSError) as refused:
                _status(port, method, path, ctx, body)
            assert not isinstance(refused.value, urllib.error.HTTPError), (method, path, who)
    # The owner gets through: the routes exist and only the certificate guarded them.
    owner = client_context(tls)
    assert _status(port, "POST", "/jobs", owner, b"{}") == 400  # a malformed submission, read and refused
    assert _status(port, "POST", "/jars/upload", owner) == 404  # web submission stays off
    assert rest_get(f"127.0.0.1:{port}", f"/jobs/{job_id}", tls)["state"] == "RUNNING"
    assert job.poll() is None and os.path.exists(tls.directory / CERT)
