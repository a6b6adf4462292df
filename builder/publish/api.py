"""``publish`` / ``pull`` / ``verify``: move a parity-checked version to where a fleet serves it.

The contract is "nothing half-published, ever": a polling TF Serving sees the old state or the
complete new version. How each kind of target guarantees that is in ``builder.publish.targets.store``
(filesystem and object stores) and ``builder.publish.targets.oci`` (OCI registries).

Before anything is copied, publish writes ``assets.extra/manifest.json`` (sha256 + size of every
file) into the LOCAL version too (atomically; or checks the one already there), so the source
repository, every published copy and every pulled copy carry the same record and ``verify`` works
anywhere. Re-publishing identical content is a no-op success; a target that holds a different
version under the same number is never overwritten.

The public API for other modules (``deploy``) is :func:`publish` / :func:`pull` / :func:`verify`,
which return results instead of printing; the ``*_command`` functions are the CLI.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from builder.core import layout, log
from builder.core.errors import InputError, PublishError
from builder.core.layout import validate_model_name
from builder.options import as_int
from builder.publish.manifest import (
    LocalVersion,
    Manifest,
    ensure_local_manifest,
    labelled_versions,
    parity_passed,
    plan_retention,
    select_version,
)
from builder.publish.targets.store import LocalTarget, Target, VersionRaced, open_target, test_pause

Log = Callable[[str], None]
_LOG = log.get(__name__)


@dataclass
class PublishResult:
    """What happened: ``action`` is published / unchanged / dry-run."""

    target: str
    name: str
    version: int
    action: str
    files: int
    bytes: int
    content_digest: str
    deleted: list[int] = field(default_factory=list)
    seconds: float = 0.0
    oci_digest: str = ""


def publish(repo: str, name: str, to: str, version: object = "latest", keep: object = 0,
            models_config: str = "", dry_run: bool = False, plain_http: bool = False,
            log: Log | None = None) -> PublishResult:
    """Publish one parity-passed version of ``repo/name`` to ``to``; see the module docstring.

    Steps: check the flags and pick the version (parity must have passed), read the labels
    that protect versions from retention, write/check the local manifest, copy to the target
    (OCI registry or model base path), then apply ``--keep`` retention. Progress goes to
    ``log`` (default: the builder log channel on stderr).
    """
    t0 = time.perf_counter()
    say = log or _LOG.info
    keep_n = as_int(keep, "--keep", example=3)
    if keep_n < 0:
        raise InputError(f"--keep {keep_n} must be 0 (keep everything) or a positive count")
    lv = select_version(repo, name, version)
    labels = labelled_versions(models_config, name)
    manifest = ensure_local_manifest(lv.path, write=not dry_run)
    if not to:
        raise InputError("--to is required: a path, file://, s3://, gs:// model base path root, "
                         "or oci://HOST/REPOSITORY[:TAG]")
    from builder.publish.targets import oci

    protected = set(labels.values()) | {lv.version}
    if oci.is_oci(to):
        result = _publish_oci(lv, manifest, to, plain_http, dry_run)
        if keep_n:
            result.deleted = _retention_oci(result.target, plain_http, name, keep_n, protected,
                                            dry_run, say)
    else:
        target = open_target(to)
        result = _publish_store(target, lv, manifest, dry_run, say)
        if keep_n:
            result.deleted = _retention_store(target, lv, keep_n, protected, labels, dry_run, say)
    result.seconds = time.perf_counter() - t0
    return result


def _publish_oci(lv: LocalVersion, manifest: Manifest, to: str, plain_http: bool,
                 dry_run: bool) -> PublishResult:
    from builder.publish.targets import oci

    res = oci.publish(lv.path, lv.name, lv.version, lv.build_info, manifest, to,
                      plain_http=plain_http, dry_run=dry_run)
    return PublishResult(str(res.ref), lv.name, lv.version, res.action, len(manifest.files),
                         manifest.total_bytes, manifest.digest(), oci_digest=res.manifest_digest)


def _retention_oci(ref_text: str, plain_http: bool, name: str, keep_n: int, protected: set[int],
                   dry_run: bool, say: Log) -> list[int]:
    """Delete NAME-VERSION tags beyond the newest ``keep_n`` (never a protected version)."""
    from builder.publish.targets import oci

    reg = oci.Registry(oci.parse_ref(ref_text, "--to"), plain_http)
    tagged = oci.tag_versions(reg, name)
    doomed = plan_retention(sorted(tagged), keep_n, protected)
    for v in doomed:
        if not dry_run:
            reg.delete_tag(tagged[v])
        say(f"  {'would delete' if dry_run else 'deleted'} tag {tagged[v]} (retention "
            f"--keep {keep_n})")
    return doomed


def _publish_store(target: Target, lv: LocalVersion, manifest: Manifest, dry_run: bool,
                   say: Log) -> PublishResult:
    """Copy to a model base path; an identical version already there is a no-op, a different
    one is refused, and losing a race to another publisher is judged the same way."""
    name, version = lv.name, lv.version
    where = target.version_url(name, version)
    action = "dry-run" if dry_run else "published"
    if target.state(name, version) == "complete":
        action = _compare_existing(target, name, version, manifest, where)
        if not dry_run:
            target.cleanup_own_staging(name, version, manifest)
    elif not dry_run:
        test_pause("publish-start")
        try:
            target.publish(lv.path, name, version, manifest, say)
        except VersionRaced:
            action = _compare_existing(target, name, version, manifest, where)
    return PublishResult(where, name, version, action, len(manifest.files), manifest.total_bytes,
                         manifest.digest())


def _retention_store(target: Target, lv: LocalVersion, keep_n: int, protected: set[int],
                     labels: dict[str, int], dry_run: bool, say: Log) -> list[int]:
    """Delete versions beyond the newest ``keep_n`` (never a protected one), and the remains of
    interrupted publishes/deletes older than the version just published."""
    name = lv.name
    versions = target.versions(name)
    missing = sorted(set(labels.values()) - set(versions) - {lv.version})
    if missing:
        say(f"  note: labelled versions {missing} are not at {target.url}/{name}")
    doomed = plan_retention(versions, keep_n, protected)
    for v in doomed:
        if not dry_run:
            target.delete(name, v)
        say(f"  {'would delete' if dry_run else 'deleted'} version {v} (retention --keep "
            f"{keep_n})")
    # object stores: leftovers of an interrupted delete (no saved_model.pb, never loadable)
    for v in target.partial_versions(name):
        if v < lv.version and v not in protected:
            if not dry_run:
                target.delete(name, v)
            say(f"  {'would remove' if dry_run else 'removed'} the remains of version {v} "
                f"(an interrupted publish or delete)")
            doomed.append(v)
    return sorted(doomed)


def _compare_existing(target: Target, name: str, version: int, manifest: Manifest, where: str) -> str:
    existing = target.existing_manifest(name, version)
    if existing.files == manifest.files:
        return "unchanged"
    raise PublishError(f"{where} already exists with different content (content digest "
                       f"{existing.digest()[:19]} vs {manifest.digest()[:19]}): refusing to "
                       f"overwrite a published version; export and publish a new version")


@dataclass
class PullResult:
    path: Path
    name: str
    version: int
    action: str  # pulled | unchanged
    files: int
    bytes: int
    digest: str


def pull(from_: str, repo: str, name: str = "", version: object = "",
         plain_http: bool = False, max_unpacked_bytes: object = None) -> PullResult:
    """Fetch an OCI model artefact into ``repo/NAME/VERSION`` (staged, checked, renamed).

    Unpacking stops as soon as the files exceed what the artefact declares, or
    ``max_unpacked_bytes`` (default: a few times the compressed layer; see
    ``oci.unpack_limit``); the staging directory is removed on any failure.
    """
    from builder.publish.targets import oci

    if not from_ or not oci.is_oci(from_):
        raise InputError(f"--from_ {from_!r}: give an oci://HOST/REPOSITORY:TAG (or @sha256:...) "
                         f"reference")
    if not repo:
        raise InputError("--repo is required: the local model repository to pull into")
    if name:
        validate_model_name(name, "--name")
    limit = None if max_unpacked_bytes in (None, "", 0) else \
        as_int(max_unpacked_bytes, "--max_unpacked_bytes", minimum=1, example="2000000000")
    ref = oci.parse_ref(from_, "--from_")
    want_version = layout.parse_version(version) if str(version or "").strip() else None
    if not ref.tag and not ref.digest:
        if not (name and want_version):
            raise InputError(f"--from_ {from_} has no tag: add :TAG, or pass --name and --version "
                             f"to use the default tag NAME-VERSION")
        ref.tag = oci.default_tag(name, want_version)
    root = Path(repo)
    root.mkdir(parents=True, exist_ok=True)
    layout.clean_stale_staging(root)
    staging = root / f"{layout.STAGING_PREFIX}pull-{os.getpid()}-{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        art = oci.fetch(ref, staging, plain_http, max_unpacked_bytes=limit)
        if not parity_passed(art.build_info):
            raise PublishError(f"{ref}: its build_info does not record a passed parity check: "
                               f"refusing to install it into a serving repository")
        model = name or art.name
        try:
            validate_model_name(model, "--name")
        except InputError:
            raise PublishError(f"{ref} does not name its model: pass --name") from None
        v = want_version or art.version
        final = layout.version_dir(root, model, v)
        test_pause("pull-extracted")
        action = _install(staging, final, art.manifest, root, model, v)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return PullResult(final, model, v, action, len(art.manifest.files), art.manifest.total_bytes,
                      art.digest)


def _install(staging: Path, final: Path, manifest: Manifest, root: Path, model: str,
             version: int) -> str:
    """Rename the checked staging dir into place; an identical version already there is a
    no-op (``unchanged``), a different one is refused."""
    if final.exists():
        old = LocalTarget(root).existing_manifest(model, version)
        if old.files != manifest.files:
            raise PublishError(f"{final} already exists with different content: refusing to "
                               f"overwrite it; pull into another --repo or --version")
        return "unchanged"
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(staging, final)
    except OSError:
        if final.exists():
            raise PublishError(f"{final} appeared while pulling: rerun pull to compare it") from None
        raise
    return "pulled"


def verify(path: str, plain_http: bool = False) -> Manifest:
    """Check a published version (TARGET/NAME/VERSION or an oci:// reference) byte for byte."""
    from builder.publish.targets import oci

    if not path:
        raise InputError("give the version to verify: TARGET/NAME/VERSION (path, file://, s3://, "
                         "gs://) or oci://HOST/REPOSITORY:TAG")
    if oci.is_oci(path):
        ref = oci.parse_ref(path, "verify")
        if not ref.tag and not ref.digest:
            raise InputError(f"verify {path}: add the :TAG or @sha256:... to check")
        import tempfile

        with tempfile.TemporaryDirectory(prefix="tfs-builder-verify-") as td:
            return oci.fetch(ref, Path(td) / "v", plain_http).manifest
    trimmed = path.rstrip("/")
    if "://" in trimmed and not trimmed.startswith("file://"):
        head, _, ver = trimmed.rpartition("/")
        root, _, name = head.rpartition("/")
        bad = "://" not in root or root.endswith("://")
    else:
        p = Path(trimmed[len("file://"):] if trimmed.startswith("file://") else trimmed)
        p = p.expanduser().resolve()
        if not p.is_dir():
            raise PublishError(f"{trimmed} does not exist: give TARGET/NAME/VERSION")
        ver, name, root = p.name, p.parent.name, str(p.parent.parent)
        bad = False
    if bad or not layout.is_version_name(ver) or not name:
        raise InputError(f"verify {path}: expected TARGET/NAME/VERSION with a numeric VERSION, "
                         f"e.g. s3://bucket/models/facenet/3")
    target = open_target(root, "verify")
    if target.state(name, int(ver)) == "absent":
        raise PublishError(f"{trimmed} does not exist: give TARGET/NAME/VERSION")
    return target.verify(name, int(ver))


# --------------------------------------------------------------------------- CLI


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n} bytes"


