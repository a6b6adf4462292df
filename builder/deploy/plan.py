"""What ``deploy`` will render: every flag checked and the artefact gated, as one ``Plan``.

``plan(DeployOptions)`` runs named steps, each owning one group of flags, so a mistake fails
before anything is written and names its flag:

1. ``_identity``: target, model name, base path, image reference;
2. ``_artefact``: the version in ``--repo`` (build_info, TensorRT scan), pinned or latest;
3. ``_image_and_gpu``: which tensorflow/serving build runs it, GPU or not, and the
   compatibility gate (TensorRT engines need a -gpu 2.17 image, ...);
4. ``_storage``: where the server reads the model (gs://, a path in the image, a volume claim;
   for KServe a storage URI);
5. ``_names_and_scale``: Kubernetes names, namespace, replicas / autoscaler bounds;
6. ``_serving_configs``: batching and monitoring file contents (given, or generated);
7. ``_memory``: the memory request (``auto``: preflight's footprint of the version).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.config import compat
from builder.core import artifact
from builder.core.errors import CompatibilityError, InputError
from builder.core.layout import list_versions, validate_model_name, version_dir
from builder.deploy import image as simage
from builder.options import as_bool_or_auto, as_int, as_optional_str

TARGETS = ("kubernetes", "kserve")
DEFAULT_IMAGE = f"{simage.SERVING_REPOSITORY}:{simage.DEFAULT_SERVING_TAG}"
GPU_RESOURCE = "nvidia.com/gpu"
# Storage URI schemes KServe's storage initializer downloads (python/storage kserve_storage.py).
KSERVE_SCHEMES = ("gs://", "s3://", "pvc://", "http://", "https://", "hdfs://", "webhdfs://",
                  "oci://")
# DNS-1035 label: Service names and InferenceService names (KServe's IsvcNameFmt).
DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
# Kubernetes resource.Quantity (the pattern in the Kubernetes/KServe OpenAPI schemas).
QUANTITY = re.compile(
    r"(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?"
    r"(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?"
)


@dataclass
class DeployOptions:
    """The deploy flags as given (fire may pass str, int or bool); ``plan`` checks them."""

    target: str = "kubernetes"
    name: str = ""
    base_path: str = ""
    image: str = DEFAULT_IMAGE
    serving_tag: str | None = None
    repo: str | None = None
    version: object = "latest"
    gpu: object = "auto"
    gpus: object = 1
    replicas: object = None
    min_replicas: object = None
    max_replicas: object = None
    target_cpu: object = 70
    cpu: object = "2"
    memory: object = "auto"
    namespace: str | None = None
    app: str | None = None
    volume_claim: str | None = None
    batching: str | None = None
    monitoring: str | None = None


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


def app_name(name: str) -> str:
    """Model names may hold ``_`` and capitals; Kubernetes names may not (DNS-1035)."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", name.lower())).strip("-")[:63].rstrip("-")


def quantity(value: object, flag: str, example: str) -> str:
    """A Kubernetes resource.Quantity (``2``, ``1500m``, ``4Gi``), checked like the API does."""
    s = str(value).strip()
    if not QUANTITY.fullmatch(s):
        raise InputError(f"{flag} {value!r} is not a Kubernetes quantity: use e.g. {flag} {example}")
    return s


def _read_text(path: object, flag: str) -> str | None:
    if path in (None, ""):
        return None
    p = Path(str(path))
    if not p.is_file():
        raise InputError(f"{flag} {p}: no such file: pass an existing file or leave the flag out")
    return p.read_text(encoding="utf-8")


def _unset(value: object) -> bool:
    return value is None or value == ""


# --------------------------------------------------------------------------------------------
# The steps
# --------------------------------------------------------------------------------------------


@dataclass
class _Identity:
    target: str
    name: str
    base_path: str
    image: str


def _identity(o: DeployOptions) -> _Identity:
    target = str(o.target).strip().lower()
    if target not in TARGETS:
        raise InputError(f"--target {target!r}: use one of {', '.join(TARGETS)}")
    name = str(o.name or "").strip()
    validate_model_name(name, "--name")
    base_path = str(o.base_path or "").strip().rstrip("/")
    if not base_path:
        raise InputError("--base_path is required: the published model_base_path, e.g. "
                         "gs://bucket/models/facenet")
    image_ref = str(o.image or DEFAULT_IMAGE).strip()
    simage.validate_image_ref(image_ref)
    return _Identity(target, name, base_path, image_ref)


@dataclass
class _Artefact:
    """The version to serve, and what its files say (all empty without ``--repo``)."""

    version: int | None = None
    info: simage.ArtefactInfo | None = None
    batch_sizes: list[int] = field(default_factory=list)

    @property
    def optimizer(self) -> str | None:
        return self.info.optimizer if self.info else None

    @property
    def has_trt(self) -> bool:
        return bool(self.info and self.info.has_trt)


