"""Serving image: a docker build context for ``Dockerfile.serving``, the gate, and the build.

Why a prepared context instead of ``docker build .`` on the repo: the context must hold only
numeric versions (TF Serving loads any numeric directory the moment it appears, so a half-copied
``.staging-*`` must never reach an image), a models.config whose base paths point inside the
image, and batching/monitoring configs the server flags name. Building it as a directory first
also lets a host without a Docker engine hand the exact context and ``docker build`` command to a
machine that has one.

The compatibility gate runs before anything is written: an artefact with TensorRT ops cannot go
into a CPU image or a >= 2.18 image (``builder.compat.image_problem``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shlex
import shutil
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.config import compat
from builder.core import artifact
from builder.core.errors import (
    BuilderError,
    CompatibilityError,
    ConfigError,
    InputError,
    PublishError,
    ServingError,
    UnavailableError,
)
from builder.core.layout import list_models, list_versions

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
            out.append(scan_version(name, v, root / name / str(v)))
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
    """Pairings that load but are slow (TensorRT minor/patch mismatch rebuilds engines), and
    bf16 artefacts that need oneDNN on (plus fp32 models sharing a bf16 server)."""
    out = [f"{a.name}/{a.version}: {w}" for a in artefacts if (w := a.warning(image))]
    shared = compat.shared_server_warning(  # bf16 hook (issue 12)
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
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    cfg = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, cfg)
    except text_format.ParseError as e:
        raise ConfigError(f"{source}: not a ModelServerConfig text proto ({e}): regenerate it "
                          "with 'python -m builder config --base_path /models'") from None
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


def prepare_build_context(
    repo: str | os.PathLike,
    out_dir: str | os.PathLike,
    image_tag: str = DEFAULT_SERVING_TAG,
    models_config: str | os.PathLike | None = None,
    batching: str | os.PathLike | None = None,
    monitoring: str | os.PathLike | None = None,
    models: Iterable[str] | None = None,
    overwrite: bool = False,
    dockerfile: str | os.PathLike | None = None,
) -> Path:
    """Gate, then write ``out_dir``: Dockerfile, models/, config/, and build.json.

    ``image_tag`` is the tensorflow/serving tag (SERVING_TAG build arg). The context appears
    whole or not at all: it is assembled in a hidden sibling directory and renamed into place.
    """
    return prepare(repo, out_dir, image_tag, models_config, batching, monitoring, models,
                   overwrite, dockerfile).path


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
    """Like ``prepare_build_context`` but returns the full ``BuildContext``."""
    base = serving_image(image_tag)
    src_dockerfile = Path(dockerfile) if dockerfile else DOCKERFILE
    if not src_dockerfile.is_file():
        raise InputError(f"--dockerfile {src_dockerfile}: no such file: pass the path of "
                         "Dockerfile.serving from the tfs-builder source tree")
    # Read user files up front so a typo fails before anything is copied.
    cfg_text = _read_config(models_config, "--models_config")
    batching_text = _read_config(batching, "--batching")
    monitoring_text = _read_config(monitoring, "--monitoring")
    from builder.config import companions as batching_mod

    if batching_text is not None:
        batching_mod.parse_batching_parameters(batching_text, f"--batching {batching}")
    if monitoring_text is not None:
        batching_mod.parse_monitoring_config(monitoring_text, f"--monitoring {monitoring}")

    artefacts = scan_repo(repo, models)
    gate(artefacts, base)

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"--context {out}: exists and is not a directory: choose another path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InputError(f"--context {out}: not empty: pass --overwrite to replace it, or "
                         "choose another directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    chosen: dict[str, list[int]] = {}
    for a in artefacts:
        chosen.setdefault(a.name, []).append(a.version)
    try:
        tmp.mkdir()
        shutil.copy2(src_dockerfile, tmp / "Dockerfile")
        models_dir = tmp / "models"
        for a in artefacts:
            shutil.copytree(a.path, models_dir / a.name / str(a.version),
                            copy_function=_link_or_copy)
        config_dir = tmp / "config"
        config_dir.mkdir()
        cfg_path = config_dir / MODELS_CONFIG
        if cfg_text is None:
            _generate_models_config(models_dir, cfg_path)
            cfg_text = cfg_path.read_text(encoding="utf-8")
        else:
            cfg_path.write_text(cfg_text, encoding="utf-8")
        check_models_config(cfg_text, str(models_config or cfg_path), models_dir)
        # Explicit files win; otherwise keep what the config command wrote beside
        # models.config, or generate the defaults.
        for fname, text, default in (
            (BATCHING_FILE, batching_text, lambda: _default_batching_text(models_dir)),
            (MONITORING_FILE, monitoring_text, _default_monitoring_text),
        ):
            target = config_dir / fname
            if text is not None:
                target.write_text(text, encoding="utf-8")
            elif not target.is_file():
                target.write_text(default(), encoding="utf-8")
        ctx = BuildContext(path=out, serving_tag=str(image_tag), models=chosen,
                           has_trt=any(a.has_trt for a in artefacts),
                           warnings=gate_warnings(artefacts, base),
                           mixed_precision=mixed_precision_of(artefacts))  # bf16 hook
        (tmp / "build.json").write_text(json.dumps({
            "serving_tag": ctx.serving_tag,
            "base_image": base,
            "models": chosen,
            "tensorrt": ctx.has_trt,
            "server_flags": server_flags(mixed_precision=ctx.mixed_precision),  # bf16 hook
            "target": ctx.target,  # bf16 hook (issue 12)
        }, indent=2) + "\n", encoding="utf-8")
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return ctx


# --------------------------------------------------------------------------------------------
# docker build / push
# --------------------------------------------------------------------------------------------


def split_image(image: str) -> tuple[str, str]:
    """``host:5000/team/facenet:3`` -> (``host:5000/team/facenet``, ``3``); no tag -> latest."""
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        repo, tag = image.rsplit(":", 1)
        return repo, tag
    return image, "latest"


def build_command(context: str | os.PathLike, image: str,
                  serving_tag: str = DEFAULT_SERVING_TAG, target: str = "serving") -> list[str]:
    """The ``docker build`` argv equivalent to what ``build_and_push`` asks the engine for."""
    ctx = Path(context)
    return ["docker", "build", "--build-arg", f"SERVING_TAG={serving_tag}",
            "--target", target,  # bf16 hook (issue 12)
            "--tag", image, "--file", str(ctx / "Dockerfile"), str(ctx)]


def push_command(image: str) -> list[str]:
    return ["docker", "push", image]


def docker_client() -> Any:
    """A docker SDK client whose engine answers ping, or UnavailableError (one line)."""
    try:
        import docker
    except ImportError:
        raise UnavailableError("no Docker SDK: pip install docker==7.2.0 (or build with the "
                               "printed docker command on a Docker host)") from None
    try:
        client = docker.from_env()
        client.ping()
    except Exception as e:  # noqa: BLE001 - any failure to reach the engine means "no engine"
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UnavailableError(f"no Docker engine: {reason} (set DOCKER_HOST, start dockerd, "
                               "or run the printed docker build command on a Docker host)"
                               ) from None
    return client


_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"(?:localhost|[A-Za-z0-9.-]+\.[A-Za-z0-9.-]+|[A-Za-z0-9.-]+:[0-9]+)(?::[0-9]+)?"
_IMAGE_RE = re.compile(
    rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?"
)


def _validate_image_ref(image: str) -> None:
    """Docker's reference grammar (without digests): checked before a long build, not after."""
    if not _IMAGE_RE.fullmatch(image or ""):
        raise InputError(f"--image {image!r} is not a docker image reference: use lowercase "
                         "e.g. --image registry.example.com/team/facenet-serving:3")


