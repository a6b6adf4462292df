"""Publishing a version to a ``model_base_path`` on a disk or an object store, never half-visible.

TF Serving loads any numeric child of its base path the moment it shows up, with no completeness
check. So:

- On a filesystem (a path or ``file://``) the copy is staged under ``NAME/.staging-*`` (a name the
  server ignores), checked against the manifest, fsynced, and renamed to ``NAME/VERSION`` in one
  atomic ``rename``: a poller sees nothing or the whole version.
- An object store (``s3://``, ``gs://``, through fsspec) cannot rename a prefix. The files are
  uploaded under ``NAME/.staging-VERSION-DIGEST/`` first (the slow part; a kill leaves only
  that non-numeric prefix, and a rerun resumes it), then copied server-side into ``NAME/VERSION/``
  with ``saved_model.pb`` LAST, then every byte is read back and checked. A SavedModel cannot
  be loaded without ``saved_model.pb``, so until that last object lands the prefix is not a
  loadable version; a rerun completes it. Recent TF Serving builds read only local files and GCS
  (``s3://`` left after 2.6), so S3 targets serve fleets that sync a bucket to disk, or other
  servers.

Test hook (for the kill tests only): ``TFS_BUILDER_TEST_PAUSE_AT=<step>`` sleeps at that step for
``TFS_BUILDER_TEST_PAUSE_SECONDS`` (default 30) after printing ``paused at <step>`` on stderr, so a
test can SIGKILL the publisher at a known point. ``TFS_BUILDER_TEST_FILE_DELAY=<seconds>`` sleeps
after each file, so randomly timed kills land mid-copy.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlparse

from builder.core import layout
from builder.core.errors import PublishError
from builder.publish.manifest import (
    MANIFEST_REL,
    SAVED_MODEL_REL,
    Manifest,
    compute_manifest,
    diff_manifest,
    sha256_stream,
)

Log = Callable[[str], None]

# fsspec protocol -> the pip extra that brings its back end
EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}


def test_pause(step: str) -> None:
    """Test-only hook, see the module docstring. A no-op unless the env var names ``step``."""
    wanted = os.environ.get("TFS_BUILDER_TEST_PAUSE_AT", "")
    if wanted and step in wanted.split(","):
        print(f"paused at {step}", file=sys.stderr, flush=True)
        time.sleep(float(os.environ.get("TFS_BUILDER_TEST_PAUSE_SECONDS", "30")))


def _file_delay() -> None:
    d = os.environ.get("TFS_BUILDER_TEST_FILE_DELAY")
    if d:
        time.sleep(float(d))


def upload_order(manifest: Manifest) -> list[str]:
    """Every file, ``saved_model.pb`` last: it is what makes a directory a loadable version."""
    rels = sorted(manifest.files)
    if SAVED_MODEL_REL in manifest.files:
        rels.remove(SAVED_MODEL_REL)
        rels.append(SAVED_MODEL_REL)
    return rels


class Target:
    """A model base path root (``TARGET``) holding ``NAME/VERSION/`` trees."""

    url: str

    def state(self, name: str, version: int) -> str:
        """``absent``, ``complete`` (loadable) or ``partial`` (objects but no saved_model.pb)."""
        raise NotImplementedError

    def versions(self, name: str) -> list[int]:
        """Complete (loadable) versions, ascending."""
        raise NotImplementedError

    def partial_versions(self, name: str) -> list[int]:
        """Numeric prefixes holding objects but no saved_model.pb (interrupted publish/delete)."""
        return []

    def existing_manifest(self, name: str, version: int) -> Manifest:
        """The manifest to compare a re-publish against (computed if the version has none)."""
        raise NotImplementedError

    def published_manifest(self, name: str, version: int) -> Manifest:
        """The manifest.json a published version must carry (verify refuses a version without)."""
        return self.existing_manifest(name, version)

    def list_files(self, name: str, version: int) -> dict[str, int]:
        raise NotImplementedError

    def open(self, name: str, version: int, rel: str) -> BinaryIO:
        raise NotImplementedError

    def publish(self, src: Path, name: str, version: int, manifest: Manifest, log: Log) -> None:
        raise NotImplementedError

    def delete(self, name: str, version: int) -> None:
        raise NotImplementedError

    def cleanup_own_staging(self, name: str, version: int, manifest: Manifest) -> None:
        """Remove what an interrupted identical publish left behind (nothing on a filesystem)."""

    def version_url(self, name: str, version: int) -> str:
        return f"{self.url.rstrip('/')}/{name}/{version}"

    def verify(self, name: str, version: int, manifest: Manifest | None = None) -> Manifest:
        """Read every byte back and compare with the manifest (the published one by default)."""
        where = self.version_url(name, version)
        manifest = manifest or self.published_manifest(name, version)
        found = self.list_files(name, version)
        problems = diff_manifest(manifest, found, where)
        for rel in sorted(manifest.files):
            if rel not in found or found[rel] != manifest.files[rel]["bytes"]:
                continue
            with self.open(name, version, rel) as f:
                digest, _ = sha256_stream(f)
            if digest != manifest.files[rel]["sha256"]:
                problems.append(f"{where}/{rel} has sha256 {digest[:12]}..., manifest says "
                                f"{manifest.files[rel]['sha256'][:12]}...")
        if problems:
            more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
            raise PublishError(f"{where} does not match its manifest: {'; '.join(problems[:3])}"
                               f"{more}; re-publish it from the source repository")
        return manifest


# --------------------------------------------------------------------------- local filesystem


class LocalTarget(Target):
    def __init__(self, root: Path):
        self.root = root
        self.url = str(root)

    def _vdir(self, name: str, version: int) -> Path:
        return layout.version_dir(self.root, name, version)

    def state(self, name: str, version: int) -> str:
        d = self._vdir(name, version)
        if not d.exists():
            return "absent"
        if not d.is_dir():
            raise PublishError(f"{d} exists and is not a directory: remove it, or publish "
                               f"another --version")
        return "complete" if any(d.iterdir()) else "absent"

    def versions(self, name: str) -> list[int]:
        return layout.list_versions(self.root / name)

    def existing_manifest(self, name: str, version: int) -> Manifest:
        d = self._vdir(name, version)
        m = d / MANIFEST_REL
        if m.is_file():
            return Manifest.from_json(m.read_bytes(), str(m))
        return compute_manifest(d)  # a version put there by something else: judge by content

    def published_manifest(self, name: str, version: int) -> Manifest:
        m = self._vdir(name, version) / MANIFEST_REL
        if not m.is_file():
            raise PublishError(f"{self.version_url(name, version)} has no {MANIFEST_REL}: it was not "
                               f"published by tfs-builder (or is incomplete); re-publish it")
        return Manifest.from_json(m.read_bytes(), str(m))

    def list_files(self, name: str, version: int) -> dict[str, int]:
        d = self._vdir(name, version)
        if not d.is_dir():
            raise PublishError(f"{d} does not exist: check the path (TARGET/NAME/VERSION)")
        out = {}
        for p in d.rglob("*"):
            if p.is_symlink() or (p.exists() and not p.is_dir() and not p.is_file()):
                out[p.relative_to(d).as_posix()] = -1  # listed as a mismatch by diff_manifest
            elif p.is_file():
                out[p.relative_to(d).as_posix()] = p.stat().st_size
        return out

    def open(self, name: str, version: int, rel: str) -> BinaryIO:
        return open(self._vdir(name, version) / rel, "rb")

    def cleanup_own_staging(self, name: str, version: int, manifest: Manifest) -> None:
        """Staging/deleting dirs of killed publishers (dead pids) go on every run, no-op or not."""
        layout.clean_stale_staging(self.root / name)

    def publish(self, src: Path, name: str, version: int, manifest: Manifest, log: Log) -> None:
        model_dir = self.root / name
        model_dir.mkdir(parents=True, exist_ok=True)
        layout.clean_stale_staging(model_dir)
        staging = layout.new_staging_dir(model_dir, tag="publish")
        final = self._vdir(name, version)
        try:
            for d in sorted(manifest.dirs):
                (staging / d).mkdir(parents=True, exist_ok=True)
            for i, rel in enumerate(upload_order(manifest)):
                _copy_checked(src / rel, staging / rel, manifest.files[rel]["sha256"])
                _file_delay()
                if i == 0:
                    test_pause("local-partial")
            man = staging / MANIFEST_REL
            man.parent.mkdir(parents=True, exist_ok=True)
            with open(man, "w", encoding="utf-8") as f:
                f.write(manifest.to_json())
                f.flush()
                os.fsync(f.fileno())
            for dirpath, _dirs, _files in os.walk(staging):
                _fsync_dir(Path(dirpath))
            if compute_manifest(staging).files != manifest.files:  # read back what was written
                raise PublishError(f"the staged copy in {staging} does not match the manifest of "
                                   f"{src}: check the disk under {self.root} and retry")
            test_pause("local-staged")
            try:
                os.rename(staging, final)
            except OSError as e:
                if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    raise VersionRaced() from None
                raise
            _fsync_dir(model_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        log(f"  renamed {staging.name} -> {final}")

    def delete(self, name: str, version: int) -> None:
        """Rename away first (one atomic step the server sees), then remove at leisure."""
        d = self._vdir(name, version)
        gone = d.parent / f"{layout.STAGING_PREFIX}delete-{version}-{os.getpid()}-{secrets.token_hex(4)}"
        os.rename(d, gone)
        _fsync_dir(d.parent)
        test_pause("retention")
        shutil.rmtree(gone, ignore_errors=True)


class VersionRaced(Exception):
    """The version directory appeared while we were staging it (another publisher won the
    rename). ``publish`` then compares that version with ours instead of failing."""


def _copy_checked(src: Path, dst: Path, sha256: str) -> None:
    """Copy and hash in one pass: a source that changed since its manifest was made is refused."""
    import hashlib

    dst.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        while True:
            chunk = fi.read(1 << 20)
            if not chunk:
                break
            h.update(chunk)
            fo.write(chunk)
        fo.flush()
        os.fsync(fo.fileno())
    if h.hexdigest() != sha256:
        raise PublishError(f"{src} changed while publishing (sha256 differs from the manifest): "
                           f"versions are immutable; export a new version instead")


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- object stores


class ObjectTarget(Target):
    """``s3://bucket/prefix`` or ``gs://bucket/prefix`` through fsspec (credentials and endpoint
    from the standard environment: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    AWS_PROFILE, GOOGLE_APPLICATION_CREDENTIALS, ...)."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        scheme = urlparse(url).scheme
        extra = EXTRAS.get(scheme, scheme)
        try:
            import fsspec
        except ImportError:
            raise PublishError(f"--to {url}: publishing to {scheme}:// needs fsspec: "
                               f"pip install 'tfs-builder[{extra}]'") from None
        try:
            # a fresh instance per command: credentials/endpoint come from the environment now
            self.fs, root = fsspec.core.url_to_fs(url, skip_instance_cache=True)
        except ImportError:
            raise PublishError(f"--to {url}: publishing to {scheme}:// needs its fsspec back end: "
                               f"pip install 'tfs-builder[{extra}]'") from None
        except ValueError as e:
            raise PublishError(f"--to {url}: {e}") from None
        self.root = root.rstrip("/")
        if not self.root:
            raise PublishError(f"--to {url} names no bucket: use e.g. {scheme}://BUCKET/models")
        self._bucket_checked = False

    def _p(self, *parts: object) -> str:
        return "/".join([self.root, *(str(p) for p in parts)])

    def _call(self, what: str, fn, *args, **kwargs):
        """Back-end errors -> one-line PublishError that names the URL (never credentials)."""
        try:
            return fn(*args, **kwargs)
        except PublishError:
            raise
        except PermissionError as e:
            raise PublishError(f"{self.url}: access denied while {what} ({_short(e)}): check "
                               f"the credentials in the environment (AWS_ACCESS_KEY_ID/"
                               f"AWS_SECRET_ACCESS_KEY, GOOGLE_APPLICATION_CREDENTIALS)") from None
        except FileNotFoundError:
            raise
        except OSError as e:
            raise PublishError(f"{self.url}: {what} failed ({_short(e)}): check the endpoint "
                               f"(AWS_ENDPOINT_URL) and network, then rerun; the published "
                               f"state is unchanged or resumable") from None

    def endpoint(self) -> str | None:
        """The object store endpoint configured for this target (flags of the fsspec back end,
        else the standard variables), None for the provider's default endpoint."""
        ep = getattr(self.fs, "endpoint_url", None) or \
            (getattr(self.fs, "client_kwargs", None) or {}).get("endpoint_url")
        scheme = urlparse(self.url).scheme
        if not ep and scheme in ("s3", "s3a"):
            ep = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if not ep and scheme in ("gs", "gcs"):
            ep = os.environ.get("STORAGE_EMULATOR_HOST")
        return ep or None

    def check_endpoint(self, timeout: float = 5.0) -> None:
        """A TCP connect to a configured endpoint first: the back ends retry a dead endpoint for
        many seconds and then report it as a missing bucket, which sends the user the wrong way."""
        ep = self.endpoint()
        if not ep:
            return
        parsed = urlparse(ep if "://" in ep else f"http://{ep}")
        host = parsed.hostname or ""
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            with socket.create_connection((host, port), timeout=timeout):
                pass
        except OSError as e:
            reason = e.strerror or type(e).__name__
            raise PublishError(f"{self.url}: cannot reach {ep} ({reason}): check the endpoint "
                               f"(AWS_ENDPOINT_URL) and that the object store is running") from None

    def check_bucket(self) -> None:
        if self._bucket_checked:
            return
        self.check_endpoint()
        bucket = self.root.split("/", 1)[0]
        try:
            ok = self._call("checking the bucket", self.fs.exists, bucket)
        except FileNotFoundError:
            ok = False
        if not ok:
            raise PublishError(f"--to {self.url}: bucket {bucket!r} does not exist (or is not "
                               f"visible with these credentials): create it first")
        self._bucket_checked = True

    def _find(self, prefix: str) -> dict[str, int]:
        self.fs.invalidate_cache()
        try:
            found = self._call(f"listing {prefix}", self.fs.find, prefix, detail=True)
        except FileNotFoundError:
            return {}
        out = {}
        for path, info in found.items():
            if info.get("type") == "directory":
                continue
            rel = path[len(prefix) + 1:] if path.startswith(prefix + "/") else None
            if rel:
                out[rel] = int(info.get("size") or 0)
        return out

    def state(self, name: str, version: int) -> str:
        self.check_bucket()
        objs = self._find(self._p(name, version))
        if not objs:
            return "absent"
        return "complete" if SAVED_MODEL_REL in objs else "partial"

    def _numeric_prefixes(self, name: str) -> dict[int, set[str]]:
        """version -> relative object names under it (one listing of the whole model prefix)."""
        out: dict[int, set[str]] = {}
        for rel in self._find(self._p(name)):
            head, _, rest = rel.partition("/")
            if rest and layout.is_version_name(head):
                out.setdefault(int(head), set()).add(rest)
        return out

    def versions(self, name: str) -> list[int]:
        self.check_bucket()
        return sorted(v for v, rels in self._numeric_prefixes(name).items() if SAVED_MODEL_REL in rels)

    def partial_versions(self, name: str) -> list[int]:
        self.check_bucket()
        return sorted(v for v, rels in self._numeric_prefixes(name).items() if SAVED_MODEL_REL not in rels)

    def _exists(self, p: str) -> bool:
        try:
            return bool(self._call(f"checking {p}", self.fs.exists, p))
        except FileNotFoundError:
            return False

    def existing_manifest(self, name: str, version: int) -> Manifest:
        p = self._p(name, version, MANIFEST_REL)
        try:
            data = self._call(f"reading {p}", self.fs.cat_file, p)
        except FileNotFoundError:
            raise PublishError(f"{self.version_url(name, version)} has no {MANIFEST_REL}: it was "
                               f"not published by tfs-builder; publish another --version or "
                               f"remove it") from None
        return Manifest.from_json(data, f"{self.url}/{name}/{version}/{MANIFEST_REL}")

    def list_files(self, name: str, version: int) -> dict[str, int]:
        return self._find(self._p(name, version))

    def open(self, name: str, version: int, rel: str) -> BinaryIO:
        return self._call(f"reading {rel}", self.fs.open, self._p(name, version, rel), "rb")

    def _staging(self, name: str, version: int, manifest: Manifest) -> str:
        return self._p(name, f"{layout.STAGING_PREFIX}{version}-{manifest.digest()[7:23]}")

    def publish(self, src: Path, name: str, version: int, manifest: Manifest, log: Log) -> None:
        self.check_bucket()
        final = self._p(name, version)
        if self.state(name, version) == "partial":
            # never loadable (no saved_model.pb): what an interrupted publish left; redo it
            log(f"  {self.version_url(name, version)} is an interrupted publish: completing it")
            self._rm(final)
        staging = self._staging(name, version, manifest)
        have = self._find(staging)
        for rel, size in have.items():  # resume: objects are written whole, so a right size is ok
            if rel not in manifest.files or manifest.files[rel]["bytes"] != size:
                self._call(f"removing {rel}", self.fs.rm_file, f"{staging}/{rel}")
        order = upload_order(manifest)
        todo = [r for r in order if have.get(r) != manifest.files[r]["bytes"]]
        if len(todo) < len(order):
            log(f"  resuming: {len(order) - len(todo)} of {len(order)} files already staged")
        for i, rel in enumerate(todo):
            self._call(f"uploading {rel}", self.fs.put_file, str(src / rel), f"{staging}/{rel}")
            _file_delay()
            if i == 0:
                test_pause("object-partial")
        self._call("writing the manifest", self.fs.pipe_file, f"{staging}/{MANIFEST_REL}",
                   manifest.to_json().encode())
        staged = self._find(staging)
        problems = diff_manifest(manifest, staged, staging)
        if problems:
            raise PublishError(f"the staged upload is incomplete: {'; '.join(problems[:3])}; "
                               f"rerun publish to resume")
        test_pause("object-staged")
        # server-side copies into the numeric prefix: everything else first, saved_model.pb last
        rest = [r for r in order if r != SAVED_MODEL_REL] + [MANIFEST_REL]
        for i, rel in enumerate(rest):
            self._call(f"copying {rel}", self.fs.copy, f"{staging}/{rel}", f"{final}/{rel}")
            _file_delay()
            if i == 0:
                test_pause("object-copy-partial")
        test_pause("object-before-saved-model")
        if SAVED_MODEL_REL in manifest.files:
            self._call(f"copying {SAVED_MODEL_REL}", self.fs.copy, f"{staging}/{SAVED_MODEL_REL}",
                       f"{final}/{SAVED_MODEL_REL}")
        test_pause("object-published")
        try:
            self.verify(name, version, manifest)
        except PublishError:
            self.delete(name, version)
            raise
        self._rm(staging)
        log(f"  copied {len(order)} files into {self.version_url(name, version)} "
            f"({SAVED_MODEL_REL} last) and read them back")

    def cleanup_own_staging(self, name: str, version: int, manifest: Manifest) -> None:
        staging = self._staging(name, version, manifest)
        if self._find(staging):
            self._rm(staging)

    def _rm(self, prefix: str) -> None:
        objs = self._find(prefix)
        if objs:
            self._call(f"removing {prefix}", self.fs.rm, [f"{prefix}/{r}" for r in objs])
        self.fs.invalidate_cache()

    def delete(self, name: str, version: int) -> None:
        """saved_model.pb first, so a half-deleted version is never a loadable one."""
        final = self._p(name, version)
        if self._exists(f"{final}/{SAVED_MODEL_REL}"):
            self._call("deleting saved_model.pb", self.fs.rm_file, f"{final}/{SAVED_MODEL_REL}")
        test_pause("retention")
        self._rm(final)


def _short(e: BaseException) -> str:
    s = " ".join(str(e).split())
    return s[:200]


def open_target(to: str, flag: str = "--to") -> Target:
    """A path / file:// URL -> LocalTarget; s3:// gs:// ... -> ObjectTarget (fsspec)."""
    if not to:
        raise PublishError(f"{flag} is required: a model base path root (path, file://, s3://, gs://) "
                           f"or oci://HOST/REPOSITORY[:TAG]")
    parsed = urlparse(to)
    if parsed.scheme in ("", "file") or (len(parsed.scheme) == 1 and os.name == "nt"):
        p = Path(parsed.path if parsed.scheme == "file" else to).expanduser().resolve()
        if p.exists() and not p.is_dir():
            raise PublishError(f"{flag} {p} is a file: give the model base path root directory")
        return LocalTarget(p)
    if parsed.username or parsed.password:
        raise PublishError(f"{flag}: credentials in the URL are refused (they would end up in logs "
                           f"and shell history): use the standard environment variables")
    return ObjectTarget(to)