def _artefact(o: DeployOptions, name: str) -> _Artefact:
    pinned: int | None = None
    if str(o.version).strip().lower() not in ("latest", "", "none"):
        pinned = as_int(o.version, "--version", minimum=1)
    if not o.repo:
        return _Artefact(version=pinned)
    mdir = Path(str(o.repo)) / name
    versions = list_versions(mdir)
    if not versions:
        raise InputError(f"--repo {o.repo}: no versions of model {name!r} under {mdir}: check "
                         "--repo/--name, or export the model first")
    if pinned is None:
        pinned = versions[-1]
    elif pinned not in versions:
        raise InputError(f"--version {pinned}: not in {mdir} (has {', '.join(map(str, versions))})")
    info = simage.scan_version(name, pinned, version_dir(o.repo, name, pinned))
    build = artifact.read_build_info(info.path) or {}
    return _Artefact(pinned, info, [int(b) for b in build.get("batch_sizes") or []])


def _gate_base(o: DeployOptions, ident: _Identity, notes: list[str]) -> tuple[str, bool]:
    """The tensorflow/serving build the gate judges: the image itself, or for an image made by
    scripts/build_serving_image the tag it was built FROM (--serving_tag). Returns it and
    whether the image is custom."""
    repo_part, _ = simage.split_image(ident.image)
    custom = repo_part != simage.SERVING_REPOSITORY
    if o.serving_tag:
        base = simage.serving_image(str(o.serving_tag))
    elif custom:
        base = simage.serving_image(simage.DEFAULT_SERVING_TAG)
        if ident.target == "kubernetes":
            notes.append(f"assuming {ident.image} was built FROM {base} (pass --serving_tag "
                         "otherwise)")
    else:
        base = ident.image
    if ident.target == "kserve" and custom:
        raise InputError(f"--image {ident.image}: --target kserve runs KServe's tensorflow "
                         "runtime, so pass a tensorflow/serving:TAG image (the model is "
                         "downloaded from --base_path, not baked in)")
    return base, custom


def _want_gpu(o: DeployOptions, ident: _Identity, art: _Artefact, base_is_gpu: bool,
              notes: list[str]) -> bool:
    """--gpu auto: a GPU for TF-TRT artefacts; without --repo, whatever the image tag says."""
    want = as_bool_or_auto(o.gpu, "--gpu")
    if want is not None:
        return want
    if not o.repo:
        return base_is_gpu
    if base_is_gpu and not art.has_trt:
        notes.append(f"{ident.name} version {art.version} was exported with --optimize "
                     f"{art.optimizer or 'none'}: no GPU requested"
                     + (" (KServe runs the CPU build of the same version)"
                        if ident.target == "kserve" else
                        " (the -gpu image runs it on CPU; pass --gpu true for a GPU)"))
    return art.has_trt


def _image_and_gpu(o: DeployOptions, ident: _Identity, art: _Artefact,
                   notes: list[str]) -> tuple[str, bool]:
    """The image to run and whether it gets a GPU, after the compatibility gate."""
    base, _custom = _gate_base(o, ident, notes)
    _, base_is_gpu = compat.parse_serving_tag(base)
    want_gpu = _want_gpu(o, ident, art, base_is_gpu, notes)
    if art.has_trt and not want_gpu:
        raise CompatibilityError(f"--gpu false: {ident.name} version {art.version} contains "
                                 "TensorRT engines, which need an NVIDIA GPU: drop --gpu false")
    if want_gpu and not base_is_gpu:
        raise CompatibilityError(f"{'--serving_tag' if o.serving_tag else '--image'} {base} is a "
                                 "CPU image but a GPU is requested: use a -gpu tag such as "
                                 "tensorflow/serving:2.17.0-gpu")
    image_ref = ident.image
    if ident.target == "kserve":
        # KServe's webhook accepts a -gpu runtimeVersion only together with a GPU limit.
        if not want_gpu and base_is_gpu:
            base = base.replace("-gpu", "")
        image_ref = base
    problem = art.info.problem(base) if art.info else compat.image_problem(art.has_trt, base)
    if problem:
        raise CompatibilityError(f"--image: {ident.name} version {art.version}: {problem}")
    warning = art.info.warning(base) if art.info else None
    if warning:
        notes.append(str(warning))
    return image_ref, want_gpu


def _storage(o: DeployOptions, ident: _Identity, image_ref: str) -> str | None:
    """Check --base_path against what the target's server can read; returns the volume claim."""
    claim = str(o.volume_claim).strip() if o.volume_claim else None
    if claim and not DNS1123_LABEL.fullmatch(claim):
        raise InputError(f"--volume_claim {claim!r} is not a PersistentVolumeClaim name")
    base_path, name = ident.base_path, ident.name
    if ident.target == "kserve":
        if not base_path.startswith(KSERVE_SCHEMES):
            raise InputError(f"--base_path {base_path}: KServe downloads the model from a storage "
                             "URI: use s3://, gs://, pvc://CLAIM/path, oci:// or https://")
        if claim:
            raise InputError("--volume_claim is for --target kubernetes; with --target kserve "
                             "pass --base_path pvc://CLAIM/path")
        return None
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
    return claim