def build_and_push(context: str | os.PathLike, image: str,
                   serving_tag: str = DEFAULT_SERVING_TAG, push: bool = True,
                   client: Any = None, log: Any = print, target: str = "serving") -> str:
    """Build the context with the docker SDK, then push. Returns the image id.

    Build and push errors become BuilderErrors carrying the engine's own last message, since
    that (unknown tag, auth required) is what the user has to act on.
    """
    _validate_image_ref(image)
    client = client or docker_client()
    import docker

    try:
        img, logs = client.images.build(path=str(context), dockerfile="Dockerfile",
                                        buildargs={"SERVING_TAG": serving_tag}, tag=image,
                                        rm=True, target=target)  # bf16 hook: target
    except docker.errors.BuildError as e:
        raise ServingError(f"docker build of {image} failed: {e.msg}") from None
    except docker.errors.APIError as e:
        raise ServingError(f"docker build of {image} failed: {e.explanation or e}") from None
    for chunk in logs:
        line = chunk.get("stream", "").rstrip() if isinstance(chunk, dict) else ""
        if line:
            log(line)
    if push:
        repo, tag = split_image(image)
        try:
            stream = client.images.push(repo, tag=tag, stream=True, decode=True)
            for chunk in stream:
                if "error" in chunk:
                    raise PublishError(f"docker push {image} failed: {chunk['error']}")
                status = chunk.get("status")
                if status and "id" not in chunk:
                    log(status)
        except docker.errors.APIError as e:
            raise PublishError(f"docker push {image} failed: {e.explanation or e}") from None
    return img.id


