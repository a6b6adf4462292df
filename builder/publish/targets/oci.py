"""Publishing a version to, and pulling it from, an OCI registry as an artefact (via ``oras``).

Layout of the artefact (``oci://HOST[:PORT]/REPOSITORY:TAG``, tag default ``NAME-VERSION``):

- config blob: the version's ``build_info.json``, media type ``CONFIG_MEDIA_TYPE`` (the artefact
  type, so registries and tools can tell a model from an image);
- one layer: a reproducible ``tar+gzip`` of the version directory with entries under
  ``VERSION/`` and the annotations the ``oras`` CLI understands (title ``VERSION``, unpack,
  uncompressed digest), so ``oras pull`` by hand yields a ready ``VERSION/`` directory too;
- manifest annotations from build_info (source digest, flow, optimiser, precision, TF and TensorRT
  versions, parity) plus ``io.tfs-builder.content-digest``, the manifest digest that tells an
  identical re-publish (a no-op) from a conflicting one (refused).

A registry makes a tag visible only when the manifest is PUT, after every blob it references is
stored and digest-checked, so a killed push never leaves a half-published tag.

Credentials: ``ORAS_USERNAME``/``ORAS_PASSWORD`` (``ORAS_USER``/``ORAS_PASS`` also work), else
the Docker config (``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``, as written by
``docker login`` / ``oras login``). They are never printed. Plain HTTP is used for loopback
hosts (localhost, 127.0.0.0/8, ::1) or with ``--plain_http``; HTTPS otherwise.

Pulling checks the manifest digest, every blob digest and size, refuses archive entries that are
absolute, contain ``..``, are links or special files, and checks every file against the
version's manifest before renaming the staged directory into ``REPO/NAME/VERSION``. Unpacking
stops as soon as the files exceed what the artefact declares (``io.tfs-builder.total-bytes``)
or ``--max_unpacked_bytes`` (default: ``UNPACK_RATIO`` times the compressed layer, at least
``UNPACK_FLOOR``), so a small, highly compressible layer cannot fill the disk.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import ipaddress
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from builder import __version__
from builder.core import layout
from builder.core.errors import InputError, PublishError
from builder.publish.manifest import (
    BUILD_INFO_REL,
    MANIFEST_REL,
    Manifest,
    compute_manifest,
    parity_passed,
    source_digest,
)

CONFIG_MEDIA_TYPE = "application/vnd.tfs-builder.model.config.v1+json"
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
ANN = "io.tfs-builder."
ANN_CONTENT = ANN + "content-digest"
ANN_TITLE = "org.opencontainers.image.title"
ANN_UNPACK = "io.deis.oras.content.unpack"
ANN_TAR_DIGEST = "io.deis.oras.content.digest"

# Unpack limits: a SavedModel's weights barely compress (float noise), so a layer that inflates
# more than UNPACK_RATIO times is a decompression bomb, not a model; the floor keeps tiny
# versions (a few KB, mostly zero padding) pullable without a flag.
UNPACK_RATIO = 8
UNPACK_FLOOR = 64 << 20
MAX_MANIFEST_BYTES = 16 << 20  # manifest.json (not in its own total): ~150 bytes per file
_TAR_OVERHEAD = 64 << 10  # end-of-archive blocks and record padding
_TAR_ENTRY_OVERHEAD = 4 << 10  # per entry: header, PAX header, padding to 512 bytes

_REPO_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_HOST = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*"
                   r"[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$")


@dataclass
class OciRef:
    host: str
    repository: str
    tag: str = ""
    digest: str = ""

    @property
    def reference(self) -> str:
        return self.digest or self.tag

    def uri(self) -> str:
        """``HOST/REPO:TAG`` or ``HOST/REPO@DIGEST`` (what oras calls a container)."""
        sep = "@" if self.digest else ":"
        return f"{self.host}/{self.repository}{sep}{self.reference}"

    def __str__(self) -> str:
        return "oci://" + self.uri()


def is_oci(url: str) -> bool:
    return url.startswith("oci://")


def parse_ref(url: str, flag: str) -> OciRef:
    """``oci://HOST[:PORT]/REPOSITORY[:TAG][@sha256:...]`` with the registry's own grammar."""
    rest = url[len("oci://"):]
    host, _, path = rest.partition("/")
    if "@" in host:
        raise InputError(f"{flag}: credentials in the URL are refused (they would end up in logs): "
                         f"set ORAS_USERNAME and ORAS_PASSWORD, or docker login")
    if not host or not _HOST.match(host):
        raise InputError(f"{flag} {url}: {host!r} is not a registry host: use "
                         f"oci://HOST[:PORT]/REPOSITORY[:TAG]")
    digest = ""
    if "@" in path:
        path, digest = path.split("@", 1)
        if not _DIGEST.match(digest):
            raise InputError(f"{flag} {url}: {digest!r} is not a sha256 digest "
                             f"(sha256: + 64 hex digits)")
    tag = ""
    last = path.rsplit("/", 1)[-1]
    if ":" in last:
        path, tag = path.rsplit(":", 1)
        if not _TAG.match(tag):
            raise InputError(f"{flag} {url}: tag {tag!r} is invalid: letters, digits, _ . - "
                             f"(max 128, not starting with . or -)")
    parts = path.split("/")
    if not path or not all(_REPO_COMPONENT.match(p) for p in parts):
        raise InputError(f"{flag} {url}: repository {path!r} is invalid: lowercase letters, "
                         f"digits and . _ - separated by /, e.g. oci://{host}/models/facenet")
    return OciRef(host=host, repository=path, tag=tag, digest=digest)