@dataclass
class _Scale:
    app: str
    namespace: str | None
    replicas: int | None
    min_replicas: int
    max_replicas: int


def _names_and_scale(o: DeployOptions, ident: _Identity, notes: list[str]) -> _Scale:
    app_res = str(o.app).strip() if o.app else app_name(ident.name)
    if not DNS1035.fullmatch(app_res) or len(app_res) > 45:
        raise InputError(f"--app {app_res!r}: Kubernetes names must match [a-z]([-a-z0-9]*[a-z0-9])? "
                         "and stay short (<= 45 characters): pass --app e.g. facenet")
    if ident.target == "kserve" and app_res != ident.name:
        notes.append(f"KServe serves the model under the InferenceService name: "
                     f"/v1/models/{app_res} (not /v1/models/{ident.name})")
    ns = str(o.namespace).strip() if o.namespace else None
    if ns and not DNS1123_LABEL.fullmatch(ns):
        raise InputError(f"--namespace {ns!r} is not a Kubernetes namespace name")
    fixed = None if _unset(o.replicas) else as_int(o.replicas, "--replicas", minimum=1)
    if fixed is not None and not (_unset(o.min_replicas) and _unset(o.max_replicas)):
        raise InputError("--replicas sets a fixed count; --min_replicas/--max_replicas autoscale: "
                         "pass one or the other")
    floor = 0 if ident.target == "kserve" else 1  # KServe scales to zero
    lo = 1 if _unset(o.min_replicas) else as_int(o.min_replicas, "--min_replicas", minimum=floor)
    hi = 4 if _unset(o.max_replicas) else as_int(o.max_replicas, "--max_replicas", minimum=1)
    if hi < lo:
        raise InputError(f"--max_replicas {hi} is below --min_replicas {lo}")
    return _Scale(app_res, ns, fixed, lo, hi)


def _memory(o: DeployOptions, art: _Artefact, notes: list[str]) -> str:
    """--memory auto: preflight's measured footprint of the version (build_info "footprint"),
    else 4Gi; anything else is a Kubernetes quantity."""
    if str(o.memory).strip().lower() != "auto":
        return quantity(o.memory, "--memory", "4Gi")
    fp = ((artifact.read_build_info(art.info.path) or {}).get("footprint") or {}) if art.info else {}
    if not fp:
        return "4Gi"
    memory = f"{-(-int(fp['recommended_memory_bytes']) // 2**20)}Mi"
    notes.append(f"memory {memory}: preflight footprint of version {art.version} (runtime + 2 x "
                 "model: hot reload holds two versions)")
    return memory


def _serving_configs(o: DeployOptions, batch_sizes: list[int]) -> tuple[str, str]:
    """batching_parameters.txt and monitoring.config: the files given (checked), else defaults
    (allowed batch sizes = those the version was exported and warmed for)."""
    from builder.config import companions

    btext = _read_text(o.batching, "--batching")
    if btext is None:
        btext = companions.batching_parameters_text(batch_sizes or [1, 8, 100])
    else:
        companions.parse_batching_parameters(btext, f"--batching {o.batching}")
    mtext = _read_text(o.monitoring, "--monitoring")
    if mtext is None:
        mtext = companions.monitoring_config_text()
    else:
        companions.parse_monitoring_config(mtext, f"--monitoring {o.monitoring}")
    return btext, mtext


def plan(o: DeployOptions) -> Plan:
    """Check every flag and the artefact (build_info + TensorRT scan), then fix the plan."""
    notes: list[str] = []
    ident = _identity(o)
    art = _artefact(o, ident.name)
    image_ref, gpu = _image_and_gpu(o, ident, art, notes)
    claim = _storage(o, ident, image_ref)
    scale = _names_and_scale(o, ident, notes)
    btext, mtext = _serving_configs(o, art.batch_sizes)
    memory = _memory(o, art, notes)
    return Plan(
        target=ident.target, name=ident.name, app=scale.app, base_path=ident.base_path,
        image=image_ref, gpu=gpu, gpus=as_int(o.gpus, "--gpus", minimum=1), version=art.version,
        optimizer=art.optimizer, has_trt=art.has_trt,
        cpu=quantity(o.cpu, "--cpu", "2"), memory=memory,
        replicas=scale.replicas, min_replicas=scale.min_replicas, max_replicas=scale.max_replicas,
        target_cpu=as_int(o.target_cpu, "--target_cpu", minimum=1), namespace=scale.namespace,
        volume_claim=claim, batching_text=btext, monitoring_text=mtext, notes=notes,
        mixed_precision="bfloat16" if art.info and art.info.bf16 == "profile" else "",  # bf16 hook
    )


def options(**flags: object) -> DeployOptions:
    """``DeployOptions`` from CLI-style values: empty strings mean "not given"."""
    o = DeployOptions(**flags)  # type: ignore[arg-type]
    for key in ("serving_tag", "repo", "namespace", "app", "volume_claim", "batching", "monitoring"):
        setattr(o, key, as_optional_str(getattr(o, key)))
    return o
