"""The Helm chart, checked with the real `helm` (lint, template) against what `videoneva serve` takes and opens.

`make setup` installs helm into the virtual environment (deploy/get_helm.py); where it could not,
these tests skip with the reason it wrote.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import yaml

from videoneva.config import load_config
from videoneva.serving.serve import ServeConfig

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "videoneva"
LOCAL_HELM = Path(sys.executable).parent / "helm"


@pytest.fixture(scope="module")
def helm() -> str:
    if LOCAL_HELM.is_file():
        return str(LOCAL_HELM)
    if shutil.which("helm"):
        return shutil.which("helm")
    note = Path(str(LOCAL_HELM) + ".unavailable")
    pytest.skip(note.read_text().strip() if note.is_file() else
                f"helm is not installed: `python deploy/get_helm.py {LOCAL_HELM}` (run by `make setup`) installs it")


def render(helm: str, *sets: str) -> dict[str, dict]:
    """The chart's manifests by kind (helm template with --set values)."""
    args = [a for s in sets for a in ("--set", s)]
    out = subprocess.run([helm, "template", "rel", str(CHART), *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return {d["kind"]: d for d in yaml.safe_load_all(out.stdout) if d}


def container(docs: dict) -> dict:
    return docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]


def serve_config(c: dict) -> ServeConfig:
    """The ServeConfig `videoneva serve` builds from the container's arguments (every key must be its own),
    with the container's environment variables set as the pod sets them (a Secret's value here)."""
    assert c["command"] == ["videoneva", "serve"]
    with mock.patch.dict(os.environ, {e["name"]: "set-from-a-secret" for e in c.get("env", [])}):
        return load_config(ServeConfig, c["args"])


def test_lint_passes(helm):
    for sets in (["engine.hostPath=/data"], ["engine.existingClaim=engines", "autoscaling.enabled=true",
                                             "serviceMonitor.enabled=true", "openai.apiKeySecret=k"]):
        out = subprocess.run([helm, "lint", str(CHART), "--strict", *[a for s in sets for a in ("--set", s)]],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and "0 chart(s) failed" in out.stdout, out.stdout + out.stderr


def test_ports_and_probes_are_what_serve_opens(helm):
    docs = render(helm, "engine.hostPath=/data")
    c = container(docs)
    cfg = serve_config(c)
    defaults = {f.name: f.default for f in dataclasses.fields(ServeConfig)}
    # the chart's defaults are serve's own ports, and serve binds to all interfaces in the pod
    assert (cfg.grpc_port, cfg.http_port, cfg.metrics_port) == (defaults["grpc_port"], defaults["http_port"],
                                                                 defaults["metrics_port"])
    assert cfg.host == "0.0.0.0" and cfg.openai_port == 9000 and cfg.api_key_env is None
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": cfg.grpc_port, "http": cfg.http_port, "metrics": cfg.metrics_port,
                     "openai": cfg.openai_port}
    probes = {k: c[k]["httpGet"] for k in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert {k: (p["path"], ports[p["port"]]) for k, p in probes.items()} == {
        "startupProbe": ("/v2/health/ready", cfg.http_port), "readinessProbe": ("/v2/health/ready", cfg.http_port),
        "livenessProbe": ("/v2/health/live", cfg.http_port)}
    svc = {p["name"]: (p["port"], p["targetPort"]) for p in docs["Service"]["spec"]["ports"]}
    assert svc == {name: (port, name) for name, port in ports.items()}
    assert "HorizontalPodAutoscaler" not in docs and "ServiceMonitor" not in docs


def test_changed_ports_move_everywhere(helm):
    docs = render(helm, "engine.hostPath=/data", "ports.grpc=7001", "ports.http=7000", "ports.metrics=7002",
                  "openai.port=7009")
    c = container(docs)
    cfg = serve_config(c)
    assert (cfg.grpc_port, cfg.http_port, cfg.metrics_port, cfg.openai_port) == (7001, 7000, 7002, 7009)
    assert sorted(p["containerPort"] for p in c["ports"]) == [7000, 7001, 7002, 7009]
    assert sorted(p["port"] for p in docs["Service"]["spec"]["ports"]) == [7000, 7001, 7002, 7009]


def test_engine_volume_shm_key_and_serve_keys(helm):
    docs = render(helm, "engine.existingClaim=engines", "engine.path=models/a", "media.hostPath=/videos",
                  "openai.apiKeySecret=videoneva-key", "openai.allowedHosts={media.example,cdn:8080}",
                  "serve.cache_bytes=1073741824", "serve.llm_instances=2", "shm.sizeLimit=8Gi")
    c = container(docs)
    cfg = serve_config(c)
    assert cfg.engine_dir == "/engine/models/a" and cfg.media_root == "/media/"
    assert cfg.api_key_env == "VIDEONEVA_API_KEY" and cfg.openai_allowed_hosts == ["media.example", "cdn:8080"]
    assert cfg.cache_bytes == 2**30 and cfg.llm_instances == 2
    assert c["env"] == [{"name": "VIDEONEVA_API_KEY", "valueFrom": {"secretKeyRef": {"name": "videoneva-key",
                                                                                      "key": "api-key"}}}]
    volumes = {v["name"]: v for v in docs["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    assert volumes["engine"]["persistentVolumeClaim"] == {"claimName": "engines", "readOnly": True}
    assert volumes["media"]["hostPath"]["path"] == "/videos"
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts == {"engine": "/engine", "media": "/media", "dshm": "/dev/shm"}
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    off = container(render(helm, "engine.hostPath=/data", "openai.enabled=false"))
    assert serve_config(off).openai_port == -1 and "openai" not in {p["name"] for p in off["ports"]}


def test_no_engine_volume_is_named(helm):
    out = subprocess.run([helm, "template", "rel", str(CHART)], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "engine.existingClaim" in out.stderr and "engine.hostPath" in out.stderr


def test_autoscaler_and_service_monitor(helm):
    docs = render(helm, "engine.hostPath=/data", "autoscaling.enabled=true", "serviceMonitor.enabled=true")
    hpa = docs["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == docs["Deployment"]["metadata"]["name"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == "avg_time_queue_us"
    assert "replicas" not in docs["Deployment"]["spec"]  # the autoscaler owns the replica count
    # the metric the autoscaler asks for is the one the prometheus-adapter rule makes from Triton's queue time
    adapter = yaml.safe_load((CHART.parent / "prometheus-adapter-values.yaml").read_text())
    (rule,) = adapter["rules"]["custom"]
    assert rule["name"]["as"] == "avg_time_queue_us" and "nv_inference_queue_duration_us" in rule["seriesQuery"]
    sm = docs["ServiceMonitor"]
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    assert sm["spec"]["selector"]["matchLabels"].items() <= docs["Service"]["metadata"]["labels"].items()
