"""publish / pull / verify against a real OCI registry (CNCF Distribution with htpasswd auth).

The registry is checked with plain HTTP requests of our own (not through the code under test),
crafted artefacts are pushed with oras directly, and a pulled version must still load in
TensorFlow and reproduce its golden outputs.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

import pytest
import requests

from builder.core import layout
from builder.core.errors import InputError, PublishError
from builder.publish import api
from builder.publish.manifest import compute_manifest
from builder.publish.targets import oci as oci_target
from tests.helpers import ROOT, run_builder
from tests.helpers import registry_servers as rs

_tree = rs.tree
assert_serves_golden = rs.assert_serves_golden
run_cli = run_builder


@pytest.fixture(scope="session")
def registry(pytestconfig) -> rs.OciRegistry:
    return rs.oci_registry(pytestconfig)


@pytest.fixture
def oci(registry, monkeypatch) -> str:
    """A fresh repository on the registry, credentials in ORAS_USERNAME/ORAS_PASSWORD."""
    for k, v in registry.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("ORAS_USER", raising=False)
    monkeypatch.delenv("ORAS_PASS", raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", "/nonexistent-docker-config")
    return f"oci://{registry.host}/models/t{uuid.uuid4().hex[:8]}"


@pytest.fixture
def repo(tmp_path) -> Path:
    r = tmp_path / "repo"
    rs.make_version(r, "tiny", 1, seed=0)
    rs.make_version(r, "tiny", 2, seed=1)
    return r


def _raw_manifest(registry: rs.OciRegistry, oci: str, ref: str) -> requests.Response:
    repo = oci.split("/", 3)[3].split(":")[0]
    return requests.get(f"http://{registry.host}/v2/{repo}/manifests/{ref}",
                        auth=(registry.user, registry.password), timeout=10,
                        headers={"Accept": oci_target.MANIFEST_MEDIA_TYPE})


def test_push_records_annotations_and_pull_restores_a_serving_version(repo, oci, registry, tmp_path):
    r = api.publish(str(repo), "tiny", oci)
    assert (r.action, r.target) == ("published", f"{oci}:tiny-2")
    raw = _raw_manifest(registry, oci, "tiny-2")
    assert raw.status_code == 200
    assert raw.headers["Docker-Content-Digest"] == r.oci_digest
    man = raw.json()
    ann = man["annotations"]
    info = json.loads((repo / "tiny" / "2" / "assets.extra" / "build_info.json").read_text())
    assert ann["io.tfs-builder.flow"] == "checkpoint"
    assert ann["io.tfs-builder.optimizer"] == "none" and ann["io.tfs-builder.precision"] == "fp32"
    assert ann["io.tfs-builder.tensorflow-version"] == "2.17.1"
    assert ann["io.tfs-builder.tensorrt-version"] == "none"
    assert ann["io.tfs-builder.parity"] == "passed"
    assert ann["io.tfs-builder.source-digest"].startswith("sha256:")
    assert ann["io.tfs-builder.content-digest"] == r.content_digest
    assert ann["org.opencontainers.image.created"] == info["created"]
    assert man["config"]["mediaType"] == oci_target.CONFIG_MEDIA_TYPE
    (layer,) = man["layers"]
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert layer["annotations"]["org.opencontainers.image.title"] == "2"
    # the layer, fetched independently, is a tar of 2/... holding exactly the version's files
    blob = requests.get(f"http://{registry.host}/v2/{oci.split('/', 3)[3]}/blobs/{layer['digest']}",
                        auth=(registry.user, registry.password), timeout=10).content
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as t:
        names = {m.name for m in t.getmembers() if m.isfile()}
    assert names == {f"2/{k}" for k in _tree(repo / "tiny" / "2")}

    pulled = api.pull(f"{oci}:tiny-2", str(tmp_path / "serving"))
    assert (pulled.action, pulled.name, pulled.version) == ("pulled", "tiny", 2)
    assert _tree(tmp_path / "serving" / "tiny" / "2") == _tree(repo / "tiny" / "2")
    assert [c.name for c in (tmp_path / "serving").iterdir()] == ["tiny"]  # no staging left
    assert_serves_golden(tmp_path / "serving" / "tiny" / "2")
    assert api.verify(f"{oci}:tiny-2").digest() == r.content_digest
    # by digest too, and again: identical content is a no-op
    assert api.pull(f"{oci}@{r.oci_digest}", str(tmp_path / "serving")).action == "unchanged"


def test_republish_is_noop_and_conflicting_tag_is_refused(repo, oci, registry, tmp_path):
    first = api.publish(str(repo), "tiny", oci, version=2)
    again = api.publish(str(repo), "tiny", oci, version=2)
    assert again.action == "unchanged" and again.oci_digest == first.oci_digest
    other = tmp_path / "other"
    rs.make_version(other, "tiny", 2, seed=5)
    with pytest.raises(PublishError, match=r"tiny-2 already holds different content"):
        api.publish(str(other), "tiny", oci)
    assert _raw_manifest(registry, oci, "tiny-2").headers["Docker-Content-Digest"] == first.oci_digest
    # pull refuses to replace a different local version 2, and leaves it alone
    rs.make_version(tmp_path / "serving", "tiny", 2, seed=6)
    before = _tree(tmp_path / "serving" / "tiny" / "2")
    with pytest.raises(PublishError, match=r"tiny/2 already exists with different content"):
        api.pull(f"{oci}:tiny-2", str(tmp_path / "serving"))
    assert _tree(tmp_path / "serving" / "tiny" / "2") == before
    assert sorted(c.name for c in (tmp_path / "serving" / "tiny").iterdir()) == ["2"]


def test_pull_with_name_and_version_overrides_and_default_tag(repo, oci, tmp_path):
    api.publish(str(repo), "tiny", oci, version=1)
    r = api.pull(oci, str(tmp_path / "s"), name="tiny", version=1)  # no tag: NAME-VERSION
    assert r.path == tmp_path / "s" / "tiny" / "1"
    r = api.pull(f"{oci}:tiny-1", str(tmp_path / "s"), name="renamed", version=7)
    assert r.path == tmp_path / "s" / "renamed" / "7"
    assert _tree(r.path) == _tree(repo / "tiny" / "1")
    with pytest.raises(InputError, match=r"has no tag: add :TAG, or pass --name and --version"):
        api.pull(oci, str(tmp_path / "s"))
    with pytest.raises(PublishError, match=r"tiny-9 does not exist"):
        api.pull(f"{oci}:tiny-9", str(tmp_path / "s"))


def test_oci_retention_deletes_old_tags_but_not_labelled(repo, oci, registry, tmp_path):
    rs.make_version(repo, "tiny", 3, seed=3)
    for v in (1, 2):
        api.publish(str(repo), "tiny", oci, version=v)
    cfg = tmp_path / "models.config"
    cfg.write_text('model_config_list { config { name: "tiny" base_path: "/m/tiny" '
                   'version_labels { key: "stable" value: 1 } } }')
    r = api.publish(str(repo), "tiny", oci, keep=1, models_config=str(cfg))
    assert (r.version, r.deleted) == (3, [2])
    assert _raw_manifest(registry, oci, "tiny-2").status_code == 404
    assert _raw_manifest(registry, oci, "tiny-1").status_code == 200
    assert _raw_manifest(registry, oci, "tiny-3").status_code == 200
    reg = oci_target.Registry(oci_target.parse_ref(oci + ":x", "--to"))
    assert sorted(reg.tags()) == ["tiny-1", "tiny-3"]
    empty = oci_target.Registry(oci_target.parse_ref(oci + "-never-pushed:x", "--to"))
    assert empty.tags() == []  # the registry's 404 for an unknown repository, by status code


def test_credentials_errors_are_fast_and_never_printed(repo, oci, registry, monkeypatch):
    wrong = "not-" + registry.password
    monkeypatch.setenv("ORAS_PASSWORD", wrong)
    t0 = time.monotonic()
    with pytest.raises(PublishError, match=r"rejected the credentials \(HTTP 401\)") as e:
        api.publish(str(repo), "tiny", oci)
    assert time.monotonic() - t0 < 10
    assert wrong not in str(e.value) and registry.password not in str(e.value)
    res = run_cli("publish", "--repo", str(repo), "--name", "tiny", "--to", oci,
                  env={"ORAS_PASSWORD": wrong})
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert wrong not in res.stdout + res.stderr and registry.password not in res.stdout + res.stderr
    monkeypatch.delenv("ORAS_USERNAME")
    monkeypatch.delenv("ORAS_PASSWORD")
    with pytest.raises(PublishError, match=r"requires credentials: set ORAS_USERNAME and ORAS_PASSWORD"):
        api.publish(str(repo), "tiny", oci)
    # credentials from a docker config (what `docker login` writes) work too
    import base64

    cfgdir = Path(str(repo)).parent / "docker"
    cfgdir.mkdir()
    tok = base64.b64encode(f"{registry.user}:{registry.password}".encode()).decode()
    (cfgdir / "config.json").write_text(json.dumps({"auths": {registry.host: {"auth": tok}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(cfgdir))
    assert api.publish(str(repo), "tiny", oci).action == "published"


def test_unreachable_registry_and_bad_references(repo, tmp_path):
    (port,) = rs.free_ports(1)
    t0 = time.monotonic()
    with pytest.raises(PublishError, match=rf"cannot reach registry 127.0.0.1:{port} over http"):
        api.publish(str(repo), "tiny", f"oci://127.0.0.1:{port}/models/x")
    assert time.monotonic() - t0 < 10
    with pytest.raises(InputError, match=r"repository 'Models/X' is invalid"):
        api.publish(str(repo), "tiny", "oci://127.0.0.1:5000/Models/X")
    with pytest.raises(InputError) as e:
        api.publish(str(repo), "tiny", "oci://bob:s3cretpw@127.0.0.1:5000/models/x")
    assert "s3cretpw" not in str(e.value) and "credentials in the URL are refused" in str(e.value)
    with pytest.raises(InputError, match=r"not a sha256 digest"):
        api.pull("oci://127.0.0.1:5000/models/x@sha256:abc", str(tmp_path))


def test_cli_pull_positional_and_from_flag(repo, oci, registry, tmp_path):
    api.publish(str(repo), "tiny", oci, version=1)
    env = registry.env()
    res = run_cli("pull", f"{oci}:tiny-1", "--repo", str(tmp_path / "a"), env=env)
    assert res.returncode == 0, res.stderr
    assert "pulled: tiny version 1 ->" in res.stdout
    res = run_cli("pull", "--from_", f"{oci}:tiny-1", "--repo", str(tmp_path / "b"), env=env)
    assert res.returncode == 0, res.stderr
    assert _tree(tmp_path / "a" / "tiny" / "1") == _tree(tmp_path / "b" / "tiny" / "1")
    res = run_cli("verify", f"{oci}:tiny-1", env=env)
    assert res.returncode == 0 and "every sha256 matches" in res.stdout, res.stderr
    assert registry.password not in res.stdout + res.stderr


# --------------------------------------------------------------------------- hostile artefacts


def _tar_gz(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as t:
        for ti, data in entries:
            t.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    return ti, data


def _special(name: str, kind: bytes, link: str = "") -> tuple[tarfile.TarInfo, None]:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.linkname = link
    return ti, None


HOSTILE = {
    "dotdot": ([_file("2/../../escape.txt")], r"'2/../../escape.txt' is absolute or climbs out"),
    "absolute": ([_file("/tmp/abs-escape.txt")], r"'/tmp/abs-escape.txt' is absolute"),
    "symlink": ([_special("2/saved_model.pb", tarfile.SYMTYPE, "/etc/passwd")], r"is a link"),
    "hardlink": ([_file("2/a"), _special("2/b", tarfile.LNKTYPE, "2/a")], r"'2/b' is a link"),
    "fifo": ([_special("2/fifo", tarfile.FIFOTYPE)], r"device/fifo/special"),
    "outside": ([_file("3/saved_model.pb")], r"outside 2/"),
    "duplicate": ([_file("2/a", b"1"), _file("2/a", b"2")], r"appears twice"),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_safe_extract_refuses_hostile_archives(kind, tmp_path):
    entries, msg = HOSTILE[kind]
    layer = tmp_path / "layer.tar.gz"
    layer.write_bytes(_tar_gz(entries))
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(PublishError, match=msg):
        oci_target.safe_extract(layer, "2", dest)
    assert not (tmp_path / "escape.txt").exists() and not Path("/tmp/abs-escape.txt").exists()


def test_pull_refuses_a_hostile_artefact_from_the_registry(oci, registry, tmp_path):
    """Pushed with oras directly (as an attacker could), with our media types: nothing lands."""
    import oras.provider

    work = tmp_path / "evil"
    work.mkdir()
    layer = work / "2"
    layer.write_bytes(_tar_gz([_file("2/saved_model.pb"), _file("2/../../../escape.txt", b"pwn")]))
    cfg = work / "build_info.json"
    cfg.write_text(json.dumps({"name": "tiny", "version": 2, "parity": {"passed": True}}))
    client = oras.provider.Registry(hostname=registry.host, insecure=True, auth_backend="basic")
    client.auth.set_basic_auth(registry.user, registry.password)
    ref = oci[len("oci://"):] + ":tiny-2"
    client.push(target=ref, files=[f"{layer}:{oci_target.LAYER_MEDIA_TYPE}"],
                manifest_config=f"{cfg}:{oci_target.CONFIG_MEDIA_TYPE}",
                disable_path_validation=True, quiet=True)
    dest = tmp_path / "serving"
    with pytest.raises(PublishError, match=r"climbs out with '..': refusing the artefact"):
        api.pull(f"{oci}:tiny-2", str(dest))
    assert list(dest.rglob("*")) == []  # not even a staging directory is left
    assert not (tmp_path / "escape.txt").exists()


def _zero_bomb(path: Path, size: int, before: tuple[tuple[str, bytes], ...] = ()) -> Path:
    """A tar.gz layer holding ``2/variables/zeros`` of ``size`` zero bytes (plus ``before``),
    ~1 MB for 1 GiB, built in well under a second: after a full flush deflate starts afresh,
    so every 1 MiB block of zeros compresses to the same bytes and is written repeatedly."""
    import struct
    import zlib

    def member(name: str, data: bytes) -> bytes:
        ti = tarfile.TarInfo(name)
        ti.size = len(data)
        return ti.tobuf(tarfile.PAX_FORMAT) + data + bytes(-len(data) % 512)

    big = tarfile.TarInfo("2/variables/zeros")
    big.size = size
    head = b"".join(member(n, d) for n, d in before) + big.tobuf(tarfile.PAX_FORMAT)
    block, tail = bytes(1 << 20), bytes(1024)
    assert size % len(block) == 0
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = c.compress(head) + c.flush(zlib.Z_FULL_FLUSH)
    zeros = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)
    last = c.compress(tail) + c.flush()
    crc = zlib.crc32(head)
    for _ in range(size // len(block)):
        crc = zlib.crc32(block, crc)
    crc = zlib.crc32(tail, crc)
    with open(path, "wb") as f:
        f.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + first)
        for _ in range(size // len(block)):
            f.write(zeros)
        f.write(last + struct.pack("<II", crc, (len(head) + size + len(tail)) & 0xFFFFFFFF))
    return path


GIB = 1 << 30


def test_unpack_limit_policy():
    lim = oci_target.unpack_limit
    assert lim("5000", 1_000_000).files == 5000  # the artefact's own declaration
    assert lim("", 1_000_000).files == oci_target.UNPACK_FLOOR  # small layer: the floor
    assert lim("", 100_000_000).files == 800_000_000  # 8x the compressed layer
    assert lim(str(GIB), 1_000_000).files == oci_target.UNPACK_FLOOR  # a declaration is capped
    assert lim("5000", 1_000_000, max_unpacked_bytes=4096).files == 4096
    assert "--max_unpacked_bytes" in lim("", 1).why and "what its manifest declares" in lim("1", 1).why


def test_safe_extract_stops_before_writing_past_the_limit(tmp_path):
    layer = _zero_bomb(tmp_path / "2", GIB, (("2/saved_model.pb", b"x" * 100),))
    assert layer.stat().st_size < 2 << 20  # ~1 MB that inflates to 1 GiB
    dest = tmp_path / "dest"
    dest.mkdir()
    limit = oci_target.UnpackLimit(4096, "test")
    with pytest.raises(PublishError, match=r"unpacks to more than 4,096 bytes \(test\)"):
        oci_target.safe_extract(layer, "2", dest, limit=limit, ref="oci://r/m:t")
    written = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    assert written == 100  # saved_model.pb only: not a byte of the 1 GiB member


def _push_raw(registry: rs.OciRegistry, oci: str, tag: str, layer: Path, work: Path,
              annotations: dict[str, str] | None = None) -> None:
    """Push a crafted artefact with oras itself (as an attacker could), our media types."""
    import oras.provider

    cfg = work / "build_info.json"
    cfg.write_text(json.dumps({"name": "tiny", "version": 2, "parity": {"passed": True}}))
    client = oras.provider.Registry(hostname=registry.host, insecure=True, auth_backend="basic")
    client.auth.set_basic_auth(registry.user, registry.password)
    client.push(target=oci[len("oci://"):] + ":" + tag,
                files=[f"{layer}:{oci_target.LAYER_MEDIA_TYPE}"],
                manifest_config=f"{cfg}:{oci_target.CONFIG_MEDIA_TYPE}",
                manifest_annotations=annotations or {}, disable_path_validation=True, quiet=True)


def test_pull_stops_a_decompression_bomb_at_the_declared_size(oci, registry, tmp_path):
    """1 MB layer, 1 GiB unpacked, declaring 2 KiB: refused at 2 KiB, nothing left behind."""
    work = tmp_path / "w"
    work.mkdir()
    layer = _zero_bomb(work / "2", GIB, (("2/saved_model.pb", b"x"),))
    _push_raw(registry, oci, "tiny-2", layer, work, {"io.tfs-builder.total-bytes": "2048"})
    dest = tmp_path / "serving"
    with pytest.raises(PublishError, match=r"unpacks to more than 2,048 bytes \(what its manifest "
                                           r"declares, io.tfs-builder.total-bytes\)"):
        api.pull(f"{oci}:tiny-2", str(dest))
    assert list(dest.rglob("*")) == []  # staging removed, nothing installed


def test_pull_default_and_flag_limits_without_a_declaration(oci, registry, tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    layer = _zero_bomb(work / "2", GIB)
    _push_raw(registry, oci, "tiny-2", layer, work)
    dest = tmp_path / "serving"
    res = run_cli("pull", f"{oci}:tiny-2", "--repo", str(dest), env=registry.env())
    assert res.returncode == 2, res.stderr
    (line,) = res.stderr.strip().splitlines()
    assert f"unpacks to more than {oci_target.UNPACK_FLOOR:,} bytes (the default limit, 8x the " \
           f"{layer.stat().st_size:,}-byte layer; pass --max_unpacked_bytes" in line, line
    res = run_cli("pull", f"{oci}:tiny-2", "--repo", str(dest), "--max_unpacked_bytes", "1000000",
                  env=registry.env())
    assert res.returncode == 2 and "more than 1,000,000 bytes (--max_unpacked_bytes)" in res.stderr
    assert list(dest.rglob("*")) == []


def test_tampered_artefact_is_refused_by_manifest_check(repo, oci, registry, tmp_path):
    """A well-formed artefact whose files do not match its own manifest.json."""
    import oras.provider

    src = repo / "tiny" / "2"
    api.publish(str(repo), "tiny", str(tmp_path / "staged-src"))  # writes the local manifest
    m = compute_manifest(src)
    work = tmp_path / "w"
    work.mkdir()
    layer = work / "2"
    oci_target.write_layer(src, 2, m, layer)
    with tarfile.open(layer, "r:gz") as t:
        members = [(mi, t.extractfile(mi).read() if mi.isfile() else None) for mi in t.getmembers()]
    tampered = []
    for mi, data in members:
        if mi.name == "2/variables/variables.index":
            data = data[:-1] + bytes([data[-1] ^ 1])
        tampered.append((mi, data))
    layer.write_bytes(_tar_gz(tampered))
    client = oras.provider.Registry(hostname=registry.host, insecure=True, auth_backend="basic")
    client.auth.set_basic_auth(registry.user, registry.password)
    client.push(target=oci[len("oci://"):] + ":tiny-2", files=[f"{layer}:{oci_target.LAYER_MEDIA_TYPE}"],
                manifest_config=f"{src / 'assets.extra' / 'build_info.json'}:{oci_target.CONFIG_MEDIA_TYPE}",
                disable_path_validation=True, quiet=True)
    with pytest.raises(PublishError, match=r"do not match the artefact's manifest \(variables/variables.index\)"):
        api.pull(f"{oci}:tiny-2", str(tmp_path / "serving"))
    assert layout.list_versions(tmp_path / "serving" / "tiny") == []
    with pytest.raises(PublishError):
        api.verify(f"{oci}:tiny-2")


def test_pull_subprocess_killed_before_rename_leaves_no_version(repo, oci, registry, tmp_path):
    import signal

    api.publish(str(repo), "tiny", oci, version=1)
    env = {**os.environ, **registry.env(), "TFS_BUILDER_TEST_PAUSE_AT": "pull-extracted",
           "TFS_BUILDER_TEST_PAUSE_SECONDS": "60"}
    dest = tmp_path / "serving"
    p = subprocess.Popen([sys.executable, "-m", "builder", "pull", f"{oci}:tiny-1", "--repo", str(dest)],
                         cwd=ROOT, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        line = p.stderr.readline()
        assert "paused at pull-extracted" in line
        assert layout.list_versions(dest / "tiny") == []
        p.send_signal(signal.SIGKILL)
        p.wait(10)
    finally:
        if p.poll() is None:
            p.kill()
    assert layout.list_versions(dest / "tiny") == []
    assert [c.name for c in dest.iterdir() if c.name.startswith(".staging-")]  # what a kill leaves
    r = api.pull(f"{oci}:tiny-1", str(dest))
    assert r.action == "pulled"
    assert [c.name for c in dest.iterdir()] == ["tiny"]  # the dead puller's staging was cleaned
    api.verify(str(dest / "tiny" / "1"))
