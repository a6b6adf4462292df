"""``python -m builder config``: the ModelServerConfig text proto for a repository.

The file is merged with an existing one (entries for other models survive), written atomically
(a polling server reads the old or the new file, never half of one), and parsed back with the
official ``model_server_config_pb2`` before it replaces anything.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from builder.core import artifact, layout
from builder.core.errors import CompatibilityError, ConfigError, InputError
from builder.options import as_list, as_mapping

_LABEL_RE = re.compile(r"^[a-zA-Z0-9_]+$")


def _pb2():
    from tensorflow_serving.config import model_server_config_pb2

    return model_server_config_pb2


def read_models_config(path: str | Path) -> Any:
    """Parse a models.config; a ConfigError names the file when it does not parse."""
    from google.protobuf import text_format

    cfg = _pb2().ModelServerConfig()
    try:
        text_format.Parse(Path(path).read_text(encoding="utf-8"), cfg)
    except (text_format.ParseError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not a ModelServerConfig text proto ({e}); fix or remove it") from None
    return cfg


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


def _policy_versions(kind: str, values: list[int], on_disk: list[int]) -> list[int]:
    if kind == "all":
        return on_disk
    if kind == "latest":
        return on_disk[-values[0]:]
    return [v for v in values if v in on_disk]


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
        if not _LABEL_RE.match(lab):
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
    pb2 = _pb2()
    warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
    repo = Path(repo)
    if not repo.is_dir():
        raise InputError(f"--repo {repo}: no such directory")
    if base_path is not None and not str(base_path).startswith(("/", "gs://", "s3://")):
        raise ConfigError(f"--base_path {base_path}: TF Serving needs absolute base paths, e.g. /models")
    policies = dict(policies or {})
    labels = {k: dict(v) for k, v in (labels or {}).items()}
    cfg = pb2.ModelServerConfig()
    if existing is not None:
        cfg.CopyFrom(existing)
    entries = {c.name: c for c in cfg.model_config_list.config}

    models = []
    for name in layout.list_models(repo):
        mdir = repo / name
        for child in sorted(mdir.iterdir()):
            if child.is_dir() and not layout.is_version_name(child.name) and not child.name.startswith("."):
                warn(f"{child}: not a numeric version directory; TF Serving ignores it")
        if layout.list_versions(mdir):
            models.append(name)
        else:
            warn(f"{mdir}: no numeric version directories; not added to the config")
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
        served_before = _served_versions(entry, on_disk) if entry is not None else []
        if entry is None:
            entry = cfg.model_config_list.config.add()
            entry.name = name
            entries[name] = entry
        entry.base_path = f"{base_path.rstrip('/')}/{name}" if base_path else str((repo / name).resolve())
        entry.model_platform = "tensorflow"
        if name in policies:
            kind, values = parse_policy(policies[name], f"--policy {name}")
            entry.ClearField("model_version_policy")
            if kind == "all":
                entry.model_version_policy.all.SetInParent()
            elif kind == "latest":
                entry.model_version_policy.latest.num_versions = values[0]
            else:
                entry.model_version_policy.specific.versions.extend(values)
        served = _served_versions(entry, on_disk)
        for v in (entry.model_version_policy.specific.versions
                  if entry.model_version_policy.WhichOneof("policy_choice") == "specific" else []):
            if v not in on_disk:
                raise ConfigError(f"--policy {name}=specific: version {v} does not exist in "
                                  f"{repo / name} (versions: {', '.join(map(str, on_disk))})")
        _check_label_moves(name, labels.get(name, {}), previous_labels, served_before)
        for lab, v in labels.get(name, {}).items():
            entry.version_labels[lab] = v
        for lab, v in entry.version_labels.items():
            if v not in on_disk:
                raise ConfigError(f"--label {name}:{lab}={v}: version {v} does not exist in "
                                  f"{repo / name} (versions: {', '.join(map(str, on_disk))})")
            if v not in served:
                raise ConfigError(
                    f"--label {name}:{lab}={v}: version {v} is not loaded by the version policy "
                    f"(serves {', '.join(map(str, served))}); pass --policy {name}=specific:"
                    f"{','.join(map(str, sorted(set(served) | {v})))} or {name}=all"
                )
    return cfg


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


def _served_versions(entry: Any, on_disk: list[int]) -> list[int]:
    which = entry.model_version_policy.WhichOneof("policy_choice")
    if which == "all":
        return on_disk
    if which == "specific":
        return _policy_versions("specific", list(entry.model_version_policy.specific.versions), on_disk)
    n = entry.model_version_policy.latest.num_versions if which == "latest" else 1
    return _policy_versions("latest", [max(1, n)], on_disk)


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
        mdir = repo / entry.name
        if not mdir.is_dir():
            continue
        for v in _served_versions(entry, layout.list_versions(mdir)):
            info = artifact.read_build_info(mdir / str(v)) or {}
            out.append((entry.name, v, info))
    return out


def check_image(repo: Path, cfg: Any, image: str) -> None:
    """The compatibility gate: refuse TRT artefacts in images that cannot load them."""
    from builder.config import compat

    for name, v, info in repo_artifacts(repo, cfg):
        vdir = repo / name / str(v)
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
    if companions:
        from builder.config import companions as companion_files

        sizes = sorted({b for _, _, info in repo_artifacts(repo_p, cfg) for b in info.get("batch_sizes", [])})
        result = companion_files.write_companions(out_p.parent, sizes or [1, 8, 100]) or []
        written += list(result.values() if isinstance(result, dict) else result)
    n = len(cfg.model_config_list.config)
    print(f"wrote {out_p} ({n} model{'s' if n != 1 else ''})")
    for p in written[1:]:
        print(f"wrote {p}")
    from builder.config import compat  # bf16 hook (issue 12): server-wide --mixed_precision

    extra, notes = compat.mixed_precision_advice(repo_artifacts(repo_p, cfg), image)
    for line in notes:
        print(line)
    print(f"serve it: tensorflow_model_server --model_config_file={out_p.resolve()} "
          f"--model_config_file_poll_wait_seconds={poll_wait_seconds} --rest_api_port=8501"
          + "".join(f" {f}" for f in extra))
