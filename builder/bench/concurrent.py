"""The benchmark's concurrent-clients mode:
``python -m builder benchmark --concurrent_clients 1,4,16 REPO/NAME[/VERSION]``.

Why a mode of its own: the batch-size table answers "how fast is one request of N rows", but a
production server mostly sees many clients sending one row each, and there its throughput and
tail latency depend on server-side batching. This mode serves one exported version from two
local servers side by side - without batching, and with a batching_parameters.txt (the one
``tune`` wrote for the model unless ``--batching_parameters_file`` names another) - drives both
with N closed-loop gRPC clients sending batch-1 requests, and runs the model alone in-process at
the file's batch size as the ceiling. Rounds alternate the order (so drift in machine load hits
both servers alike) and ratios are taken within a round. The measuring is
``builder.tune.compare.concurrent_clients`` (shared with ``tune``); this module picks the file,
records the machine and the command, and writes the table.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from builder.bench.candidates import BenchOptions, CandidateSpec
from builder.core.errors import InputError

DEFAULT_SECONDS = 5.0  # measuring time per concurrency level and server, per round


def check(o: BenchOptions) -> None:
    """The mode's own flag checks (cheap, before anything loads)."""
    if not o.concurrent_clients:
        return
    if any(not isinstance(c, int) or c < 1 for c in o.concurrent_clients):
        raise InputError(f"--concurrent_clients {o.concurrent_clients}: use positive client counts, e.g. 1,4,16")
    kinds = [f"{c.label} ({c.kind})" for c in o.candidates]
    if len(o.candidates) != 1 or o.candidates[0].kind != "export":
        raise InputError("--concurrent_clients serves one exported version from local servers with and without "
                         f"batching: pass exactly one REPO/NAME[/VERSION] candidate (got {', '.join(kinds)})")
    if o.batching_parameters_file and not Path(o.batching_parameters_file).is_file():
        raise InputError(f"--batching_parameters_file {o.batching_parameters_file}: no such file")


def _version_of(spec: CandidateSpec) -> tuple[Path, str, int]:
    """(repo, model name, version) of an export candidate laid out as REPO/NAME/VERSION."""
    from builder.core.layout import parse_version_name

    vdir = Path(spec.target)
    version = parse_version_name(vdir.name)
    if version is None:
        raise InputError(f"candidate {spec.spec!r}: {vdir} is not a version directory (REPO/NAME/VERSION): "
                         "--concurrent_clients serves it the way TF Serving would, from its model directory")
    return vdir.parent.parent, vdir.parent.name, version


def batching_file(o: BenchOptions, repo: Path, name: str) -> tuple[str, str]:
    """(path, where it came from): ``--batching_parameters_file``, else the file ``tune`` wrote."""
    if o.batching_parameters_file:
        return str(o.batching_parameters_file), "--batching_parameters_file"
    from builder.config.companions import find_tuned

    tuned = find_tuned(repo, [name])
    if tuned is None:
        raise InputError(f"--concurrent_clients: no tuned batching file for {name} in {repo}: run "
                         f"`python -m builder tune --repo {repo} --name {name}` first, or pass "
                         "--batching_parameters_file FILE")
    return str(tuned.path), f"tuned by `python -m builder tune` ({tuned.path})"


def run(o: BenchOptions, say: Callable[[str], None], command: str = "") -> dict[str, Any]:
    """Measure and return the document (``write_outputs`` writes it)."""
    from builder.bench.measure import machine_info
    from builder.tune.compare import concurrent_clients

    check(o)
    repo, name, version = _version_of(o.candidates[0])
    path, origin = batching_file(o, repo, name)
    started = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    seconds = o.seconds or DEFAULT_SECONDS
    say(f"concurrent clients {','.join(map(str, o.concurrent_clients))}: {name} version {version} through "
        f"local servers without batching and with {path}; {o.repeats} round(s) of {seconds:g} s per level")
    doc = concurrent_clients(str(repo), name, path, version, tuple(o.concurrent_clients), seconds,
                             o.repeats, say)
    return {"tool": "tfs-builder benchmark --concurrent_clients", "created": started, "command": command,
            "machine": machine_info(), "batching_parameters_origin": origin,
            "settings": {"concurrent_clients": list(o.concurrent_clients), "seconds": seconds,
                         "rounds": o.repeats, "request_rows": 1, "protocol": "gRPC Predict, loopback",
                         "clients": "closed loop, one child process"},
            **doc}


def render_markdown(doc: dict[str, Any]) -> str:
    """The comparison as a Markdown section: what ran where, one row per concurrency level."""
    m, s = doc["model"], doc["settings"]
    lines = [
        f"Concurrent clients, measured {doc['created']} on {doc['cpu_summary']}: {m['name']} version "
        f"{m['version']}, {s['rounds']} round(s) of {s['seconds']:g} s per level and server, batch-1 gRPC "
        "requests from closed-loop clients in one child process, the two local servers side by side "
        "(order alternating per round).",
        f"Batching: {doc['batching']} ({doc['batching_parameters_origin']}).",
        "",
        "| clients | no batching req/s | p50 ms | p99 ms | batching req/s | p50 ms | p99 ms | speedup "
        "| per CPU-s | of in-process |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for lv in doc["levels"]:
        nb, b = lv["no_batching"], lv["batching"]
        lines.append(
            f"| {lv['concurrency']} | {nb['rps']:g} | {nb['p50_ms']:g} | {nb['p99_ms']:g} | {b['rps']:g} | "
            f"{b['p50_ms']:g} | {b['p99_ms']:g} | {_x(lv['speedup'])} | {_x(lv['speedup_per_cpu_s'])} | "
            f"{_pct(lv['fraction_of_in_process'])} |")
    lines += [
        "",
        f"req/s and latencies are medians over rounds; speedup is batching / no batching within a round "
        f"(median), per CPU-s the same for requests per CPU-second of server and clients (robust to "
        f"other load on the host); of in-process: batching req/s over the model alone at batch "
        f"{doc['execution_batch_size']} ({_num(doc['in_process_images_per_s'])} images/s). Load average "
        f"at the end: {doc['load_avg_end'][0]}.",
    ]
    errors = sum(lv[k]["errors"] for lv in doc["levels"] for k in ("no_batching", "batching"))
    if errors:
        lines.append(f"WARNING: {errors} request(s) failed; their latencies are not in the table.")
    if doc.get("command"):
        lines += ["", f"Command: `{doc['command']}`"]
    return "\n".join(lines) + "\n"


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.0%}"


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:g}"


def output_names(basename: str | None) -> tuple[str, str]:
    base = basename or "concurrent_clients"
    return f"{base}.json", f"{base}.md"


def write_outputs(doc: dict[str, Any], out_dir: str | os.PathLike, basename: str | None = None) -> list[Path]:
    """BASENAME.json and BASENAME.md (default concurrent_clients.*), each written atomically."""
    from builder.bench.report import jsonable
    from builder.core.layout import atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jname, mname = output_names(basename)
    atomic_write_text(out / jname, json.dumps(jsonable(doc), indent=2, allow_nan=False) + "\n")
    atomic_write_text(out / mname, render_markdown(doc))
    return [out / jname, out / mname]
