"""``python -m builder config``: the ModelServerConfig text proto for a repository.

The file is merged with an existing one (entries for other models survive), written atomically
(a polling server reads the old or the new file, never half of one), and parsed back with the
official ``model_server_config_pb2`` before it replaces anything.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.core import artifact, layout
from builder.core.errors import CompatibilityError, ConfigError, InputError
from builder.options import as_list, as_mapping

# TF Serving's rule for version label names (server_core.cc); one definition for every reader.
LABEL_RE = re.compile(r"^[a-zA-Z0-9_]+$")


def _pb2():
    from tensorflow_serving.config import model_server_config_pb2

    return model_server_config_pb2


# ---------------------------------------------------------------------------------------------
# The one parser and the one version-policy evaluation


def served_versions(policy: str, on_disk: Iterable[int], num_versions: int = 1,
                    versions: Iterable[int] = ()) -> list[int]:
    """The versions a policy loads, given the versions present on disk (ascending).

    This is TF Serving's evaluation (file_system_storage_path_source.cc): ``latest`` takes the
    newest ``max(num_versions, 1)``; ``all`` takes every version; ``specific`` takes the listed
    versions that exist (a listed version missing on disk is only logged by the server).
    """
    disk = sorted(set(on_disk))
    if policy == "all":
        return disk
    if policy == "specific":
        return sorted(set(versions) & set(disk))
    n = max(int(num_versions), 1)
    return disk[-n:] if disk else []


@dataclass(frozen=True)
class ModelEntry:
    """One ``model_config_list.config`` entry, reduced to what serving needs."""

    name: str
    base_path: str
    policy: str = "latest"  # latest | all | specific
    num_versions: int = 1
    versions: tuple[int, ...] = ()
    labels: tuple[tuple[str, int], ...] = ()

    @classmethod
    def from_proto(cls, c: Any) -> ModelEntry:
        """A ModelConfig proto -> entry, without validation (see ``entries_from_proto``)."""
        kind = c.model_version_policy.WhichOneof("policy_choice") or "latest"
        num = (c.model_version_policy.latest.num_versions or 1) if kind == "latest" else 1
        versions = tuple(sorted(set(c.model_version_policy.specific.versions))) if kind == "specific" else ()
        labels = tuple((label, int(v)) for label, v in sorted(c.version_labels.items()))
        return cls(c.name, c.base_path, kind, num, versions, labels)

    def aspired(self, on_disk: Iterable[int]) -> list[int]:
        """Versions the policy wants loaded, given the numeric versions present on disk."""
        return served_versions(self.policy, on_disk, self.num_versions, self.versions)

    def version_paths(self, warn: Callable[[str], None] | None = None) -> dict[int, Path]:
        """Version -> directory under the base path, by TF Serving's naming rule."""
        return layout.version_paths(self.base_path, warn)

    def on_disk(self) -> list[int]:
        return sorted(self.version_paths())


def parse_config_proto(text: str, source: str = "models.config",
                       fix: str = "fix the syntax") -> Any:
    """Text -> ``ModelServerConfig`` with the official proto class; a ConfigError names ``source``."""
    from google.protobuf import text_format

    msg = _pb2().ModelServerConfig()
    try:
        text_format.Parse(text, msg)
    except text_format.ParseError as e:
        raise ConfigError(f"{source}: not a ModelServerConfig text proto ({e}): {fix}") from None
    return msg


def parse_model_server_config(text: str, source: str = "models.config") -> list[ModelEntry]:
    """Parse a ``tensorflow.serving.ModelServerConfig`` text proto with the official proto class
    and apply the checks ``tensorflow_model_server`` makes; errors name ``source``."""
    return entries_from_proto(parse_config_proto(text, source), source)


