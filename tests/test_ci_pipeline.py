"""scripts/ci_pipeline end to end: the real script, the real commands, a real local server.

The tiny TF2 SavedModel (two outputs) goes through export -> parity -> config -> serving ->
publish; a second check tampers with the golden outputs to prove the serving step compares
answers, and a fast run proves the pipeline stops at the first failure with its exit code.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import ROOT, SCRIPTS, load_script

SCRIPT = SCRIPTS / "ci_pipeline"


def _load_script():
    return load_script("ci_pipeline")


def _run(*args: str, env_extra: dict | None = None, timeout: float = 900):
    env = dict(os.environ)
    env.pop("GITHUB_STEP_SUMMARY", None)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, stdin=subprocess.DEVNULL)


def _summary_rows(stdout: str) -> dict[str, list[str]]:
    block = stdout[stdout.index("tfs-builder CI pipeline summary"):]
    rows = {}
    for line in block.splitlines():
        parts = line.split()
        if parts and parts[0] in ("export", "parity", "config", "preflight", "serving", "integration",
                                  "publish"):
            rows[parts[0]] = parts[1:]
    return rows


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, tiny_tf2_sm):
    work = tmp_path_factory.mktemp("ci-pipeline")
    r = _run("--model", str(tiny_tf2_sm), "--flow", "savedmodel", "--name", "tiny",
             "--repo", str(work / "repo"), "--batch_sizes", "1,4",
             "--publish_to", str(work / "published"), "--summary_json", str(work / "summary.json"),
             env_extra={"GITHUB_STEP_SUMMARY": str(work / "step-summary.md")})
    return work, r


@pytest.mark.slow
def test_pipeline_passes_end_to_end(pipeline):
    work, r = pipeline
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    rows = _summary_rows(r.stdout)
    assert {k: v[0] for k, v in rows.items()} == {
        "export": "ok", "parity": "ok", "config": "ok", "preflight": "ok", "serving": "ok",
        "integration": "skipped", "publish": "ok"}
    assert all(float(v[1]) >= 0 for k, v in rows.items() if k != "integration")
    assert "PASSED in" in r.stdout
    # the step order in the log is the pipeline order
    marks = [r.stdout.index(f"==> {s}") for s in ("export", "parity", "config", "preflight", "serving",
                                                  "publish")]
    assert marks == sorted(marks)

    summary = json.loads((work / "summary.json").read_text())
    assert summary["passed"] is True and summary["exit_code"] == 0 and summary["version"] == 1
    serving = next(s for s in summary["steps"] if s["name"] == "serving")
    assert "version 1 AVAILABLE" in serving["detail"]
    assert "predict on 4 golden sample(s) matches" in serving["detail"]  # max batch size 4
    assert "metrics served" in serving["detail"]
    assert "max_abs_diff" in next(s for s in summary["steps"] if s["name"] == "parity")["detail"]

    repo, pub = work / "repo" / "tiny" / "1", work / "published" / "tiny" / "1"
    assert (pub / "saved_model.pb").read_bytes() == (repo / "saved_model.pb").read_bytes()
    assert (pub / "assets.extra" / "manifest.json").is_file()
    assert (work / "repo" / "models.config").is_file()
    md = (work / "step-summary.md").read_text()
    assert "| step | status | seconds | detail |" in md and "| serving | ✅ ok |" in md


@pytest.mark.slow
def test_serving_step_rejects_wrong_answers(pipeline, tmp_path):
    """Same repo, golden outputs shifted: the serving step must fail on the comparison."""
    work, r = pipeline
    assert r.returncode == 0, r.stdout[-3000:]
    repo = tmp_path / "repo"
    shutil.copytree(work / "repo" / "tiny", repo / "tiny")
    golden = repo / "tiny" / "1" / "assets.extra" / "golden.npz"
    with np.load(golden) as z:
        arrays = {k: z[k] for k in z.files}
    key = sorted(k for k in arrays if k.startswith("out/"))[0]
    arrays[key] = arrays[key] + 0.5
    np.savez(golden, **arrays)

    mod = _load_script()
    a = mod.parser().parse_args(["--model", "unused", "--name", "tiny", "--repo", str(repo),
                                  "--serve_timeout", "300"])
    state = {"version": 1, "info": mod.build_info(repo, "tiny", 1)}
    mod.step_config(a, state)
    with pytest.raises(mod.StepFailed, match=f"output '{key[4:]}' differs from the golden"):
        mod.step_serving(a, state)


def test_pipeline_stops_at_first_failure(tmp_path):
    r = _run("--model", str(tmp_path / "missing-model"), "--name", "tiny", "--repo",
             str(tmp_path / "repo"), "--publish_to", str(tmp_path / "pub"),
             "--summary_json", str(tmp_path / "s.json"), timeout=300)
    assert r.returncode == 2, r.stdout + r.stderr
    rows = _summary_rows(r.stdout)
    assert rows["export"][0] == "FAILED" and "error:" in " ".join(rows["export"])
    assert [rows[s][:2] for s in ("parity", "config", "preflight", "serving", "integration", "publish")] == \
        [["not", "run"]] * 6
    assert "FAILED at step 'export' (exit 2)" in r.stdout
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["passed"] is False and s["exit_code"] == 2
    assert not (tmp_path / "pub").exists() and not (tmp_path / "repo" / "models.config").exists()


def test_summary_table_is_readable():
    mod = _load_script()
    steps = [mod.Step("export", "ok", 12.34, "tiny version 3"), mod.Step("parity", "FAILED", 0.01,
             "x" * 200), mod.Step("publish")]
    text = mod.summary_text(steps, 12.4, steps[1], 1)
    lines = text.splitlines()
    assert any(line.startswith("export") and "ok" in line and "12.3" in line for line in lines)
    assert max(len(line) for line in lines) <= 160  # long details are cut for CI logs
    assert "FAILED at step 'parity' (exit 1) after 12.4 s" in text


# ------------------------------------------------------------------------------------------
# examples/ci: valid CI files whose commands use flags that exist
# ------------------------------------------------------------------------------------------

EXAMPLES = ROOT / "examples" / "ci"


@pytest.mark.parametrize("path, schema", [
    (EXAMPLES / "github-actions.yml", "vendor.github-workflows"),
    (EXAMPLES / "gitlab-ci.yml", "vendor.gitlab-ci"),
])
def test_example_ci_files_match_their_schemas(path, schema):
    """check-jsonschema's vendored (offline) GitHub workflow / GitLab CI schemas."""
    r = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema,
                        str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def _strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for v in node.values():
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)


