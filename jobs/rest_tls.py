"""Mutual TLS on the REST API of a local run and of the local standalone cluster.

Flink's REST API has no login and runs any job graph POSTed to ``/jobs`` (the route
``flink run`` uses); ``web.submit.enable: false`` only removes the jar routes. On
loopback that still lets every local user of the machine run code as the job's user.
Flink's own answer is mutual TLS on the REST endpoints
(``security.ssl.rest.authentication-enabled``): a client without the certificate does
not get past the handshake. A local run makes one self-signed certificate per cache
folder, readable by its owner only, and uses it as server certificate, client
certificate and trust anchor at once; the project's own REST readers (tests, benches,
the cluster launcher) and ``flink run`` (through the cluster's conf) present it.

A job submitted with ``flink run`` to a cluster adds none of this: the cluster's own
configuration decides how its REST API is guarded (docs/operations.md: Security).
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import ssl
import subprocess
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.layout import cache_dir
from udfs.errors import StreamrecError

CERT = "rest-cert.pem"
KEY = "rest-key.pem"
KEYSTORE = "rest-keystore.p12"
TRUSTSTORE = "rest-truststore.p12"
PASSWORD = "password"
FILES = (CERT, KEY, KEYSTORE, TRUSTSTORE, PASSWORD)
# A local certificate: long enough that a developer's cache never sees it expire mid-run.
DAYS = 3650


class RestTlsError(StreamrecError, RuntimeError):
    """The certificate could not be made (a tool missing or failing): the message says which."""


@dataclass(frozen=True)
class RestTls:
    """The files of one certificate; every path is absolute."""

    directory: Path

    @property
    def password(self) -> str:
        return (self.directory / PASSWORD).read_text().strip()

    def path(self, name: str) -> str:
        return str(self.directory / name)


def default_dir() -> Path:
    return cache_dir() / "rest-tls"


def submitted_by_flink_client() -> bool:
    """True when ``flink run`` runs this Python (it hands the driver its gateway's port):
    the cluster's configuration then governs its REST API, and a certificate of ours
    would make the client speak TLS to a cluster that does not."""
    return "PYFLINK_GATEWAY_PORT" in os.environ


def _run(cmd: list[str]) -> None:
    tool = shutil.which(cmd[0])
    if tool is None:
        raise RestTlsError(f"{cmd[0]} is not on PATH: it makes the local REST API's certificate "
                           "(job.rest_auth = mtls); install it, or set job.rest_auth = none")
    done = subprocess.run([tool, *cmd[1:]], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RestTlsError(f"{cmd[0]} failed ({done.returncode}) making the REST certificate: "
                           f"{(done.stderr or done.stdout).strip()[-500:]}")


def _keytool() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "keytool").exists():
        return str(Path(java_home) / "bin" / "keytool")
    return "keytool"


def _generate(into: Path) -> None:
    password = secrets.token_hex(16)
    (into / PASSWORD).write_text(password + "\n")
    _run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", str(DAYS),
          "-subj", "/CN=streamrec-local-rest", "-addext", "subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost",
          "-keyout", str(into / KEY), "-out", str(into / CERT)])
    _run(["openssl", "pkcs12", "-export", "-name", "flink-rest", "-in", str(into / CERT), "-inkey", str(into / KEY),
          "-out", str(into / KEYSTORE), "-passout", f"pass:{password}"])
    _run([_keytool(), "-importcert", "-noprompt", "-alias", "flink-rest", "-file", str(into / CERT),
          "-keystore", str(into / TRUSTSTORE), "-storetype", "PKCS12", "-storepass", password])
    for name in FILES:
        (into / name).chmod(0o600)


def ensure_rest_tls(directory: str | os.PathLike[str] | None = None) -> RestTls:
    """The certificate in ``directory`` (default ``<cache>/rest-tls``), made on first use.

    Made in a private temporary folder and renamed into place, so two runs starting at once
    never read half a keystore: the second rename loses and the winner's files are used."""
    target = Path(directory) if directory else default_dir()
    target = target.expanduser().resolve()
    if all((target / name).exists() for name in FILES):
        return RestTls(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".rest-tls-", dir=target.parent))  # mode 0700
    try:
        _generate(tmp)
        try:
            tmp.rename(target)
        except OSError as exc:
            if not all((target / name).exists() for name in FILES):
                raise RestTlsError(f"{target} exists but holds no complete certificate ({exc}); remove the "
                                   "folder and start again, or set job.rest_tls_dir to another") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return RestTls(target)


def flink_rest_settings(tls: RestTls) -> dict[str, str]:
    """Flink settings for mutual TLS on the REST endpoints (server and Flink's own REST client)."""
    password = tls.password
    return {
        "security.ssl.rest.enabled": "true",
        "security.ssl.rest.authentication-enabled": "true",
        "security.ssl.rest.keystore": tls.path(KEYSTORE),
        "security.ssl.rest.keystore-password": password,
        "security.ssl.rest.key-password": password,
        "security.ssl.rest.truststore": tls.path(TRUSTSTORE),
        "security.ssl.rest.truststore-password": password,
    }


@functools.lru_cache(maxsize=8)
def client_context(tls: RestTls) -> ssl.SSLContext:
    """An SSL context that trusts the local certificate and presents it; made once per certificate
    (the cluster launcher polls its REST API every half second)."""
    ctx = ssl.create_default_context(cafile=tls.path(CERT))
    ctx.load_cert_chain(tls.path(CERT), tls.path(KEY))
    return ctx


def rest_get(address: str, path: str, tls: RestTls | None, timeout: float = 10) -> Any:
    """GET ``path`` of the REST API at ``host:port`` as JSON, over mutual TLS when ``tls`` is given."""
    if tls is None:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=timeout) as r:
            return json.loads(r.read())
    with urllib.request.urlopen(f"https://{address}{path}", timeout=timeout, context=client_context(tls)) as r:
        return json.loads(r.read())
