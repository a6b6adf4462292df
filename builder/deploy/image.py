"""Serving image: a docker build context for ``Dockerfile.serving``, and the gate before it.

Why a prepared context instead of ``docker build .`` on the repo: the context must hold only
numeric versions (TF Serving loads any numeric directory the moment it appears, so a half-copied
``.staging-*`` must never reach an image), a models.config whose base paths point inside the
image, and batching/monitoring configs the server flags name. Building it as a directory first
also lets a host without a Docker engine hand the exact context and ``docker build`` command to a
machine that has one.

The compatibility gate runs before anything is written: an artefact with TensorRT ops cannot go
into a CPU image or a >= 2.18 image (``builder.config.compat.image_problem``).

The docker SDK build/push is ``builder.deploy.docker``; the command line is
``scripts/build_serving_image``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from builder.config import compat
from builder.core import artifact
from builder.core.errors import CompatibilityError, ConfigError, InputError
from builder.core.layout import list_models, list_versions, version_dir

DEFAULT_SERVING_TAG = "2.17.0-gpu"
SERVING_REPOSITORY = "tensorflow/serving"
DOCKERFILE = Path(__file__).resolve().parents[2] / "Dockerfile.serving"

# Paths and ports inside the serving image (also used by the Kubernetes manifests).
CONTAINER_MODELS = "/models"
CONTAINER_CONFIG = "/config"
SERVER_BINARY = "/usr/bin/tensorflow_model_server"
GRPC_PORT = 8500
REST_PORT = 8501
CONFIG_POLL_SECONDS = 60
MODELS_CONFIG = "models.config"
BATCHING_FILE = "batching_parameters.txt"
MONITORING_FILE = "monitoring.config"
PROMETHEUS_PATH = "/monitoring/prometheus/metrics"

# Every flag tensorflow_model_server 2.17.0 defines (tensorflow_serving/model_servers/main.cc at
# tag 2.17.0). The server aborts on an unknown flag, so the image and manifests are checked
# against this list.
TF_SERVING_2_17_FLAGS = frozenset(
    {
        "allow_version_labels_for_unavailable_models", "batching_parameters_file",
        "enable_batching", "enable_grpc_healthcheck_service", "enable_model_warmup",
        "enable_per_model_batching_parameters", "enable_profiler",
        "enable_signature_method_name_check", "file_system_poll_wait_seconds",
        "flush_filesystem_caches", "grpc_channel_arguments", "grpc_max_threads",
        "grpc_socket_path", "load_retry_interval_micros", "max_num_load_retries",
        "mixed_precision", "model_base_path", "model_config_file",
        "model_config_file_poll_wait_seconds", "model_name", "monitoring_config_file",
        "num_load_threads", "num_request_iterations_for_warmup",
        "num_tflite_interpreters_per_pool", "num_tflite_pools", "num_unload_threads",
        "per_process_gpu_memory_fraction", "platform_config_file", "port",
        "prefer_tflite_model", "remove_unused_fields_from_bundle_metagraph",
        "rest_api_enable_cors_support", "rest_api_num_threads", "rest_api_port",
        "rest_api_timeout_in_ms", "saved_model_tags", "skip_initialize_tpu", "ssl_config_file",
        "tensorflow_inter_op_parallelism", "tensorflow_intra_op_parallelism",
        "tensorflow_session_config_file", "tensorflow_session_parallelism",
        "thread_pool_factory_config_file", "use_alts_credentials", "version",
        "xla_cpu_compilation_enabled",
    }
)


def server_flags(config_dir: str = CONTAINER_CONFIG, port: int = GRPC_PORT,
                 rest_api_port: int = REST_PORT,
                 poll_seconds: int = CONFIG_POLL_SECONDS,
                 mixed_precision: str = "") -> list[str]:
    """The tensorflow_model_server flags of the serving image, in ``Dockerfile.serving`` order.

    One definition for the Dockerfile (checked by a test) and the Kubernetes Deployment, so a
    pod runs exactly what ``docker run IMAGE`` runs.
    """
    return [
        f"--port={port}",
        f"--rest_api_port={rest_api_port}",
        f"--model_config_file={config_dir}/{MODELS_CONFIG}",
        f"--model_config_file_poll_wait_seconds={poll_seconds}",
        "--enable_batching=true",
        f"--batching_parameters_file={config_dir}/{BATCHING_FILE}",
        f"--monitoring_config_file={config_dir}/{MONITORING_FILE}",
        "--enable_model_warmup=true",
        # Without it a models.config with labels aborts start-up (labels are checked before any
        # model loads: ServerCore::UpdateModelVersionLabelMap), e.g. at every pod restart.
        "--allow_version_labels_for_unavailable_models=true",
        # bf16 hook (issue 12): the bf16 serving profile (Dockerfile.serving target serving-bf16)
        *([f"--mixed_precision={mixed_precision}"] if mixed_precision else []),
    ]


# bf16 hook (issue 12): Dockerfile.serving target per serving profile
DOCKER_TARGETS = {"": "serving", "bfloat16": "serving-bf16"}


# --------------------------------------------------------------------------------------------
# Artefact-level compatibility gate
# --------------------------------------------------------------------------------------------


@dataclass
class ArtefactInfo:
    """What the gate needs to know about one version directory."""

    name: str
    version: int
    path: Path
    trt_ops: set[str] = field(default_factory=set)
    optimizer: str | None = None  # from build_info.json, None when there is none
    missing_ops: set[str] = field(default_factory=set)  # no stock TF Serving can run these
    tensorrt_version: list[int] | None = None  # TensorRT the engines were built with
    bf16: str | None = None  # bf16 hook (issue 12): "profile" | "baked" | None (compat.bf16_mode)

    @property
    def has_trt(self) -> bool:
        return bool(self.trt_ops) or self.optimizer == "tftrt"

    def problem(self, image_ref: str) -> str | None:
        return compat.image_problem(self.has_trt, image_ref, missing_ops=self.missing_ops,
                                    tensorrt_version=self.tensorrt_version, bf16=self.bf16)

    def warning(self, image_ref: str) -> str | None:
        return compat.image_warning(self.has_trt, image_ref, self.tensorrt_version, self.bf16)


def scan_version(name: str, version: int, path: str | os.PathLike) -> ArtefactInfo:
    """Gate facts for one version: TRT ops, ops no stock server runs, build_info fields."""
    info = artifact.read_build_info(path) or {}
    trt: set[str] = set()
    missing: set[str] = set()
    for gd in artifact.graph_defs(path):
        trt |= compat.trt_ops(gd)
        missing |= compat.serving_missing_ops(gd)
    trt_info = info.get("tensorrt") if isinstance(info.get("tensorrt"), dict) else {}
    loaded = trt_info.get("loaded_version") if trt_info else None
    return ArtefactInfo(
        name=name,
        version=version,
        path=Path(path),
        trt_ops=trt,
        optimizer=info.get("optimizer"),
        missing_ops=missing,
        tensorrt_version=[int(x) for x in loaded] if loaded else None,
        bf16=compat.bf16_mode(info),  # bf16 hook (issue 12)
    )


def scan_repo(repo: str | os.PathLike, models: Iterable[str] | None = None) -> list[ArtefactInfo]:
    """Every numeric version of the chosen models (all models when ``models`` is empty)."""
    root = Path(repo)
    if not root.is_dir():
        raise InputError(f"--repo {root}: not a directory: pass the model repository that "
                         "'python -m builder export' wrote")
    available = list_models(root)
    chosen = list(models or []) or available
    out = []
    for name in chosen:
        if name not in available:
            raise InputError(f"--models {name}: no such model in {root} (found: "
                             f"{', '.join(available) or 'none'})")
        versions = list_versions(root / name)
        if not versions and models:
            raise InputError(f"--models {name}: {root / name} has no numeric version "
                             "directories: export a version first")
        for v in versions:
            out.append(scan_version(name, v, version_dir(root, name, v)))
    if not out:
        raise InputError(f"--repo {root}: no model versions found: export one with "
                         "'python -m builder export ... --repo " + str(root) + "'")
    return out


def gate(artefacts: Sequence[ArtefactInfo], image: str) -> None:
    """Refuse an image that cannot load one of the artefacts (CompatibilityError, one line)."""
    for a in artefacts:
        problem = a.problem(image)
        if problem:
            raise CompatibilityError(f"{a.name}/{a.version} ({a.path}): {problem}")


def gate_warnings(artefacts: Sequence[ArtefactInfo], image: str) -> list[str]:
    """Pairings that load but are slow (TensorRT minor/patch mismatch rebuilds engines)."""
    out = [f"{a.name}/{a.version}: {w}" for a in artefacts if (w := a.warning(image))]
    shared = compat.shared_server_warning(  # bf16 hook (issue 12): --mixed_precision is server-wide
        (f"{a.name}/{a.version}", a.bf16) for a in artefacts)
    return out + ([shared] if shared else [])


def mixed_precision_of(artefacts: Sequence[ArtefactInfo]) -> str:
    """bf16 hook (issue 12): ``bfloat16`` when an artefact is a bf16 serving profile."""
    return "bfloat16" if any(a.bf16 == "profile" for a in artefacts) else ""


def serving_image(tag: str) -> str:
    """``2.17.0-gpu`` -> ``tensorflow/serving:2.17.0-gpu`` (a full reference is kept as is)."""
    tag = str(tag).strip()
    if not tag:
        raise InputError("--serving_tag is empty: use e.g. --serving_tag 2.17.0-gpu")
    if "/" in tag or ":" in tag:
        raise InputError(f"--serving_tag {tag!r} must be a tensorflow/serving tag such as "
                         "2.17.0-gpu or 2.17.0, not an image reference")
    return f"{SERVING_REPOSITORY}:{tag}"


# --------------------------------------------------------------------------------------------
# Config files
# --------------------------------------------------------------------------------------------


def check_models_config(text: str, source: str, models_dir: Path) -> list[str]:
    """Parse a ModelServerConfig and check every base_path is a model baked into the image.

    A base path of the build host (``/home/ci/repo/facenet``) would make the server load
    nothing and retry forever, so it is refused here rather than discovered in production.
    Returns the model names the config serves.
    """
    from builder.config.models_config import parse_config_proto

    cfg = parse_config_proto(text, source, "regenerate it with 'python -m builder config --base_path /models'")
    if not cfg.HasField("model_config_list") or not cfg.model_config_list.config:
        raise ConfigError(f"{source}: serves no models (no model_config_list entries): "
                          "regenerate it with 'python -m builder config --base_path /models'")
    names = []
    for c in cfg.model_config_list.config:
        expected = f"{CONTAINER_MODELS}/{c.name}"
        if c.base_path.rstrip("/") != expected:
            raise ConfigError(
                f"{source}: model {c.name!r} has base_path {c.base_path!r}, but the image holds "
                f"it at {expected!r}: regenerate with 'python -m builder config --repo REPO "
                f"--base_path {CONTAINER_MODELS}'"
            )
        if not list_versions(models_dir / c.name):
            raise ConfigError(f"{source}: model {c.name!r} is not in the image's repository "
                              f"(no versions under {models_dir / c.name}): export it or drop it "
                              "from the config")
        names.append(c.name)
    return names


def _generate_models_config(models_dir: Path, out: Path) -> None:
    """models.config (and batching/monitoring companions) via the project's config command."""
    import contextlib
    import io

    from builder.config import models_config

    with contextlib.redirect_stdout(io.StringIO()):  # its "wrote <tmp path>" lines would mislead
        models_config.config_command(repo=str(models_dir), out=str(out),
                                      base_path=CONTAINER_MODELS)


