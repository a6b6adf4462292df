"""What a published version is made of: its file manifest, its build_info, and label protection.

Every published copy carries ``assets.extra/manifest.json`` = sha256 and size of every file
except the manifest itself, so any copy (a disk, a bucket, an OCI artefact pulled months later)
can be checked against what was exported, and so "is the target the same version as mine?" has a
cheap, exact answer (compare manifests, not bytes).

Nothing here imports TensorFlow: the serving protos used for labels are plain protobuf modules.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from builder.core import artifact, layout
from builder.core.errors import ConfigError, InputError, PublishError

MANIFEST_FORMAT = "tfs-builder-manifest/1"
MANIFEST_REL = artifact.MANIFEST_FILE.as_posix()
BUILD_INFO_REL = artifact.BUILD_INFO_FILE.as_posix()
SAVED_MODEL_REL = artifact.SAVED_MODEL_FILE
_CHUNK = 1 << 20


@dataclass
class Manifest:
    """sha256 + size per file (relative posix path), plus the directories (some may be empty)."""

    files: dict[str, dict[str, Any]]
    dirs: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(int(f["bytes"]) for f in self.files.values())

    def digest(self) -> str:
        """One sha256 over the file table: equal digests mean equal content, whatever the path."""
        canon = json.dumps(self.files, sort_keys=True, separators=(",", ":"))
        return "sha256:" + hashlib.sha256(canon.encode()).hexdigest()

    def to_json(self) -> str:
        return json.dumps(
            {"format": MANIFEST_FORMAT, "algorithm": "sha256", "content_digest": self.digest(),
             "total_bytes": self.total_bytes, "dirs": sorted(self.dirs), "files": self.files},
            indent=1, sort_keys=True,
        ) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, where: str) -> Manifest:
        """Parse a manifest.json; ``where`` names the file in the error a user sees."""
        try:
            data = json.loads(text)
            files = data["files"]
            if data.get("format") != MANIFEST_FORMAT or not isinstance(files, dict):
                raise ValueError("unknown format")
            for rel, f in files.items():
                _check_rel(rel)
                if not isinstance(f.get("sha256"), str) or len(f["sha256"]) != 64:
                    raise ValueError(f"bad sha256 for {rel}")
                if not isinstance(f.get("bytes"), int) or f["bytes"] < 0:
                    raise ValueError(f"bad size for {rel}")
            dirs = [d for d in data.get("dirs", []) if _check_rel(d)]
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise PublishError(f"{where} is not a valid {MANIFEST_FORMAT} manifest ({e}): "
                               f"re-publish the version to rewrite it") from None
        return cls(files={k: {"sha256": v["sha256"], "bytes": v["bytes"]} for k, v in files.items()},
                   dirs=dirs)


def _check_rel(rel: str) -> bool:
    """Manifest paths are relative, '/'-separated and never climb out: they are used as paths."""
    parts = rel.split("/")
    if not rel or rel.startswith("/") or "\\" in rel or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"unsafe path {rel!r}")
    return True


def sha256_stream(f: BinaryIO) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    while True:
        chunk = f.read(_CHUNK)
        if not chunk:
            break
        h.update(chunk)
        n += len(chunk)
    return h.hexdigest(), n


def compute_manifest(version_path: str | os.PathLike) -> Manifest:
    """Hash every regular file below a local version dir (except manifest.json).

    Links and special files are refused: a published copy must not depend on, or leak, anything
    outside the version directory.
    """
    root = Path(version_path)
    files: dict[str, dict[str, Any]] = {}
    dirs: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for d in dirnames:
            p = Path(dirpath) / d
            if p.is_symlink():
                raise PublishError(f"{p} is a symlink: a version to publish may hold regular "
                                   f"files and directories only; replace it with a copy")
            dirs.append(p.relative_to(root).as_posix())
        for fn in sorted(filenames):
            p = Path(dirpath) / fn
            rel = p.relative_to(root).as_posix()
            if p.is_symlink() or not p.is_file():
                raise PublishError(f"{p} is a symlink or special file: a version to publish may "
                                   f"hold regular files only; replace it with a copy")
            if rel == MANIFEST_REL or _is_temp_name(fn):
                continue
            with open(p, "rb") as f:
                digest, size = sha256_stream(f)
            files[rel] = {"sha256": digest, "bytes": size}
    return Manifest(files=files, dirs=dirs)


def _is_temp_name(fn: str) -> bool:
    # paths.atomic_write_text's temp files: a crash can leave one; it is never part of a version
    return fn.startswith(".") and ".tmp-" in fn


def diff_manifest(expected: Manifest, found: dict[str, int], where: str) -> list[str]:
    """Problems visible from a listing alone (missing/extra files, wrong sizes)."""
    problems = []
    for rel, f in sorted(expected.files.items()):
        if rel not in found:
            problems.append(f"{where}/{rel} is missing")
        elif found[rel] != f["bytes"]:
            problems.append(f"{where}/{rel} has {found[rel]} bytes, manifest says {f['bytes']}")
    for rel in sorted(set(found) - set(expected.files) - {MANIFEST_REL}):
        problems.append(f"{where}/{rel} is not in the manifest")
    return problems


def ensure_local_manifest(version_path: Path, write: bool = True) -> Manifest:
    """The manifest of a local version, written into it if absent (publish does this first).

    Writing it locally (atomically, inside assets.extra which TF Serving ignores) means the source
    repository carries the same record as every copy. If one exists already the files are checked
    against it, so a version edited after export is refused instead of being published.
    """
    fresh = compute_manifest(version_path)
    mpath = version_path / MANIFEST_REL
    if mpath.is_file():
        old = Manifest.from_json(mpath.read_bytes(), str(mpath))
        if old.files != fresh.files:
            changed = sorted(set(old.files) ^ set(fresh.files)) or sorted(
                k for k in old.files if old.files[k] != fresh.files.get(k))
            raise PublishError(
                f"{version_path} no longer matches its {MANIFEST_REL} (changed: "
                f"{', '.join(changed[:5])}): versions are immutable; export a new version "
                f"instead of editing this one")
        return old
    if SAVED_MODEL_REL not in fresh.files:
        raise PublishError(f"{version_path}/{SAVED_MODEL_REL} is missing: this is not a SavedModel "
                           f"version; export it with python -m builder export")
    if write:
        layout.atomic_write_text(mpath, fresh.to_json())
    return fresh


@dataclass
class LocalVersion:
    """A version in the local repository that is about to be published."""

    path: Path
    name: str
    version: int
    build_info: dict[str, Any]


def load_build_info(version_path: Path) -> dict[str, Any]:
    p = version_path / BUILD_INFO_REL
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PublishError(f"{p} is missing: only versions made by python -m builder export "
                           f"(which records parity) can be published") from None
    except (OSError, ValueError) as e:
        raise PublishError(f"{p} is unreadable ({e}): re-export the version") from None
    if not isinstance(data, dict):
        raise PublishError(f"{p} is not a JSON object: re-export the version")
    return data


def parity_passed(info: dict[str, Any]) -> bool:
    parity = info.get("parity")
    return isinstance(parity, dict) and parity.get("passed") is True


def select_version(repo: str, name: str, version: object) -> LocalVersion:
    """The version to publish: ``latest`` is the newest numeric version, and it must have passed
    parity. An older passing version is never picked silently: a CI that publishes "latest" and
    gets last week's model is worse than one that fails."""
    if not repo:
        raise InputError("--repo is required: the local model repository, e.g. --repo ./models")
    if not name:
        raise InputError("--name is required: the model name, a directory under --repo")
    model_dir = Path(repo) / name
    versions = layout.list_versions(model_dir)
    if not versions:
        raise InputError(f"{model_dir} has no numeric version directories: export one with "
                         f"python -m builder export, or fix --repo/--name")
    if version is None or (isinstance(version, str) and version.strip().lower() in ("", "latest")):
        v = versions[-1]
    else:
        v = layout.parse_version(version)
        if v is None or v not in versions:
            raise InputError(f"--version {version}: {model_dir} has versions "
                             f"{', '.join(map(str, versions))}; pick one of them or 'latest'")
    path = layout.version_dir(repo, name, v)
    info = load_build_info(path)
    if not parity_passed(info):
        passing = [x for x in versions if x != v and _quiet_parity(layout.version_dir(repo, name, x))]
        hint = f"; version {passing[-1]} passed: --version {passing[-1]}" if passing else ""
        raise PublishError(f"{path / BUILD_INFO_REL} does not record a passed parity check "
                           f"(parity.passed is not true): refusing to publish it{hint}")
    return LocalVersion(path=path, name=name, version=v, build_info=info)