# --------------------------------------------------------------------------------------------
# scripts/build_serving_image
# --------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scripts/build_serving_image",
        description="Build (and push) a tensorflow/serving image holding a tfs-builder model "
                    "repository. Runs the TensorRT compatibility gate first; without a Docker "
                    "engine it still prepares the context and prints the docker commands.",
    )
    p.add_argument("--repo", required=True, help="model repository (REPO/NAME/VERSION)")
    p.add_argument("--image", default="",
                   help="image reference to build and push, e.g. registry/team/facenet:3 "
                        "(required unless --context_only)")
    p.add_argument("--serving_tag", default=DEFAULT_SERVING_TAG,
                   help="tensorflow/serving tag to build FROM (default %(default)s)")
    p.add_argument("--context", default="build/serving-image",
                   help="directory to write the build context to (default %(default)s)")
    p.add_argument("--models", default="", help="comma list of model names (default: all)")
    p.add_argument("--models_config", default=None,
                   help="models.config to bake in; its base paths must be /models/NAME "
                        "(default: generated by 'python -m builder config --base_path /models')")
    p.add_argument("--batching", default=None,
                   help="batching_parameters.txt (default: builder.batching defaults)")
    p.add_argument("--monitoring", default=None,
                   help="monitoring.config (default: Prometheus at " + PROMETHEUS_PATH + ")")
    p.add_argument("--dockerfile", default=None, help="Dockerfile (default: Dockerfile.serving)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --context")
    p.add_argument("--no_push", action="store_true", help="build only, do not push")
    p.add_argument("--context_only", action="store_true",
                   help="prepare the context and print the commands; do not talk to Docker")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of scripts/build_serving_image: exit 0 ok, 2 user error / no engine."""
    args = _parser().parse_args(argv)
    try:
        if not args.context_only:
            if not args.image:
                raise InputError("--image is required to build: use e.g. --image "
                                 "registry.example.com/team/facenet-serving:3, or pass "
                                 "--context_only")
            _validate_image_ref(args.image)
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        ctx = prepare(args.repo, args.context, args.serving_tag, args.models_config,
                      args.batching, args.monitoring, models, args.overwrite, args.dockerfile)
        print(f"build context: {ctx.path}")
        print(f"  base image:  {ctx.base_image}" + ("  (TensorRT artefacts)" if ctx.has_trt
                                                    else ""))
        for name, versions in ctx.models.items():
            print(f"  model:       {name} versions {', '.join(map(str, versions))}")
        for w in ctx.warnings:
            print(f"warning: {w}")
        image = args.image or "IMAGE"
        print("docker build command:")
        if ctx.mixed_precision:  # bf16 hook (issue 12)
            print(f"  serving profile: --mixed_precision={ctx.mixed_precision} (target {ctx.target})")
        print("  " + shlex.join(build_command(ctx.path, image, args.serving_tag, ctx.target)))
        if not args.no_push:
            print("  " + shlex.join(push_command(image)))
        if args.context_only:
            return 0
        client = docker_client()
        image_id = build_and_push(ctx.path, args.image, args.serving_tag,
                                  push=not args.no_push, client=client, target=ctx.target)
        print(f"built {args.image} ({image_id})" + ("" if args.no_push else " and pushed"))
        return 0
    except BuilderError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
