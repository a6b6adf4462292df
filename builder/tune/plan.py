"""Which batching parameter sets to measure, the default latency budget, and how the winner is
picked. Pure functions of the in-process measurements, so they are tested without a model.

The reasoning, for a CPU server under closed-loop clients:

* Batch size. ``b / latency(b)`` rises and flattens; past the knee (the smallest batch reaching
  90% of the best images/s) a bigger batch adds latency for little throughput. The knee and twice
  the knee are measured, plus TF Serving's own CPU starting point (batching/README.md: as many
  batch threads as cores, a large max_batch_size, batch_timeout_micros 0).
* Threads and timeout. One thread with timeout 0 forms batches greedily from whatever queued while
  the previous batch ran. With several threads an idle thread would grab a batch of one at once,
  so those sets also try a short timeout (half the batch-1 latency, within the 1-10 ms TF Serving
  suggests).
* The default p99 budget is 4 x the in-process latency of the knee batch: a request that arrives
  just after a batch started waits for that batch and then for its own (2 x), and the other 2 x
  is headroom for queueing variance and the server's per-request cost. It scales with the model
  and the CPU, so "within budget" means "batching at the knee works", not a number picked for one
  machine. Pass ``--p99_ms`` to use your SLO instead.
* The winner: the sets are compared at the highest concurrency level where any of them keeps p99
  within the budget with no failed request (the most load the server can take within budget);
  the one with the highest requests/s there wins. Comparing each set's own best level instead
  would let a set win at one client, where nothing is batched and sets differ only by noise.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from builder.serve.batching import BatchingOptions
from builder.tune.load import LoadResult
from builder.tune.profile import BatchPoint, knee

BUDGET_FACTOR = 4.0
MIN_TIMEOUT_US, MAX_TIMEOUT_US = 1000, 10000


@dataclass
class Candidate:
    """One parameter set and what it did under load (``results``, one per concurrency level)."""

    label: str
    options: BatchingOptions | None  # None: the server without batching
    results: list[LoadResult] = field(default_factory=list)  # ascending concurrency
    batch_stats: dict[int, dict] = field(default_factory=dict)  # concurrency -> scheduler statistics
    stopped_at: int | None = None  # measuring stopped after this level: p99 already over budget

    def add(self, results: list[LoadResult]) -> None:
        self.results = sorted([*self.results, *results], key=lambda r: r.concurrency)

    def best(self, budget_ms: float) -> LoadResult | None:
        """The highest-throughput level within budget with no failed request (None if none)."""
        ok = [r for r in self.results if _ok(r, budget_ms)]
        return max(ok, key=lambda r: (r.rps, -r.p99_ms)) if ok else None

    def at(self, concurrency: int) -> LoadResult | None:
        return next((r for r in self.results if r.concurrency == concurrency), None)


def default_budget(points: list[BatchPoint]) -> tuple[float, str]:
    """(p99 budget in ms, the sentence saying how it was derived)."""
    k = knee(points)
    budget = math.ceil(BUDGET_FACTOR * k.p50_ms / 10) * 10
    why = (f"{BUDGET_FACTOR:g} x the in-process latency of batch {k.batch_size} ({k.p50_ms:g} ms), the "
           f"smallest batch reaching 90% of the best images/s: a batched request waits for the batch in "
           f"flight and its own, with as much again for queueing variance and server overhead")
    return float(budget), why


def allowed_sizes(exec_size: int, max_batch_size: int, warm_sizes: Iterable[int]) -> tuple[int, ...]:
    """Powers of two up to the execution size, the warmed sizes below it, the execution size and
    max_batch_size (TF Serving requires the last entry to equal it): padding costs at most 2x a
    partial batch and the graph sees few distinct shapes."""
    sizes = {1 << i for i in range(exec_size.bit_length()) if (1 << i) < exec_size}
    sizes |= {w for w in warm_sizes if w < exec_size}
    sizes |= {exec_size, max_batch_size}
    return tuple(sorted(sizes))


def options_for(exec_size: int, threads: int, timeout_us: int, warm_sizes: list[int], budget_ms: float,
                latency_ms: float) -> BatchingOptions:
    """A complete, TF-Serving-valid parameter set for one (batch size, threads, timeout).

    ``max_batch_size`` must admit the largest warmup record (TF Serving runs warmup through the
    batcher and fails the load otherwise), so when that is bigger than the batch size we want to
    run, ``enable_large_batch_splitting`` cuts such requests into execution batches. The queue
    holds what can be served within the budget, and at least the largest request."""
    max_batch = max([exec_size, *warm_sizes])
    within_budget = int(budget_ms // max(latency_ms, 1e-3)) * threads
    queue = max(threads, math.ceil(max_batch / exec_size), within_budget)
    return BatchingOptions(
        max_batch_size=max_batch, batch_timeout_micros=int(timeout_us), max_enqueued_batches=queue,
        num_batch_threads=threads, allowed_batch_sizes=allowed_sizes(exec_size, max_batch, warm_sizes),
        enable_large_batch_splitting=max_batch > exec_size,
        max_execution_batch_size=exec_size if max_batch > exec_size else 0,
        thread_pool_name="model_server_batch_threads",
    )


def warmup_problem(opts: BatchingOptions, warm_sizes: list[int]) -> str:
    """Why TF Serving would fail the version's load with ``opts`` (its warmup records run through
    the batcher), checked as ``ValidateBatchTaskQueueCapacity`` checks a request on an empty
    queue; empty when they all pass. ``tune`` measures with warmup off, so this is its guard."""
    for size in warm_sizes:
        if size > opts.max_batch_size:
            return f"a {size}-row warmup record is larger than max_batch_size {opts.max_batch_size}"
        if opts.enable_large_batch_splitting and size > opts.max_enqueued_batches * opts.execution_limit:
            return (f"a {size}-row warmup record exceeds the queue capacity "
                    f"{opts.max_enqueued_batches} x {opts.execution_limit}")
    return ""


def candidates(points: list[BatchPoint], warm_sizes: list[int], max_concurrency: int, cores: int,
               budget_ms: float) -> list[Candidate]:
    """The parameter sets worth measuring for this model on this CPU (see the module docstring)."""
    lat = {p.batch_size: p.p50_ms for p in points}
    k = knee(points).batch_size
    sizes = sorted({min(max(k, 2), max_concurrency), min(max(2 * k, 4), max_concurrency)})
    top = min(max(lat), max_concurrency)
    timeout = int(min(MAX_TIMEOUT_US, max(MIN_TIMEOUT_US, lat[min(lat)] * 1000 / 2)))
    threads = sorted({1, max(1, cores)})
    specs: list[tuple[int, int, int]] = [(top, threads[-1], 0)]  # TF Serving's CPU starting point
    for b in sizes:
        for t in threads:
            specs.append((b, t, 0 if t == 1 else timeout))  # greedy with one thread, else a short wait
    out, seen = [], set()
    for b, t, to in specs:
        if (b, t, to) in seen:
            continue
        seen.add((b, t, to))
        latency = _latency_at(lat, b)
        label = f"batch {b}, {t} thread{'s' if t > 1 else ''}, timeout {to / 1000:g} ms"
        out.append(Candidate(label, options_for(b, t, to, warm_sizes, budget_ms, latency)))
    return out


def _latency_at(lat: dict[int, float], b: int) -> float:
    """In-process latency at ``b`` (interpolated linearly between measured sizes)."""
    if b in lat:
        return lat[b]
    lo = max((s for s in lat if s < b), default=min(lat))
    hi = min((s for s in lat if s > b), default=max(lat))
    if hi == lo:
        return lat[lo] * b / lo
    return lat[lo] + (lat[hi] - lat[lo]) * (b - lo) / (hi - lo)


def target_level(cands: list[Candidate], budget_ms: float) -> int | None:
    """The highest concurrency at which some set keeps p99 within budget with no failed request:
    the most load the server can take within budget, where the sets are compared. (Comparing
    each set's best level instead lets a set win at one client, where no batching happens and
    the sets differ only by noise.)"""
    levels = [r.concurrency for c in cands for r in c.results if _ok(r, budget_ms)]
    return max(levels) if levels else None


def _ok(r: LoadResult, budget_ms: float) -> bool:
    return r.p99_ms <= budget_ms and r.error_count == 0 and r.requests > 0


def ranked(cands: list[Candidate], budget_ms: float) -> list[Candidate]:
    """Best first: throughput at the target level (within budget), then the other sets by their best
    throughput within budget, then the sets that never met it by lowest p99."""
    level = target_level(cands, budget_ms)

    def key(c: Candidate) -> tuple:
        at = c.at(level) if level is not None else None
        if at is not None and _ok(at, budget_ms):
            return (0, -at.rps, at.p99_ms)
        best = c.best(budget_ms)
        if best is not None:
            return (1, -best.rps, best.p99_ms)
        return (2, min((r.p99_ms for r in c.results if r.requests), default=math.inf), 0.0)

    return sorted(cands, key=key)


def choose(cands: list[Candidate], budget_ms: float) -> tuple[Candidate, bool]:
    """(winner, whether it met the budget): the highest throughput within budget at the target
    level; without any set within budget, the one whose p99 came closest, flagged."""
    order = ranked(cands, budget_ms)
    return order[0], order[0].best(budget_ms) is not None