def _default_batching_text(models_dir: Path) -> str:
    """allowed_batch_sizes = the sizes the copied versions were exported and warmed for."""
    from builder.config import companions

    return companions.batching_parameters_text(companions.batch_sizes_from_repo(models_dir)
                                             or [1, 8, 100])


def _default_monitoring_text() -> str:
    from builder.config import companions

    return companions.monitoring_config_text()


def _read_config(path: str | os.PathLike | None, flag: str) -> str | None:
    if path is None or str(path) == "":
        return None
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{flag} {p}: no such file: pass an existing file or leave the flag "
                         "out to use the defaults")
    return p.read_text(encoding="utf-8")


# --------------------------------------------------------------------------------------------
# Build context
# --------------------------------------------------------------------------------------------


@dataclass
class BuildContext:
    """A prepared context directory and what went into it."""

    path: Path
    serving_tag: str
    models: dict[str, list[int]]
    has_trt: bool
    warnings: list[str] = field(default_factory=list)
    mixed_precision: str = ""  # bf16 hook (issue 12): "bfloat16" -> target serving-bf16

    @property
    def target(self) -> str:
        return DOCKER_TARGETS[self.mixed_precision]

    @property
    def dockerfile(self) -> Path:
        return self.path / "Dockerfile"

    @property
    def base_image(self) -> str:
        return serving_image(self.serving_tag)


