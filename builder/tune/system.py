"""What a measurement ran on: CPU model, CPUID family/model, the SIMD flags that decide TensorFlow's
CPU kernels, core count and load average.

Why: a latency figure means nothing without the machine; on shared hosts the load average at
the time of the figure says how much of the CPU the measurement really had. Tuned batching
parameters are only valid for the CPU they were measured on, so they carry this in their header.
"""

from __future__ import annotations

import bisect
import os
import platform
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

# Flags that change which kernels TensorFlow/oneDNN run (the rest of /proc/cpuinfo does not).
RELEVANT_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                  "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")

# AMD CPUID family/model -> microarchitecture (AMD's public family/model tables); a hypervisor
# often hides the marketing name ("AMD EPYC"), the family/model still tells the core.
_AMD = (
    (23, 0, 0x2F, "Zen/Zen+"), (23, 0x30, 0xFF, "Zen 2"),
    (25, 0, 0x0F, "Zen 3"), (25, 0x10, 0x1F, "Zen 4"), (25, 0x20, 0x5F, "Zen 3"),
    (25, 0x60, 0x7F, "Zen 4"), (25, 0xA0, 0xAF, "Zen 4c"), (26, 0, 0xFF, "Zen 5"),
)


@dataclass(frozen=True)
class CpuInfo:
    model_name: str
    vendor: str
    family: int | None
    model: int | None
    stepping: int | None
    microarchitecture: str
    cores: int
    flags: tuple[str, ...]

    def summary(self) -> str:
        """One line, e.g. ``AMD EPYC (Zen 4, family 25 model 17), 2 cores, avx512f avx512_bf16``."""
        arch = self.microarchitecture
        ident = f"family {self.family} model {self.model}" if self.family is not None else ""
        inner = ", ".join(x for x in (arch, ident) if x)
        name = f"{self.model_name} ({inner})" if inner else self.model_name
        return f"{name}, {self.cores} cores, flags: {' '.join(self.flags) or 'none of ' + '/'.join(RELEVANT_FLAGS[:3])}"

    def as_dict(self) -> dict:
        d = asdict(self)
        d["flags"] = list(self.flags)
        return d


def cpu_info(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> CpuInfo:
    """Read the first processor block of /proc/cpuinfo (falls back to ``platform`` elsewhere)."""
    fields: dict[str, str] = {}
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    family, model, stepping = (_int(fields.get(k)) for k in ("cpu family", "model", "stepping"))
    vendor = fields.get("vendor_id", platform.processor() or "")
    return CpuInfo(
        model_name=fields.get("model name", platform.processor() or platform.machine()),
        vendor=vendor, family=family, model=model, stepping=stepping,
        microarchitecture=_microarchitecture(vendor, family, model),
        cores=os.cpu_count() or 1,
        flags=tuple(f for f in RELEVANT_FLAGS if f in flags),
    )


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _microarchitecture(vendor: str, family: int | None, model: int | None) -> str:
    if vendor != "AuthenticAMD" or family is None or model is None:
        return ""
    for fam, lo, hi, name in _AMD:
        if family == fam and lo <= model <= hi:
            return name
    return ""


def load_average() -> tuple[float, float, float]:
    """``uptime``'s three load averages (1, 5, 15 minutes)."""
    return tuple(round(v, 2) for v in os.getloadavg())  # type: ignore[return-value]


class CpuSampler:
    """CPU seconds this process used between two ``time.monotonic()`` instants.

    Why: on a shared host the wall-clock throughput of a server depends on how much CPU the
    neighbours leave it. Requests per CPU-second of the server (and of its clients) does not, so it
    is reported beside requests/s. A background thread samples ``time.process_time()`` (all
    threads of the process) every ``interval`` seconds; queries interpolate between samples."""

    def __init__(self, interval: float = 0.02) -> None:
        self._t: list[float] = []
        self._cpu: list[float] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._interval = interval
        self._sample()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        with self._lock:
            self._t.append(time.monotonic())
            self._cpu.append(time.process_time())

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def at(self, t: float) -> float:
        """Process CPU seconds at monotonic time ``t`` (linear between samples)."""
        self._sample()
        with self._lock:
            i = bisect.bisect_left(self._t, t)
            if i <= 0:
                return self._cpu[0]
            if i >= len(self._t):
                return self._cpu[-1]
            t0, t1, c0, c1 = self._t[i - 1], self._t[i], self._cpu[i - 1], self._cpu[i]
            return c0 + (c1 - c0) * ((t - t0) / (t1 - t0) if t1 > t0 else 0.0)

    def between(self, t0: float, t1: float) -> float:
        return max(self.at(t1) - self.at(t0), 0.0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1)
