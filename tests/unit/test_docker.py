"""docker/ without a Docker engine: every YAML and JSON file parses, and every path, port, image tag and
version in it agrees with where that fact lives (constraints.txt, pyproject.toml, the Maven poms, the
Makefile, udfs/config.py, the job's and the service's metric names)."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import xml.etree.ElementTree as ET
from pathlib import PurePosixPath

import pytest
import tomllib
import yaml

from jobs.flink_metrics import info_metric_name
from jobs.functions import COUNTERS, HISTOGRAMS
from jobs.layout import JOB_SCRIPT, PROJECT_ROOT, PROMETHEUS_FACTORY
from udfs.config import SECTIONS, Config, env_var, load_config
from udfs.feedback import FEEDBACK_COUNTERS

ROOT = PROJECT_ROOT
DOCKER = ROOT / "docker"
APP = "/opt/streamrec"  # WORKDIR of both images, checked below


def pins() -> dict[str, str]:
    out = {}
    for line in (ROOT / "constraints.txt").read_text().split():
        name, version = line.split("==")
        out[name.lower()] = version
    return out


def pom_version(pom: str, artifact: str) -> str:
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    for dep in ET.parse(ROOT / pom).getroot().iterfind(".//m:dependency", ns):
        if dep.findtext("m:artifactId", namespaces=ns) == artifact:
            return str(dep.findtext("m:version", namespaces=ns))
    raise AssertionError(f"{artifact} not in {pom}")


def project_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def deployment() -> dict:
    docs = list(yaml.safe_load_all((DOCKER / "k8s" / "flink-deployment.yaml").read_text()))
    return next(d for d in docs if d["kind"] == "FlinkDeployment")


def dockerfile_args(name: str) -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", (DOCKER / name).read_text(), re.M))


def env_of(service: dict) -> dict[str, str]:
    return {k: str(v) for k, v in (service.get("environment") or {}).items()}


def test_every_yaml_and_json_file_parses():
    files = sorted(p for p in DOCKER.rglob("*") if p.suffix in (".yaml", ".yml", ".json"))
    assert len(files) >= 6
    for path in files:
        if path.suffix == ".json":
            json.loads(path.read_text())
        else:
            assert [d for d in yaml.safe_load_all(path.read_text()) if d], path


def test_flink_version_everywhere_is_the_pinned_one():
    flink = pins()["apache-flink"]
    for name in ("Dockerfile", "Dockerfile.gpu"):
        assert dockerfile_args(name)["FLINK_VERSION"] == flink, name
    assert pom_version("deps/flink-metrics/pom.xml", "flink-metrics-prometheus") == flink
    spec = deployment()["spec"]
    major, minor, _ = flink.split(".")
    assert spec["flinkVersion"] == f"v{major}_{minor}"
    assert spec["job"]["jarURI"] == f"local:///opt/flink/opt/flink-python-{flink}.jar"


def test_image_tags_agree_with_the_project_kafka_and_cuda_versions():
    c = compose()["services"]
    version = project_version()
    assert {c[s]["image"] for s in ("jobmanager", "taskmanager", "submit", "serve")} == {f"streamrec:{version}"}
    assert c["taskmanager-gpu"]["image"] == f"streamrec-gpu:{version}"
    assert deployment()["spec"]["image"] == f"streamrec:{version}"
    kafka = pom_version("deps/kafka/pom.xml", "kafka_2.13")
    assert c["kafka"]["image"] == c["topics"]["image"] == f"apache/kafka:{kafka}"
    cuda_image = dockerfile_args("Dockerfile.gpu")["CUDA_IMAGE"]
    cuda_major = re.search(r"nvidia/cuda:(\d+)\.", cuda_image).group(1)
    assert pins()["nvidia-cuda-runtime"].split(".")[0] == cuda_major  # the CUDA wheels onnxruntime-gpu loads


def test_images_install_like_the_makefile_with_the_right_extras():
    makefile = (ROOT / "Makefile").read_text()
    assert "-c constraints.txt" in makefile
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    cpu, gpu = (DOCKER / "Dockerfile").read_text(), (DOCKER / "Dockerfile.gpu").read_text()
    assert dockerfile_args("Dockerfile")["EXTRAS"] == "serve" and "serve" in extras
    assert 'pip install -q --no-cache-dir -c constraints.txt ".[${EXTRAS}]"' in cpu
    assert 'pip install -q --no-cache-dir -c constraints.txt ".[serve,gpu]"' in gpu and "gpu" in extras
    deps_recipe = re.search(r"^deps:.*\n((?:\t.*\n)+)", makefile, re.M).group(1)
    for script in re.findall(r"scripts/\w+\.sh", deps_recipe):  # the images fetch and build like `make deps`
        assert script in cpu and script in gpu, script


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfile_copies_exist_in_the_build_context(name):
    text = (DOCKER / name).read_text()
    assert f"WORKDIR {APP}" in text
    sources = [src for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.M) for src in line.split()[:-1]]
    assert sources
    for src in sources:
        assert (ROOT / src).exists(), f"{name}: COPY {src}"
    compose_builds = [s["build"] for s in compose()["services"].values() if "build" in s]
    for build in compose_builds:
        assert (DOCKER / build["context"] / build["dockerfile"]).is_file()


def test_streamrec_settings_in_compose_and_kubernetes_are_real_config_keys():
    known = {env_var(section, field) for section, model in SECTIONS.items() for field in model.model_fields}
    c = compose()["services"]
    envs = [env_of(s) for s in c.values()]
    container = deployment()["spec"]["podTemplate"]["spec"]["containers"][0]
    envs.append({e["name"]: str(e["value"]) for e in container["env"]})
    for env in envs:
        ours = {k: v for k, v in env.items() if k.startswith("STREAMREC_")}
        assert set(ours) <= known, set(ours) - known
        from udfs.config import load_config
        load_config(environ=env)  # the values pass the config's own validation (with the variables they name)
    defaults = Config()
    # the artifact mount holds the config's default artifact path, under the image's WORKDIR
    assert env_of(c["serve"])["STREAMREC_RANKING_ARTIFACT_DIR"] == f"{APP}/{defaults.ranking.artifact_dir}"
    assert "../artifacts:/opt/streamrec/artifacts:ro" in c["serve"]["volumes"]


def test_ports_agree_between_compose_prometheus_kubernetes_and_the_config():
    c = compose()["services"]
    serve_env = env_of(c["serve"])
    port = int(serve_env["STREAMREC_SERVE_PORT"])
    assert port == Config().serve.port
    assert f"127.0.0.1:{port}:{port}" in c["serve"]["ports"]
    props = yaml.safe_load(env_of(c["jobmanager"])["FLINK_PROPERTIES"])
    assert props["metrics.reporter.prom.factory.class"] == PROMETHEUS_FACTORY
    prom_port = int(props["metrics.reporter.prom.port"])
    prometheus = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in prometheus["scrape_configs"]}
    assert jobs["flink-jobmanager"]["static_configs"][0]["targets"] == [f"jobmanager:{prom_port}"]
    assert jobs["flink-taskmanager"]["dns_sd_configs"][0]["port"] == prom_port
    assert set(jobs["flink-taskmanager"]["dns_sd_configs"][0]["names"]) == {"taskmanager", "taskmanager-gpu"}
    assert jobs["streamrec-serve"]["static_configs"][0]["targets"] == [f"serve:{port}"]
    gpu = " ".join(c["taskmanager-gpu"]["command"])
    assert f"-Dmetrics.reporter.prom.port={prom_port}" in gpu and PROMETHEUS_FACTORY in gpu
    spec = deployment()["spec"]
    assert spec["flinkConfiguration"]["metrics.reporter.prom.port"] == str(prom_port)
    assert spec["flinkConfiguration"]["metrics.reporter.prom.factory.class"] == PROMETHEUS_FACTORY
    ports = spec["podTemplate"]["spec"]["containers"][0]["ports"]
    assert {"name": "metrics", "containerPort": prom_port} in ports
    datasource = yaml.safe_load((DOCKER / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    prom_host_port = c["prometheus"]["ports"][0].split(":")[-1]
    assert datasource["datasources"][0]["url"] == f"http://prometheus:{prom_host_port}"


def submit_words() -> list[str]:
    """The words of compose's `flink run` (the one-shot submit runs it through sh -c)."""
    command = compose()["services"]["submit"]["command"]
    assert command[:2] == ["sh", "-c"]
    words = shlex.split(command[2])
    return words[words.index("run") - 1:]


