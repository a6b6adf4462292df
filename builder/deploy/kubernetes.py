"""Kubernetes manifests for a deploy ``Plan``: ConfigMap, Deployment, Service, autoscaler.

Where one server is not enough, TF Serving runs as a Deployment behind a Service with a
HorizontalPodAutoscaler. The manifests carry the same server flags as the serving image
(``builder.deploy.image.server_flags``), with models.config / batching / monitoring in a
ConfigMap so a ``kubectl apply`` of a new version is picked up by the server's config polling
without a restart.

Documents are validated against the official OpenAPI schemas bundled (offline) in
``kubernetes-validate``, in strict mode, so a misspelt field fails instead of being silently
pruned by the API server. The KServe side is ``builder.deploy.kserve``.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from builder.core.errors import ConfigError, InputError, UnavailableError
from builder.deploy import image as simage
from builder.deploy.plan import GPU_RESOURCE, Plan

DEFAULT_KUBERNETES_VERSION = "1.30"


# --------------------------------------------------------------------------------------------
# Manifests
# --------------------------------------------------------------------------------------------


def models_config_text(p: Plan) -> str:
    """ModelServerConfig for the one model; pinned to the published version when known."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    cfg = model_server_config_pb2.ModelServerConfig()
    c = cfg.model_config_list.config.add()
    c.name = p.name
    c.base_path = p.base_path
    c.model_platform = "tensorflow"
    if p.version is not None:
        c.model_version_policy.specific.versions.append(p.version)
    else:
        c.model_version_policy.latest.num_versions = 1
    return text_format.MessageToString(cfg)


def config_map(p: Plan, with_models_config: bool) -> dict[str, Any]:
    data = {}
    if with_models_config:
        data[simage.MODELS_CONFIG] = models_config_text(p)
    data[simage.BATCHING_FILE] = p.batching_text
    data[simage.MONITORING_FILE] = p.monitoring_text
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": p.metadata(p.config_map_name),
            "data": data}


def kubernetes_manifests(p: Plan) -> list[dict[str, Any]]:
    """ConfigMap, Deployment, Service and (unless --replicas) a HorizontalPodAutoscaler."""
    docs = [config_map(p, with_models_config=True), deployment(p), service(p)]
    if p.replicas is None:
        docs.append(autoscaler(p))
    return docs


def _pod_spec(p: Plan) -> dict[str, Any]:
    """One tensorflow_model_server container with the image's flags, the config volume (and the
    model volume claim), readiness on the model's metadata endpoint, GPU toleration."""
    volumes: list[dict[str, Any]] = [{"name": "serving-config",
                                      "configMap": {"name": p.config_map_name}}]
    mounts: list[dict[str, Any]] = [{"name": "serving-config",
                                     "mountPath": simage.CONTAINER_CONFIG, "readOnly": True}]
    if p.volume_claim:
        volumes.append({"name": "models", "persistentVolumeClaim": {
            "claimName": p.volume_claim, "readOnly": True}})
        mounts.append({"name": "models", "mountPath": simage.CONTAINER_MODELS, "readOnly": True})
    container: dict[str, Any] = {
        "name": "tensorflow-serving",
        "image": p.image,
        "command": [simage.SERVER_BINARY],
        "args": simage.server_flags(mixed_precision=p.mixed_precision),  # bf16 hook (issue 12)
        "ports": [{"name": "grpc", "containerPort": simage.GRPC_PORT, "protocol": "TCP"},
                  {"name": "http", "containerPort": simage.REST_PORT, "protocol": "TCP"}],
        # The model *status* endpoint (/v1/models/NAME) answers 200 while a version is still
        # LOADING (warmup running) and even after a failed load (state END), so it cannot tell
        # "ready". The metadata endpoint of the same model answers 404 until a version is
        # AVAILABLE, and keeps working when the config later moves to a newer version.
        "readinessProbe": {
            "httpGet": {"path": f"/v1/models/{p.name}/metadata", "port": "http"},
            "initialDelaySeconds": 5, "periodSeconds": 5, "timeoutSeconds": 3,
            "failureThreshold": 3,
        },
        "resources": p.resources(),
        "volumeMounts": mounts,
    }
    pod_spec: dict[str, Any] = {"containers": [container], "volumes": volumes}
    if p.gpu:
        pod_spec["tolerations"] = [{"key": GPU_RESOURCE, "operator": "Exists",
                                    "effect": "NoSchedule"}]
    return pod_spec