def default_tag(name: str, version: int) -> str:
    tag = f"{name}-{version}"
    if not _TAG.match(tag):
        raise InputError(f"the default tag {tag!r} (NAME-VERSION) is not a valid OCI tag: give "
                         f"one explicitly, e.g. --to oci://HOST/REPO:v{version}")
    return tag


def _plain_http(host: str, forced: bool) -> bool:
    if forced:
        return True
    h = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    h = h.strip("[]")
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def _credentials() -> tuple[str, str] | None:
    user = os.environ.get("ORAS_USERNAME") or os.environ.get("ORAS_USER")
    password = os.environ.get("ORAS_PASSWORD") or os.environ.get("ORAS_PASS")
    if user and password:
        return user, password
    return None


def _docker_configs() -> list[str]:
    d = os.environ.get("DOCKER_CONFIG")
    if d and os.path.isfile(os.path.join(d, "config.json")):
        return [os.path.join(d, "config.json")]
    return []


class Registry:
    """An authenticated oras client for one registry host, with fast, credential-free errors."""

    def __init__(self, ref: OciRef, plain_http: bool = False):
        try:
            import oras.provider  # first: importing oras.decorator first is a circular import
            import requests
            from oras import decorator as oras_decorator
        except ImportError:
            raise PublishError("publishing to oci:// needs the oras client: "
                               "pip install 'tfs-builder[oci]'") from None
        logging.getLogger("oras.logger").setLevel(logging.CRITICAL)  # we report errors ourselves

        class _Client(oras.provider.Registry):
            # oras retries failed requests 5 times with up to 83 s sleeps; two quick tries are
            # enough after the probe below, and keep a CI job from hanging for minutes.
            do_request = oras_decorator.retry(attempts=1, timeout=0)(
                getattr(oras.provider.Registry.do_request, "__wrapped__",
                        oras.provider.Registry.do_request))

        self.ref = ref
        self.requests = requests
        self.plain = _plain_http(ref.host, plain_http)
        self.scheme = "http" if self.plain else "https"
        challenge = self._probe()
        backend = "basic" if challenge == "basic" else "token"
        self.client = _Client(hostname=ref.host, insecure=self.plain, auth_backend=backend)
        creds = _credentials()
        auth = self.client.auth
        if creds:
            auth.set_basic_auth(*creds)
            if hasattr(auth, "_auth_config"):
                auth._auth_config = {"auths": {}, "credsStore": None, "credHelpers": {}}  # env wins
            if backend == "basic":
                self.client.session.auth = creds
        auth.load_configs(self.client.get_container(ref.uri()), configs=_docker_configs() or None)
        basic = getattr(auth, "_basic_auth", None)
        if challenge == "basic":
            if not basic:
                raise PublishError(f"registry {ref.host} requires credentials: set ORAS_USERNAME and "
                                   f"ORAS_PASSWORD (or docker login {ref.host})")
            r = self._get("/v2/", headers={"Authorization": f"Basic {basic}"})
            if r.status_code in (401, 403):
                raise PublishError(f"registry {ref.host} rejected the credentials (HTTP "
                                   f"{r.status_code}): check ORAS_USERNAME/ORAS_PASSWORD or the "
                                   f"docker login for {ref.host}")
            if not creds:
                self.client.session.headers["Authorization"] = f"Basic {basic}"

    def _get(self, path: str, **kw):
        try:
            return self.requests.get(f"{self.scheme}://{self.ref.host}{path}", timeout=30, **kw)
        except self.requests.exceptions.SSLError as e:
            raise PublishError(f"registry {self.ref.host}: TLS failed ({_short(e)}): fix the "
                               f"certificate, or pass --plain_http for an HTTP-only registry") from None
        except self.requests.exceptions.RequestException as e:
            raise PublishError(f"cannot reach registry {self.ref.host} over {self.scheme} "
                               f"({type(e).__name__}): check the host/port in the oci:// URL and that "
                               f"the registry is running") from None

    def _probe(self) -> str:
        """``none`` / ``basic`` / ``bearer``: which auth the registry asks for at ``/v2/``."""
        r = self._get("/v2/")
        if r.status_code == 200:
            return "none"
        if r.status_code == 401:
            scheme = r.headers.get("Www-Authenticate", "").split(" ", 1)[0].lower()
            return "basic" if scheme == "basic" else "bearer"
        raise PublishError(f"{self.ref.host} does not answer like an OCI registry (GET /v2/ -> HTTP "
                           f"{r.status_code}): check the oci:// URL")

    def _url(self, kind: str, reference: str) -> str:
        return f"{self.scheme}://{self.ref.host}/v2/{self.ref.repository}/{kind}/{reference}"

    def request(self, url: str, method: str = "GET", **kw):
        try:
            return self.client.do_request(url, method, **kw)
        except PublishError:
            raise
        except Exception as e:  # noqa: BLE001 - oras/requests raise plain exceptions
            raise PublishError(f"registry {self.ref.host}: {method} failed ({_short(e)}): check "
                               f"the registry and rerun") from None

    def get_manifest(self, reference: str) -> tuple[dict[str, Any], bytes, str] | None:
        """(manifest, raw bytes, digest) or None when the tag/digest does not exist."""
        r = self.request(self._url("manifests", reference), "GET",
                         headers={"Accept": MANIFEST_MEDIA_TYPE})
        if r.status_code == 404:
            return None
        if r.status_code in (401, 403):
            raise PublishError(f"registry {self.ref.host} denied access to {self.ref.repository} "
                               f"(HTTP {r.status_code}): check the credentials' permissions")
        if r.status_code != 200:
            raise PublishError(f"registry {self.ref.host}: reading {self.ref.repository}:"
                               f"{reference} failed (HTTP {r.status_code})")
        raw = r.content
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        if _DIGEST.match(reference) and digest != reference:
            raise PublishError(f"{self.ref}: manifest digest is {digest}, not the requested "
                               f"{reference}: refusing it")
        header = r.headers.get("Docker-Content-Digest")
        if header and header != digest:
            raise PublishError(f"{self.ref}: manifest bytes hash to {digest} but the registry "
                               f"says {header}: refusing it")
        try:
            return json.loads(raw), raw, digest
        except ValueError:
            raise PublishError(f"{self.ref}: the manifest is not JSON") from None

    def download(self, descriptor: dict[str, Any], out: Path) -> None:
        """Fetch a blob, checking its size and sha256 against the descriptor."""
        digest, size = descriptor.get("digest", ""), descriptor.get("size")
        if not _DIGEST.match(str(digest)) or not isinstance(size, int):
            raise PublishError(f"{self.ref}: a descriptor has no usable sha256 digest/size: "
                               f"refusing it")
        r = self.request(self._url("blobs", digest), "GET", stream=True)
        if r.status_code != 200:
            raise PublishError(f"{self.ref}: blob {digest[:19]} -> HTTP {r.status_code}")
        h = hashlib.sha256()
        n = 0
        with open(out, "wb") as f:
            for chunk in r.iter_content(chunk_size=1 << 20):
                n += len(chunk)
                if n > size:
                    raise PublishError(f"{self.ref}: blob {digest[:19]} is larger than its "
                                       f"descriptor's {size} bytes: refusing it")
                h.update(chunk)
                f.write(chunk)
        if n != size or "sha256:" + h.hexdigest() != digest:
            raise PublishError(f"{self.ref}: blob {digest[:19]} does not match its digest/size "
                               f"(got {n} bytes): refusing it")

    def push(self, tag: str, layer: Path, config: Path, layer_ann: dict[str, str],
             annotations: dict[str, str]) -> str:
        target = f"{self.ref.host}/{self.ref.repository}:{tag}"
        with tempfile.TemporaryDirectory(prefix="tfs-builder-ann-") as td:
            ann_file = Path(td) / "annotations.json"
            ann_file.write_text(json.dumps({str(layer): layer_ann}))
            try:
                r = self.client.push(
                    target=target, files=[f"{layer}:{LAYER_MEDIA_TYPE}"],
                    manifest_config=f"{config}:{CONFIG_MEDIA_TYPE}", annotation_file=str(ann_file),
                    manifest_annotations=annotations, disable_path_validation=True, quiet=True)
            except PublishError:
                raise
            except Exception as e:  # noqa: BLE001
                raise PublishError(f"pushing to oci://{target} failed ({_short(e)}): the tag is "
                                   f"unchanged; rerun publish") from None
        return r.headers.get("Docker-Content-Digest", "")

    def tags(self) -> list[str]:
        """Every tag of the repository ([] when it does not exist yet), following the
        registry's ``Link: <...>; rel="next"`` pagination; decided by status code, not text."""
        import urllib.parse

        url = f"{self.scheme}://{self.ref.host}/v2/{self.ref.repository}/tags/list"
        out: list[str] = []
        while url:
            r = self.request(url, "GET")
            if r.status_code == 404:
                return out
            if r.status_code != 200:
                raise PublishError(f"listing tags of {self.ref.repository} failed (HTTP "
                                   f"{r.status_code}): check the credentials' permissions")
            try:
                out += list(r.json().get("tags") or [])
            except ValueError:
                raise PublishError(f"registry {self.ref.host}: the tag list of "
                                   f"{self.ref.repository} is not JSON") from None
            nxt = r.links.get("next", {}).get("url")
            url = urllib.parse.urljoin(f"{self.scheme}://{self.ref.host}", nxt) if nxt else ""
        return out

    def delete_tag(self, tag: str) -> None:
        found = self.get_manifest(tag)
        if found is None:
            return
        r = self.request(self._url("manifests", found[2]), "DELETE")
        if r.status_code not in (200, 202):
            raise PublishError(f"registry {self.ref.host} refused to delete "
                               f"{self.ref.repository}:{tag} (HTTP {r.status_code}): enable "
                               f"deletes in the registry (storage.delete.enabled) or drop --keep")