def publish_command(repo: str = "", name: str = "", to: str = "", version: str = "latest",
                    keep: int = 0, models_config: str = "", dry_run: bool = False,
                    plain_http: bool = False) -> None:
    """Publish one parity-passed version to a model base path or an OCI registry, atomically.

    Writes assets.extra/manifest.json (sha256 per file) into the local version first (or checks
    the one there), then copies it so a polling TF Serving never sees a partial version.
    Re-publishing identical content is a no-op; a different version under the same number at the
    target is refused. Credentials come from the environment, never from flags: AWS_ENDPOINT_URL,
    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (s3), GOOGLE_APPLICATION_CREDENTIALS (gs),
    ORAS_USERNAME/ORAS_PASSWORD or docker login (oci).

    Args:
      repo: Local model repository (REPO/NAME/VERSION/...).
      name: Model name (directory under --repo).
      to: TARGET, a path, file://, s3://BUCKET/PREFIX, gs://BUCKET/PREFIX or oci://HOST[:PORT]/REPO[:TAG].
        A path or bucket prefix is a model base path root that receives TARGET/NAME/VERSION/;
        an OCI tag defaults to NAME-VERSION. s3, gs and oci need the pip extras
        tfs-builder[s3], tfs-builder[gcs] and tfs-builder[oci].
      version: Version to publish, default 'latest' (the newest; refused unless its build_info
        records a passed parity check).
      keep: After publishing keep only the newest N versions at the target (tags NAME-N on oci);
        0 keeps all. Never deletes the published version or one a label points to.
      models_config: models.config whose version_labels for --name protect versions from --keep.
      dry_run: Print what would happen; write nothing (not even the local manifest).
      plain_http: oci only: use HTTP instead of HTTPS (automatic for localhost/127.0.0.1).
    """
    r = publish(repo, name, to, version, keep, models_config, dry_run, plain_http)
    verb = {"published": "published", "unchanged": "already published (identical content, "
            "nothing written)", "dry-run": "would publish"}[r.action]
    print(f"{verb}: {name} version {r.version} -> {r.target} ({r.files} files, {_mb(r.bytes)}, "
          f"content {r.content_digest[:19]}...)")
    if r.oci_digest:
        print(f"  manifest digest: {r.oci_digest}")
    if r.action == "published":
        print(f"  verify with: python -m builder verify {r.target}")
    print(f"  took {r.seconds:.1f}s")


