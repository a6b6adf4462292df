"""SIGKILL the publisher at named steps and at random moments: a target shows the old state or the
complete new version, never a partial one, and a rerun completes (filesystem and real S3).

The publisher runs as ``python -m builder publish`` in its own process. ``TFS_BUILDER_TEST_PAUSE_AT``
makes it stop at a named step (it prints ``paused at STEP``), which is also the moment a polling
TF Serving would look: the invariant is checked then, again after the kill, and after the rerun.
"""

from __future__ import annotations

import os
import random
import selectors
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from builder.core import layout
from builder.core.errors import PublishError
from builder.publish import api
from builder.publish.targets.store import open_target
from tests.helpers import ROOT, run_builder
from tests.helpers import registry_servers as rs


@pytest.fixture(scope="module")
def template_repo(tmp_path_factory) -> Path:
    r = tmp_path_factory.mktemp("killrepo")
    rs.make_version(r, "tiny", 1, seed=0)
    rs.make_version(r, "tiny", 2, seed=1)
    return r


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "builder", *args], cwd=ROOT, text=True,
                            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for_pause(p: subprocess.Popen, step: str, timeout: float = 90) -> None:
    sel = selectors.DefaultSelector()
    sel.register(p.stderr, selectors.EVENT_READ)
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not sel.select(timeout=1):
            if p.poll() is not None:
                break
            continue
        line = p.stderr.readline()
        if not line:
            break
        seen.append(line)
        if f"paused at {step}" in line:
            return
    p.kill()
    raise AssertionError(f"publisher never paused at {step}: rc={p.poll()} stderr={''.join(seen)[-2000:]}")


def _kill(p: subprocess.Popen) -> None:
    p.send_signal(signal.SIGKILL)
    p.wait(20)
    assert p.returncode == -signal.SIGKILL


def _publish_args(repo: Path, to: str, version: int, keep: int = 0) -> list[str]:
    args = ["publish", "--repo", str(repo), "--name", "tiny", "--to", to, "--version", str(version)]
    return args + (["--keep", str(keep)] if keep else [])


# --------------------------------------------------------------------------- invariants


def local_visible(out: Path) -> list[int]:
    """Every numeric directory is a complete, verified version (what a poller may load)."""
    versions = layout.list_versions(out / "tiny")
    for v in versions:
        api.verify(str(out / "tiny" / str(v)))
    return versions


def s3_visible(url: str) -> tuple[list[int], list[int]]:
    """(loadable versions, all verified; numeric prefixes without saved_model.pb)."""
    target = open_target(url)
    loadable = target.versions("tiny")
    for v in loadable:
        target.verify("tiny", v)
    return loadable, target.partial_versions("tiny")


def _staging_left(out: Path) -> list[str]:
    return sorted(c.name for c in (out / "tiny").iterdir() if c.name.startswith("."))


# --------------------------------------------------------------------------- filesystem

LOCAL_STEPS = ["local-partial", "local-staged", "retention"]


@pytest.mark.parametrize("step", LOCAL_STEPS)
def test_filesystem_kill_at_step_then_rerun(step, template_repo, tmp_path):
    out = tmp_path / "serving"
    api.publish(str(template_repo), "tiny", str(out), version=1)  # the old state
    keep = 1 if step == "retention" else 0
    p = _start(_publish_args(template_repo, str(out), 2, keep),
               {"TFS_BUILDER_TEST_PAUSE_AT": step, "TFS_BUILDER_TEST_PAUSE_SECONDS": "120"})
    try:
        _wait_for_pause(p, step)
        at_pause = local_visible(out)
        _kill(p)
    finally:
        if p.poll() is None:
            p.kill()
    after_kill = local_visible(out)
    assert at_pause == after_kill
    if step == "retention":
        # v2 was complete before retention started; v1 went away in one rename
        assert after_kill == [2]
    else:
        assert after_kill == [1]  # the old state, untouched
        assert _staging_left(out)  # the dead publisher's staging dir (ignored by TF Serving)
    res = run_builder(*_publish_args(template_repo, str(out), 2, keep))
    assert res.returncode == 0, res.stderr
    assert local_visible(out) == ([2] if keep else [1, 2])
    assert _staging_left(out) == []  # stale staging of the killed pid cleaned by the rerun
    assert rs.tree(out / "tiny" / "2") == rs.tree(template_repo / "tiny" / "2")


@pytest.mark.slow
def test_filesystem_random_kills_never_show_a_partial_version(template_repo, tmp_path):
    rng = random.Random(1234)
    out = tmp_path / "serving"
    api.publish(str(template_repo), "tiny", str(out), version=1)
    outcomes = []
    for _ in range(5):
        # copying takes >= 6 x 0.15 s; the kill lands at a random moment inside that window
        p = _start(_publish_args(template_repo, str(out), 2), {
            "TFS_BUILDER_TEST_FILE_DELAY": "0.15", "TFS_BUILDER_TEST_PAUSE_AT": "publish-start",
            "TFS_BUILDER_TEST_PAUSE_SECONDS": "0"})
        _wait_for_pause(p, "publish-start")
        time.sleep(rng.uniform(0.0, 0.9))
        if p.poll() is None:
            _kill(p)
        outcomes.append(p.returncode)
        visible = local_visible(out)  # raises if any numeric dir is incomplete
        assert visible in ([1], [1, 2])
        if visible == [1, 2]:
            break
    res = run_builder(*_publish_args(template_repo, str(out), 2))
    assert res.returncode == 0, res.stderr
    assert local_visible(out) == [1, 2] and _staging_left(out) == []
    assert -signal.SIGKILL in outcomes  # at least one kill really landed mid-run


