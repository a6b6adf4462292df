"""``python -m builder deploy``: Kubernetes / KServe manifests for a published version.

Where one server is not enough, TF Serving runs as a Deployment behind a Service with a
HorizontalPodAutoscaler, or as a KServe InferenceService that downloads the model itself. The
manifests written here carry the same server flags as the serving image
(``builder.image.server_flags``), with models.config / batching / monitoring in a ConfigMap so a
``kubectl apply`` of a new version is picked up by the server's config polling without a restart.

Every document is validated before anything is written: Kubernetes kinds against the official
OpenAPI schemas bundled (offline) in ``kubernetes-validate``, in strict mode so a misspelt field
fails instead of being silently pruned by the API server; the InferenceService against a JSON
schema written here from the KServe v1beta1 CRD fields this module uses (core types inside it,
such as volumes and resources, are checked against the same bundled Kubernetes definitions).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.config import compat
from builder.core import artifact
from builder.core.errors import CompatibilityError, ConfigError, InputError, UnavailableError
from builder.core.layout import atomic_write_text, list_versions, version_dir
from builder.deploy import image as simage

TARGETS = ("kubernetes", "kserve")
DEFAULT_IMAGE = f"{simage.SERVING_REPOSITORY}:{simage.DEFAULT_SERVING_TAG}"
DEFAULT_KUBERNETES_VERSION = "1.30"
GPU_RESOURCE = "nvidia.com/gpu"
# Storage URI schemes KServe's storage initializer downloads (python/storage kserve_storage.py).
KSERVE_SCHEMES = ("gs://", "s3://", "pvc://", "http://", "https://", "hdfs://", "webhdfs://",
                  "oci://")
# DNS-1035 label: Service names and InferenceService names (KServe's IsvcNameFmt).
_DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
# Kubernetes resource.Quantity (the pattern in the Kubernetes/KServe OpenAPI schemas).
_QUANTITY = re.compile(
    r"(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?"
    r"(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?"
)
_MODEL_NAME = re.compile(r"[A-Za-z0-9_.-]+")


# --------------------------------------------------------------------------------------------
# What is being deployed
# --------------------------------------------------------------------------------------------


@dataclass
class Plan:
    """Everything the manifests are rendered from, after the flags were checked."""

    target: str
    name: str  # TF Serving model name (REST path /v1/models/<name>)
    app: str  # Kubernetes resource name
    base_path: str
    image: str
    gpu: bool
    gpus: int
    version: int | None
    optimizer: str | None
    has_trt: bool
    cpu: str
    memory: str
    replicas: int | None  # fixed replica count; None -> autoscaled between min and max
    min_replicas: int
    max_replicas: int
    target_cpu: int
    namespace: str | None
    volume_claim: str | None
    batching_text: str
    monitoring_text: str
    notes: list[str] = field(default_factory=list)
    mixed_precision: str = ""  # bf16 hook (issue 12): "bfloat16" for a bf16 serving profile

    @property
    def labels(self) -> dict[str, str]:
        return {"app.kubernetes.io/name": self.app, "app.kubernetes.io/instance": self.app}

    def metadata(self, name: str | None = None) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": name or self.app}
        if self.namespace:
            meta["namespace"] = self.namespace
        meta["labels"] = {**self.labels, "app.kubernetes.io/component": "tensorflow-serving",
                          "app.kubernetes.io/managed-by": "tfs-builder"}
        if self.version is not None:
            meta["labels"]["app.kubernetes.io/version"] = str(self.version)
        return meta

    @property
    def config_map_name(self) -> str:
        return f"{self.app}-serving-config"

    def resources(self) -> dict[str, Any]:
        res: dict[str, Any] = {"requests": {"cpu": self.cpu, "memory": self.memory},
                               "limits": {"memory": self.memory}}
        if self.gpu:
            # Extended resources such as GPUs are set in limits (requests default to them).
            res["limits"][GPU_RESOURCE] = self.gpus
        return res


def _bool_or_auto(value: object, flag: str) -> bool | None:
    if isinstance(value, bool):
        return value
    s = str(value).strip().lower()
    if s in ("auto", "", "none"):
        return None
    if s in ("true", "yes", "1"):
        return True
    if s in ("false", "no", "0"):
        return False
    raise InputError(f"{flag} {value!r}: use auto, true or false")


def _int_flag(value: object, flag: str, minimum: int) -> int:
    try:
        n = int(str(value).strip())
    except ValueError:
        raise InputError(f"{flag} {value!r} is not an integer") from None
    if n < minimum:
        raise InputError(f"{flag} {n} must be >= {minimum}")
    return n


def _quantity(value: object, flag: str, example: str) -> str:
    s = str(value).strip()
    if not _QUANTITY.fullmatch(s):
        raise InputError(f"{flag} {value!r} is not a Kubernetes quantity: use e.g. {flag} {example}")
    return s


def app_name(name: str) -> str:
    """Model names may hold ``_`` and capitals; Kubernetes names may not (DNS-1035)."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", name.lower())).strip("-")[:63].rstrip("-")