def _check_entry(c: Any, source: str) -> None:
    if not c.name:
        raise ConfigError(f"{source}: a config entry has no name: add name: \"...\"")
    if not c.base_path or not os.path.isabs(c.base_path):
        raise ConfigError(
            f"{source}: expected model {c.name} to have an absolute path; got "
            f"base_path={c.base_path!r}: TF Serving requires absolute paths"
        )
    if c.model_platform not in ("tensorflow",):
        raise ConfigError(
            f"{source}: model {c.name} has model_platform {c.model_platform!r}: "
            "set model_platform: \"tensorflow\""
        )
    policy = c.model_version_policy
    if policy.WhichOneof("policy_choice") == "specific" and not policy.specific.versions:
        raise ConfigError(
            f"{source}: model {c.name} has a specific version policy with no versions: "
            "list them as specific { versions: N }"
        )
    for label in c.version_labels:
        if not LABEL_RE.match(label):
            raise ConfigError(
                f"{source}: version label {label!r} of model {c.name} must match "
                "[a-zA-Z0-9_]+: rename it"
            )


def entries_from_proto(msg: Any, source: str = "ModelServerConfig") -> list[ModelEntry]:
    """ModelServerConfig proto -> entries, validated like ServerCore::ValidateConfig."""
    if msg.WhichOneof("config") != "model_config_list":
        raise ConfigError(
            f"{source}: only model_config_list is supported (custom_model_config is not): "
            "list models as model_config_list { config { name: ... base_path: ... } }"
        )
    entries: list[ModelEntry] = []
    seen: set[str] = set()
    for c in msg.model_config_list.config:
        if c.name and c.name in seen:
            raise ConfigError(f"{source}: illegal to list model {c.name} multiple times in config list")
        _check_entry(c, source)
        seen.add(c.name)
        entries.append(ModelEntry.from_proto(c))
    return entries