def _flag_names(argv: list[str]) -> list[str]:
    """Flag names, not looking inside the values of --export_args/--publish_args."""
    out = []
    for i, a in enumerate(argv):
        if a.startswith("--") and not (i and argv[i - 1] in ("--export_args", "--publish_args")):
            out.append(a[2:].split("=", 1)[0])
    return out


def test_example_ci_commands_use_real_flags():
    import inspect
    import shlex

    import yaml

    from builder.deploy import command
    from builder.example import facenet
    from builder.export import pipeline

    mod = _load_script()
    known = {
        "ci_pipeline": {a.dest for a in mod.parser()._actions},
        "build_serving_image": {a.dest for a in load_script("build_serving_image").parser()._actions},
        "deploy": set(inspect.signature(command.deploy_command).parameters),
        "example": set(inspect.signature(facenet.example_command).parameters),
        "export": set(inspect.signature(pipeline.export_command).parameters),
    }
    seen: dict[str, int] = dict.fromkeys(known, 0)
    for path in sorted(EXAMPLES.glob("*.yml")):
        doc = yaml.safe_load(path.read_text())
        variables = doc.get("variables", {}) if isinstance(doc.get("variables"), dict) else {}
        for text in _strings(doc):
            text = text.replace("\\\n", " ")
            for line in text.splitlines():
                if not any(m in line for m in ("scripts/ci_pipeline", "scripts/build_serving_image",
                                               "-m builder")):
                    continue
                argv = shlex.split(line)
                for i, tok in enumerate(argv):
                    if tok.endswith("scripts/ci_pipeline"):
                        prog, rest = "ci_pipeline", argv[i + 1:]
                    elif tok.endswith("scripts/build_serving_image"):
                        prog, rest = "build_serving_image", argv[i + 1:]
                    elif tok == "builder" and argv[i - 1] == "-m":
                        prog, rest = argv[i + 1], argv[i + 2:]
                    else:
                        continue
                    unknown = set(_flag_names(rest)) - known[prog]
                    assert not unknown, f"{path.name}: {prog} has no flag(s) {sorted(unknown)}"
                    seen[prog] += 1
                    if "--export_args" in rest:
                        value = rest[rest.index("--export_args") + 1]
                        if value.startswith("$"):
                            value = variables[value.strip("${}")]
                        bad = set(_flag_names(shlex.split(value))) - known["export"]
                        assert not bad, f"{path.name}: export has no flag(s) {sorted(bad)}"
                        seen["export"] += 1
    assert all(seen.values()), seen  # every command appears in the examples