def _read_text(path: object, flag: str) -> str | None:
    if path in (None, ""):
        return None
    p = Path(str(path))
    if not p.is_file():
        raise InputError(f"{flag} {p}: no such file: pass an existing file or leave the flag out")
    return p.read_text(encoding="utf-8")


def plan(
    target: str = "kubernetes",
    name: str = "",
    base_path: str = "",
    image_ref: str = DEFAULT_IMAGE,
    serving_tag: str | None = None,
    repo: str | None = None,
    version: object = "latest",
    gpu: object = "auto",
    gpus: object = 1,
    replicas: object = None,
    min_replicas: object = None,
    max_replicas: object = None,
    target_cpu: object = 70,
    cpu: object = "2",
    memory: object = "auto",
    namespace: str | None = None,
    app: str | None = None,
    volume_claim: str | None = None,
    batching: str | None = None,
    monitoring: str | None = None,
) -> Plan:
    """Check every flag and the artefact (build_info + TensorRT scan), then fix the plan."""
    target = str(target).strip().lower()
    if target not in TARGETS:
        raise InputError(f"--target {target!r}: use one of {', '.join(TARGETS)}")
    name = str(name or "").strip()
    if not name or not _MODEL_NAME.fullmatch(name):
        raise InputError(f"--name {name!r}: pass the model name as in models.config, e.g. --name facenet")
    base_path = str(base_path or "").strip().rstrip("/")
    if not base_path:
        raise InputError("--base_path is required: the published model_base_path, e.g. "
                         "gs://bucket/models/facenet")
    image_ref = str(image_ref or DEFAULT_IMAGE).strip()
    simage._validate_image_ref(image_ref)
    notes: list[str] = []

    # ---- artefact ----
    pinned: int | None = None
    if str(version).strip().lower() not in ("latest", "", "none"):
        pinned = _int_flag(version, "--version", 1)
    optimizer = None
    has_trt = False
    art = None
    batch_sizes: list[int] = []
    if repo:
        mdir = Path(str(repo)) / name
        versions = list_versions(mdir)
        if not versions:
            raise InputError(f"--repo {repo}: no versions of model {name!r} under {mdir}: check "
                             "--repo/--name, or export the model first")
        if pinned is None:
            pinned = versions[-1]
        elif pinned not in versions:
            raise InputError(f"--version {pinned}: not in {mdir} (has {', '.join(map(str, versions))})")
        art = simage.scan_version(name, pinned, version_dir(repo, name, pinned))
        optimizer, has_trt = art.optimizer, art.has_trt
        info = artifact.read_build_info(art.path) or {}
        batch_sizes = [int(b) for b in info.get("batch_sizes") or []]

    # ---- GPU and the compatibility gate ----
    # The gate judges the tensorflow/serving build: the --image itself, or for an image made by
    # scripts/build_serving_image the tag it was built FROM (--serving_tag).
    repo_part, _ = simage.split_image(image_ref)
    custom = repo_part != simage.SERVING_REPOSITORY
    if serving_tag:
        base = simage.serving_image(str(serving_tag))
    elif custom:
        base = simage.serving_image(simage.DEFAULT_SERVING_TAG)
        if target == "kubernetes":
            notes.append(f"assuming {image_ref} was built FROM {base} (pass --serving_tag "
                         "otherwise)")
    else:
        base = image_ref
    if target == "kserve" and custom:
        raise InputError(f"--image {image_ref}: --target kserve runs KServe's tensorflow "
                         "runtime, so pass a tensorflow/serving:TAG image (the model is "
                         "downloaded from --base_path, not baked in)")
    want_gpu = _bool_or_auto(gpu, "--gpu")
    _, base_is_gpu = compat.parse_serving_tag(base)
    if want_gpu is None:
        if repo:
            want_gpu = has_trt
            if base_is_gpu and not has_trt:
                notes.append(f"{name} version {pinned} was exported with --optimize "
                             f"{optimizer or 'none'}: no GPU requested"
                             + (" (KServe runs the CPU build of the same version)"
                                if target == "kserve" else
                                " (the -gpu image runs it on CPU; pass --gpu true for a GPU)"))
        else:
            want_gpu = base_is_gpu
    if has_trt and not want_gpu:
        raise CompatibilityError(f"--gpu false: {name} version {pinned} contains TensorRT "
                                 "engines, which need an NVIDIA GPU: drop --gpu false")
    if want_gpu and not base_is_gpu:
        raise CompatibilityError(f"{'--serving_tag' if serving_tag else '--image'} {base} is a CPU "
                                 "image but a GPU is requested: use a -gpu tag such as "
                                 "tensorflow/serving:2.17.0-gpu")
    if target == "kserve":
        # KServe's webhook accepts a -gpu runtimeVersion only together with a GPU limit.
        if not want_gpu and base_is_gpu:
            base = base.replace("-gpu", "")
        image_ref = base
    problem = art.problem(base) if art else compat.image_problem(has_trt, base)
    if problem:
        raise CompatibilityError(f"--image: {name} version {pinned}: {problem}")
    if art and art.warning(base):
        notes.append(str(art.warning(base)))

    # ---- where the server reads the model ----
    claim = str(volume_claim).strip() if volume_claim else None
    if claim and not _DNS1123_LABEL.fullmatch(claim):
        raise InputError(f"--volume_claim {claim!r} is not a PersistentVolumeClaim name")
    if target == "kubernetes":
        if base_path.startswith("/"):
            if claim and not base_path.startswith(simage.CONTAINER_MODELS + "/"):
                raise InputError(f"--base_path {base_path}: --volume_claim is mounted at "
                                 f"{simage.CONTAINER_MODELS}, so use --base_path "
                                 f"{simage.CONTAINER_MODELS}/{name}")
            if not claim and simage.split_image(image_ref)[0] == simage.SERVING_REPOSITORY:
                raise InputError(f"--base_path {base_path} is a path inside the container, but "
                                 f"{image_ref} holds no models: pass --image of the image built "
                                 "by scripts/build_serving_image, --volume_claim, or a gs:// path")
        elif base_path.startswith("s3://"):
            raise CompatibilityError(
                f"--base_path {base_path}: tensorflow/serving 2.7+ cannot read s3:// (support was "
                "dropped, serving#1963): use --target kserve (its storage initializer downloads "
                "s3://), publish to gs://, or sync the bucket to a volume and pass --volume_claim")
        elif not base_path.startswith("gs://"):
            raise CompatibilityError(
                f"--base_path {base_path}: tensorflow/serving reads local paths and gs:// only: "
                "use --target kserve for other storage, or mount it with --volume_claim")
    else:
        if not base_path.startswith(KSERVE_SCHEMES):
            raise InputError(f"--base_path {base_path}: KServe downloads the model from a storage "
                             "URI: use s3://, gs://, pvc://CLAIM/path, oci:// or https://")
        if claim:
            raise InputError("--volume_claim is for --target kubernetes; with --target kserve "
                             "pass --base_path pvc://CLAIM/path")

    # ---- names, sizes, replicas ----
    app_res = str(app).strip() if app else app_name(name)
    if not _DNS1035.fullmatch(app_res) or len(app_res) > 45:
        raise InputError(f"--app {app_res!r}: Kubernetes names must match [a-z]([-a-z0-9]*[a-z0-9])? "
                         "and stay short (<= 45 characters): pass --app e.g. facenet")
    if target == "kserve" and app_res != name:
        notes.append(f"KServe serves the model under the InferenceService name: "
                     f"/v1/models/{app_res} (not /v1/models/{name})")
    ns = str(namespace).strip() if namespace else None
    if ns and not _DNS1123_LABEL.fullmatch(ns):
        raise InputError(f"--namespace {ns!r} is not a Kubernetes namespace name")
    fixed = None if replicas in (None, "") else _int_flag(replicas, "--replicas", 1)
    if fixed is not None and (min_replicas not in (None, "") or max_replicas not in (None, "")):
        raise InputError("--replicas sets a fixed count; --min_replicas/--max_replicas autoscale: "
                         "pass one or the other")
    lo = 1 if min_replicas in (None, "") else _int_flag(min_replicas, "--min_replicas",
                                                        0 if target == "kserve" else 1)
    hi = 4 if max_replicas in (None, "") else _int_flag(max_replicas, "--max_replicas", 1)
    if hi < lo:
        raise InputError(f"--max_replicas {hi} is below --min_replicas {lo}")

    from builder.config import companions as batching_mod

    btext = _read_text(batching, "--batching")
    if btext is None:
        btext = batching_mod.batching_parameters_text(batch_sizes or [1, 8, 100])
    else:
        batching_mod.parse_batching_parameters(btext, f"--batching {batching}")
    mtext = _read_text(monitoring, "--monitoring")
    if mtext is None:
        mtext = batching_mod.monitoring_config_text()
    else:
        batching_mod.parse_monitoring_config(mtext, f"--monitoring {monitoring}")

    if str(memory).strip().lower() == "auto":  # preflight's measured footprint, else 4Gi
        fp = ((artifact.read_build_info(art.path) or {}).get("footprint") or {}) if art else {}
        memory = f"{-(-int(fp['recommended_memory_bytes']) // 2**20)}Mi" if fp else "4Gi"
        if fp:
            notes.append(f"memory {memory}: preflight footprint of version {pinned} (runtime + 2 x "
                         "model: hot reload holds two versions)")
    return Plan(
        target=target, name=name, app=app_res, base_path=base_path, image=image_ref,
        gpu=bool(want_gpu), gpus=_int_flag(gpus, "--gpus", 1), version=pinned,
        optimizer=optimizer, has_trt=has_trt,
        cpu=_quantity(cpu, "--cpu", "2"), memory=_quantity(memory, "--memory", "4Gi"),
        replicas=fixed, min_replicas=lo, max_replicas=hi,
        target_cpu=_int_flag(target_cpu, "--target_cpu", 1), namespace=ns,
        volume_claim=claim, batching_text=btext, monitoring_text=mtext, notes=notes,
        mixed_precision="bfloat16" if art and art.bf16 == "profile" else "",  # bf16 hook
    )


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


