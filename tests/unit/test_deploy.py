"""Deploy files are checked offline: the systemd unit, the Dockerfile, the Kubernetes manifests, the dashboard."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from prometheus_client import REGISTRY

import cdc_sync.metrics  # noqa: F401 - registers the metrics
from cdc_sync.config import load

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _unit() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in (DEPLOY / "systemd" / "cdc-sync.service").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), value.strip())
    return out


def _sections() -> dict[str, dict[str, list[str]]]:
    """The unit file as {section: {key: [values, in order]}}."""
    out: dict[str, dict[str, list[str]]] = {}
    section = ""
    for line in (DEPLOY / "systemd" / "cdc-sync.service").read_text().splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif "=" in line and not line.startswith(("#", ";")):
            key, _, value = line.partition("=")
            out.setdefault(section, {}).setdefault(key.strip(), []).append(value.strip())
    return out


def test_systemd_unit_survives_servers_that_come_up_after_it() -> None:
    """Boot order: nothing that needs MySQL or Redis runs before the worker and can fail the start; restarts never
    give up on a transient failure; exit 2 (configuration, or a server refusing us for good) is not restarted."""
    unit = _sections()
    service, head = unit["Service"], unit["Unit"]
    for pre in service.get("ExecStartPre", []) + service.get("ExecStartPost", []):
        assert pre.startswith("-"), f"{pre}: a failing pre-start command fails the unit (and uses up the start limit)"
    assert service["Restart"] == ["on-failure"] and service["RestartPreventExitStatus"] == ["2"]
    assert head.get("StartLimitIntervalSec") == ["0"], "the start limit must never stop restarts"
    assert "StartLimitIntervalSec" not in service and "StartLimitBurst" not in service, "those belong in [Unit]"
    assert service["TimeoutStartSec"] == ["infinity"], "waiting for a late server is part of a normal start"
    assert float(service["RestartSec"][0]) >= 1


def test_systemd_unit_is_notify_watchdog_and_hardened() -> None:
    """Type=notify with a watchdog, restart on failure, no privileges, credentials for the password."""
    unit = _unit()
    assert unit["Type"] == "notify" and unit["WatchdogSec"] and unit["Restart"] == "on-failure"
    assert unit["DynamicUser"] == "yes" and unit["NoNewPrivileges"] == "yes" and unit["ProtectSystem"] == "strict"
    assert unit["PrivateTmp"] == "yes" and unit["CapabilityBoundingSet"] == ""
    assert unit["LoadCredential"].startswith("mysql-password:/etc/cdc-sync/")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd-analyze verify finds nothing wrong (the ExecStart binary is stubbed where it is not installed)."""
    text = (DEPLOY / "systemd" / "cdc-sync.service").read_text()
    stub = tmp_path / "cdc-sync"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    unit = tmp_path / "cdc-sync.service"
    unit.write_text(text.replace("/usr/local/bin/cdc-sync", str(stub)))
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "cdc-sync.service" in ln]
    assert proc.returncode == 0 and problems == [], proc.stdout + proc.stderr


def test_dockerfile_is_multistage_slim_nonroot_with_healthcheck() -> None:
    """Two stages, the final one slim, non-root, without build tools, cdc-sync as entrypoint, a health check."""
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M | re.I)
    assert len(stages) >= 2 and all("slim" in image for image, _ in stages)
    final = text[text.rfind("\nFROM ") :]
    assert re.search(r"^USER\s+(?!root|0)\S+", final, re.M), "the final stage runs as a non-root user"
    assert not re.search(r"apt-get install|build-essential|gcc", final), "no build tools in the final image"
    assert re.search(r'^ENTRYPOINT\s+\["cdc-sync"\]', final, re.M)
    assert re.search(r"^HEALTHCHECK\b.*\n?.*healthz", final, re.M)
    assert "readyz" not in final, "liveness (/healthz) holds while servers are retried; readiness does not"