def deployment(p: Plan) -> dict[str, Any]:
    # Batching/monitoring are read once at start: their hash on the pod template makes a change
    # roll the pods. models.config is left out: the server polls it, no restart needed.
    digest = hashlib.sha256((p.batching_text + "\0" + p.monitoring_text).encode()).hexdigest()
    doc: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": p.metadata(),
        "spec": {
            "selector": {"matchLabels": p.labels},
            # Never drop below the serving capacity during a rollout: a new pod only counts once
            # its model is AVAILABLE (readiness), then an old one goes.
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {
                    "labels": p.metadata()["labels"],
                    "annotations": {
                        "tfs-builder/batching-monitoring-sha256": digest,
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(simage.REST_PORT),
                        "prometheus.io/path": simage.PROMETHEUS_PATH,
                    },
                },
                "spec": _pod_spec(p),
            },
        },
    }
    if p.replicas is not None:
        # With an HPA the field is left out, or every `kubectl apply` would reset the scale.
        doc["spec"]["replicas"] = p.replicas
    return doc


def service(p: Plan) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": p.metadata(),
        "spec": {
            "type": "ClusterIP",
            "selector": p.labels,
            "ports": [
                {"name": "grpc", "port": simage.GRPC_PORT, "targetPort": "grpc",
                 "protocol": "TCP", "appProtocol": "grpc"},
                {"name": "http", "port": simage.REST_PORT, "targetPort": "http",
                 "protocol": "TCP", "appProtocol": "http"},
            ],
        },
    }


def autoscaler(p: Plan) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": p.metadata(),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": p.app},
            "minReplicas": p.min_replicas,
            "maxReplicas": p.max_replicas,
            "metrics": [{"type": "Resource", "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": p.target_cpu}}}],
        },
    }


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def kubernetes_validate() -> Any:
    """``kubernetes_validate.utils`` (offline OpenAPI schemas), or UnavailableError."""
    try:
        from kubernetes_validate import utils
    except ImportError:
        raise UnavailableError("kubernetes-validate is not installed: pip install "
                               "kubernetes-validate==1.37.0 (or pass --validate false)") from None
    return utils


def schema_version(kv: Any, kubernetes_version: str) -> str:
    """The newest bundled schema version not newer than ``--kubernetes_version``."""
    want = str(kubernetes_version).lstrip("v")
    if not re.fullmatch(r"[0-9]+\.[0-9]+(\.[0-9]+)?", want):
        raise InputError(f"--kubernetes_version {kubernetes_version!r}: use e.g. 1.30")
    major_minor = tuple(int(x) for x in want.split(".")[:2])
    known = [v for v in kv.all_versions() if tuple(int(x) for x in v.split(".")[:2]) <= major_minor]
    if not known:
        raise InputError(f"--kubernetes_version {kubernetes_version}: kubernetes-validate has "
                         f"schemas for {kv.all_versions()[0]}..{kv.all_versions()[-1]}")
    return known[-1]


def where(doc: dict[str, Any]) -> str:
    """``Kind/name`` of a document, for error messages."""
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def validate_kubernetes(doc: dict[str, Any], kubernetes_version: str) -> None:
    """One core-Kubernetes document against its schema (strict): ConfigError naming the field."""
    kv = kubernetes_validate()
    try:
        kv.validate(doc, kubernetes_version, strict=True)
    except kv.ValidationError as e:
        path = ".".join(str(x) for x in e.path) or "(document)"
        raise ConfigError(f"{where(doc)}: {path}: {e.message} (Kubernetes "
                          f"{e.version} schema)") from None
    except kv.SchemaNotFoundError as e:
        raise ConfigError(f"{where(doc)}: {e.message}") from None


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def to_yaml(docs: list[dict[str, Any]], header: str = "") -> str:
    """Multi-document YAML; multi-line strings (the config files) as literal blocks."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def _str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
        style = "|" if "\n" in data else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)

    Dumper.add_representer(str, _str)
    body = "---\n".join(yaml.dump(d, Dumper=Dumper, sort_keys=False, default_flow_style=False)
                        for d in docs)
    return header + "---\n" + body