def _config_map(p: Plan, with_models_config: bool) -> dict[str, Any]:
    data = {}
    if with_models_config:
        data[simage.MODELS_CONFIG] = models_config_text(p)
    data[simage.BATCHING_FILE] = p.batching_text
    data[simage.MONITORING_FILE] = p.monitoring_text
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": p.metadata(p.config_map_name),
            "data": data}


def kubernetes_manifests(p: Plan) -> list[dict[str, Any]]:
    """ConfigMap, Deployment, Service and (unless --replicas) a HorizontalPodAutoscaler."""
    cm = _config_map(p, with_models_config=True)
    # Batching/monitoring are read once at start: their hash on the pod template makes a change
    # roll the pods. models.config is left out: the server polls it, no restart needed.
    digest = hashlib.sha256((p.batching_text + "\0" + p.monitoring_text).encode()).hexdigest()
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
    deployment: dict[str, Any] = {
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
                "spec": pod_spec,
            },
        },
    }
    if p.replicas is not None:
        # With an HPA the field is left out, or every `kubectl apply` would reset the scale.
        deployment["spec"]["replicas"] = p.replicas
    service = {
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
    docs = [cm, deployment, service]
    if p.replicas is None:
        docs.append({
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": p.metadata(),
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                   "name": p.app},
                "minReplicas": p.min_replicas,
                "maxReplicas": p.max_replicas,
                "metrics": [{"type": "Resource", "resource": {
                    "name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": p.target_cpu}}}],
            },
        })
    return docs