def pull_command(from_: str = "", repo: str = "", name: str = "", version: str = "",
                 plain_http: bool = False, max_unpacked_bytes: int = 0) -> None:
    """Pull a model published with `publish --to oci://...` into REPO/NAME/VERSION, verified.

    Every blob digest, the manifest digest and every file's sha256 are checked; archive entries
    that are absolute, contain '..', or are links are refused; the version is staged and renamed
    into place, so a polling TF Serving never sees it half-written. Pass the reference as the
    first argument or as --from_ (fire cannot take a flag named --from).

    Args:
      from_: oci://HOST[:PORT]/REPOSITORY:TAG or ...@sha256:DIGEST (positional or --from_).
      repo: Local model repository to pull into.
      name: Model name to install as (default: the name recorded in the artefact).
      version: Version number to install as (default: the one recorded in the artefact). With
        --name, also selects the default tag NAME-VERSION when the reference has no tag.
      plain_http: Use HTTP instead of HTTPS (automatic for localhost/127.0.0.1).
      max_unpacked_bytes: Stop (and remove everything) once the unpacked files exceed this many
        bytes. Default 0: what the artefact declares, capped at 8x its compressed layer (at
        least 64 MiB), so a small, highly compressible layer cannot fill the disk.
    """
    r = pull(from_, repo, name, version, plain_http, max_unpacked_bytes)
    verb = "pulled" if r.action == "pulled" else "already present (identical content)"
    print(f"{verb}: {r.name} version {r.version} -> {r.path} ({r.files} files, {_mb(r.bytes)}, "
          f"manifest {r.digest[:19]}...)")


def verify_command(path: str = "", plain_http: bool = False) -> None:
    """Check a published version against its assets.extra/manifest.json (sha256 of every file).

    Exits 2 naming the first mismatching files if anything is missing, extra, or different.

    Args:
      path: TARGET/NAME/VERSION (a path, file://, s3://, gs://) or oci://HOST/REPOSITORY:TAG.
      plain_http: oci only: use HTTP instead of HTTPS (automatic for localhost/127.0.0.1).
    """
    m = verify(path, plain_http)
    print(f"verified: {path} ({len(m.files)} files, {_mb(m.total_bytes)}, every sha256 matches; "
          f"content {m.digest()[:19]}...)")


__all__ = ["publish", "pull", "verify", "publish_command", "pull_command", "verify_command",
           "PublishResult", "PullResult"]
