"""Concurrent-clients benchmark: the same model through the local server without batching and with
a batching_parameters.txt, and the model alone in-process at that file's batch size - interleaved
rounds in one run, so a change in machine load hits all three alike.

This is the measurement of the benchmark's concurrent-clients mode (N closed-loop clients, one
row per request, gRPC on loopback): ``python -m builder benchmark --concurrent_clients ...``
(``builder.bench.concurrent``) calls ``concurrent_clients``; ``python -m builder.tune.compare``
runs it with its own flags.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from builder.tune import load, profile, system, tuner


def _median_result(rs: list[load.LoadResult]) -> dict:
    """Per-field medians over rounds, plus the spread of requests/s."""
    keys = ("rps", "p50_ms", "p90_ms", "p99_ms")
    out: dict[str, Any] = {k: round(statistics.median(getattr(r, k) for r in rs), 2) for k in keys}
    per_cpu = [r.requests_per_cpu_s for r in rs if r.requests_per_cpu_s]
    out["requests_per_cpu_s"] = round(statistics.median(per_cpu), 3) if per_cpu else None
    out["rps_min"], out["rps_max"] = min(r.rps for r in rs), max(r.rps for r in rs)
    out["errors"] = sum(r.error_count for r in rs)
    out["rounds"] = [r.as_dict() for r in rs]
    return out


def _med(values: list[float | None]) -> float | None:
    v = [x for x in values if x is not None]
    return round(statistics.median(v), 3) if v else None


def concurrent_clients(repo: str, name: str, batching_parameters_file: str, version: Any = None,
                       concurrency: tuple[int, ...] = (16,), seconds: float = 5.0, rounds: int = 3,
                       say: Any = None) -> dict:
    """Rounds of: no batching and batching with ``batching_parameters_file`` (their order alternating
    from round to round, so drift in machine load cancels), then the model alone at the file's
    execution batch size, for each concurrency level. Ratios are taken within a round (neighbours
    in time) and their median reported; requests per CPU-second (server + clients) is reported
    beside requests/s, since it does not depend on the CPU share other processes leave."""
    from builder.serve.batching import read_options

    say = say or tuner.Progress()
    req = tuner.resolve(repo, name, version, concurrency, seconds)
    opts = read_options(batching_parameters_file)
    exec_size = opts.execution_limit
    cpu = system.cpu_info()
    say(f"{name} v{req.version} on {cpu.summary()}; load {system.load_average()}")
    model = profile.load_model(req.version_dir, req.signature)
    request = model.request(name)
    rows: dict[str, list] = {"no_batching": [], "batching": [], "in_process": []}
    with tempfile.TemporaryDirectory(prefix="tfs-compare-") as tmp:
        cfg = tuner._models_config(req, Path(tmp))
        with tuner.server_pair(cfg, req.concurrency, batching_parameters_file) as (plain, batched), \
                load.LoadClient(request, tmp) as client:
            for s in (plain, batched):
                s.wait_until_ready(300)
                load.prime(s.grpc_target, request)
            sampler = system.CpuSampler()
            for i in range(rounds):
                order = [("no_batching", plain), ("batching", batched)]
                for label, server in (order if i % 2 == 0 else order[::-1]):
                    rs = [client.measure(server.grpc_target, c, seconds) for c in req.concurrency]
                    for r in rs:
                        r.server_cpu_s = round(sampler.between(*r.window), 3)
                    rows[label].append(rs)
                    say(f"round {i + 1}/{rounds} {label}: " + "; ".join(
                        f"{r.concurrency} clients {r.rps:g} req/s p99 {r.p99_ms:g} ms "
                        f"{r.requests_per_cpu_s}/CPU-s (load {r.load_avg[0]})" for r in rs))
                pts = profile.profile(model, exec_size, seconds=seconds, sizes=(exec_size,))
                rows["in_process"].append(pts[0])
                say(f"round {i + 1}/{rounds} in-process batch {exec_size}: {pts[0].images_per_s:g} images/s, "
                    f"{pts[0].images_per_cpu_s}/CPU-s (load {pts[0].load_avg[0]})")
            sampler.stop()
    model.close()
    return _summary(req, cpu, opts, exec_size, batching_parameters_file, rows)


def _summary(req: Any, cpu: Any, opts: Any, exec_size: int, path: str, rows: dict) -> dict:
    inproc = rows["in_process"]
    levels = []
    for i, c in enumerate(req.concurrency):
        nbs = [rs[i] for rs in rows["no_batching"]]
        bs = [rs[i] for rs in rows["batching"]]
        levels.append({
            "concurrency": c, "no_batching": _median_result(nbs), "batching": _median_result(bs),
            "speedup": _med([b.rps / n.rps if n.rps else None for b, n in zip(bs, nbs)]),
            "speedup_per_cpu_s": _med([b.requests_per_cpu_s / n.requests_per_cpu_s
                                       if b.requests_per_cpu_s and n.requests_per_cpu_s else None
                                       for b, n in zip(bs, nbs)]),
            "fraction_of_in_process": _med([b.rps / p.images_per_s for b, p in zip(bs, inproc)]),
            "fraction_of_in_process_per_cpu_s": _med([b.requests_per_cpu_s / p.images_per_cpu_s
                                                      if b.requests_per_cpu_s and p.images_per_cpu_s else None
                                                      for b, p in zip(bs, inproc)]),
        })
    return {"model": {"name": req.name, "version": req.version, "path": str(req.version_dir)},
            "cpu": cpu.as_dict(), "cpu_summary": cpu.summary(), "batching_parameters_file": str(path),
            "batching": opts.describe(), "execution_batch_size": exec_size,
            "in_process_images_per_s": _med([p.images_per_s for p in inproc]),
            "in_process_images_per_cpu_s": _med([p.images_per_cpu_s for p in inproc]),
            "in_process_rounds": [p.as_dict() for p in inproc],
            "seconds": req.seconds, "rounds": len(inproc), "levels": levels,
            "load_avg_end": list(system.load_average())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repo", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--version", default=None)
    p.add_argument("--batching_parameters_file", required=True)
    p.add_argument("--concurrency", default="16")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", default="", help="also write the result here")
    a = p.parse_args(argv)
    from builder.core import log
    from builder.options import as_int_list

    log.setup()

    res = concurrent_clients(a.repo, a.name, a.batching_parameters_file, a.version,
                             tuple(as_int_list(a.concurrency, "--concurrency")), a.seconds, a.rounds)
    text = json.dumps(res, indent=2)
    if a.json:
        Path(a.json).write_text(text + "\n", encoding="utf-8")
    for lv in res["levels"]:
        nb, b = lv["no_batching"], lv["batching"]
        print(f"{lv['concurrency']} clients: no batching {nb['rps']:g} req/s (p99 {nb['p99_ms']:g} ms, "
              f"{nb['requests_per_cpu_s']}/CPU-s), batching {b['rps']:g} req/s (p99 {b['p99_ms']:g} ms, "
              f"{b['requests_per_cpu_s']}/CPU-s): median speedup {lv['speedup']}x ({lv['speedup_per_cpu_s']}x "
              f"per CPU-s), {lv['fraction_of_in_process']} of in-process batch {res['execution_batch_size']} "
              f"({lv['fraction_of_in_process_per_cpu_s']} per CPU-s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