def kserve_manifests(p: Plan) -> list[dict[str, Any]]:
    """ConfigMap (batching/monitoring) and an InferenceService with the tensorflow runtime."""
    runtime_version = simage.split_image(p.image)[1]
    tf_spec: dict[str, Any] = {
        "storageUri": p.base_path,
        "runtimeVersion": runtime_version,
        # Appended to the runtime's own flags (--model_name, --port=9000, --rest_api_port=8080,
        # --model_base_path=/mnt/models): KServe concatenates runtime and predictor args.
        "args": [
            "--enable_batching=true",
            f"--batching_parameters_file={simage.CONTAINER_CONFIG}/{simage.BATCHING_FILE}",
            f"--monitoring_config_file={simage.CONTAINER_CONFIG}/{simage.MONITORING_FILE}",
            "--enable_model_warmup=true",
            *([f"--mixed_precision={p.mixed_precision}"] if p.mixed_precision else []),  # bf16 hook
        ],
        "resources": p.resources(),
        "volumeMounts": [{"name": "serving-config", "mountPath": simage.CONTAINER_CONFIG,
                          "readOnly": True}],
    }
    predictor: dict[str, Any] = {
        "tensorflow": tf_spec,
        "volumes": [{"name": "serving-config", "configMap": {"name": p.config_map_name}}],
    }
    if p.replicas is not None:
        predictor["minReplicas"] = predictor["maxReplicas"] = p.replicas
    else:
        predictor.update({"minReplicas": p.min_replicas, "maxReplicas": p.max_replicas,
                          "scaleMetric": "cpu", "scaleTarget": p.target_cpu})
    if p.gpu:
        predictor["tolerations"] = [{"key": GPU_RESOURCE, "operator": "Exists",
                                     "effect": "NoSchedule"}]
    isvc = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": p.metadata(),
        "spec": {"predictor": predictor},
    }
    return [_config_map(p, with_models_config=False), isvc]


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------

