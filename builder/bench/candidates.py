"""What to benchmark: the candidates (``LABEL=TARGET`` specs, parsed and checked cheaply before
anything loads) and the settings (``BenchOptions``), validated so a typo never costs minutes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.core import artifact
from builder.core.errors import InputError
from builder.options import LoaderFlags

SOURCE_KINDS = ("checkpoint", "frozen", "savedmodel", "keras")
KINDS = (*SOURCE_KINDS, "export", "grpc", "rest")
IN_PROCESS_KINDS = (*SOURCE_KINDS, "export")
SERVER_KINDS = ("grpc", "rest")
LABEL_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_HOSTPORT_RE = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.\-]+):(\d{1,5})(/.*)?$")
_REST_MODEL_RE = re.compile(r"^(.*?)/v1/models/([^/:]+)(?:/versions/(\d+))?/?$")
SPEC_HELP = ("LABEL=TARGET where TARGET is a model path (checkpoint dir/.meta, frozen .pb, "
             "SavedModel dir, .keras), an exported REPO/NAME[/VERSION], HOST:PORT[/NAME[/VERSION]] "
             "for gRPC or http://HOST:PORT[/v1/models/NAME] for REST; force the kind with "
             f"KIND:TARGET ({'|'.join(KINDS)})")


# --------------------------------------------------------------------------- candidate specs


@dataclass
class CandidateSpec:
    """One parsed candidate: what to run and how to reach it (nothing is loaded yet)."""

    label: str
    kind: str  # one of KINDS
    target: str  # path, HOST:PORT, or base URL
    model_name: str | None = None  # servers only
    model_version: int | None = None  # servers only
    spec: str = ""  # the text the user wrote, for error messages

    @property
    def in_process(self) -> bool:
        return self.kind in IN_PROCESS_KINDS

    def as_json(self) -> dict[str, Any]:
        return {"label": self.label, "kind": self.kind, "target": self.target,
                **({"model_name": self.model_name} if self.model_name else {}),
                **({"model_version": self.model_version} if self.model_version else {})}


def parse_candidates(specs: list[str], grpc: list[str] | None = None,
                     rest: list[str] | None = None, model_name: str | None = None,
                     model_version: int | None = None) -> list[CandidateSpec]:
    """Parse ``LABEL=TARGET`` specs (plus ``--grpc``/``--rest`` shortcuts) and check them
    cheaply (paths exist, addresses are well formed, labels unique) before anything loads."""
    out: list[CandidateSpec] = []
    for text in specs:
        out.append(_parse_one(text))
    for i, t in enumerate(grpc or []):
        out.append(_parse_one(f"{'grpc' if len(grpc or []) == 1 else f'grpc{i + 1}'}=grpc:{t}",
                              flag="--grpc", raw=t))
    for i, t in enumerate(rest or []):
        out.append(_parse_one(f"{'rest' if len(rest or []) == 1 else f'rest{i + 1}'}=rest:{t}",
                              flag="--rest", raw=t))
    if not out:
        raise InputError("no candidates: pass e.g. --candidates checkpoint=example_model/checkpoint,"
                         "export=model_repo/facenet/1 (or them as positional arguments)")
    seen: dict[str, str] = {}
    for c in out:
        if c.label in seen:
            raise InputError(f"candidate label {c.label!r} is used twice ({seen[c.label]!r} and "
                             f"{c.spec!r}): give each candidate its own LABEL=")
        seen[c.label] = c.spec
    servers = [c for c in out if c.kind in SERVER_KINDS]
    if servers:
        default_name = model_name or _default_model_name(out)
        for c in servers:
            if c.model_name is None:
                if not default_name:
                    raise InputError(
                        f"candidate {c.spec!r}: which model should the server run? pass "
                        "--model_name NAME or write the target as HOST:PORT/NAME"
                    )
                c.model_name = default_name
            if c.model_version is None:
                c.model_version = model_version
    return out


def _parse_one(text: str, flag: str = "--candidates", raw: str | None = None) -> CandidateSpec:
    shown = raw if raw is not None else text
    text = str(text).strip()
    if not text:
        raise InputError(f"{flag}: an empty candidate; write {SPEC_HELP}")
    label, target = (text.split("=", 1) if "=" in text else ("", text))
    label, target = label.strip(), target.strip()
    if "=" in text and not label:
        raise InputError(f"{flag} {shown!r}: empty label before '='; write {SPEC_HELP}")
    if not target:
        raise InputError(f"{flag} {shown!r}: nothing after '='; write {SPEC_HELP}")
    kind = None
    m = re.match(r"^([a-z]+):(?!//)(.*)$", target)
    if m and m.group(1) in KINDS:
        kind, target = m.group(1), m.group(2).strip()
    elif m and m.group(1) not in ("http", "https") and not Path(target).exists() \
            and not _HOSTPORT_RE.match(target):
        raise InputError(f"{flag} {shown!r}: unknown kind {m.group(1)!r}; use one of "
                         f"{', '.join(KINDS)} (e.g. export:model_repo/facenet/1)")
    if label and not LABEL_RE.match(label):
        raise InputError(f"{flag} {shown!r}: label {label!r} must use letters, digits, '_', '.', "
                         "'-' (e.g. checkpoint=...)")
    spec = CandidateSpec(label=label, kind="", target=target, spec=shown)
    if kind in SERVER_KINDS or (kind is None and _looks_like_server(target)):
        _parse_server(spec, kind, flag, shown)
    else:
        _parse_path(spec, kind, flag, shown)
    if not spec.label:
        spec.label = _default_label(spec)
    return spec


def _looks_like_server(target: str) -> bool:
    if target.startswith(("http://", "https://")):
        return True
    return bool(_HOSTPORT_RE.match(target)) and not Path(target).exists()


def _parse_server(spec: CandidateSpec, kind: str | None, flag: str, shown: str) -> None:
    target = spec.target
    if target.startswith(("http://", "https://")) or kind == "rest":
        if not target.startswith(("http://", "https://")):
            target = "http://" + target
        spec.kind = "rest"
        if target.startswith("https://"):
            raise InputError(f"{flag} {shown!r}: https is not supported (TF Serving's REST API is plain "
                             "HTTP): write http://HOST:PORT, or benchmark over gRPC")
        m = _REST_MODEL_RE.match(target)
        if m:
            target, spec.model_name = m.group(1), m.group(2)
            spec.model_version = int(m.group(3)) if m.group(3) else None
        base = target.rstrip("/")
        hp = re.match(r"^https?://([^/]+)$", base)
        if not hp or not _HOSTPORT_RE.match(hp.group(1)):
            raise InputError(f"{flag} {shown!r}: not a REST address; write http://HOST:PORT or "
                             "http://HOST:PORT/v1/models/NAME")
        _check_port(hp.group(1), flag, shown)
        spec.target = base
        return
    spec.kind = "grpc"
    m = _HOSTPORT_RE.match(target)
    if not m:
        raise InputError(f"{flag} {shown!r}: not a gRPC address; write HOST:PORT or "
                         "HOST:PORT/NAME[/VERSION] (e.g. 127.0.0.1:8500/facenet)")
    _check_port(f"{m.group(1)}:{m.group(2)}", flag, shown)
    rest = (m.group(3) or "").strip("/")
    spec.target = f"{m.group(1)}:{m.group(2)}"
    if rest:
        parts = rest.split("/")
        if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()) or not parts[0]:
            raise InputError(f"{flag} {shown!r}: after HOST:PORT write /NAME or /NAME/VERSION "
                             "(VERSION a number)")
        spec.model_name = parts[0]
        spec.model_version = int(parts[1]) if len(parts) == 2 else None


def _check_port(hostport: str, flag: str, shown: str) -> None:
    port = int(hostport.rsplit(":", 1)[1])
    if not 0 < port < 65536:
        raise InputError(f"{flag} {shown!r}: port {port} is out of range 1..65535")


def _parse_path(spec: CandidateSpec, kind: str | None, flag: str, shown: str) -> None:
    from builder.core import layout
    from builder.load import loaders

    p = Path(spec.target).expanduser()
    if not p.exists():
        raise InputError(f"{flag} {shown!r}: {p} does not exist: fix the path (LABEL=PATH, "
                         "or HOST:PORT/NAME for a gRPC server)")
    if kind == "export" or (kind is None and _is_version_dir(p)):
        spec.kind = "export"
        if not (p / "saved_model.pb").exists():
            versions = layout.list_versions(p)
            if not versions:
                raise InputError(f"{flag} {shown!r}: {p} is neither a version directory "
                                 "(REPO/NAME/VERSION with saved_model.pb) nor a model with versions")
            p = p / str(versions[-1])
            if not (p / "saved_model.pb").exists():
                raise InputError(f"{flag} {shown!r}: {p} has no saved_model.pb")
        spec.target = str(p)
        return
    if kind is None and p.is_dir() and layout.list_versions(p) and not (p / "saved_model.pb").exists():
        versions = layout.list_versions(p)
        spec.kind, spec.target = "export", str(p / str(versions[-1]))
        return
    try:
        spec.kind = kind or loaders.detect_flow(p)
    except InputError:
        raise InputError(f"{flag} {shown!r}: cannot tell what {p} is (no saved_model.pb, no *.meta"
                         f", no numeric versions); write KIND:PATH with KIND one of "
                         f"{', '.join(KINDS)}") from None
    spec.target = str(p)


def _is_version_dir(p: Path) -> bool:
    from builder.core import layout

    return p.is_dir() and layout.is_version_name(p.name) and (p / "saved_model.pb").exists()


def _default_label(spec: CandidateSpec) -> str:
    """``NAME-VERSION`` for exports, the kind for everything else (labels must be unique)."""
    if spec.kind == "export":
        p = Path(spec.target)
        return f"{p.parent.name}-{p.name}"
    return spec.kind


def _default_model_name(specs: list[CandidateSpec]) -> str | None:
    """A server candidate without a model name serves what the first export candidate is."""
    for c in specs:
        if c.kind == "export":
            try:
                info = artifact.read_build_info(c.target) or {}
            except InputError:
                info = {}
            return str(info.get("name") or Path(c.target).parent.name)
    return None


# --------------------------------------------------------------------------- options


@dataclass
class BenchOptions:
    """Everything ``benchmark`` takes (validated by ``validate``)."""

    candidates: list[CandidateSpec]
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 100])
    warmup: int = 2
    repeats: int = 3
    runs: int | None = None  # timed runs per repeat (None + seconds=None -> 10)
    seconds: float | None = None  # time budget per repeat
    concurrency: int = 1
    samples: str | None = None
    seed: int = 0
    signature: str = "serving_default"
    loader: LoaderFlags = field(default_factory=LoaderFlags)  # for source-flow candidates
    gemm_size: int = 2048  # 0 = skip the GEMM measurement
    flops: bool = True
    timeout: float = 300.0  # per server request
    out: str | None = None
    basename: str | None = None
    quiet: bool = False
    server_pids: list[int] = field(default_factory=list)  # their CPU is not "background load"
    concurrent_clients: list[int] = field(default_factory=list)  # the concurrent-clients mode (bench.concurrent)
    batching_parameters_file: str | None = None  # its batching file (default: the tuned one)

    def timed_runs(self) -> int | None:
        if self.runs is None and self.seconds is None:
            return 10
        return self.runs


def validate(o: BenchOptions) -> None:
    """All cheap checks, before any model loads, so a typo never costs minutes."""
    if not o.batch_sizes:
        raise InputError("--batch_sizes is empty: use e.g. --batch_sizes 1,8,100")
    for value, flag, low in ((o.warmup, "--warmup", 0), (o.repeats, "--repeats", 1),
                             (o.concurrency, "--concurrency", 1), (o.gemm_size, "--gemm_size", 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise InputError(f"{flag} {value!r}: must be an integer >= {low}")
    if o.runs is not None and (not isinstance(o.runs, int) or isinstance(o.runs, bool) or o.runs < 1):
        raise InputError(f"--runs {o.runs!r}: must be an integer >= 1 (timed runs per repeat)")
    if o.seconds is not None and not (isinstance(o.seconds, (int, float)) and o.seconds > 0):
        raise InputError(f"--seconds {o.seconds!r}: must be a positive number (time per repeat)")
    if not (isinstance(o.timeout, (int, float)) and o.timeout > 0):
        raise InputError(f"--timeout {o.timeout!r}: must be a positive number of seconds")
    if o.samples and not Path(o.samples).is_file():
        raise InputError(f"--samples {o.samples}: no such file (an .npz keyed by input alias)")
    if o.out and Path(o.out).exists() and not Path(o.out).is_dir():
        raise InputError(f"--out {o.out}: exists and is not a directory")
    if o.basename is not None and not LABEL_RE.match(o.basename):
        raise InputError(f"--basename {o.basename!r}: use letters, digits, '_', '.', '-'")
    from builder.load import loaders

    for k, v in o.loader.input_shapes.items():
        loaders.parse_shape(v, f"--input_shapes {k}")
    from builder.bench import concurrent

    concurrent.check(o)
