"""A standalone Flink cluster from the PyFlink distribution's own bin/ scripts.

Used by the cluster-submission tests and by `streamrec bench`, which runs the
job on separate TaskManager processes: in thread mode each TaskManager embeds
one CPython, so two subtasks in one TaskManager share a GIL.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pyflink
import yaml

from jobs.pipeline import worker_pythonpath
from jobs.rest_tls import RestTls, ensure_rest_tls, flink_rest_settings, rest_get
from streamrec.lab.local.kafka import free_ports

FLINK_HOME = Path(pyflink.__file__).resolve().parent


class StandaloneCluster:
    def __init__(self, work_dir: Path, slots: int = 2, taskmanagers: int = 1, tm_memory: str = "2048m") -> None:
        self.work_dir = work_dir
        self.conf_dir = work_dir / "conf"
        self.log_dir = work_dir / "log"
        self.rest_port, self.rpc_port = free_ports(2)
        self.slots = slots
        self.taskmanagers = taskmanagers
        self.tm_memory = tm_memory
        # Its REST API takes only clients with the local certificate (jobs/rest_tls.py);
        # `flink run` and `flink stop` find it in the cluster's conf.
        self.tls: RestTls = ensure_rest_tls()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.rest_port}"

    @property
    def jobmanager(self) -> str:
        """What ``flink ... -m`` takes: a bare host:port makes the client speak plain HTTP, which
        the cluster's TLS endpoint only answers with a redirect."""
        return f"https://{self.address}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(FLINK_HOME=str(FLINK_HOME), FLINK_CONF_DIR=str(self.conf_dir), FLINK_LOG_DIR=str(self.log_dir),
                   PYTHONPATH=worker_pythonpath())
        return env

    def _write_conf(self) -> None:
        shutil.copytree(FLINK_HOME / "conf", self.conf_dir, dirs_exist_ok=True)
        conf = yaml.safe_load((FLINK_HOME / "conf" / "config.yaml").read_text())
        conf["jobmanager"].update({"bind-host": "127.0.0.1", "rpc": {"address": "127.0.0.1", "port": self.rpc_port},
                                   "memory": {"process": {"size": "1024m"}}})
        conf["taskmanager"].update({"bind-host": "127.0.0.1", "host": "127.0.0.1", "numberOfTaskSlots": self.slots,
                                    "memory": {"process": {"size": self.tm_memory}}})
        conf["rest"] = {"address": "127.0.0.1", "bind-address": "127.0.0.1", "port": self.rest_port}
        conf.update(flink_rest_settings(self.tls))  # flat keys: Flink reads them beside the nested ones
        conf.setdefault("web", {})["submit"] = {"enable": False}
        # Own PID files: with the default (/tmp, shared by every cluster of this user),
        # stop-cluster.sh of one cluster also stops the TaskManagers of any other.
        conf.setdefault("env", {}).setdefault("pid", {})["dir"] = str(self.work_dir / "pid")
        # Own scratch (the RPC jar, blobs, shuffle files, Python archives): by default /tmp, where a
        # SIGKILLed TaskManager leaves them for good; under the work directory they go with it.
        (self.work_dir / "tmp").mkdir(parents=True, exist_ok=True)
        conf.setdefault("io", {})["tmp"] = {"dirs": str(self.work_dir / "tmp")}
        (self.conf_dir / "config.yaml").write_text(yaml.safe_dump(conf))
        (self.conf_dir / "masters").write_text(f"127.0.0.1:{self.rest_port}\n")
        # start-cluster.sh starts one local TaskManager per line naming this host.
        (self.conf_dir / "workers").write_text("127.0.0.1\n" * self.taskmanagers)

    def start(self, timeout: float = 120) -> StandaloneCluster:
        self._write_conf()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(["bash", str(FLINK_HOME / "bin" / "start-cluster.sh")], env=self.env(), check=True,
                       capture_output=True, timeout=120)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.rest("/overview").get("taskmanagers", 0) >= self.taskmanagers:
                    return self
            except OSError:
                pass
            time.sleep(1)
        raise RuntimeError(f"Flink cluster not ready after {timeout}s; logs in {self.log_dir}")

    def rest(self, path: str) -> Any:
        return rest_get(self.address, path, self.tls, timeout=5)

    def flink(self, *args: str, env: dict[str, str] | None = None, timeout: float = 300) -> str:
        full_env = {**self.env(), **(env or {})}
        res = subprocess.run(["bash", str(FLINK_HOME / "bin" / "flink"), *args], env=full_env,
                             capture_output=True, text=True, timeout=timeout)
        if res.returncode != 0:
            raise RuntimeError(f"flink {' '.join(args[:3])} failed ({res.returncode}):\n{res.stdout[-3000:]}\n"
                               f"{res.stderr[-3000:]}")
        return res.stdout

    def submit_python(self, script: str, job_args: list[str], env: dict[str, str], python: str,
                      savepoint: str | None = None) -> str:
        """Submit detached; returns the JobID. ``savepoint``: restore from it (``flink run -s``).

        No ``--allowNonRestoredState``: every stateful operator has a uid, so a restore that
        leaves savepoint state behind is an error, not something to skip silently.
        """
        restore = ["-s", savepoint] if savepoint else []
        out = self.flink("run", "-m", self.jobmanager, "-d", *restore, "-py", script, "-pyclientexec", python,
                         "-pyexec", python, *job_args, env=env)
        match = re.search(r"JobID ([0-9a-f]{32})", out)
        if not match:
            raise RuntimeError(f"no JobID in flink run output:\n{out[-3000:]}")
        return match.group(1)

    def job_state(self, job_id: str) -> str:
        return str(self.rest(f"/jobs/{job_id}")["state"])

    def wait_for_state(self, job_id: str, state: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while (current := self.job_state(job_id)) != state:
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {job_id} is {current}, not {state}, after {timeout}s; logs in {self.log_dir}")
            time.sleep(0.5)

    def stop_with_savepoint(self, job_id: str, target_dir: str | Path, timeout: float = 300) -> str:
        """``flink stop``: a final savepoint into ``target_dir``, then the job FINISHES.

        No ``--drain``: the job is meant to go on from the savepoint, and draining would fire
        MAX_WATERMARK through it first. Returns the savepoint's path (a ``file:`` URI).
        """
        out = self.flink("stop", "-m", self.jobmanager, "--savepointPath", str(target_dir), job_id, timeout=timeout)
        match = re.search(r"Savepoint completed\. Path: (\S+)", out)
        if not match:
            raise RuntimeError(f"no savepoint path in flink stop output:\n{out[-3000:]}")
        self.wait_for_state(job_id, "FINISHED")
        return match.group(1)

    def restored_from(self, job_id: str) -> str | None:
        """The external path of the checkpoint/savepoint the job was restored from, if any."""
        restored = (self.rest(f"/jobs/{job_id}/checkpoints").get("latest") or {}).get("restored")
        return str(restored["external_path"]) if restored else None

    def taskmanager_pids(self) -> list[int]:
        """PIDs of this cluster's TaskManager JVMs (each embeds its Python in thread mode)."""
        pids = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmd = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"org.apache.flink.runtime.taskexecutor.TaskManagerRunner" in cmd and any(
                    str(self.conf_dir).encode() in part for part in cmd):
                pids.append(int(proc.name))
        return sorted(pids)

    def taskmanager_ids(self) -> set[str]:
        """The ids of the TaskManagers registered with the JobManager now."""
        return {str(tm["id"]) for tm in self.rest("/taskmanagers").get("taskmanagers", [])}

    def start_taskmanager(self, timeout: float = 120) -> None:
        """One more TaskManager (e.g. to replace a killed one); waits until it registers.

        Waits for an id that was not registered before, not for a count: a killed TaskManager stays
        registered until its heartbeat times out, and may leave while the new one registers."""
        before = self.taskmanager_ids()
        subprocess.run(["bash", str(FLINK_HOME / "bin" / "taskmanager.sh"), "start"], env=self.env(), check=True,
                       capture_output=True, timeout=120)
        deadline = time.monotonic() + timeout
        while not self.taskmanager_ids() - before:
            if time.monotonic() > deadline:
                raise RuntimeError(f"new TaskManager not registered after {timeout}s; logs in {self.log_dir}")
            time.sleep(1)

    def restart_taskmanagers(self, timeout: float = 120) -> None:
        """Replace every TaskManager of this cluster by a fresh one, e.g. before submitting a
        second PyFlink job: a TaskManager runs one thread-mode job per lifetime (docs/operations.md,
        "One thread-mode job per TaskManager lifetime"). Waits until the new ones registered."""
        count = len(self.taskmanager_pids()) or self.taskmanagers
        subprocess.run(["bash", str(FLINK_HOME / "bin" / "taskmanager.sh"), "stop-all"], env=self.env(),
                       check=True, capture_output=True, timeout=120)
        deadline = time.monotonic() + timeout
        while self.taskmanager_pids() or self.rest("/overview").get("taskmanagers", 0):
            if time.monotonic() > deadline:
                raise RuntimeError(f"TaskManagers still up {timeout}s after stop-all; logs in {self.log_dir}")
            time.sleep(0.5)
        for _ in range(count):
            self.start_taskmanager(timeout)

    def stop(self) -> None:
        subprocess.run(["bash", str(FLINK_HOME / "bin" / "stop-cluster.sh")], env=self.env(),
                       capture_output=True, timeout=120)