_DEFS = "/api/_definitions.json#/$defs/"

# Written from the KServe serving.kserve.io/v1beta1 InferenceService CRD for the fields this
# module emits (spec.predictor min/maxReplicas, scaleMetric, scaleTarget, volumes, tolerations and
# predictor.tensorflow storageUri/runtimeVersion/args/resources/volumeMounts), plus KServe's
# admission rules: the name format (IsvcNameFmt) and "a GPU in resources.limits iff runtimeVersion
# has the -gpu suffix" (TFServingSpec.validateGPU). Unknown fields are rejected (the API server
# would prune them silently). Core types are the bundled Kubernetes definitions.
KSERVE_INFERENCESERVICE_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://kubernetes.io/api/tfs-builder-kserve-inferenceservice-v1beta1.json",
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "serving.kserve.io/v1beta1"},
        "kind": {"const": "InferenceService"},
        "metadata": {
            "allOf": [{"$ref": _DEFS + "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}],
            "required": ["name"],
            "properties": {"name": {"type": "string", "pattern": "^[a-z]([-a-z0-9]*[a-z0-9])?$",
                                    "maxLength": 63}},
        },
        "spec": {
            "type": "object",
            "required": ["predictor"],
            "additionalProperties": False,
            "properties": {
                "predictor": {
                    "type": "object",
                    "required": ["tensorflow"],
                    "additionalProperties": False,
                    "properties": {
                        "minReplicas": {"type": "integer", "minimum": 0},
                        "maxReplicas": {"type": "integer", "minimum": 0},
                        "scaleMetric": {"enum": ["cpu", "memory", "concurrency", "rps"]},
                        "scaleTarget": {"type": "integer", "minimum": 1},
                        "volumes": {"type": "array",
                                    "items": {"$ref": _DEFS + "io.k8s.api.core.v1.Volume"}},
                        "tolerations": {"type": "array",
                                        "items": {"$ref": _DEFS + "io.k8s.api.core.v1.Toleration"}},
                        "tensorflow": {
                            "type": "object",
                            "required": ["storageUri", "runtimeVersion"],
                            "additionalProperties": False,
                            "properties": {
                                "storageUri": {"type": "string", "pattern":
                                               "^(gs|s3|pvc|https?|hdfs|webhdfs|oci)://.+"},
                                "runtimeVersion": {"type": "string",
                                                   "pattern": r"^[0-9]+\.[0-9]+\.[0-9]+(-gpu)?$"},
                                "args": {"type": "array", "items": {"type": "string"}},
                                "resources": {"allOf": [
                                    {"$ref": _DEFS + "io.k8s.api.core.v1.ResourceRequirements"},
                                    # the CRD's quantity pattern (the core definitions lack it)
                                    {"properties": {k: {"additionalProperties": {"anyOf": [
                                        {"type": "integer", "minimum": 0},
                                        {"type": "string", "pattern": "^" + _QUANTITY.pattern + "$"},
                                    ]}} for k in ("requests", "limits")}},
                                ]},
                                "volumeMounts": {"type": "array", "items": {
                                    "$ref": _DEFS + "io.k8s.api.core.v1.VolumeMount"}},
                            },
                            "if": {"required": ["resources"], "properties": {"resources": {
                                "required": ["limits"],
                                "properties": {"limits": {"required": [GPU_RESOURCE]}}}}},
                            "then": {"properties": {"runtimeVersion": {"pattern": "-gpu$"}}},
                            "else": {"properties": {"runtimeVersion": {"not": {"pattern": "-gpu$"}}}},
                        },
                    },
                },
            },
        },
    },
}