def test_a_second_up_never_submits_a_second_job():
    """The submit runs `flink run` only when `flink list -r` shows no job named job.name
    (tests/cluster/test_cluster_submit.py checks that listing against a real cluster)."""
    script = compose()["services"]["submit"]["command"][2]
    guard = re.search(r"if flink list -r -m (\S+) \| grep -q ': (\S+) \('; then (.*?); else exec flink run", script)
    assert guard, script
    assert guard.group(1) == "jobmanager:8081" and guard.group(2) == Config().job.name
    assert "flink run" not in guard.group(3)
    assert compose()["services"]["submit"].get("restart") == "no"


def test_the_build_context_leaves_out_the_venv_caches_and_state_but_nothing_an_image_copies():
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    assert {".venv", ".cache", ".git", "artifacts", "checkpoints"} <= set(ignored)
    for name in ("Dockerfile", "Dockerfile.gpu"):
        for line in re.findall(r"^COPY (?!--from)(.+)$", (DOCKER / name).read_text(), re.M):
            for src in line.split()[:-1]:
                assert not any(fnmatch.fnmatch(src.rstrip("/"), pattern) for pattern in ignored), (name, src)


def test_the_gpu_image_fails_to_build_unless_its_onnxruntime_has_the_cuda_provider():
    gpu = (DOCKER / "Dockerfile.gpu").read_text()
    extras = gpu.index('".[serve,gpu]"')
    reinstall = gpu.index("--force-reinstall --no-deps -c constraints.txt onnxruntime-gpu")
    check = gpu.index("'CUDAExecutionProvider' in p")
    assert extras < reinstall < check, "the GPU build must be installed last and then checked"
    assert "sys.exit(0 if 'CUDAExecutionProvider' in p else" in gpu