def _short(e: BaseException) -> str:
    return " ".join(str(e).split())[:200]


# --------------------------------------------------------------------------- archive


class _HashWriter:
    def __init__(self, f: BinaryIO):
        self.f, self.h = f, hashlib.sha256()

    def write(self, b: bytes) -> int:
        self.h.update(b)
        return self.f.write(b)


class _HashReader:
    """Hashes what passes through; with ``limit``, refuses to read past it (the decompressed
    tar stream of a layer, so even a giant header cannot inflate without bound)."""

    def __init__(self, f: BinaryIO, limit: int | None = None, error: str = ""):
        self.f, self.h = f, hashlib.sha256()
        self.n, self.limit, self.error = 0, limit, error

    def read(self, n: int = -1) -> bytes:
        b = self.f.read(n)
        self.n += len(b)
        if self.limit is not None and self.n > self.limit:
            raise PublishError(self.error)
        self.h.update(b)
        return b


@dataclass
class UnpackLimit:
    """How many bytes a layer's files may unpack to, and why (for the error message)."""

    files: int
    why: str

    def error(self, ref: object) -> str:
        return (f"{ref}: the layer unpacks to more than {self.files:,} bytes ({self.why}): "
                f"refusing it; nothing was installed")


def unpack_limit(declared: object, layer_bytes: int, max_unpacked_bytes: int | None = None
                 ) -> UnpackLimit:
    """The artefact's own declaration when it has one (tfs-builder writes it), capped by
    ``--max_unpacked_bytes`` (default: UNPACK_RATIO x the compressed layer, >= UNPACK_FLOOR)."""
    if max_unpacked_bytes:
        cap = UnpackLimit(int(max_unpacked_bytes), "--max_unpacked_bytes")
    else:
        cap = UnpackLimit(max(UNPACK_RATIO * int(layer_bytes), UNPACK_FLOOR),
                          f"the default limit, {UNPACK_RATIO}x the {int(layer_bytes):,}-byte layer; "
                          "pass --max_unpacked_bytes to allow more")
    try:
        total = int(str(declared))
    except ValueError:
        return cap
    if total < 0 or total > cap.files:
        return cap
    return UnpackLimit(total, f"what its manifest declares, {ANN + 'total-bytes'}")