def _kubernetes_validate() -> Any:
    try:
        from kubernetes_validate import utils
    except ImportError:
        raise UnavailableError("kubernetes-validate is not installed: pip install "
                               "kubernetes-validate==1.37.0 (or pass --validate false)") from None
    return utils


def _where(doc: dict[str, Any]) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def validate_inference_service(doc: dict[str, Any], kubernetes_version: str) -> None:
    """Validate an InferenceService against KSERVE_INFERENCESERVICE_SCHEMA (ConfigError)."""
    import jsonschema
    from referencing import Registry, Resource

    kv = _kubernetes_validate()
    version = _schema_version(kv, kubernetes_version)
    defs = kv.schema_contents(f"kubernetes-json-schema/v{version}-local-strict/_definitions.json",
                              kubernetes_version)
    registry = Registry().with_resources([
        ("https://kubernetes.io/api/_definitions.json", Resource.from_contents(defs)),
        (KSERVE_INFERENCESERVICE_SCHEMA["$id"], Resource.from_contents(KSERVE_INFERENCESERVICE_SCHEMA)),
    ])
    validator = jsonschema.Draft202012Validator(KSERVE_INFERENCESERVICE_SCHEMA, registry=registry)
    err = jsonschema.exceptions.best_match(validator.iter_errors(doc))
    if err is not None:
        path = ".".join(str(x) for x in err.absolute_path) or "(document)"
        message = err.message
        if path.endswith("runtimeVersion") and "-gpu$" in json.dumps(err.schema):
            message = (f"{err.instance!r}: KServe wants a -gpu runtimeVersion exactly when "
                       f"resources.limits has {GPU_RESOURCE}")
        raise ConfigError(f"{_where(doc)}: {path}: {message} (KServe v1beta1 schema)")


