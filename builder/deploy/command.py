"""``python -m builder deploy``: Kubernetes / KServe manifests for a published version.

Steps: check the flags and the artefact into a ``Plan`` (``builder.deploy.plan``), render the
target's documents (``builder.deploy.kubernetes`` / ``builder.deploy.kserve``), validate every
document against its schema, then write one YAML file atomically. Nothing is written when a
flag, the compatibility gate or a schema says no.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from builder.core.errors import InputError
from builder.core.layout import atomic_write_text
from builder.deploy import kserve, kubernetes
from builder.deploy.kubernetes import DEFAULT_KUBERNETES_VERSION, to_yaml
from builder.deploy.plan import DEFAULT_IMAGE, Plan, options, plan
from builder.options import as_bool_or_auto


def manifests(p: Plan) -> list[dict[str, Any]]:
    """The documents of the plan's target."""
    return kubernetes.kubernetes_manifests(p) if p.target == "kubernetes" else kserve.kserve_manifests(p)


def validate_manifests(docs: list[dict[str, Any]],
                       kubernetes_version: str = DEFAULT_KUBERNETES_VERSION) -> None:
    """Every document against its schema (strict): raises ConfigError naming kind/name/field."""
    kubernetes.schema_version(kubernetes.kubernetes_validate(), kubernetes_version)
    for doc in docs:
        if kserve.is_inference_service(doc):
            kserve.validate_inference_service(doc, kubernetes_version)
        else:
            kubernetes.validate_kubernetes(doc, kubernetes_version)


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
    o = options(target=target, name=name, base_path=base_path, image=image,
                serving_tag=serving_tag, repo=repo, version=version, gpu=gpu, gpus=gpus,
                replicas=replicas, min_replicas=min_replicas, max_replicas=max_replicas,
                target_cpu=target_cpu, cpu=cpu, memory=memory, namespace=namespace, app=app,
                volume_claim=volume_claim, batching=batching, monitoring=monitoring)
    p = plan(o)
    docs = manifests(p)
    check = as_bool_or_auto(validate, "--validate") is not False
    if check:
        validate_manifests(docs, kubernetes_version)
    path = _write(p, docs, Path(out))
    _report(p, docs, path, kubernetes_version if check else None)


def _write(p: Plan, docs: list[dict[str, Any]], out_dir: Path) -> Path:
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir}: is a file: pass a directory")
    path = out_dir / f"{p.app}-{p.target}.yaml"
    header = (f"# Written by tfs-builder deploy --target {p.target}: model {p.name}"
              f"{'' if p.version is None else f' version {p.version}'}"
              f"{f' (optimizer {p.optimizer})' if p.optimizer else ''} from {p.base_path}\n"
              f"# image {p.image}{', GPU' if p.gpu else ''}\n")
    atomic_write_text(path, to_yaml(docs, header))
    return path


def _report(p: Plan, docs: list[dict[str, Any]], path: Path, validated_for: str | None) -> None:
    """The command's result on stdout (what was written, for what, and how to apply it)."""
    kinds = ", ".join(d["kind"] for d in docs)
    print(f"wrote {path} ({kinds})")
    print(f"  model {p.name}{'' if p.version is None else f' version {p.version}'} from "
          f"{p.base_path}; image {p.image}; "
          f"{f'{p.gpus} GPU(s) per pod' if p.gpu else 'no GPU'}; "
          + (f"{p.replicas} replica(s)" if p.replicas is not None
             else f"{p.min_replicas}..{p.max_replicas} replicas at {p.target_cpu}% CPU"))
    for note in p.notes:
        print(f"  note: {note}")
    if validated_for:
        print(f"  validated against the Kubernetes {validated_for} schemas"
              + (" and the KServe v1beta1 InferenceService fields" if p.target == "kserve" else ""))
    print(f"apply it: kubectl apply -f {path}")