def _quiet_parity(p: Path) -> bool:
    try:
        return parity_passed(load_build_info(p))
    except PublishError:
        return False


def labelled_versions(models_config: str, name: str) -> dict[str, int]:
    """``version_labels`` of model ``name`` in a models.config (ModelServerConfig text proto).

    Retention never deletes these: TF Serving refuses a config whose label points at a version
    that is not available, so deleting one would break the next config reload.
    """
    if not models_config:
        return {}
    from builder.config.models_config import labels_of, parse_config_proto

    try:
        text = Path(models_config).read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(f"--models_config {models_config}: cannot read it ({e.strerror or e})") from None
    cfg = parse_config_proto(text, f"--models_config {models_config}", "pass the models.config TF Serving reads")
    out = labels_of(cfg, name)
    if out is None:
        names = ", ".join(c.name for c in cfg.model_config_list.config) or "none"
        raise ConfigError(f"--models_config {models_config} has no model named {name!r} (it has: "
                          f"{names}): pass the config that serves this model, so its labels are "
                          f"protected")
    return out


def plan_retention(versions: list[int], keep: int, protected: set[int]) -> list[int]:
    """Versions to delete: all but the newest ``keep`` and the protected ones (oldest first)."""
    if keep <= 0:
        return []
    newest = set(sorted(versions)[-keep:])
    return [v for v in sorted(versions) if v not in newest and v not in protected]


def source_digest(info: dict[str, Any]) -> str:
    """One digest of the source files the version was exported from (content only, no paths:
    the same checkpoint exported on two machines gets the same digest)."""
    files = (info.get("source") or {}).get("files") or []
    sums = sorted(f.get("sha256", "") for f in files if isinstance(f, dict))
    if not sums:
        return ""
    return "sha256:" + hashlib.sha256("\n".join(sums).encode()).hexdigest()
