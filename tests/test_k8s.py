"""Kubernetes manifests: both overlays build, validate offline, and agree with the worker."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions

from tests.k8s_build import Manifest, build, pod_containers, pod_spec
from tests.scripts import load_script
from tests.settings_env import settings_env_keys
from worker.settings import Settings

REPO = Path(__file__).resolve().parent.parent
OVERLAYS = ("dev", "prod")
SECRET_ENV = {"FACESTREAM_KAFKA__SASL_PASSWORD", "FACESTREAM_REDIS__URL"}
CUSTOM_KINDS = {"ServiceMonitor", "ScaledObject"}

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module", params=OVERLAYS)
def manifests(request: pytest.FixtureRequest) -> list[Manifest]:
    """The manifests one overlay builds to (each test runs once per overlay)."""
    return build(REPO / "k8s" / "overlays" / request.param)


def one(manifests: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = [m for m in manifests if m["kind"] == kind and name in (None, m["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def worker(manifests: list[Manifest]) -> dict[str, Any]:
    deployment = one(manifests, "Deployment", "facestream-worker")
    return next(c for c in pod_spec(deployment)["containers"] if c["name"] == "worker")


def config_data(manifests: list[Manifest]) -> dict[str, str]:
    return one(manifests, "ConfigMap", "facestream-settings")["data"]


def _normalised(value: Any) -> Any:
    """Named lists sorted by name: kustomize and our builder order merged env differently."""
    if isinstance(value, dict):
        return {k: _normalised(v) for k, v in value.items()}
    if isinstance(value, list):
        items = [_normalised(v) for v in value]
        if items and all(isinstance(i, dict) and "name" in i for i in items):
            items.sort(key=lambda i: i["name"])
        return items
    return value


@pytest.mark.parametrize("name", OVERLAYS)
def test_python_build_matches_kubectl_kustomize(name: str) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: only the Python build is checked")
    run = subprocess.run(
        [kubectl, "kustomize", str(REPO / "k8s" / "overlays" / name)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    real = [d for d in yaml.safe_load_all(run.stdout) if d]

    def key(m: Manifest) -> tuple[str, str]:
        return m["kind"], m["metadata"]["name"]

    ours = build(REPO / "k8s" / "overlays" / name)
    assert _normalised(sorted(ours, key=key)) == _normalised(sorted(real, key=key))


def test_overlay_has_every_piece(manifests: list[Manifest]) -> None:
    kinds = {m["kind"] for m in manifests}
    assert {
        "Namespace", "ServiceAccount", "ConfigMap", "PersistentVolumeClaim", "Deployment",
        "PodDisruptionBudget", "Service", "ServiceMonitor", "ScaledObject", "Job",
    } <= kinds  # fmt: skip
    namespaced = [m for m in manifests if m["kind"] != "Namespace"]
    assert {m["metadata"].get("namespace") for m in namespaced} == {"facestream"}


SUPPORTED_VERSIONS = sorted(
    {v for v in all_versions() if tuple(map(int, v.split(".")[:2])) >= (1, 29)},
    key=lambda v: tuple(map(int, v.split("."))),
)


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_builtin_manifests_validate_strictly(version: str) -> None:
    for name in OVERLAYS:
        for manifest in build(REPO / "k8s" / "overlays" / name):
            if manifest["kind"] in CUSTOM_KINDS:
                continue
            try:
                kubernetes_validate.validate(manifest, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{name} {manifest['kind']} on {version}: {exc.message}")


def test_validator_covers_kubernetes_129_and_newer() -> None:
    versions = [tuple(map(int, v.split(".")[:2])) for v in all_versions()]
    assert (1, 29) in versions and max(versions) >= (1, 33)


def test_servicemonitor_scrapes_metrics_on_the_worker_port(manifests: list[Manifest]) -> None:
    monitor = one(manifests, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    service = one(manifests, "Service", "facestream-worker")
    labels = service["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    port = next(p for p in service["spec"]["ports"] if p["name"] == endpoint["port"])
    container_ports = {p["name"]: p["containerPort"] for p in worker(manifests)["ports"]}
    assert container_ports[port["targetPort"]] == int(
        config_data(manifests)["FACESTREAM_HTTP__PORT"]
    )
    deployment = one(manifests, "Deployment", "facestream-worker")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def exported_metric_names() -> set[str]:
    from tests.metric_names import exported_families

    return {metric.name for metric in exported_families()}


def test_autoscaler_uses_worker_load_metrics_within_partition_count(
    manifests: list[Manifest],
) -> None:
    scaled = one(manifests, "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": "facestream-worker"
    }  # fmt: skip
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    # KEDA owns the replica count; a fixed one would be reset on every apply.
    assert "replicas" not in one(manifests, "Deployment", "facestream-worker")["spec"]
    job = one(manifests, "Job", "facestream-kafka-topics")
    job_env = {e["name"]: e.get("value") for c in pod_containers(job) for e in c.get("env", [])}
    assert spec["maxReplicaCount"] <= int(job_env["TOPIC_PARTITIONS"])
    exported = exported_metric_names()
    queried = set()
    for trigger in spec["triggers"]:
        assert trigger["type"] == "prometheus"
        meta = trigger["metadata"]
        assert set(meta) >= {"serverAddress", "query", "threshold"}
        assert float(meta["threshold"]) > 0
        assert "lag" not in meta["query"].lower()
        queried |= set(re.findall(r"facestream_[a-z_]+", meta["query"]))
    assert "facestream_detector_load" in queried  # the detector's demand ÷ its capacity
    assert {"facestream_active_tracks", "facestream_queue_depth"} <= queried
    assert queried <= exported, queried - exported


def test_every_facestream_key_is_a_settings_field(manifests: list[Manifest]) -> None:
    known = settings_env_keys()
    used = {k for k in config_data(manifests) if k.startswith("FACESTREAM")}
    for manifest in manifests:
        for container in pod_containers(manifest):
            used |= {
                e["name"] for e in container.get("env", []) if e["name"].startswith("FACESTREAM")
            }
    assert used <= known, used - known


def test_configmap_and_secrets_load_into_settings(
    manifests: list[Manifest], monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    for key in [k for k in os.environ if k.startswith("FACESTREAM_")]:
        monkeypatch.delenv(key)
    for key, value in config_data(manifests).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("FACESTREAM_KAFKA__SASL_PASSWORD", "secret")
    monkeypatch.setenv("FACESTREAM_REDIS__URL", "redis://:secret@redis:6379/0")
    settings = Settings()
    assert settings.kafka.topic == "facestream.streams"
    assert settings.model.hf_offline is True


def test_credentials_come_only_from_the_secret(manifests: list[Manifest]) -> None:
    assert not SECRET_ENV & set(config_data(manifests))
    env = {e["name"]: e for e in worker(manifests)["env"]}
    for name in SECRET_ENV:
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "facestream-credentials"


def test_probes_hit_the_paths_and_port_the_worker_serves(manifests: list[Manifest]) -> None:
    container = worker(manifests)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    port = int(config_data(manifests)["FACESTREAM_HTTP__PORT"])
    probes = {
        kind: container[kind]["httpGet"]
        for kind in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert probes["livenessProbe"]["path"] == "/healthz"
    assert probes["startupProbe"]["path"] == "/healthz"
    assert probes["readinessProbe"]["path"] == "/readyz"
    for probe in probes.values():
        assert ports.get(probe["port"], probe["port"]) == port
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120


def test_worker_health_server_answers_every_probe_path() -> None:
    from prometheus_client import CollectorRegistry

    from worker.health import HealthServer

    server = HealthServer(
        "127.0.0.1", 0, CollectorRegistry(), alive=lambda: (True, "ok"), ready=lambda: (True, "ok")
    )
    server.start()
    try:
        for path in ("/healthz", "/readyz", "/metrics"):
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5) as r:
                assert r.status == 200, path
    finally:
        server.stop()


def test_termination_grace_covers_the_worker_grace(manifests: list[Manifest]) -> None:
    grace_s = float(
        config_data(manifests).get("FACESTREAM_GRACE_S", Settings.model_fields["grace_s"].default)
    )
    pod = pod_spec(one(manifests, "Deployment", "facestream-worker"))
    assert pod["terminationGracePeriodSeconds"] >= grace_s + 10


def test_pod_is_locked_down(manifests: list[Manifest]) -> None:
    pod = pod_spec(one(manifests, "Deployment", "facestream-worker"))
    # Service links would add FACESTREAM_* variables that are not settings.
    assert pod["enableServiceLinks"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["serviceAccountName"] == one(manifests, "ServiceAccount")["metadata"]["name"]
    for container in pod_containers(one(manifests, "Deployment", "facestream-worker")):
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert "memory" in container["resources"]["limits"]


def test_prod_worker_gets_one_gpu_on_gpu_nodes() -> None:
    manifests = build(REPO / "k8s" / "overlays" / "prod")
    pod = pod_spec(one(manifests, "Deployment", "facestream-worker"))
    resources = worker(manifests)["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert resources["requests"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"]
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert config_data(manifests)["FACESTREAM_MODEL__DEVICE"] == "cuda"
    pvc = one(manifests, "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_dev_worker_runs_on_cpu_with_the_tiny_model() -> None:
    manifests = build(REPO / "k8s" / "overlays" / "dev")
    pod = pod_spec(one(manifests, "Deployment", "facestream-worker"))
    assert "nvidia.com/gpu" not in json.dumps(pod)
    data = config_data(manifests)
    assert data["FACESTREAM_MODEL__DEVICE"] == "cpu"
    assert "tiny" in data["FACESTREAM_MODEL__MODEL"]


def test_pdb_selects_the_worker_pods(manifests: list[Manifest]) -> None:
    pdb = one(manifests, "PodDisruptionBudget")
    deployment = one(manifests, "Deployment", "facestream-worker")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1


def test_topics_job_creates_compacted_assignments_and_a_dlq(manifests: list[Manifest]) -> None:
    job = one(manifests, "Job", "facestream-kafka-topics")
    (container,) = pod_containers(job)
    script = " ".join(container["args"])
    assert "kafka-topics.sh" in script
    assert '--topic "$FACESTREAM_KAFKA__TOPIC"' in script
    assert '--topic "$FACESTREAM_KAFKA__DLQ_TOPIC"' in script
    assert "cleanup.policy=compact" in script
    assert "--if-not-exists" in script
    assert container["envFrom"] == [{"configMapRef": {"name": "facestream-settings"}}]


def test_topics_job_script_runs_and_logs_in_as_the_workers_sasl_user(tmp_path: Path) -> None:
    """The prod job, run with a stand-in kafka-topics.sh and no `kafka-sasl-username` in
    the Secret (README: optional), uses the ConfigMap's user like the worker does."""
    manifests = build(REPO / "k8s" / "overlays" / "prod")
    job = one(manifests, "Job", "facestream-kafka-topics")
    (container,) = pod_containers(job)
    calls = tmp_path / "calls.txt"
    fake = tmp_path / "kafka-topics.sh"
    fake.write_text(
        f'#!/bin/bash\necho "$*" >> {calls}\n'
        'case "$*" in *--describe*) echo "Topic: t PartitionCount: 32";; esac\n'
    )
    fake.chmod(0o755)
    cfg = tmp_path / "client.properties"
    script = (
        container["args"][0]
        .replace("/opt/kafka/bin/kafka-topics.sh", str(fake))
        .replace("/tmp/client.properties", str(cfg))
    )
    env = {"PATH": "/usr/bin:/bin", **config_data(manifests), "KAFKA_SASL_PASSWORD": "pw"}
    env.update({e["name"]: e["value"] for e in container["env"] if "value" in e})
    done = subprocess.run(
        [*container["command"], script], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert 'username="facestream" password="pw"' in cfg.read_text()
    assert "--partitions 32" in calls.read_text()


def test_weights_are_fetched_into_the_shared_volume_by_an_init_container(
    manifests: list[Manifest],
) -> None:
    pod = pod_spec(one(manifests, "Deployment", "facestream-worker"))
    (init,) = pod["initContainers"]
    assert init["command"][-1] == "/opt/facestream/fetch_weights.py"
    volumes = {v["name"]: v for v in pod["volumes"]}
    pvc_name = one(manifests, "PersistentVolumeClaim")["metadata"]["name"]
    cache = next(n for n, v in volumes.items() if v.get("persistentVolumeClaim"))
    assert volumes[cache]["persistentVolumeClaim"]["claimName"] == pvc_name
    for container in (init, worker(manifests)):
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert mounts[cache] == "/models"  # the image's HF_HOME=/models/hf lives there


def test_fetch_weights_fills_the_cache_once_then_skips(
    testdata: Path, mnet_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny = testdata / "facellava-tiny"
    if not (tiny / "checkpoint" / "config.json").is_file():
        pytest.skip(f"tiny checkpoint not found under {tiny}")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("FACESTREAM_MODEL__MODEL", str(tiny / "checkpoint"))
    monkeypatch.setenv("FACESTREAM_DETECTOR__WEIGHTS", str(mnet_weights))
    fetch = load_script(REPO / "deploy" / "fetch_weights.py")
    asked: list[str] = []

    def snapshot(repo_id: str) -> Path:
        asked.append(repo_id)
        return tmp_path / repo_id

    assert fetch.main([], snapshot=snapshot) == 0
    # The towers the checkpoint's config names were fetched; the local checkpoint was not.
    assert asked == ["LanguageBind/LanguageBind_Image", "LanguageBind/LanguageBind_Video_merge"]
    markers = list((tmp_path / "hf" / fetch.MARKER_DIR).glob("*.json"))
    assert len(markers) == 1
    assert not (tmp_path / "hf" / fetch.MARKER_DIR / "lock").exists()

    def no_network(repo_id: str) -> Path:
        raise AssertionError(f"second pod downloaded {repo_id}")

    assert fetch.main([], snapshot=no_network) == 0


def test_fetch_weights_explains_a_missing_local_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("FACESTREAM_MODEL__MODEL", str(tmp_path / "missing"))
    fetch = load_script(REPO / "deploy" / "fetch_weights.py")
    assert fetch.main([]) == 1
    assert "kubectl cp" in capsys.readouterr().err
