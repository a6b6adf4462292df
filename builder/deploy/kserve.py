"""KServe: a ConfigMap plus an InferenceService (tensorflow runtime) for a deploy ``Plan``.

KServe's storage initializer downloads the model from a storage URI (s3://, gs://, pvc://, ...)
itself, so unlike the plain Kubernetes target nothing has to be baked into an image. The
InferenceService is validated against ``kserve_inferenceservice.schema.json`` (package data):
a JSON schema written from the KServe v1beta1 CRD fields this module emits plus two admission
rules (the name format, and "-gpu runtimeVersion iff a GPU limit"); the core types inside it
(volumes, resources, tolerations) resolve to the Kubernetes definitions bundled in
``kubernetes-validate``, offline.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

from builder.core.errors import ConfigError
from builder.deploy import image as simage
from builder.deploy.kubernetes import config_map, kubernetes_validate, schema_version, where
from builder.deploy.plan import GPU_RESOURCE, Plan

SCHEMA_FILE = "kserve_inferenceservice.schema.json"
API_VERSION = "serving.kserve.io/v1beta1"


@lru_cache(maxsize=1)
def inference_service_schema() -> dict[str, Any]:
    """The InferenceService JSON schema shipped with the package (read once)."""
    return json.loads(resources.files("builder.deploy").joinpath(SCHEMA_FILE).read_text("utf-8"))


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
        "apiVersion": API_VERSION,
        "kind": "InferenceService",
        "metadata": p.metadata(),
        "spec": {"predictor": predictor},
    }
    return [config_map(p, with_models_config=False), isvc]


def is_inference_service(doc: dict[str, Any]) -> bool:
    return str(doc.get("apiVersion", "")).startswith("serving.kserve.io/")


def validate_inference_service(doc: dict[str, Any], kubernetes_version: str) -> None:
    """Validate an InferenceService against the shipped schema (ConfigError naming the field)."""
    import jsonschema
    from referencing import Registry, Resource

    schema = inference_service_schema()
    kv = kubernetes_validate()
    version = schema_version(kv, kubernetes_version)
    defs = kv.schema_contents(f"kubernetes-json-schema/v{version}-local-strict/_definitions.json",
                              kubernetes_version)
    registry = Registry().with_resources([
        ("https://kubernetes.io/api/_definitions.json", Resource.from_contents(defs)),
        (schema["$id"], Resource.from_contents(schema)),
    ])
    validator = jsonschema.Draft202012Validator(schema, registry=registry)
    err = jsonschema.exceptions.best_match(validator.iter_errors(doc))
    if err is not None:
        path = ".".join(str(x) for x in err.absolute_path) or "(document)"
        message = err.message
        if path.endswith("runtimeVersion") and "-gpu$" in json.dumps(err.schema):
            message = (f"{err.instance!r}: KServe wants a -gpu runtimeVersion exactly when "
                       f"resources.limits has {GPU_RESOURCE}")
        raise ConfigError(f"{where(doc)}: {path}: {message} (KServe v1beta1 schema)")