# --------------------------------------------------------------------------- S3

S3_STEPS = ["object-partial", "object-staged", "object-copy-partial", "object-before-saved-model",
            "object-published", "retention"]


@pytest.mark.slow
@pytest.mark.parametrize("step", S3_STEPS)
def test_s3_kill_at_step_then_rerun(step, template_repo, s3_server, monkeypatch):
    env = s3_server.env()
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    url = f"s3://{s3_server.bucket}/kill-{uuid.uuid4().hex[:8]}"
    api.publish(str(template_repo), "tiny", url, version=1)
    keep = 1 if step == "retention" else 0
    p = _start(_publish_args(template_repo, url, 2, keep),
               {**env, "TFS_BUILDER_TEST_PAUSE_AT": step, "TFS_BUILDER_TEST_PAUSE_SECONDS": "120"})
    try:
        _wait_for_pause(p, step)
        at_pause = s3_visible(url)
        _kill(p)
    finally:
        if p.poll() is None:
            p.kill()
    after_kill = s3_visible(url)
    assert at_pause == after_kill
    loadable, partial = after_kill
    if step in ("object-partial", "object-staged"):
        assert (loadable, partial) == ([1], [])  # only a non-numeric staging prefix exists
    elif step in ("object-copy-partial", "object-before-saved-model"):
        # copies land in 2/ but without saved_model.pb it is not a loadable SavedModel
        assert (loadable, partial) == ([1], [2])
    elif step == "object-published":
        assert (loadable, partial) == ([1, 2], [])
    else:  # retention: saved_model.pb of 1 went first, so 1 is no longer loadable
        assert (loadable, partial) == ([2], [1])
    res = run_builder(*_publish_args(template_repo, url, 2, keep), env=env)
    assert res.returncode == 0, res.stderr
    if step == "object-partial":
        assert "resuming: 1 of 6 files already staged" in res.stderr  # progress: the log channel
    if step in ("object-copy-partial", "object-before-saved-model"):
        assert "interrupted publish: completing it" in res.stderr
    assert s3_visible(url) == (([2], []) if keep else ([1, 2], []))
    fs = s3_server.fs()
    leftovers = [k for k in fs.find(url[5:] + "/tiny") if "/.staging-" in k]
    assert leftovers == []


@pytest.mark.slow
def test_s3_random_kills_never_show_an_incomplete_loadable_version(template_repo, s3_server, monkeypatch):
    env = s3_server.env()
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    url = f"s3://{s3_server.bucket}/rkill-{uuid.uuid4().hex[:8]}"
    api.publish(str(template_repo), "tiny", url, version=1)
    rng = random.Random(99)
    killed = 0
    for _ in range(5):
        # 6 uploads + 7 server-side copies, each followed by 0.1 s: kill inside that window
        p = _start(_publish_args(template_repo, url, 2), {
            **env, "TFS_BUILDER_TEST_FILE_DELAY": "0.1", "TFS_BUILDER_TEST_PAUSE_AT": "publish-start",
            "TFS_BUILDER_TEST_PAUSE_SECONDS": "0"})
        _wait_for_pause(p, "publish-start")
        time.sleep(rng.uniform(0.0, 1.5))
        if p.poll() is None:
            _kill(p)
            killed += 1
        loadable, _partial = s3_visible(url)  # verify() raises on an incomplete loadable one
        assert loadable[:1] == [1], f"version 1 must stay loadable, got {loadable}"
        if loadable == [1, 2]:
            break
    res = run_builder(*_publish_args(template_repo, url, 2), env=env)
    assert res.returncode == 0, res.stderr
    assert s3_visible(url) == ([1, 2], [])
    assert killed >= 1


def test_verify_rejects_what_a_kill_test_would_miss(template_repo, tmp_path):
    """The invariant checker itself fails on a partial numeric directory (it can fail)."""
    out = tmp_path / "serving"
    api.publish(str(template_repo), "tiny", str(out), version=1)
    partial = out / "tiny" / "3"
    partial.mkdir()
    (partial / "saved_model.pb").write_bytes((out / "tiny" / "1" / "saved_model.pb").read_bytes())
    with pytest.raises(PublishError):
        local_visible(out)


def test_version_appearing_during_publish_is_never_overwritten(template_repo, tmp_path):
    """Another publisher wins the race for 2/ while we are staged: we refuse, and clean up."""
    out = tmp_path / "serving"
    p = _start(_publish_args(template_repo, str(out), 2),
               {"TFS_BUILDER_TEST_PAUSE_AT": "local-staged", "TFS_BUILDER_TEST_PAUSE_SECONDS": "2"})
    try:
        _wait_for_pause(p, "local-staged")
        rival = tmp_path / "rival"
        rs.make_version(rival, "tiny", 2, seed=8)
        api.publish(str(rival), "tiny", str(out), version=2)  # lands first
        _out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 2
    assert "tiny/2 already exists with different content" in err
    assert rs.tree(out / "tiny" / "2") == rs.tree(rival / "tiny" / "2")
    assert _staging_left(out) == []