def write_layer(src: Path, version: int, manifest: Manifest, out: Path) -> str:
    """A reproducible tar.gz of the version (sorted, owner 0, mtime 0) with entries under
    ``VERSION/``; returns the sha256 of the uncompressed tar. Same content -> same blob digest,
    so a re-push uploads nothing new."""
    top = str(version)
    with open(out, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        hw = _HashWriter(gz)
        with tarfile.open(fileobj=hw, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            dirs = sorted({top} | {f"{top}/{d}" for d in manifest.dirs})
            for d in dirs:
                ti = tarfile.TarInfo(d)
                ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 0
                tar.addfile(ti)
            for rel in sorted([*manifest.files, MANIFEST_REL]):
                data_path = src / rel
                ti = tarfile.TarInfo(f"{top}/{rel}")
                ti.mode, ti.mtime = 0o644, 0
                if rel == MANIFEST_REL:
                    blob = manifest.to_json().encode()
                    ti.size = len(blob)
                    tar.addfile(ti, io.BytesIO(blob))
                    continue
                ti.size = manifest.files[rel]["bytes"]
                with open(data_path, "rb") as f:
                    hr = _HashReader(f)
                    tar.addfile(ti, hr)
                if hr.h.hexdigest() != manifest.files[rel]["sha256"]:
                    raise PublishError(f"{data_path} changed while publishing (sha256 differs "
                                       f"from the manifest): export a new version instead")
    return "sha256:" + hw.h.hexdigest()


def _entry_rel(m: tarfile.TarInfo, top: str, seen: set[str]) -> str:
    """The path of an archive entry below ``top/``, or PublishError for anything that could
    write outside the destination: absolute names, ``..``, links, devices/fifos, duplicates."""
    name = m.name
    parts = name.split("/")
    if name.startswith("/") or "\\" in name or ".." in parts or os.path.isabs(name):
        raise PublishError(f"archive entry {name!r} is absolute or climbs out with "
                           f"'..': refusing the artefact")
    if m.issym() or m.islnk():
        raise PublishError(f"archive entry {name!r} is a link: refusing the artefact")
    if not (m.isfile() or m.isdir()):
        raise PublishError(f"archive entry {name!r} is a device/fifo/special file: refusing the "
                           f"artefact")
    parts = [p for p in parts if p not in ("", ".")]
    if not parts or parts[0] != top:
        raise PublishError(f"archive entry {name!r} is outside {top}/: refusing the artefact")
    rel = "/".join(parts[1:])
    if rel in seen:
        raise PublishError(f"archive entry {name!r} appears twice: refusing the artefact")
    seen.add(rel)
    return rel


def safe_extract(layer: Path, top: str, dest: Path, tar_digest: str = "",
                 limit: UnpackLimit | None = None, ref: object = "the artefact") -> None:
    """Unpack a layer into ``dest`` refusing anything that could write outside it (see
    ``_entry_rel``) and, with ``limit``, stopping before the files exceed it: each entry's size
    is checked before a byte of it is written, and the decompressed stream itself is bounded."""
    seen: set[str] = set()
    budget = limit.files if limit else None
    unpacked = 0
    with gzip.open(layer, "rb") as gz:
        hr = _HashReader(gz, None if budget is None else
                         budget + MAX_MANIFEST_BYTES + _TAR_OVERHEAD, limit.error(ref) if limit else "")
        try:
            with tarfile.open(fileobj=hr, mode="r|") as tar:
                for m in tar:
                    rel = _entry_rel(m, top, seen)
                    target = dest / rel if rel else dest
                    if hr.limit is not None:
                        hr.limit += _TAR_ENTRY_OVERHEAD
                    if m.isdir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    if rel == MANIFEST_REL:
                        if m.size > MAX_MANIFEST_BYTES:
                            raise PublishError(f"{ref}: its {MANIFEST_REL} is {m.size:,} bytes, more "
                                               f"than any real manifest: refusing it")
                    else:
                        unpacked += m.size
                        if budget is not None and unpacked > budget:
                            raise PublishError(limit.error(ref))
                    target.parent.mkdir(parents=True, exist_ok=True)
                    fi = tar.extractfile(m)
                    assert fi is not None
                    with open(target, "xb") as fo:
                        shutil.copyfileobj(fi, fo, 1 << 20)
                while hr.read(1 << 20):  # the rest (end-of-archive padding) for the digest
                    pass
        except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile) as e:
            if isinstance(e, FileExistsError):
                raise PublishError(f"archive entry {e.filename} appears twice: refusing the "
                                   f"artefact") from None
            raise PublishError(f"the layer is not a valid tar.gz ({_short(e)}): refusing the "
                               f"artefact") from None
    if tar_digest and "sha256:" + hr.h.hexdigest() != tar_digest:
        raise PublishError(f"the unpacked layer does not match its {ANN_TAR_DIGEST} annotation: "
                           f"refusing the artefact")


# --------------------------------------------------------------------------- publish / pull


def annotations_for(info: dict[str, Any], name: str, version: int, manifest: Manifest) -> dict[str, str]:
    """Manifest annotations: what a registry UI or ``oras manifest fetch`` shows about a model."""
    parity = info.get("parity") or {}
    trt = info.get("tensorrt")
    trt_version = ""
    if isinstance(trt, dict):
        trt_version = str(trt.get("tensorrt_version") or trt.get("version") or "")
    out = {
        ANN_TITLE: name,
        "org.opencontainers.image.version": str(version),
        ANN + "name": name,
        ANN + "version": str(version),
        ANN_CONTENT: manifest.digest(),
        ANN + "total-bytes": str(manifest.total_bytes),
        ANN + "source-digest": source_digest(info),
        ANN + "flow": str(info.get("flow", "")),
        ANN + "optimizer": str(info.get("optimizer", "")),
        ANN + "precision": str(info.get("precision", "")),
        ANN + "tensorflow-version": str(info.get("tensorflow_version", "")),
        ANN + "tensorrt-version": trt_version or "none",
        ANN + "parity": "passed" if parity_passed(info) else "failed",
        ANN + "parity.max-abs-diff": str(parity.get("max_abs_diff", "")),
        ANN + "parity.min-cosine": str(parity.get("min_cosine", "")),
        ANN + "builder-version": str(info.get("builder_version", __version__)),
    }
    if info.get("created"):
        out["org.opencontainers.image.created"] = str(info["created"])
    return out


@dataclass
class OciPushResult:
    ref: OciRef
    action: str  # published | unchanged | dry-run
    manifest_digest: str = ""


def publish(src: Path, name: str, version: int, info: dict[str, Any], manifest: Manifest,
            to: str, plain_http: bool = False, dry_run: bool = False) -> OciPushResult:
    ref = parse_ref(to, "--to")
    if ref.digest:
        raise InputError(f"--to {to}: cannot publish to a digest; give a tag or none "
                         f"(default {name}-{version})")
    ref.tag = ref.tag or default_tag(name, version)
    reg = Registry(ref, plain_http)
    existing = reg.get_manifest(ref.tag)
    if existing is not None:
        have = (existing[0].get("annotations") or {}).get(ANN_CONTENT)
        if have == manifest.digest():
            return OciPushResult(ref, "unchanged", existing[2])
        raise PublishError(f"{ref} already holds different content"
                           f"{' (not a tfs-builder model)' if not have else ''}: refusing to "
                           f"overwrite it; publish a new version or use another tag")
    if dry_run:
        return OciPushResult(ref, "dry-run")
    with tempfile.TemporaryDirectory(prefix="tfs-builder-push-") as td:
        layer = Path(td) / str(version)  # the file name becomes the layer title
        tar_digest = write_layer(src, version, manifest, layer)
        config = Path(td) / "build_info.json"
        shutil.copyfile(src / BUILD_INFO_REL, config)
        from builder.publish.targets.store import test_pause

        test_pause("oci-before-push")
        digest = reg.push(ref.tag, layer, config,
                          {ANN_UNPACK: "true", ANN_TAR_DIGEST: tar_digest},
                          annotations_for(info, name, version, manifest))
    check = reg.get_manifest(ref.tag)
    if check is None or (check[0].get("annotations") or {}).get(ANN_CONTENT) != manifest.digest():
        raise PublishError(f"{ref}: the pushed manifest is not visible under its tag: check the "
                           f"registry and rerun")
    return OciPushResult(ref, "published", digest or check[2])


def tag_versions(reg: Registry, name: str) -> dict[int, str]:
    """Tags of the form NAME-VERSION in the repository -> {version: tag}."""
    pat = re.compile(rf"^{re.escape(name)}-([0-9]+)$")
    out = {}
    for t in reg.tags():
        m = pat.match(t)
        if m and layout.is_version_name(m.group(1)):
            out[int(m.group(1))] = t
    return out


@dataclass
class PulledArtifact:
    name: str
    version: int
    manifest: Manifest
    build_info: dict[str, Any]
    digest: str


def fetch(ref: OciRef, dest: Path, plain_http: bool = False,
          max_unpacked_bytes: int | None = None) -> PulledArtifact:
    """Download and unpack an artefact into ``dest`` (a fresh staging dir), checking everything;
    unpacking stops at ``unpack_limit`` (the caller removes ``dest`` on any error)."""
    reg = Registry(ref, plain_http)
    found = reg.get_manifest(ref.reference)
    if found is None:
        raise PublishError(f"{ref} does not exist: check the repository and tag "
                           f"(tags default to NAME-VERSION)")
    man, _raw, digest = found
    cfg = man.get("config") or {}
    if cfg.get("mediaType") != CONFIG_MEDIA_TYPE:
        raise PublishError(f"{ref} is not a tfs-builder model artefact (config media type "
                           f"{cfg.get('mediaType')!r}): pull it with the tool that pushed it")
    layers = man.get("layers") or []
    if len(layers) != 1 or layers[0].get("mediaType") != LAYER_MEDIA_TYPE:
        raise PublishError(f"{ref}: expected one {LAYER_MEDIA_TYPE} layer, found "
                           f"{[x.get('mediaType') for x in layers]}: refusing it")
    ann = man.get("annotations") or {}
    with tempfile.TemporaryDirectory(prefix="tfs-builder-pull-") as td:
        cfg_path = Path(td) / "config.json"
        reg.download(cfg, cfg_path)
        try:
            info = json.loads(cfg_path.read_text(encoding="utf-8"))
        except ValueError:
            raise PublishError(f"{ref}: the config blob is not JSON: refusing it") from None
        layer_path = Path(td) / "layer.tar.gz"
        reg.download(layers[0], layer_path)
        lann = layers[0].get("annotations") or {}
        top = lann.get(ANN_TITLE) or ann.get(ANN + "version") or ""
        if not layout.is_version_name(top):
            raise PublishError(f"{ref}: the layer title {top!r} is not a version number: "
                               f"refusing it")
        limit = unpack_limit(ann.get(ANN + "total-bytes", ""), layers[0]["size"], max_unpacked_bytes)
        safe_extract(layer_path, top, dest, lann.get(ANN_TAR_DIGEST, ""), limit, ref)
    mpath = dest / MANIFEST_REL
    if not mpath.is_file():
        raise PublishError(f"{ref} carries no {MANIFEST_REL}: not a tfs-builder model artefact")
    manifest = Manifest.from_json(mpath.read_bytes(), f"{ref} {MANIFEST_REL}")
    got = compute_manifest(dest)
    if got.files != manifest.files:
        bad = sorted(k for k in set(got.files) | set(manifest.files)
                     if got.files.get(k) != manifest.files.get(k))
        raise PublishError(f"{ref}: unpacked files do not match the artefact's manifest "
                           f"({', '.join(bad[:5])}): refusing it")
    if ann.get(ANN_CONTENT) and ann[ANN_CONTENT] != manifest.digest():
        raise PublishError(f"{ref}: the {ANN_CONTENT} annotation does not match the files: "
                           f"refusing it")
    shipped = dest / BUILD_INFO_REL
    if not shipped.is_file() or json.loads(shipped.read_text(encoding="utf-8")) != info:
        raise PublishError(f"{ref}: the config blob differs from the packed {BUILD_INFO_REL}: "
                           f"refusing it")
    name = str(ann.get(ANN + "name") or info.get("name") or "")
    return PulledArtifact(name=name, version=int(top), manifest=manifest, build_info=info,
                          digest=digest)