def _manifests(folder: Path) -> list[dict[str, object]]:
    docs: list[dict[str, object]] = []
    for path in sorted(folder.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def test_kubernetes_manifests_validate_offline() -> None:
    """Every core manifest passes kubernetes-validate (strict); the ServiceMonitor has its required shape."""
    docs = _manifests(DEPLOY / "k8s" / "base")
    kinds = {d["kind"] for d in docs}
    assert kinds >= {
        "Deployment",
        "ConfigMap",
        "Secret",
        "Service",
        "ServiceMonitor",
        "PodDisruptionBudget",
        "NetworkPolicy",
    }
    version = kubernetes_validate.latest_version()
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":
            spec = doc["spec"]
            assert isinstance(spec, dict) and spec["endpoints"][0]["port"] == "metrics"
            continue
        kubernetes_validate.validate(doc, version, strict=True)
    patch = yaml.safe_load((DEPLOY / "k8s" / "overlays" / "example" / "deployment-patch.yaml").read_text())
    base = next(d for d in docs if d["kind"] == "Deployment")
    kubernetes_validate.validate(_merge(base, patch), version, strict=True)  # the overlay's result


def _merge(base: object, patch: object) -> object:
    """A strategic merge as kustomize applies this overlay: maps merge, lists of named items merge by name."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = _merge(base[key], value) if key in base else value
        return out
    if isinstance(base, list) and isinstance(patch, list) and all(isinstance(i, dict) and "name" in i for i in patch):
        by_name = {item["name"]: item for item in patch}
        return [_merge(item, by_name[item["name"]]) if item.get("name") in by_name else item for item in base]
    return patch


def test_kustomizations_reference_existing_files() -> None:
    """Every resource and patch a kustomization names exists."""
    for kust in (DEPLOY / "k8s").rglob("kustomization.yaml"):
        data = yaml.safe_load(kust.read_text())
        for ref in [*data.get("resources", []), *(p["path"] for p in data.get("patches", []))]:
            assert (kust.parent / ref).exists(), f"{kust}: {ref}"


def test_deployment_is_ha_probed_and_locked_down() -> None:
    """2 replicas, liveness /healthz, readiness /readyz, resources, non-root, read-only root filesystem."""
    deployment = next(d for d in _manifests(DEPLOY / "k8s" / "base") if d["kind"] == "Deployment")
    spec = deployment["spec"]
    assert isinstance(spec, dict) and spec["replicas"] == 2
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    # liveness must not depend on MySQL/Redis being up (/healthz is alive while they are retried; /readyz is not)
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "startupProbe" not in container or container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["resources"]["limits"]["memory"] and container["resources"]["requests"]["cpu"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_configmap_toml_is_a_valid_config(tmp_path: Path) -> None:
    """The TOML shipped in the ConfigMap loads: HA on, derived server_id, metrics on all interfaces."""
    configmap = next(d for d in _manifests(DEPLOY / "k8s" / "base") if d["kind"] == "ConfigMap")
    data = configmap["data"]
    assert isinstance(data, dict)
    path = tmp_path / "cdc-sync.toml"
    path.write_text(data["cdc-sync.toml"])
    secret = tmp_path / "pw"
    secret.write_text("pw")
    path.write_text(path.read_text().replace("/run/secrets/cdc-sync/mysql-password", str(secret)))
    cfg = load(path)
    assert cfg.ha.enabled and cfg.mysql.server_id >= 1000 and cfg.metrics.listen == "0.0.0.0:9108"


def test_dashboard_queries_only_exported_metrics() -> None:
    """Every metric the Grafana dashboard queries is one the worker (or the reader) exports."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    exported = {metric.name + suffix for metric in REGISTRY.collect() for suffix in suffixes.get(metric.type, ("",))}
    dashboard = json.loads((DEPLOY / "grafana" / "cdc-sync.json").read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bcdc_sync_[a-z_]+", target["expr"])
    }
    assert queried and queried <= exported, sorted(queried - exported)
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("lag", "applied", "latency", "flushes", "rewinds", "hit ratio", "bypasses"):
        assert topic in titles