def test_topics_and_job_entry_point_are_the_configs():
    c = compose()["services"]
    created = set(re.search(r"for t in ([\w\- \n]+);", " ".join(c["topics"]["command"])).group(1).split())
    assert created == set(Config().kafka.topics().values())
    script = f"{APP}/{JOB_SCRIPT.relative_to(ROOT)}"
    submit = submit_words()
    assert submit[submit.index("-py") + 1] == script
    args = deployment()["spec"]["job"]["args"]
    assert args[args.index("-py") + 1] == script
    assert submit[submit.index("-pyexec") + 1] == "/opt/venv/bin/python"
    spec = deployment()["spec"]
    parallelism = {e["name"]: e["value"] for e in spec["podTemplate"]["spec"]["containers"][0]["env"]}
    slots = int(spec["flinkConfiguration"]["taskmanager.numberOfTaskSlots"])
    assert int(parallelism["STREAMREC_JOB_PARALLELISM"]) == spec["job"]["parallelism"] \
        == spec["taskManager"]["replicas"] * slots


# Flink's Kafka source metrics the dashboard reads for consumer lag (named as the reporter writes them;
# tests/integration/test_prometheus_metrics.py finds every dashboard metric in a running job's scrape).
KAFKA_SOURCE_METRICS = ("pendingRecords", "KafkaSourceReader_KafkaConsumer_records_lag_max")