def _link_or_copy(src: str, dst: str) -> str:
    """Hard links keep a FaceNet-sized context cheap; fall back to a copy across filesystems."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def prepare(
    repo: str | os.PathLike,
    out_dir: str | os.PathLike,
    image_tag: str = DEFAULT_SERVING_TAG,
    models_config: str | os.PathLike | None = None,
    batching: str | os.PathLike | None = None,
    monitoring: str | os.PathLike | None = None,
    models: Iterable[str] | None = None,
    overwrite: bool = False,
    dockerfile: str | os.PathLike | None = None,
) -> BuildContext:
    """Gate, then write ``out_dir``: Dockerfile, models/, config/, and build.json; the full
    ``BuildContext`` (its ``.path`` is the context directory).

    Steps: read the user's files (a typo fails before anything is copied), scan and gate the
    artefacts, assemble the context in a hidden sibling, swap it into place.
    """
    base = serving_image(image_tag)
    src_dockerfile = Path(dockerfile) if dockerfile else DOCKERFILE
    if not src_dockerfile.is_file():
        raise InputError(f"--dockerfile {src_dockerfile}: no such file: pass the path of "
                         "Dockerfile.serving from the tfs-builder source tree")
    user = _read_user_configs(models_config, batching, monitoring)
    artefacts = scan_repo(repo, models)
    gate(artefacts, base)
    out = _check_out_dir(Path(out_dir), overwrite)
    chosen: dict[str, list[int]] = {}
    for a in artefacts:
        chosen.setdefault(a.name, []).append(a.version)
    ctx = BuildContext(path=out, serving_tag=str(image_tag), models=chosen,
                       has_trt=any(a.has_trt for a in artefacts),
                       warnings=gate_warnings(artefacts, base),
                       mixed_precision=mixed_precision_of(artefacts))  # bf16 hook
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        tmp.mkdir()
        _assemble(tmp, src_dockerfile, artefacts, user)
        (tmp / "build.json").write_text(json.dumps({
            "serving_tag": ctx.serving_tag,
            "base_image": base,
            "models": chosen,
            "tensorrt": ctx.has_trt,
            "server_flags": server_flags(mixed_precision=ctx.mixed_precision),  # bf16 hook
            "target": ctx.target,  # bf16 hook (issue 12)
        }, indent=2) + "\n", encoding="utf-8")
        _swap_into_place(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return ctx


@dataclass
class _UserConfigs:
    """The config files the user passed (None: generate), with the paths for error messages."""

    models_config: str | None
    models_config_path: str | os.PathLike | None
    batching: str | None
    monitoring: str | None


def _read_user_configs(models_config: str | os.PathLike | None, batching: str | os.PathLike | None,
                       monitoring: str | os.PathLike | None) -> _UserConfigs:
    from builder.config import companions

    user = _UserConfigs(_read_config(models_config, "--models_config"), models_config,
                        _read_config(batching, "--batching"), _read_config(monitoring, "--monitoring"))
    if user.batching is not None:
        companions.parse_batching_parameters(user.batching, f"--batching {batching}")
    if user.monitoring is not None:
        companions.parse_monitoring_config(user.monitoring, f"--monitoring {monitoring}")
    return user


def _check_out_dir(out: Path, overwrite: bool) -> Path:
    if out.exists() and not out.is_dir():
        raise InputError(f"--context {out}: exists and is not a directory: choose another path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InputError(f"--context {out}: not empty: pass --overwrite to replace it, or "
                         "choose another directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _assemble(tmp: Path, dockerfile: Path, artefacts: Sequence[ArtefactInfo],
              user: _UserConfigs) -> None:
    """Dockerfile, models/NAME/VERSION (hard links), config/ (models.config checked against the
    copied models; explicit batching/monitoring files win, else what the config command wrote,
    else the defaults)."""
    shutil.copy2(dockerfile, tmp / "Dockerfile")
    models_dir = tmp / "models"
    for a in artefacts:
        shutil.copytree(a.path, models_dir / a.name / str(a.version), copy_function=_link_or_copy)
    config_dir = tmp / "config"
    config_dir.mkdir()
    cfg_path = config_dir / MODELS_CONFIG
    cfg_text = user.models_config
    if cfg_text is None:
        _generate_models_config(models_dir, cfg_path)
        cfg_text = cfg_path.read_text(encoding="utf-8")
    else:
        cfg_path.write_text(cfg_text, encoding="utf-8")
    check_models_config(cfg_text, str(user.models_config_path or cfg_path), models_dir)
    for fname, text, default in (
        (BATCHING_FILE, user.batching, lambda: _default_batching_text(models_dir)),
        (MONITORING_FILE, user.monitoring, _default_monitoring_text),
    ):
        target = config_dir / fname
        if text is not None:
            target.write_text(text, encoding="utf-8")
        elif not target.is_file():
            target.write_text(default(), encoding="utf-8")


def _swap_into_place(tmp: Path, out: Path) -> None:
    """The finished context replaces ``out`` by rename: a reader sees the old or the new one."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Image references
# --------------------------------------------------------------------------------------------

_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"(?:localhost|[A-Za-z0-9.-]+\.[A-Za-z0-9.-]+|[A-Za-z0-9.-]+:[0-9]+)(?::[0-9]+)?"
_IMAGE_RE = re.compile(
    rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?"
)


def validate_image_ref(image: str) -> None:
    """Docker's reference grammar (without digests): checked before a long build, not after."""
    if not _IMAGE_RE.fullmatch(image or ""):
        raise InputError(f"--image {image!r} is not a docker image reference: use lowercase "
                         "e.g. --image registry.example.com/team/facenet-serving:3")


def split_image(image: str) -> tuple[str, str]:
    """``host:5000/team/facenet:3`` -> (``host:5000/team/facenet``, ``3``); no tag -> latest."""
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        repo, tag = image.rsplit(":", 1)
        return repo, tag
    return image, "latest"