def _schema_version(kv: Any, kubernetes_version: str) -> str:
    want = str(kubernetes_version).lstrip("v")
    if not re.fullmatch(r"[0-9]+\.[0-9]+(\.[0-9]+)?", want):
        raise InputError(f"--kubernetes_version {kubernetes_version!r}: use e.g. 1.30")
    major_minor = tuple(int(x) for x in want.split(".")[:2])
    known = [v for v in kv.all_versions() if tuple(int(x) for x in v.split(".")[:2]) <= major_minor]
    if not known:
        raise InputError(f"--kubernetes_version {kubernetes_version}: kubernetes-validate has "
                         f"schemas for {kv.all_versions()[0]}..{kv.all_versions()[-1]}")
    return known[-1]


def validate_manifests(docs: list[dict[str, Any]], kubernetes_version: str =
                       DEFAULT_KUBERNETES_VERSION) -> None:
    """Every document against its schema (strict): raises ConfigError naming kind/name/field."""
    kv = _kubernetes_validate()
    _schema_version(kv, kubernetes_version)
    for doc in docs:
        if doc.get("apiVersion", "").startswith("serving.kserve.io/"):
            validate_inference_service(doc, kubernetes_version)
            continue
        try:
            kv.validate(doc, kubernetes_version, strict=True)
        except kv.ValidationError as e:
            path = ".".join(str(x) for x in e.path) or "(document)"
            raise ConfigError(f"{_where(doc)}: {path}: {e.message} (Kubernetes "
                              f"{e.version} schema)") from None
        except kv.SchemaNotFoundError as e:
            raise ConfigError(f"{_where(doc)}: {e.message}") from None


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


def manifests(p: Plan) -> list[dict[str, Any]]:
    return kubernetes_manifests(p) if p.target == "kubernetes" else kserve_manifests(p)