def read_model_server_config(path: str | os.PathLike) -> list[ModelEntry]:
    """Read and validate a models.config file; unreadable files are the user's to fix (exit 2)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"--model_config_file {p} does not exist: pass an existing models.config") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"--model_config_file {p} cannot be read ({e}): check the file") from None
    return parse_model_server_config(text, str(p))


def model_server_config_text(entries: Iterable[ModelEntry]) -> str:
    """Entries -> ModelServerConfig text (used for the container's rewritten paths and tests)."""
    from google.protobuf import text_format

    msg = _pb2().ModelServerConfig()
    for e in entries:
        c = msg.model_config_list.config.add(name=e.name, base_path=e.base_path,
                                             model_platform="tensorflow")
        if e.policy == "all":
            c.model_version_policy.all.SetInParent()
        elif e.policy == "specific":
            c.model_version_policy.specific.versions.extend(e.versions)
        elif e.num_versions != 1:
            c.model_version_policy.latest.num_versions = e.num_versions
        for label, v in e.labels:
            c.version_labels[label] = v
    return text_format.MessageToString(msg)


def read_models_config(path: str | Path) -> Any:
    """Parse a models.config into the proto (for merging); a ConfigError names the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a ModelServerConfig text proto ({e}); fix or remove it") from None
    return parse_config_proto(text, str(path), "fix or remove it")


def labels_of(msg: Any, name: str) -> dict[str, int] | None:
    """``version_labels`` of model ``name`` in a parsed config; None when it lists no such model."""
    configs = [c for c in msg.model_config_list.config if c.name == name]
    if not configs:
        return None
    out: dict[str, int] = {}
    for c in configs:
        out.update({k: int(v) for k, v in c.version_labels.items()})
    return out


# ---------------------------------------------------------------------------------------------
# python -m builder config


def parse_policy(text: str, flag: str = "--policy") -> tuple[str, list[int]]:
    """``latest:2`` | ``all`` | ``specific:3,4`` (also ``specific:3;4``)."""
    t = text.strip().lower()
    if t == "all":
        return "all", []
    kind, _, arg = t.partition(":")
    nums = [s for s in re.split(r"[,;+ ]", arg) if s]
    try:
        values = [int(s) for s in nums]
    except ValueError:
        values = []
    if kind == "latest" and len(values) == 1 and values[0] > 0:
        return "latest", values
    if kind == "specific" and values and all(v > 0 for v in values):
        return "specific", sorted(set(values))
    raise ConfigError(f"{flag} {text!r}: use latest:N, all, or specific:V1;V2 (e.g. NAME=latest:2)")


def _split_policy_args(policy: object) -> dict[str, str]:
    """``--policy facenet=specific:3,4`` arrives from fire as 'facenet=specific:3' and '4'."""
    out: dict[str, str] = {}
    last = None
    for item in as_list(policy, "--policy"):
        if "=" in item:
            k, v = item.split("=", 1)
            out[k.strip()] = v.strip()
            last = k.strip()
        elif last is not None and item.strip().isdigit():
            out[last] += "," + item.strip()
        else:
            raise ConfigError(f"--policy {item!r}: write NAME=latest:2|all|specific:3,4")
    return out


def _split_labels(label: object) -> dict[str, dict[str, int]]:
    """``--label facenet:stable=3,facenet:canary=4`` -> {facenet: {stable: 3, canary: 4}}."""
    out: dict[str, dict[str, int]] = {}
    for key, value in as_mapping(label, "--label").items():
        name, sep, lab = key.partition(":")
        if not sep or not name or not lab:
            raise ConfigError(f"--label {key}={value}: write NAME:LABEL=VERSION, e.g. facenet:stable=3")
        if not LABEL_RE.match(lab):
            raise ConfigError(f"--label {key}={value}: label {lab!r} must match [a-zA-Z0-9_]+")
        try:
            v = int(value)
        except ValueError:
            raise ConfigError(f"--label {key}={value}: {value!r} is not a version number") from None
        out.setdefault(name, {})[lab] = v
    return out


def build_config(
    repo: str | Path,
    *,
    existing: Any = None,
    base_path: str | None = None,
    policies: dict[str, str] | None = None,
    labels: dict[str, dict[str, int]] | None = None,
    warn: Any = None,
) -> Any:
    """A ModelServerConfig for every model in ``repo``, merged into ``existing``."""
    warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
    repo = Path(repo)
    if not repo.is_dir():
        raise InputError(f"--repo {repo}: no such directory")
    if base_path is not None and not str(base_path).startswith(("/", "gs://", "s3://")):
        raise ConfigError(f"--base_path {base_path}: TF Serving needs absolute base paths, e.g. /models")
    policies = dict(policies or {})
    labels = {k: dict(v) for k, v in (labels or {}).items()}
    cfg = _pb2().ModelServerConfig()
    if existing is not None:
        cfg.CopyFrom(existing)
    entries = {c.name: c for c in cfg.model_config_list.config}
    models = _models_with_versions(repo, warn)
    for name in [*policies, *labels]:
        if name not in models:
            flag = "--policy" if name in policies else "--label"
            raise ConfigError(f"{flag} {name}: no model {name!r} with versions in {repo} "
                              f"(models: {', '.join(models) or 'none'})")
    for name in models:
        on_disk = layout.list_versions(repo / name)
        entry = entries.get(name)
        # What the running server was told before this write (the label-move rule needs it).
        previous_labels = dict(entry.version_labels) if entry is not None else {}
        served_before = ModelEntry.from_proto(entry).aspired(on_disk) if entry is not None else []
        if entry is None:
            entry = cfg.model_config_list.config.add()
            entry.name = name
            entries[name] = entry
        entry.base_path = f"{base_path.rstrip('/')}/{name}" if base_path else str((repo / name).resolve())
        entry.model_platform = "tensorflow"
        if name in policies:
            _set_policy(entry, *parse_policy(policies[name], f"--policy {name}"))
        _check_label_moves(name, labels.get(name, {}), previous_labels, served_before)
        for lab, v in labels.get(name, {}).items():
            entry.version_labels[lab] = v
        _check_versions_exist(entry, repo / name, on_disk)
    return cfg


def _models_with_versions(repo: Path, warn: Callable[[str], None]) -> list[str]:
    """Models of the repository that have at least one version; warn about what TF Serving
    would ignore (non-numeric directories, models without versions, duplicate version names)."""
    models = []
    for name in layout.list_models(repo):
        mdir = repo / name
        for child in sorted(mdir.iterdir()):
            if child.is_dir() and not layout.is_version_name(child.name) and not child.name.startswith("."):
                warn(f"{child}: not a numeric version directory; TF Serving ignores it")
        if layout.version_paths(mdir, warn):
            models.append(name)
        else:
            warn(f"{mdir}: no numeric version directories; not added to the config")
    return models


def _set_policy(entry: Any, kind: str, values: list[int]) -> None:
    entry.ClearField("model_version_policy")
    if kind == "all":
        entry.model_version_policy.all.SetInParent()
    elif kind == "latest":
        entry.model_version_policy.latest.num_versions = values[0]
    else:
        entry.model_version_policy.specific.versions.extend(values)


def _check_versions_exist(entry: Any, mdir: Path, on_disk: list[int]) -> None:
    """Specific versions and labels must name versions on disk that the policy loads (TF Serving
    refuses a label on a version that is not AVAILABLE)."""
    name = entry.name
    have = ", ".join(map(str, on_disk))
    served = ModelEntry.from_proto(entry).aspired(on_disk)
    policy = entry.model_version_policy
    for v in (policy.specific.versions if policy.WhichOneof("policy_choice") == "specific" else []):
        if v not in on_disk:
            raise ConfigError(f"--policy {name}=specific: version {v} does not exist in "
                              f"{mdir} (versions: {have})")
    for lab, v in entry.version_labels.items():
        if v not in on_disk:
            raise ConfigError(f"--label {name}:{lab}={v}: version {v} does not exist in "
                              f"{mdir} (versions: {have})")
        if v not in served:
            raise ConfigError(
                f"--label {name}:{lab}={v}: version {v} is not loaded by the version policy "
                f"(serves {', '.join(map(str, served))}); pass --policy {name}=specific:"
                f"{','.join(map(str, sorted(set(served) | {v})))} or {name}=all"
            )


def _check_label_moves(name: str, requested: dict[str, int], previous: dict[str, int],
                       served_before: list[int]) -> None:
    """Refuse a label move the real server would refuse, with the whole file around it.

    With --allow_version_labels_for_unavailable_models (passed by the image, the manifests and
    the local server) a *new* label may name a version that is still loading, but an existing
    label may only move to an AVAILABLE version (ServerCore::UpdateModelVersionLabelMap,
    tensorflow_serving/model_servers/server_core.cc), and a refused label fails the whole reload,
    version-policy change included. A version the current config does not load cannot be
    AVAILABLE: moving a label onto it is the second step of a two-step roll-out."""
    for lab, v in sorted(requested.items()):
        if lab in previous and previous[lab] != v and v not in served_before:
            raise ConfigError(
                f"--label {name}:{lab}={v}: moves label {lab!r} from version {previous[lab]} to version "
                f"{v}, which the current config does not load yet; TF Serving refuses to move a label "
                "to a version that is not AVAILABLE and would reject the whole file. Roll out in two "
                f"steps: run config without this --label (version {v} loads), then again with it once "
                f"GET /v1/models/{name}/versions/{v} reports AVAILABLE")


def config_text(cfg: Any) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(cfg)


def write_models_config(cfg: Any, out: str | Path) -> Path:
    """Check by parsing the text back with the official proto, then replace atomically."""
    from google.protobuf import text_format

    text = config_text(cfg)
    check = _pb2().ModelServerConfig()
    text_format.Parse(text, check)
    if check != cfg:
        raise RuntimeError("models.config does not round-trip through ModelServerConfig")
    layout.atomic_write_text(out, text)
    return Path(out)


def repo_artifacts(repo: Path, cfg: Any) -> list[tuple[str, int, dict]]:
    """(model, version, build_info) for every served version in the repo."""
    out = []
    for entry in cfg.model_config_list.config:
        paths = layout.version_paths(repo / entry.name)
        for v in ModelEntry.from_proto(entry).aspired(paths):
            info = artifact.read_build_info(paths[v]) or {}
            out.append((entry.name, v, info))
    return out


def check_image(repo: Path, cfg: Any, image: str) -> None:
    """The compatibility gate: refuse TRT artefacts in images that cannot load them."""
    from builder.config import compat

    for name, v, info in repo_artifacts(repo, cfg):
        vdir = layout.version_dir(repo, name, v)
        graphs = artifact.graph_defs(vdir)
        has_trt = info.get("optimizer") == "tftrt" or any(compat.trt_ops(gd) for gd in graphs)
        missing = set().union(*(compat.serving_missing_ops(gd) for gd in graphs)) if graphs else set()
        trt_version = (info.get("tensorrt") or {}).get("loaded_version")
        problem = compat.image_problem(has_trt, image, missing_ops=sorted(missing), tensorrt_version=trt_version,
                                       bf16=compat.bf16_mode(info))  # bf16 hook (issue 12)
        if problem:
            raise CompatibilityError(f"--image: {name} version {v}: {problem}")


def config_command(
    repo: str = "",
    out: str | None = None,
    base_path: str | None = None,
    policy: Any = None,
    label: Any = None,
    image: str | None = None,
    companions: bool = True,
    poll_wait_seconds: int = 60,
) -> None:
    """Write models.config (ModelServerConfig) for every model in REPO, merged with an existing one.

    Example: python -m builder config --repo model_repo --base_path /models
             --policy facenet=specific:3,4 --label facenet:stable=3,facenet:canary=4

    Args:
      repo: Model repository (REPO/NAME/VERSION).
      out: Config file to write/merge; default REPO/models.config.
      base_path: Where the server sees the repository (e.g. /models in a container); default
        the repository's absolute path on this machine.
      policy: Version policy per model: NAME=latest:2 | NAME=all | NAME=specific:3,4.
      label: Version labels: NAME:LABEL=VERSION (comma separated). Labels must point at versions
        that exist and that the policy loads; moving an existing label to a version the current
        config does not load yet is refused (roll out in two steps, see README "Labels").
      image: Serving image the config is for (e.g. tensorflow/serving:2.17.0-gpu); refuses
        TF-TRT artefacts with CPU or >=2.18 images.
      companions: Also write batching_parameters.txt and monitoring.config beside the config.
      poll_wait_seconds: Suggested --model_config_file_poll_wait_seconds printed in the run hint.
    """
    if not repo:
        raise InputError("--repo is required: the model repository directory")
    repo_p = Path(repo)
    out_p = Path(out) if out else repo_p / "models.config"
    existing = read_models_config(out_p) if out_p.exists() else None
    cfg = build_config(repo_p, existing=existing, base_path=base_path,
                       policies=_split_policy_args(policy), labels=_split_labels(label))
    if image:
        check_image(repo_p, cfg, str(image))
    written = [write_models_config(cfg, out_p)]
    tuned = None  # batching: a file measured by `tune` wins over the defaults
    if companions:
        from builder.config import companions as companion_files

        sizes = sorted({b for _, _, info in repo_artifacts(repo_p, cfg) for b in info.get("batch_sizes", [])})
        tuned = companion_files.find_tuned(repo_p, [c.name for c in cfg.model_config_list.config])  # batching
        result = companion_files.write_companions(out_p.parent, sizes or [1, 8, 100], tuned=tuned) or []
        written += list(result.values() if isinstance(result, dict) else result)
    n = len(cfg.model_config_list.config)
    print(f"wrote {out_p} ({n} model{'s' if n != 1 else ''})")
    for p in written[1:]:
        print(f"wrote {p}")
    if tuned is not None:  # batching
        print(tuned.note)
    from builder.config import compat  # bf16 hook (issue 12): server-wide --mixed_precision

    extra, notes = compat.mixed_precision_advice(repo_artifacts(repo_p, cfg), image)
    for line in notes:
        print(line)
    print(f"serve it: tensorflow_model_server --model_config_file={out_p.resolve()} "
          f"--model_config_file_poll_wait_seconds={poll_wait_seconds} --rest_api_port=8501"
          + "".join(f" {f}" for f in extra))