def test_grafana_provisioning_and_dashboard_metrics_exist():
    c = compose()["services"]
    provider = yaml.safe_load((DOCKER / "grafana/provisioning/dashboards/streamrec.yaml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert f"./grafana/dashboards:{path}:ro" in c["grafana"]["volumes"]
    for volume in c["grafana"]["volumes"] + c["prometheus"]["volumes"]:
        assert (DOCKER / volume.split(":")[0]).exists(), volume
    dashboard = json.loads((DOCKER / "grafana/dashboards/streamrec.json").read_text())
    # Importable anywhere (the import dialog asks for __inputs) and provisioned here (the variable
    # resolves to the one Prometheus datasource): no datasource uid is written into the file.
    assert dashboard["__inputs"] == [{**dashboard["__inputs"][0], "name": "DS_PROMETHEUS", "type": "datasource",
                                      "pluginId": "prometheus"}]
    variable = next(v for v in dashboard["templating"]["list"] if v["name"] == "DS_PROMETHEUS")
    assert variable["type"] == "datasource" and variable["query"] == "prometheus"
    uid = "${DS_PROMETHEUS}"
    job_metrics = {f"flink_taskmanager_job_task_operator_{m}" for m in (*COUNTERS, *HISTOGRAMS, info_metric_name())}
    job_metrics |= {f"flink_taskmanager_job_task_operator_model_version_arm_{m}" for m in FEEDBACK_COUNTERS}
    job_metrics |= {f"flink_taskmanager_job_task_operator_{m}" for m in KAFKA_SOURCE_METRICS}
    serve_source = "".join((ROOT / "streamrec" / "serve" / f).read_text() for f in ("app.py", "serve_metrics.py"))
    serve_metrics = set(re.findall(r"streamrec_serve_\w+", serve_source))
    queried = set()
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == uid
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid
            queried |= set(re.findall(r"\b(?:flink|streamrec)_\w+", target["expr"]))
    unknown = {m for m in queried if m not in job_metrics and m.removesuffix("_bucket") not in serve_metrics}
    assert not unknown, unknown
    assert job_metrics <= queried | {f"flink_taskmanager_job_task_operator_{m}" for m in
                                     ("ranker_rows", "ranker_micros", "model_version_arm_feedback_rr_micros")}, \
        job_metrics - queried
    titles = " ".join(p["title"] for p in dashboard["panels"])
    assert "Online HR@10" in titles and "Consumer lag" in titles


def test_compose_publishes_every_port_on_loopback_only():
    """Flink's REST API runs any job it is sent and has no login: nothing may reach it, or any other
    service, from beyond the host unless a person opens it on purpose."""
    published = {name: s["ports"] for name, s in compose()["services"].items() if s.get("ports")}
    assert {"jobmanager", "serve", "prometheus", "grafana"} <= set(published)
    for name, ports in published.items():
        for port in ports:
            assert str(port).startswith("127.0.0.1:") and str(port).count(":") == 2, (name, port)


def test_host_tools_reach_the_compose_broker_at_the_configs_default_address():
    kafka = compose()["services"]["kafka"]
    env = kafka["environment"]
    host, port = Config().kafka.bootstrap_servers.split(":")
    advertised = dict(reversed(entry.split("://")) for entry in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    name = advertised[f"{host}:{port}"]  # the listener advertised at the config's default address
    listeners = dict(entry.split("://") for entry in env["KAFKA_LISTENERS"].split(","))
    assert listeners[name] == f":{port}" and f"{name}:PLAINTEXT" in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"]
    assert f"{host}:{port}:{port}" in kafka["ports"]
    assert advertised["kafka:9092"] == env["KAFKA_INTER_BROKER_LISTENER_NAME"]  # the containers' own


def test_the_long_running_services_have_healthchecks():
    services = compose()["services"]
    for name in ("kafka", "jobmanager", "serve"):
        assert services[name]["healthcheck"]["test"][0] == "CMD", name
    probe = " ".join(services["serve"]["healthcheck"]["test"])
    assert "/livez" in probe and f":{env_of(services['serve'])['STREAMREC_SERVE_PORT']}/" in probe


def k8s_serve_docs() -> dict[str, dict]:
    docs = yaml.safe_load_all((DOCKER / "k8s" / "serve.yaml").read_text())
    return {d["kind"]: d for d in docs if d}


def test_kubernetes_creates_the_configs_topics_with_the_catalog_and_control_compacted():
    job = k8s_serve_docs()["Job"]["spec"]["template"]["spec"]["containers"][0]
    script = " ".join(job["args"])
    created = set(re.search(r"for t in ([\w\- \n]+);", script).group(1).split())
    assert created == set(Config().kafka.topics().values())
    compacted = set(re.findall(r"for t in ([\w\- ]+); do\s+\S+kafka-configs\.sh", script)[0].split())
    kafka = Config().kafka
    assert compacted == {kafka.catalog_topic, kafka.control_topic}
    assert "--if-not-exists" in script


def test_kubernetes_runs_the_lookup_service_non_root_read_only_with_token_and_probes():
    docs = k8s_serve_docs()
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    container = pod["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    secret = next(e for e in container["env"] if e["name"] == env["STREAMREC_SERVE_API_TOKEN_ENV"])
    assert secret["valueFrom"]["secretKeyRef"]["key"] == "token"
    config = load_config(environ={**{k: v for k, v in env.items() if v is not None},
                                  env["STREAMREC_SERVE_API_TOKEN_ENV"]: "t" * 32})
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert str(PurePosixPath(config.serve.store_path).parent) in mounts and not mounts["/data"].get("readOnly")
    assert config.ranking.artifact_dir.startswith("/artifacts/") and mounts["/artifacts"]["readOnly"] is True
    assert "/tmp" in mounts  # the only other place a read-only root lets it write
    for probe, path in (("livenessProbe", "/livez"), ("readinessProbe", "/readyz")):
        get = container[probe]["httpGet"]
        host = next(h["value"] for h in get["httpHeaders"] if h["name"] == "Host")
        assert get["path"] == path and host in config.serve.allowed_hosts, probe
    service = docs["Service"]
    assert service["spec"]["selector"] == docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert service["metadata"]["name"] in config.serve.allowed_hosts
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    docs_all = [d for f in ("flink-deployment.yaml", "serve.yaml")
                for d in yaml.safe_load_all((DOCKER / "k8s" / f).read_text())]
    declared = {d["metadata"]["name"] for d in docs_all if d and d["kind"] == "PersistentVolumeClaim"}
    assert claims <= declared


def test_kubernetes_lets_only_the_operator_reach_the_rest_port():
    """Flink's REST API runs any job POSTed to /jobs whatever web.submit.enable says (that switch only
    removes the jar routes), and has no authentication: in a cluster only the operator may reach it."""
    docs = [d for d in yaml.safe_load_all((DOCKER / "k8s" / "flink-deployment.yaml").read_text()) if d]
    policy = next(d for d in docs if d["kind"] == "NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"] == {"app": deployment()["metadata"]["name"]}
    assert policy["policyTypes"] == ["Ingress"]
    rest_port = 8081
    for rule in policy["ingress"]:
        ports = {p["port"] for p in rule.get("ports", [])}
        peers = [peer.get("podSelector", {}).get("matchLabels") for peer in rule.get("from", [])]
        if not ports or rest_port in ports:  # a rule that opens the REST port names its peers, and only these
            assert peers and all(p in ({"app": "streamrec"}, {"app.kubernetes.io/name": "flink-kubernetes-operator"})
                                 for p in peers), rule
    assert deployment()["spec"]["flinkConfiguration"]["web.submit.enable"] == "false"


def test_flink_in_compose_takes_no_jar_through_the_web_routes():
    props = yaml.safe_load(env_of(compose()["services"]["jobmanager"])["FLINK_PROPERTIES"])
    assert props["web.submit.enable"] is False


def test_grafana_wants_a_login_and_a_password_from_outside_the_file():
    env = env_of(compose()["services"]["grafana"])
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false" and env["GF_USERS_ALLOW_SIGN_UP"] == "false"
    # compose refuses to start when the variable is unset (${VAR:?message}): no default password
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD:\?[^}]+\}", env["GF_SECURITY_ADMIN_PASSWORD"])


def test_no_container_runs_as_root():
    """The Flink image's entrypoint drops root to its flink user; a service with another entrypoint
    must name a user, and the GPU image (no Flink entrypoint) must set one."""
    services = compose()["services"]
    for name, service in services.items():
        if service.get("image", "").startswith("streamrec:") and "entrypoint" in service:
            assert service.get("user") not in (None, "root", "0"), name
    assert "entrypoint" in services["serve"]  # the case above is not empty
    gpu = (DOCKER / "Dockerfile.gpu").read_text()
    users = re.findall(r"^USER (\S+)$", gpu, re.M)
    assert users and users[-1] not in ("root", "0")
    cpu = (DOCKER / "Dockerfile").read_text()
    assert not re.search(r"chown -R \S+ /opt/streamrec(\s|$)", cpu), "code must stay read-only to the runtime user"


def test_compose_mounts_the_registry_read_only_apart_from_the_artifact_for_every_flink_container():
    c = compose()["services"]
    for name in ("jobmanager", "taskmanager", "submit", "taskmanager-gpu"):
        volumes = c[name]["volumes"]
        env = c[name]["environment"]
        registry = next(v for v in volumes if v.split(":")[1] == env["STREAMREC_RANKING_REGISTRY_DIR"])
        artifacts = next(v for v in volumes if env["STREAMREC_RANKING_ARTIFACT_DIR"].startswith(v.split(":")[1] + "/"))
        assert registry.endswith(":ro") and artifacts.endswith(":ro"), name
        assert registry.split(":")[0] != artifacts.split(":")[0], f"{name}: the registry inside the artifact's mount"
        # The registry is not inside the artifact's mount either (a path below it would be read-only with it).
        assert not env["STREAMREC_RANKING_REGISTRY_DIR"].startswith(artifacts.split(":")[1] + "/"), name


def test_kubernetes_pods_run_as_non_root_with_read_only_artifacts_and_registry_on_their_own_volumes():
    spec = deployment()["spec"]["podTemplate"]["spec"]
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0
    container = spec["containers"][0]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    env = {e["name"]: e["value"] for e in container["env"]}
    artifacts = mounts["artifacts"]["mountPath"]
    assert mounts["artifacts"]["readOnly"] is True
    assert env["STREAMREC_RANKING_ARTIFACT_DIR"].startswith(artifacts + "/")
    registry = mounts["registry"]["mountPath"]
    assert mounts["registry"]["readOnly"] is True
    assert env["STREAMREC_RANKING_REGISTRY_DIR"] == registry or env["STREAMREC_RANKING_REGISTRY_DIR"].startswith(
        registry + "/")
    state = mounts["state"]["mountPath"]
    flink = deployment()["spec"]["flinkConfiguration"]
    for key in ("execution.checkpointing.dir", "execution.checkpointing.savepoint-dir", "high-availability.storageDir"):
        assert flink[key].startswith(f"file://{state}/"), key
    claims = {v["name"]: v["persistentVolumeClaim"] for v in spec["volumes"]}
    assert claims["artifacts"]["readOnly"] is True and claims["registry"]["readOnly"] is True
    assert len({claims[v]["claimName"] for v in ("artifacts", "registry", "state")}) == 3
    docs = yaml.safe_load_all((DOCKER / "k8s" / "flink-deployment.yaml").read_text())
    declared = {d["metadata"]["name"] for d in docs if d and d["kind"] == "PersistentVolumeClaim"}
    assert {c["claimName"] for c in claims.values()} <= declared
