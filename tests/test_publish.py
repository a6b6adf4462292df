"""publish / verify to a filesystem and to a real S3 server (SeaweedFS on 127.0.0.1).

Version directories are real tiny TF1 SavedModels (tests/registry_servers.make_version); a
published copy must still load in TensorFlow and reproduce the golden outputs it carries.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from builder.core import layout
from builder.core.errors import ConfigError, InputError, PublishError
from builder.publish import api
from tests.helpers import ROOT, run_builder
from tests.helpers import registry_servers as rs


@pytest.fixture
def repo(tmp_path) -> Path:
    r = tmp_path / "repo"
    rs.make_version(r, "tiny", 1, seed=0)
    rs.make_version(r, "tiny", 2, seed=1)
    return r


_tree = rs.tree
assert_serves_golden = rs.assert_serves_golden
run_cli = run_builder


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


# --------------------------------------------------------------------------- filesystem


def test_publish_to_directory_copies_every_file_with_manifest(repo, tmp_path):
    out = tmp_path / "serving"
    r = api.publish(str(repo), "tiny", str(out))
    assert (r.action, r.version) == ("published", 2)  # latest = newest
    pub, src = out / "tiny" / "2", repo / "tiny" / "2"
    assert layout.list_versions(out / "tiny") == [2]
    assert [c.name for c in (out / "tiny").iterdir()] == ["2"]  # no staging left behind
    # the manifest was written into the local version too, and both copies are byte-identical
    assert _tree(pub) == _tree(src)
    man = json.loads((pub / "assets.extra" / "manifest.json").read_text())
    files = {k: v for k, v in _tree(src).items() if k != "assets.extra/manifest.json"}
    assert set(man["files"]) == set(files) and len(files) == 6
    for rel, data in files.items():
        assert man["files"][rel] == {"sha256": _sha(data), "bytes": len(data)}
    assert "variables" in man["dirs"]
    assert r.content_digest == man["content_digest"] and r.files == 6
    assert api.verify(str(pub)).digest() == r.content_digest
    assert_serves_golden(pub)


def test_republish_identical_is_a_noop(repo, tmp_path):
    out = tmp_path / "serving"
    api.publish(str(repo), "tiny", f"file://{out}")
    before = {p: p.stat().st_mtime_ns for p in (out / "tiny" / "2").rglob("*")}
    r = api.publish(str(repo), "tiny", str(out), version=2)
    assert r.action == "unchanged"
    assert {p: p.stat().st_mtime_ns for p in (out / "tiny" / "2").rglob("*")} == before


def test_refuses_to_overwrite_a_different_version(repo, tmp_path):
    out = tmp_path / "serving"
    api.publish(str(repo), "tiny", str(out))
    before = _tree(out / "tiny" / "2")
    other = tmp_path / "other"
    rs.make_version(other, "tiny", 2, seed=7)  # same number, different weights
    with pytest.raises(PublishError, match=r"tiny/2 already exists with different content"):
        api.publish(str(other), "tiny", str(out))
    assert _tree(out / "tiny" / "2") == before
    assert [c.name for c in (out / "tiny").iterdir()] == ["2"]


def test_latest_must_have_passed_parity(repo, tmp_path):
    rs.make_version(repo, "tiny", 3, seed=2, parity=False)
    out = tmp_path / "serving"
    with pytest.raises(PublishError, match=r"tiny/3/assets.extra/build_info.json does not record a "
                                           r"passed parity.*--version 2"):
        api.publish(str(repo), "tiny", str(out))
    assert not out.exists()
    assert not (repo / "tiny" / "3" / "assets.extra" / "manifest.json").exists()
    assert api.publish(str(repo), "tiny", str(out), version="2").action == "published"


def test_refuses_version_without_build_info_and_unknown_version(repo, tmp_path):
    (repo / "tiny" / "2" / "assets.extra" / "build_info.json").unlink()
    with pytest.raises(PublishError, match=r"build_info.json is missing"):
        api.publish(str(repo), "tiny", str(tmp_path / "o"))
    with pytest.raises(InputError, match=r"--version 9: .* has versions 1, 2"):
        api.publish(str(repo), "tiny", str(tmp_path / "o"), version=9)
    with pytest.raises(InputError, match=r"--keep 'x' is not an integer"):
        api.publish(str(repo), "tiny", str(tmp_path / "o"), keep="x")
    assert not (tmp_path / "o").exists()


def test_local_version_edited_after_its_manifest_is_refused(repo, tmp_path):
    api.publish(str(repo), "tiny", str(tmp_path / "a"))
    with open(repo / "tiny" / "2" / "variables" / "variables.index", "ab") as f:
        f.write(b"x")
    with pytest.raises(PublishError, match=r"no longer matches its assets.extra/manifest.json "
                                           r"\(changed: variables/variables.index\)"):
        api.publish(str(repo), "tiny", str(tmp_path / "b"))
    assert not (tmp_path / "b").exists()


def test_verify_finds_changed_missing_and_extra_files(repo, tmp_path):
    out = tmp_path / "serving"
    api.publish(str(repo), "tiny", str(out))
    pub = out / "tiny" / "2"
    data = bytearray((pub / "variables" / "variables.data-00000-of-00001").read_bytes())
    data[-1] ^= 0xFF  # same size, one bit pattern different
    (pub / "variables" / "variables.data-00000-of-00001").write_bytes(bytes(data))
    with pytest.raises(PublishError, match=r"variables.data-00000-of-00001 has sha256"):
        api.verify(str(pub))
    (pub / "assets.extra" / "golden.npz").unlink()
    (pub / "extra.txt").write_text("x")
    with pytest.raises(PublishError) as e:
        api.verify(str(pub))
    assert "golden.npz is missing" in str(e.value) and "extra.txt is not in the manifest" in str(e.value)
    res = run_cli("verify", str(pub))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "does not match its manifest" in lines[0]


def test_retention_keeps_newest_and_labelled_versions(tmp_path):
    repo, out = tmp_path / "repo", tmp_path / "serving"
    for v in (1, 2, 3, 4):
        rs.make_version(repo, "tiny", v, seed=v)
        api.publish(str(repo), "tiny", str(out), version=v)
    cfg = tmp_path / "models.config"
    cfg.write_text('model_config_list { config { name: "tiny" base_path: "/models/tiny" '
                   'model_platform: "tensorflow" version_labels { key: "stable" value: 1 } } '
                   'config { name: "other" base_path: "/models/other" model_platform: "tensorflow" '
                   'version_labels { key: "stable" value: 3 } } }')
    r = api.publish(str(repo), "tiny", str(out), keep=1, models_config=str(cfg), dry_run=True)
    assert (r.action, r.deleted) == ("unchanged", [2, 3])
    assert layout.list_versions(out / "tiny") == [1, 2, 3, 4]  # dry run deletes nothing
    r = api.publish(str(repo), "tiny", str(out), keep=2, models_config=str(cfg))
    assert r.deleted == [2]
    assert layout.list_versions(out / "tiny") == [1, 3, 4]
    assert [c.name for c in (out / "tiny").iterdir() if c.name.startswith(".")] == []
    for v in (1, 3, 4):
        api.verify(str(out / "tiny" / str(v)))


def test_models_config_errors_stop_before_anything_is_written(repo, tmp_path):
    cfg = tmp_path / "models.config"
    cfg.write_text('model_config_list { config { name: "other" base_path: "/m/other" } }')
    with pytest.raises(ConfigError, match=r"--models_config .* has no model named 'tiny' \(it has: other\)"):
        api.publish(str(repo), "tiny", str(tmp_path / "o"), keep=1, models_config=str(cfg))
    cfg.write_text("model_config_list { config { name: ")
    with pytest.raises(ConfigError, match=r"--models_config .*: not a ModelServerConfig"):
        api.publish(str(repo), "tiny", str(tmp_path / "o"), keep=1, models_config=str(cfg))
    with pytest.raises(InputError, match=r"--models_config .*nope.config: cannot read it"):
        api.publish(str(repo), "tiny", str(tmp_path / "o"), models_config=str(tmp_path / "nope.config"))
    assert not (tmp_path / "o").exists()
    assert not (repo / "tiny" / "2" / "assets.extra" / "manifest.json").exists()


def test_dry_run_writes_nothing(repo, tmp_path):
    r = api.publish(str(repo), "tiny", str(tmp_path / "o"), dry_run=True)
    assert r.action == "dry-run" and r.files == 6
    assert not (tmp_path / "o").exists()
    assert not (repo / "tiny" / "2" / "assets.extra" / "manifest.json").exists()


def test_cli_publish_verify_and_one_line_errors(repo, tmp_path):
    out = tmp_path / "serving"
    res = run_cli("publish", "--repo", str(repo), "--name", "tiny", "--to", str(out), "--version", "1")
    assert res.returncode == 0, res.stderr
    assert f"published: tiny version 1 -> {out}/tiny/1 (6 files" in res.stdout
    res = run_cli("verify", str(out / "tiny" / "1"))
    assert res.returncode == 0 and "every sha256 matches" in res.stdout
    res = run_cli("publish", "--repo", str(repo), "--name", "tiny", "--to", str(out), "--keep", "-1")
    assert res.returncode == 2 and res.stderr.strip() == "error: --keep -1 must be 0 (keep everything) " \
                                                         "or a positive count"
    res = run_cli("publish", "--help")
    assert res.returncode == 0 and "--models_config" in res.stdout + res.stderr and "--keep" in res.stderr + res.stdout


def test_missing_extras_name_the_pip_install(repo, tmp_path):
    code = ("import sys; sys.modules['s3fs'] = None; sys.modules['gcsfs'] = None\n"
            "from builder.publish import api\n"
            "from builder.core.errors import PublishError\n"
            "for url in ('s3://b/m', 'gs://b/m'):\n"
            "    try:\n"
            f"        api.publish({str(repo)!r}, 'tiny', url)\n"
            "    except PublishError as e:\n"
            "        print(e)\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert "pip install 'tfs-builder[s3]'" in lines[0] and "pip install 'tfs-builder[gcs]'" in lines[1]


def test_credentials_in_target_url_are_refused_without_echo(repo):
    with pytest.raises(PublishError) as e:
        api.publish(str(repo), "tiny", "s3://AKIAX:hunter2secret@bucket/models")
    assert "hunter2secret" not in str(e.value) and "credentials in the URL are refused" in str(e.value)


# --------------------------------------------------------------------------- S3 (SeaweedFS)


def _objects(s3_server: rs.SeaweedS3, url: str) -> dict[str, int]:
    fs = s3_server.fs()
    prefix = url[len("s3://"):]
    try:
        found = fs.find(prefix, detail=True)
    except FileNotFoundError:
        return {}
    return {k[len(prefix) + 1:]: v["size"] for k, v in found.items() if v.get("type") != "directory"}


def test_s3_publish_verify_and_noop(repo, s3, s3_server, tmp_path):
    r = api.publish(str(repo), "tiny", s3, version=1)
    assert (r.action, r.target) == ("published", f"{s3}/tiny/1")
    local = _tree(repo / "tiny" / "1")
    objs = _objects(s3_server, s3)
    assert objs == {f"tiny/1/{k}": len(v) for k, v in local.items()}  # no staging prefix left
    fs = s3_server.fs()
    for rel, data in local.items():
        assert fs.cat_file(f"{s3[5:]}/tiny/1/{rel}") == data
    assert api.verify(f"{s3}/tiny/1").digest() == r.content_digest
    assert api.publish(str(repo), "tiny", s3, version=1).action == "unchanged"
    # download it like a fleet syncing the bucket: it serves
    dl = tmp_path / "dl"
    fs.get(f"{s3[5:]}/tiny/1", str(dl), recursive=True)
    assert_serves_golden(dl)


def test_s3_conflict_tamper_and_retention(repo, s3, s3_server, tmp_path):
    for v in (1, 2):
        api.publish(str(repo), "tiny", s3, version=v)
    other = tmp_path / "other"
    rs.make_version(other, "tiny", 2, seed=9)
    with pytest.raises(PublishError, match=r"tiny/2 already exists with different content"):
        api.publish(str(other), "tiny", s3)
    rs.make_version(repo, "tiny", 3, seed=3)
    r = api.publish(str(repo), "tiny", s3, keep=1)
    assert (r.version, r.deleted) == (3, [1, 2])
    assert sorted({k.split("/")[1] for k in _objects(s3_server, s3)}) == ["3"]
    fs = s3_server.fs()
    key = f"{s3[5:]}/tiny/3/assets.extra/golden.npz"
    data = bytearray(fs.cat_file(key))
    data[10] ^= 1
    fs.pipe_file(key, bytes(data))
    with pytest.raises(PublishError, match=r"tiny/3/assets.extra/golden.npz has sha256"):
        api.verify(f"{s3}/tiny/3")


def test_s3_labels_protect_versions(repo, s3, tmp_path):
    rs.make_version(repo, "tiny", 3, seed=3)
    for v in (1, 2, 3):
        api.publish(str(repo), "tiny", s3, version=v)
    cfg = tmp_path / "models.config"
    cfg.write_text('model_config_list { config { name: "tiny" base_path: "s3://x/tiny" '
                   'version_labels { key: "canary" value: 1 } } }')
    r = api.publish(str(repo), "tiny", s3, keep=1, models_config=str(cfg))
    assert r.deleted == [2]
    from builder.publish.targets.store import open_target

    assert open_target(s3).versions("tiny") == [1, 3]


def test_s3_wrong_secret_and_missing_bucket(repo, s3, s3_server, monkeypatch):
    wrong = "WRONG-" + s3_server.secret_key[::-1]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    with pytest.raises(PublishError, match=r"access denied|does not exist") as e:
        api.publish(str(repo), "tiny", s3)
    assert wrong not in str(e.value)
    res = run_cli("publish", "--repo", str(repo), "--name", "tiny", "--to", s3)
    assert res.returncode == 2
    assert wrong not in res.stdout + res.stderr and s3_server.secret_key not in res.stdout + res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    with pytest.raises(PublishError, match=r"bucket 'no-such-bucket' does not exist"):
        api.publish(str(repo), "tiny", "s3://no-such-bucket/models")
    assert _objects(s3_server, s3) == {}


def test_s3_endpoint_where_nothing_listens(repo, s3, s3_server, tmp_path):
    """A closed port answers at once with "cannot reach ENDPOINT", not after the back end's
    retries and not as a "missing bucket"; nothing is written to the bucket."""
    port = rs.free_ports(1)[0]  # bound and released: nothing listens there now
    dead = f"http://127.0.0.1:{port}"
    env = {**s3_server.env(), "AWS_ENDPOINT_URL": dead}
    res = run_cli("publish", "--repo", str(repo), "--name", "tiny", "--to", s3, env=env)
    assert res.returncode == 2
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith(f"error: {s3}: cannot reach {dead} (") and "AWS_ENDPOINT_URL" in line, line
    res = run_cli("verify", f"{s3}/tiny/2", env=env)
    assert res.returncode == 2 and f"cannot reach {dead}" in res.stderr
    assert _objects(s3_server, s3) == {}


def test_s3_cli_publish_takes_endpoint_and_keys_from_environment(repo, s3, s3_server):
    env = s3_server.env()
    res = run_cli("publish", "--repo", str(repo), "--name", "tiny", "--to", s3, env=env)
    assert res.returncode == 0, res.stderr
    assert s3_server.secret_key not in res.stdout + res.stderr
    assert "published: tiny version 2" in res.stdout
    res = run_cli("verify", f"{s3}/tiny/2", env=env)
    assert res.returncode == 0 and "every sha256 matches" in res.stdout, res.stderr