def deploy_command(
    target: str = "kubernetes",
    name: str = "",
    base_path: str = "",
    image: str = DEFAULT_IMAGE,
    serving_tag: str = "",
    out: str = "deploy",
    repo: str = "",
    version: object = "latest",
    gpu: object = "auto",
    gpus: int = 1,
    replicas: object = None,
    min_replicas: object = None,
    max_replicas: object = None,
    target_cpu: int = 70,
    cpu: str = "2",
    memory: str = "auto",
    namespace: str = "",
    app: str = "",
    volume_claim: str = "",
    batching: str = "",
    monitoring: str = "",
    kubernetes_version: str = DEFAULT_KUBERNETES_VERSION,
    validate: bool = True,
) -> None:
    """Write Kubernetes or KServe manifests that serve a published model version.

    Example: python -m builder deploy --target kubernetes --name facenet --repo model_repo
             --base_path gs://bucket/models/facenet
             python -m builder deploy --target kserve --name facenet --repo model_repo
             --base_path s3://bucket/models/facenet

    Writes OUT/<app>-<target>.yaml (apply with kubectl apply -f). The file is validated against
    the Kubernetes schemas (and the KServe InferenceService fields) before it is written.

    Args:
      target: kubernetes (ConfigMap + Deployment + Service + HorizontalPodAutoscaler) or kserve
        (ConfigMap + InferenceService with the tensorflow runtime).
      name: Model name as served (REST path /v1/models/NAME).
      base_path: The published model_base_path (the directory holding the numeric versions).
        kubernetes: gs://... or a path inside the container (/models/NAME, with the image from
        scripts/build_serving_image or --volume_claim); kserve: the storageUri (s3://, gs://,
        pvc://CLAIM/path, oci://, https://).
      image: Serving image. kubernetes: the image to run (tensorflow/serving:TAG, or one built by
        scripts/build_serving_image); kserve: a tensorflow/serving tag, which becomes runtimeVersion.
      serving_tag: The tensorflow/serving tag a custom --image was built FROM (as passed to
        scripts/build_serving_image), for the GPU/TensorRT checks; default 2.17.0-gpu.
      out: Directory to write the manifest file into.
      repo: Model repository holding the version, to read build_info (GPU, batch sizes) and
        scan for TensorRT ops. Optional, but without it --gpu auto follows the image tag.
      version: Version to serve (pinned in models.config); latest = newest in --repo.
      gpu: auto (GPU for TF-TRT artefacts; without --repo, for a -gpu image), true or false.
      gpus: GPUs per pod when a GPU is requested.
      replicas: Fixed replica count (no autoscaler). Leave unset to autoscale.
      min_replicas: Autoscaler minimum (default 1; 0 allowed for kserve scale-to-zero).
      max_replicas: Autoscaler maximum (default 4).
      target_cpu: Average CPU utilisation (percent) the autoscaler aims for.
      cpu: CPU request per pod (Kubernetes quantity, e.g. 2 or 1500m).
      memory: Memory request and limit per pod (e.g. 4Gi); auto = the footprint `preflight`
        wrote into the version's build_info (runtime + 2 x model, for hot reload), else 4Gi.
      namespace: Namespace for every resource (default: kubectl's current namespace).
      app: Kubernetes resource name (default: derived from --name).
      volume_claim: kubernetes: PersistentVolumeClaim holding the repository, mounted read-only
        at /models.
      batching: batching_parameters.txt to use (default: generated from build_info batch sizes).
      monitoring: monitoring.config to use (default: Prometheus at /monitoring/prometheus/metrics).
      kubernetes_version: Kubernetes version whose schemas validate the manifests.
      validate: Validate against the schemas before writing (default true).
    """
    p = plan(target=target, name=name, base_path=base_path, image_ref=image,
             serving_tag=serving_tag or None, repo=repo or None,
             version=version, gpu=gpu, gpus=gpus, replicas=replicas, min_replicas=min_replicas,
             max_replicas=max_replicas, target_cpu=target_cpu, cpu=cpu, memory=memory,
             namespace=namespace or None, app=app or None, volume_claim=volume_claim or None,
             batching=batching or None, monitoring=monitoring or None)
    docs = manifests(p)
    if _bool_or_auto(validate, "--validate") is not False:
        validate_manifests(docs, kubernetes_version)
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir}: is a file: pass a directory")
    path = out_dir / f"{p.app}-{p.target}.yaml"
    header = (f"# Written by tfs-builder deploy --target {p.target}: model {p.name}"
              f"{'' if p.version is None else f' version {p.version}'}"
              f"{f' (optimizer {p.optimizer})' if p.optimizer else ''} from {p.base_path}\n"
              f"# image {p.image}{', GPU' if p.gpu else ''}\n")
    atomic_write_text(path, to_yaml(docs, header))
    kinds = ", ".join(d["kind"] for d in docs)
    print(f"wrote {path} ({kinds})")
    print(f"  model {p.name}{'' if p.version is None else f' version {p.version}'} from "
          f"{p.base_path}; image {p.image}; "
          f"{f'{p.gpus} GPU(s) per pod' if p.gpu else 'no GPU'}; "
          + (f"{p.replicas} replica(s)" if p.replicas is not None
             else f"{p.min_replicas}..{p.max_replicas} replicas at {p.target_cpu}% CPU"))
    for note in p.notes:
        print(f"  note: {note}")
    if _bool_or_auto(validate, "--validate") is not False:
        print(f"  validated against the Kubernetes {kubernetes_version} schemas"
              + (" and the KServe v1beta1 InferenceService fields" if p.target == "kserve" else ""))
    print(f"apply it: kubectl apply -f {path}")
