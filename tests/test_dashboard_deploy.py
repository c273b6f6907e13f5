"""Operations: the Grafana dashboard matches the worker's metrics; the live page's
Deployment and Service in the kustomize base agree with the dashboard command."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.k8s_build import build, pod_spec
from tests.metric_names import exported_families
from worker.dashboard.server import check_bind
from worker.settings import DashboardSettings

REPO = Path(__file__).resolve().parent.parent
GRAFANA = REPO / "deploy" / "grafana"
_SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
}


def exported_series_names() -> set[str]:
    """Every series name the worker's registry can expose, read from `worker.metrics`."""
    names = set()
    for metric in exported_families():
        names |= {metric.name + suffix for suffix in _SAMPLE_SUFFIXES[metric.type]}
    return names


def grafana_dashboards() -> list[Path]:
    return sorted(GRAFANA.glob("*.json"))


def test_grafana_dashboard_queries_only_metrics_the_worker_exports() -> None:
    exported = exported_series_names()
    assert "facestream_frames_decoded_total" in exported  # the reader itself works
    assert grafana_dashboards(), "no dashboard under deploy/grafana"
    for path in grafana_dashboards():
        dashboard = json.loads(path.read_text())
        assert dashboard["title"] and dashboard["uid"] and dashboard["panels"]
        ids = [panel["id"] for panel in dashboard["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        for panel in dashboard["panels"]:
            assert panel["targets"], f"{panel['title']}: no query"
            assert {"h", "w", "x", "y"} <= panel["gridPos"].keys()
            for target in panel["targets"]:
                used = set(re.findall(r"\bfacestream_[a-z0-9_]+", target["expr"]))
                assert used, f"{panel['title']}: {target['expr']!r} names no facestream metric"
                assert used <= exported, f"{panel['title']}: unknown {used - exported}"


def test_grafana_check_rejects_a_metric_the_worker_does_not_export() -> None:
    exported = exported_series_names()
    assert "facestream_frames_decoded" not in exported  # a counter is only seen with _total
    assert "facestream_no_such_metric" not in exported


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_dashboard_deployment_serves_the_page_behind_a_token(overlay: str) -> None:
    manifests = build(REPO / "k8s" / "overlays" / overlay)
    deployment = next(
        m for m in manifests
        if m["kind"] == "Deployment" and m["metadata"]["name"] == "facestream-dashboard"
    )
    service = next(
        m for m in manifests
        if m["kind"] == "Service" and m["metadata"]["name"] == "facestream-dashboard"
    )
    pod = pod_spec(deployment)
    (container,) = pod["containers"]
    assert container["args"] == ["dashboard"]
    env = {e["name"]: e for e in container["env"]}
    port = int(env["FACESTREAM_DASHBOARD__PORT"]["value"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == port
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    # Listening beyond loopback: the command refuses to start without the token.
    host = env["FACESTREAM_DASHBOARD__HOST"]["value"]
    with pytest.raises(ValueError):
        check_bind(host, None)
    token = env["FACESTREAM_DASHBOARD__TOKEN"]["valueFrom"]["secretKeyRef"]
    redis_url = env["FACESTREAM_REDIS__URL"]["valueFrom"]["secretKeyRef"]
    assert token["name"] == redis_url["name"] == "facestream-credentials"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] == "http"
    worker_services = [
        m for m in manifests
        if m["kind"] == "Service" and m["metadata"]["name"] == "facestream-worker"
    ]
    # The worker Service (and its ServiceMonitor) must not pick up the dashboard pod.
    assert not worker_services[0]["spec"]["selector"].items() <= pod_labels.items()


def test_dashboard_defaults_to_loopback() -> None:
    check_bind(DashboardSettings().host, None)  # no token needed on the default bind
